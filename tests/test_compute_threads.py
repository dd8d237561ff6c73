"""A run computes with `torch-threads` threads whatever the process was given, so its
numbers do not depend on the CPUs per client (Flower gives a client as many threads)."""

from __future__ import annotations

import json

import pytest
import torch
from threadpoolctl import threadpool_info

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.experiment import load_experiment
from tests.conftest import run_in_process


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_loading_an_experiment_sets_the_configured_thread_count(tiny_config, restore_threads):
    torch.set_num_threads(2)  # as a process given 2 CPUs starts
    load_experiment(tiny_config(torch_threads=1, seed=11))
    assert torch.get_num_threads() == 1
    assert all(pool["num_threads"] == 1 for pool in threadpool_info())


def test_the_same_config_gives_the_same_matrix_whatever_threads_the_process_had(
    tiny_config, tmp_path, restore_threads
):
    matrices = []
    for ambient in (1, 2):
        torch.set_num_threads(ambient)
        load_experiment.cache_clear()  # a fresh process each time
        config = tiny_config(method="finetune", output_dir=tmp_path / f"threads-{ambient}")
        run_in_process(config, base_dir=tmp_path)
        saved = json.loads((config.output_dir / "metrics.json").read_text())
        assert json.loads((config.output_dir / "config.json").read_text())["torch-threads"] == 1
        matrices.append(saved["accuracy_matrix"])
    assert matrices[0] == matrices[1]


def test_a_thread_count_below_one_is_refused():
    with pytest.raises(ConfigError, match="run config key 'torch-threads': must be > 0"):
        ExperimentConfig(torch_threads=0)
