"""The analytic classifier: its federated ridge solve equals the centralized one whatever
the partition, statistics are counted once per task, and impossible statistics are refused."""

import copy

import numpy as np
import pytest
import torch

from multifcl.experiment import load_experiment
from multifcl.methods.analytic import GRAM, TASK_GRAM, pack, project, unpack
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.update_validation import RejectedUpdate, validate_update
from tests.conftest import run_in_process
from tests.test_update_validation import over_the_wire

WIDTH = 48


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """A deterministic per-sample feature (64 pixel values), so that every partition sees
    bit-identical features of a sample whatever batch it is encoded in."""
    return images.flatten(1)[:, :64].float() / 255


def federated_weights(tiny_config, partition: str, clients: int, rounds: int) -> np.ndarray:
    """W after two tasks of `rounds` rounds each, every update sent over the wire."""
    config = tiny_config(
        method="analytic", analytic_projection_dim=WIDTH, partition=partition, beta=0.05
    )
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    method._final_features = lambda data, task: pixel_features(data.images)
    state = method.initial_state()
    for task in data.stream:
        for _ in range(rounds):
            updates = [
                over_the_wire(
                    method.train_client(state, data.client_train_set(task, c, clients), task, c),
                    "float16",  # float64 statistics travel exact whatever transmit-dtype says
                )
                for c in range(clients)
            ]
            for update in updates:
                validate_update(state, update, task, method)
            state = method.merge(state, updates)
        state = method.end_task(state, task)
    return method.ridge_weights(state).numpy()


def centralized_weights(tiny_config) -> np.ndarray:
    """Ridge regression on all the stream's training samples at once (one client, IID)."""
    experiment = load_experiment(tiny_config(method="analytic", analytic_projection_dim=WIDTH))
    method, data = experiment.method, experiment.data
    everything = [data.client_train_set(task, 0, 1) for task in data.stream]
    hidden = project(torch.cat([pixel_features(d.images) for d in everything]), method.projection)
    labels = torch.cat([torch.as_tensor(d.labels) for d in everything])
    targets = torch.nn.functional.one_hot(labels, method.num_classes).double()
    regularized = hidden.T @ hidden + method.config.analytic_ridge * torch.eye(WIDTH).double()
    return torch.linalg.solve(regularized, hidden.T @ targets).numpy()


def test_federated_solve_equals_centralized_ridge_regression_whatever_the_partition(
    tiny_config,
):
    centralized = centralized_weights(tiny_config)
    dirichlet = federated_weights(tiny_config, "dirichlet", clients=3, rounds=1)
    iid = federated_weights(tiny_config, "iid", clients=3, rounds=1)
    twice = federated_weights(tiny_config, "dirichlet", clients=3, rounds=2)
    scale = np.abs(centralized).max()
    assert scale > 0
    for weights in (dirichlet, iid, twice):  # a second round of a task replaces the first's
        np.testing.assert_allclose(weights, centralized, rtol=0, atol=1e-9 * scale)


def test_packing_keeps_the_symmetric_matrix():
    matrix = torch.randn(5, 3, dtype=torch.float64)
    gram = matrix @ matrix.T
    assert len(pack(gram)) == 15
    assert torch.equal(unpack(pack(gram)), gram)


def test_statistics_that_no_data_can_give_are_refused(tiny_config):
    experiment = load_experiment(tiny_config(method="analytic", analytic_projection_dim=WIDTH))
    method, data = experiment.method, experiment.data
    task = data.stream.task(0)
    state = method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    validate_update(state, over_the_wire(update, "float32"), task, method)
    assert update.arrays[TASK_GRAM].dtype == np.float64
    broken = copy.deepcopy(update)
    broken.arrays[TASK_GRAM][1] = 1e6 * np.abs(broken.arrays[TASK_GRAM]).max()  # off-diagonal
    with pytest.raises(RejectedUpdate, match="breaks Cauchy-Schwarz"):
        validate_update(state, broken, task, method)
    inflated = copy.deepcopy(update)
    inflated.arrays["class-means"] *= 100
    with pytest.raises(RejectedUpdate, match="a class mean larger than"):
        validate_update(state, inflated, task, method)
    rounded = copy.deepcopy(update)
    rounded.arrays[TASK_GRAM] = rounded.arrays[TASK_GRAM].astype(np.float32)
    with pytest.raises(RejectedUpdate, match="dtype float32, expected float64"):
        validate_update(state, rounded, task, method)


def test_analytic_runs_in_process_and_keeps_the_finished_tasks_sums(tiny_config):
    config = tiny_config(method="analytic", analytic_projection_dim=WIDTH, rounds_per_task=1)
    metrics, _ = run_in_process(config)
    matrix = metrics["accuracy_matrix"]
    assert [sum(a is not None for a in row) for row in matrix] == [1, 2]
    assert matrix[0][0] > 30  # 5 classes: chance is 20
    final = latest_checkpoint(config.output_dir).state
    assert final[GRAM].dtype == np.float64 and final[GRAM].any()
    assert not final[TASK_GRAM].any()  # folded into the finished tasks' sum
