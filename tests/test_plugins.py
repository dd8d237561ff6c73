"""The plug-ins (optimizer, ETF head, learning-rate schedule) inside the methods."""

import csv
from pathlib import Path

import numpy as np
import pytest

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.methods.base import CLASS_MEAN_COSINE, SECONDS_PER_STEP
from multifcl.optim.local_training import LocalTraining
from tests.conftest import run_in_process


def first_task_update(config):
    experiment = load_experiment(config)
    task = experiment.data.stream.task(0)
    method = experiment.method
    return method, method.train_client(
        method.initial_state(), experiment.data.client_train_set(task, 0, 1), task, 7
    )


def test_msam_clients_upload_the_unperturbed_weights(tiny_config, monkeypatch):
    config = tiny_config(method="finetune", optimizer="msam", rho=3.0)
    _, restored = first_task_update(config)
    monkeypatch.setattr(LocalTraining, "finish", lambda self: None)  # forget to move back
    _, perturbed = first_task_update(config)
    difference = np.sqrt(
        sum(((restored.arrays[k] - perturbed.arrays[k]) ** 2).sum() for k in restored.arrays)
    )
    # the weights held after a step sit rho away (one global norm) from the unperturbed ones
    assert difference == pytest.approx(3.0, rel=1e-3)
    assert restored.metrics[SECONDS_PER_STEP] > 0


def test_finetune_with_an_etf_head_never_sends_the_vertices(tiny_config):
    method, update = first_task_update(tiny_config(method="finetune", head="etf"))
    assert not any("vertices" in key for key in update.arrays)
    assert set(update.arrays) == set(method.initial_state())
    assert -1.0 <= update.metrics[CLASS_MEAN_COSINE] <= 1.0


def test_an_unknown_etf_map_is_a_one_line_error_naming_the_key(tiny_config):
    with pytest.raises(ConfigError, match="'etf-map'") as error:
        tiny_config(method="finetune", head="etf", etf_map="relu")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="'etf-map': multifcl's ETF experts"):
        tiny_config(method="multifcl", head="etf", etf_map="batchnorm")


CIFAR10_JPG = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg"


@pytest.mark.skipif(not CIFAR10_JPG.is_dir(), reason=f"no CIFAR-10 image folder at {CIFAR10_JPG}")
def test_etf_class_means_on_efficientnet_turn_negative_within_a_few_rounds(tmp_path):
    """EfficientNet-Lite0's final feature is non-negative: without a signed map in front of
    the ETF the class means stay at a positive cosine (+0.14 after a whole run)."""
    config = ExperimentConfig(
        method="finetune",
        head="etf",
        backbone="efficientnet-lite0",
        dataset="imagefolder",
        data_root=CIFAR10_JPG,
        num_tasks=5,
        max_train_per_class=24,
        image_size=64,
        batch_size=16,
        partition="iid",
        output_dir=tmp_path,
    )
    experiment = load_experiment(config)
    method, task = experiment.method, experiment.data.stream.task(0)
    state, cosines = method.initial_state(), []
    for round_index in range(3):
        updates = [
            method.train_client(state, experiment.data.client_train_set(task, c, 2), task, c)
            for c in range(2)
        ]
        state = method.merge(state, updates)
        cosines.append(np.mean([update.metrics[CLASS_MEAN_COSINE] for update in updates]))
    assert min(cosines) < 0, cosines


def test_multifcl_with_etf_heads_trains_projections_not_prototypes(tiny_config):
    config = tiny_config(method="multifcl", head="etf", use_text_init=False)
    method, update = first_task_update(config)
    assert not any("prototypes" in key or "vertices" in key for key in update.arrays)
    projections = [k for k in update.arrays if k.startswith("etf-projection/")]
    assert len(projections) == 8  # weight and bias of 4 experts
    initial = method.initial_state()
    assert any(not np.array_equal(update.arrays[k], initial[k]) for k in projections)
    merged = method.merge(initial, [update, update])
    assert all(np.allclose(merged[k], update.arrays[k]) for k in projections)


def test_tempbalance_needs_an_eligible_layer(tiny_config):
    with pytest.raises(ConfigError, match="'lr-schedule': tempbalance needs") as error:
        load_experiment(tiny_config(method="multifcl", lr_schedule="tempbalance"))
    assert "\n" not in str(error.value)
    config = tiny_config(method="multifcl", lr_schedule="tempbalance", adapter_rank=64)
    assert load_experiment(config).method is not None


@pytest.mark.parametrize(
    "changes",
    [{"optimizer": "sam"}, {"lr_schedule": "tempbalance"}, {"lr_schedule": "cosine"}],
)
def test_finetune_runs_with_each_plug_in_and_logs_step_time(changes, tiny_config):
    config = tiny_config(method="finetune", **changes)
    metrics, _ = run_in_process(config)
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert all(float(row["seconds_per_step"]) > 0 for row in rows)
    assert metrics["accuracy_matrix"][1][1] > 50.0
