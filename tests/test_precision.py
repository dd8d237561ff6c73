"""bf16 autocast for backbone passes: float32 features close to fp32's, and a clear config error."""

import numpy as np
import pytest
import torch

from multifcl.backbones import load_backbone
from multifcl.config import ConfigError
from multifcl.experiment import load_experiment


def test_bf16_features_are_float32_and_close_to_fp32():
    fp32, bf16 = load_backbone("vit-tiny"), load_backbone("vit-tiny", precision="bf16")
    assert fp32 is not bf16 and bf16.precision == "bf16"
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    exact = fp32.taps(fp32.preprocess(images), [0, 3])
    rounded = bf16.taps(bf16.preprocess(images), [0, 3])
    for a, b in zip(exact, rounded):
        assert b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 really ran
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    assert bf16.encode(images, 4).dtype == torch.float32


def test_bf16_client_uploads_float32_arrays(tiny_config):
    config = tiny_config(method="multifcl", use_text_init=False, precision="bf16")
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    task = data.stream.task(0)
    update = method.train_client(method.initial_state(), data.client_train_set(task, 0, 2), task, 0)
    floats = [v for v in update.arrays.values() if np.issubdtype(v.dtype, np.floating)]
    assert floats and all(v.dtype == np.float32 and np.isfinite(v).all() for v in floats)


def test_unknown_precision_is_one_line(tiny_config):
    with pytest.raises(
        ConfigError, match="run config key 'precision': unknown value 'fp16'"
    ) as error:
        tiny_config(precision="fp16")
    assert "\n" not in str(error.value)
