"""The analytic classifier: its federated ridge solve equals the centralized one whatever
the partition, statistics are counted once per task, and impossible statistics are refused."""

import copy

import numpy as np
import pytest
import torch

from multifcl.config import ConfigError
from multifcl.experiment import load_experiment
from multifcl.methods.analytic import (
    GRAM,
    HELD_SAMPLES,
    RIDGE,
    RIDGE_CANDIDATES,
    TASK_GRAM,
    held_out_samples,
    pack,
    project,
    unpack,
)
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.update_validation import RejectedUpdate, validate_update
from tests.conftest import run_in_process
from tests.test_update_validation import over_the_wire

WIDTH = 48
RIDGE_FIXED = 1.0


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """A deterministic per-sample feature (64 pixel values), so that every partition sees
    bit-identical features of a sample whatever batch it is encoded in."""
    return images.flatten(1)[:, :64].float() / 255


def federated_weights(tiny_config, partition: str, clients: int, rounds: int) -> np.ndarray:
    """W after two tasks of `rounds` rounds each, every update sent over the wire."""
    config = tiny_config(
        method="analytic",
        analytic_projection_dim=WIDTH,
        analytic_ridge=RIDGE_FIXED,
        partition=partition,
        beta=0.05,
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
    config = tiny_config(
        method="analytic", analytic_projection_dim=WIDTH, analytic_ridge=RIDGE_FIXED
    )
    experiment = load_experiment(config)
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


@pytest.mark.parametrize("ridge", [1.0, "auto"])
def test_analytic_runs_in_process_and_keeps_the_finished_tasks_sums(tiny_config, ridge):
    config = tiny_config(
        method="analytic", analytic_projection_dim=WIDTH, rounds_per_task=1, analytic_ridge=ridge
    )
    metrics, _ = run_in_process(config)
    matrix = metrics["accuracy_matrix"]
    assert [sum(a is not None for a in row) for row in matrix] == [1, 2]
    assert matrix[0][0] > 30  # 5 classes: chance is 20
    final = latest_checkpoint(config.output_dir).state
    assert final[GRAM].dtype == np.float64 and final[GRAM].any()
    assert not final[TASK_GRAM].any()  # folded into the finished tasks' sum
    assert (RIDGE in final) == (ridge == "auto")
    if ridge == "auto":
        assert final[RIDGE][0] in RIDGE_CANDIDATES and final[HELD_SAMPLES][0] == 0


def ranpac_errors(hidden: torch.Tensor, targets: torch.Tensor, held: torch.Tensor) -> np.ndarray:
    """RanPAC's validation loss per candidate lambda, from the samples themselves: ridge fit
    on the samples not in `held`, mean squared error over `held` and every class."""
    fit = torch.ones(len(hidden), dtype=torch.bool)
    fit[held] = False
    errors = []
    for ridge in RIDGE_CANDIDATES:
        regularized = hidden[fit].T @ hidden[fit] + ridge * torch.eye(hidden.shape[1]).double()
        weights = torch.linalg.solve(regularized, hidden[fit].T @ targets[fit])
        errors.append(float(((hidden[held] @ weights - targets[held]) ** 2).mean()))
    return np.array(errors)


def test_auto_ridge_is_ranpacs_choice_on_the_clients_held_out_samples(tiny_config):
    """Federated (3 clients, Dirichlet, over the wire) held-out errors equal RanPAC's computed
    from the same samples, lambda is their argmin, and W is solved on every sample."""
    config = tiny_config(
        method="analytic",
        analytic_projection_dim=WIDTH,
        analytic_ridge="auto",
        partition="dirichlet",
        beta=0.05,
    )
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    method._final_features = lambda data, task: pixel_features(data.images)
    state, clients, chosen, everything = method.initial_state(), 3, [], []
    for task in data.stream:
        parts = [data.client_train_set(task, c, clients) for c in range(clients)]
        updates = [
            over_the_wire(method.train_client(state, part, task, 10 + c), "float16")
            for c, part in enumerate(parts)
        ]
        for update in updates:
            validate_update(state, update, task, method)
        state = method.merge(state, updates)
        hidden = [project(pixel_features(part.images), method.projection) for part in parts]
        labels = [torch.as_tensor(part.labels) for part in parts]
        held, start = [], 0
        for c, features in enumerate(hidden):
            held.append(held_out_samples(len(features), 10 + c) + start)
            start += len(features)
        targets = torch.nn.functional.one_hot(torch.cat(labels), method.num_classes).double()
        expected = ranpac_errors(torch.cat(hidden), targets, torch.cat(held))
        assert state[HELD_SAMPLES][0] == sum(len(h) for h in held) > 0
        np.testing.assert_allclose(method.held_out_errors(state, task), expected, rtol=1e-6)
        state = method.end_task(state, task)
        chosen.append(state[RIDGE][0])
        assert chosen[-1] == RIDGE_CANDIDATES[np.argmin(expected)]
        everything.append((torch.cat(hidden), torch.cat(labels)))
    hidden = torch.cat([h for h, _ in everything])
    targets = torch.nn.functional.one_hot(torch.cat([y for _, y in everything]), method.num_classes)
    regularized = hidden.T @ hidden + chosen[-1] * torch.eye(WIDTH).double()
    weights = torch.linalg.solve(regularized, hidden.T @ targets.double()).numpy()
    np.testing.assert_allclose(method.ridge_weights(state).numpy(), weights, rtol=1e-7, atol=1e-12)


def test_auto_ridge_bad_values_and_forged_held_out_counts_are_refused(tiny_config):
    with pytest.raises(ConfigError, match="'analytic-ridge': expected a number or 'auto'"):
        tiny_config(method="analytic", analytic_ridge="best")
    config = tiny_config(method="analytic", analytic_projection_dim=WIDTH, analytic_ridge="auto")
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    task, state = data.stream.task(0), method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    validate_update(state, update, task, method)
    forged = copy.deepcopy(update)
    forged.arrays[HELD_SAMPLES] = np.array([update.num_examples + 1.0])
    with pytest.raises(RejectedUpdate, match="is not a count of this client's samples"):
        validate_update(state, forged, task, method)
    one_short = copy.deepcopy(update)  # a genuine count, but not the held-out share
    one_short.arrays[HELD_SAMPLES] = update.arrays[HELD_SAMPLES] - 1
    with pytest.raises(RejectedUpdate, match="is not a count of this client's samples held out"):
        validate_update(state, one_short, task, method)
    grown = copy.deepcopy(update)  # a Gram, but more than a subset of the task's samples
    grown.arrays["task-held-gram"] *= 100
    with pytest.raises(RejectedUpdate, match="allows for a subset"):
        validate_update(state, grown, task, method)
    inflated = copy.deepcopy(update)
    inflated.arrays["task-held-cross"] += 1e3
    with pytest.raises(RejectedUpdate, match="an entry larger than"):
        validate_update(state, inflated, task, method)
