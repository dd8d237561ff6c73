"""Train-time augmentation (`augment`): what each method's training step receives."""

import numpy as np
import pytest
import torch

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import InMemoryImages
from multifcl.data.augmentation import TrainAugmentation, crop_boxes
from multifcl.experiment import load_experiment
from tests.test_config import one_line_error

# (method, the loss attribute that receives the step's inputs, task, config changes)
TRAINING = {
    "finetune": ("finetune", "_loss", 0, {}),
    "lwf": ("lwf", "_loss", 0, {}),
    "pilora": ("pilora", "loss", 0, {}),
    "multifcl-adapters": ("multifcl", "_loss", 0, {}),
    "multifcl-frozen": ("multifcl", "_loss", 1, {"use_text_init": False}),
}


def _step_inputs(tiny_config, monkeypatch, case, seed=0, **changes):
    """The inputs of every training step of two epochs over one image repeated 8 times
    (one batch per epoch), detached."""
    name, loss_name, task_index, extra = TRAINING[case]
    experiment = load_experiment(tiny_config(method=name, local_epochs=2, **extra, **changes))
    method, stream = experiment.method, experiment.data.stream
    task = stream.task(task_index)
    data = experiment.data.client_train_set(task, 0, 2)
    same = InMemoryImages(data.images[:1].repeat(8, 1, 1, 1), np.repeat(data.labels[:1], 8))
    seen, original = [], getattr(method, loss_name)

    def record(inputs, *rest):
        parts = inputs if isinstance(inputs, list) else [inputs]
        seen.append(torch.cat([p.detach().flatten(1) for p in parts], 1).cpu())
        return original(inputs, *rest)

    monkeypatch.setattr(method, loss_name, record)
    method.train_client(method.initial_state(), same, task, seed)
    assert len(seen) == 2  # one step per epoch
    return seen


@pytest.mark.parametrize("case", list(TRAINING))
def test_standard_shows_each_epoch_other_pixels_and_a_seed_the_same(case, tiny_config, monkeypatch):
    first, second = _step_inputs(tiny_config, monkeypatch, case, augment="standard")
    assert not torch.allclose(first, second)
    assert not torch.allclose(first[0], first[1])  # each image of a batch its own crop
    again = _step_inputs(tiny_config, monkeypatch, case, augment="standard")
    assert all(torch.equal(a, b) for a, b in zip([first, second], again))
    other_seed = _step_inputs(tiny_config, monkeypatch, case, seed=1, augment="standard")
    assert not torch.allclose(first, other_seed[0])


@pytest.mark.parametrize("case", ["finetune", "multifcl-frozen"])
def test_none_shows_every_epoch_the_same_pixels(case, tiny_config, monkeypatch):
    first, second = _step_inputs(tiny_config, monkeypatch, case)
    assert torch.equal(first, second) and torch.equal(first[0], first[1])


def test_forced_cache_trains_frozen_encoder_heads_on_unaugmented_features(tiny_config, monkeypatch):
    forced = _step_inputs(
        tiny_config, monkeypatch, "multifcl-frozen", augment="standard", cache_features="force"
    )
    plain = _step_inputs(tiny_config, monkeypatch, "multifcl-frozen")
    assert torch.equal(forced[0], forced[1]) and torch.equal(forced[0], plain[0])


def test_augmentation_output_is_the_input_size_in_pixel_range():
    images = torch.randint(0, 256, (5, 3, 12, 20), dtype=torch.uint8)
    out = TrainAugmentation("standard", 16, seed=3)(images, torch.device("cpu"))
    assert out.shape == (5, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert TrainAugmentation("none", 16, seed=3)(images, torch.device("cpu")) is images


def test_crop_boxes_fit_and_follow_pilots_scale_and_ratio():
    top, left, height, width = crop_boxes(4000, 32, 32, torch.Generator().manual_seed(0))
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 32).all()
    area = height * width / 32**2
    assert area.min() < 0.15 and area.max() > 0.9  # scale (0.05, 1.0)
    assert 0.3 < area.mean() < 0.65


def test_augment_and_cache_features_values(tiny_config):
    message = one_line_error(ConfigError, lambda: tiny_config(augment="random"))
    assert "'augment'" in message and "standard" in message
    parse = ExperimentConfig.from_run_config
    assert parse({"cache-features": "force"}).cache_features == "force"
    assert parse({"cache-features": False}).cache_features is False
    assert parse({"augment": "standard"}).augment == "standard"
    for bad in ("forced", "true", 1):
        message = one_line_error(ConfigError, lambda bad=bad: parse({"cache-features": bad}))
        assert message.startswith("run config key 'cache-features'")
