"""LoRM: the server's merge is the least-squares fit on the union of the clients' data, one
LoRA factor a round; the tasks' LoRA are merged the same way; impossible uploads refused."""

import copy

import numpy as np
import pytest
import torch

from multifcl.experiment import load_experiment
from multifcl.methods.analytic import pack
from multifcl.methods.lorm import (
    FACTOR_A,
    FACTOR_B,
    HEAD_GRAM,
    HEAD_ROWS,
    HEAD_WEIGHT,
    TASK_GRAM,
    merge_down,
    merge_up,
    regmean,
    shrink,
)
from multifcl.update_validation import RejectedUpdate, validate_update
from tests.conftest import run_in_process, sent_states

SAMPLES = (7, 11, 5)  # three clients of different sizes


def client_inputs(width: int, seed: int = 0, per_sample: int = 1) -> list[torch.Tensor]:
    """Each client's inputs (rows), `per_sample` x its sample count of them."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n * per_sample, width, generator=generator, dtype=torch.float64)
        for n in SAMPLES
    ]


def union_fit(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> torch.Tensor:
    """W minimising ||X W^T - Y|| on the union of the clients' rows (a direct solve)."""
    solution = torch.linalg.lstsq(torch.cat(inputs), torch.cat(outputs)).solution
    return solution.T


def test_merge_equals_least_squares_on_a_tiny_linear_case():
    """Three clients with linear data: the merged A (B shared) and the merged B (A shared)
    are the least-squares fits on the union of the clients' inputs, to float tolerance."""
    width, rank, out = 6, 3, 5
    inputs = client_inputs(width)
    grams = [x.T @ x for x in inputs]
    generator = torch.Generator().manual_seed(1)
    downs = [torch.randn(rank, width, generator=generator, dtype=torch.float64) for _ in SAMPLES]
    ups = [torch.randn(out, rank, generator=generator, dtype=torch.float64) for _ in SAMPLES]

    expected_down = union_fit(inputs, [x @ a.T for x, a in zip(inputs, downs)])
    torch.testing.assert_close(merge_down(downs, grams), expected_down)

    shared = downs[0]
    projected = [x @ shared.T for x in inputs]  # B's inputs: A x
    expected_up = union_fit(projected, [z @ b.T for z, b in zip(projected, ups)])
    torch.testing.assert_close(merge_up(ups, shared, grams), expected_up)
    # the whole layer: B merged on A x is the best W = B' A over the union, B' free
    layer = union_fit(projected, [x @ (b @ shared).T for x, b in zip(inputs, ups)])
    torch.testing.assert_close(merge_up(ups, shared, grams), layer)


def test_shrunk_merge_is_the_regmean_formula():
    """alpha < 1: (sum_k W_k G~_k)(sum_k G~_k)^-1, G~ = alpha G + (1 - alpha) diag(G)."""
    inputs = client_inputs(4, seed=2)
    weights = [torch.full((2, 4), float(k + 1), dtype=torch.float64) for k in range(3)]
    grams = [x.T @ x for x in inputs]
    shrunk = [0.3 * g + 0.7 * torch.diag(torch.diagonal(g)) for g in grams]
    expected = sum(w @ g for w, g in zip(weights, shrunk)) @ torch.linalg.inv(sum(shrunk))
    torch.testing.assert_close(regmean(weights, [shrink(g, 0.3) for g in grams]), expected)


@pytest.fixture
def lorm(tiny_config):
    experiment = load_experiment(tiny_config(method="lorm", lorm_rank=4, lorm_regmean_alpha=1.0))
    return experiment.method, experiment.data


def hand_made_updates(method, data, state, task, inputs, seed: int):
    """Genuine-shaped updates whose every Gram is X_k^T X_k of `inputs` and whose trained
    factor and head rows are random."""
    template = method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    generator = torch.Generator().manual_seed(seed)
    updates = []
    for x in inputs:
        update = copy.deepcopy(template)
        update.num_examples = len(x)
        for key, value in update.arrays.items():
            if key.startswith((FACTOR_A, FACTOR_B, HEAD_ROWS)):
                noise = torch.randn(value.shape, generator=generator)
                update.arrays[key] = noise.numpy().astype(value.dtype)
            elif key.startswith(TASK_GRAM) or key == HEAD_GRAM:
                update.arrays[key] = pack(x.T @ x / len(x)).numpy()  # per sample
        updates.append(update)
    return updates


def test_the_methods_merge_is_the_least_squares_fit_in_both_rounds(lorm):
    """Through the method (packed Grams over the wire, shared query/value Grams): round 1
    merges every B, round 2 every A, and the task's head rows, each the union's fit."""
    method, data = lorm
    task = data.stream.task(0)
    state = method.initial_state()
    inputs = client_inputs(method.backbone.feature_dim, seed=3, per_sample=10)  # full rank
    for factor in (FACTOR_B, FACTOR_A):
        updates = hand_made_updates(method, data, state, task, inputs, seed=len(factor))
        for update in updates:
            validate_update(state, update, task, method)
        merged = method.merge(state, updates)
        for index in range(len(method.layers)):
            key = factor + str(index)
            sent = [torch.from_numpy(u.arrays[key]).double() for u in updates]
            if factor == FACTOR_A:
                outputs = [x @ a.T for x, a in zip(inputs, sent)]
                expected = union_fit(inputs, outputs)
            else:
                down = torch.from_numpy(state[FACTOR_A + str(index)]).double()
                projected = [x @ down.T for x in inputs]
                expected = union_fit(projected, [z @ b.T for z, b in zip(projected, sent)])
            torch.testing.assert_close(
                torch.from_numpy(merged[key]).double(), expected, rtol=1e-5, atol=1e-5
            )
        rows = [torch.from_numpy(u.arrays[HEAD_ROWS]).double() for u in updates]
        expected = union_fit(inputs, [x @ r.T for x, r in zip(inputs, rows)])
        head = torch.from_numpy(merged[HEAD_WEIGHT][task.classes.start : task.classes.stop])
        torch.testing.assert_close(head.double(), expected, rtol=1e-5, atol=1e-5)
        state = merged


def test_tasks_are_merged_by_their_grams_and_the_next_task_starts_fresh(lorm):
    """After task 1 (full-rank Gram) the merged delta is B A; task 2 starts with B = 0."""
    method, data = lorm
    task = data.stream.task(0)
    state = method.initial_state()
    inputs = client_inputs(method.backbone.feature_dim, seed=4, per_sample=10)
    for _ in range(2):
        updates = hand_made_updates(method, data, state, task, inputs, seed=5)
        state = method.merge(state, updates)
    after = method.end_task(state, task)
    for index, delta in enumerate(method.merged_deltas(after)):
        up = torch.from_numpy(state[FACTOR_B + str(index)]).double()
        down = torch.from_numpy(state[FACTOR_A + str(index)]).double()
        torch.testing.assert_close(delta, up @ down, rtol=1e-6, atol=1e-6)
        assert not after[FACTOR_B + str(index)].any()
    assert not np.array_equal(after[FACTOR_A + "0"], state[FACTOR_A + "0"])
    assert tuple(after["schedule-position"]) == (1, 0)


def test_wrong_factor_and_impossible_gram_are_rejected(lorm):
    method, data = lorm
    task = data.stream.task(0)
    state = method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    validate_update(state, update, task, method)
    wrong_factor = copy.deepcopy(update)  # round 1 trains B: an A is not expected
    wrong_factor.arrays[FACTOR_A + "0"] = state[FACTOR_A + "0"]
    with pytest.raises(RejectedUpdate, match="unknown key"):
        validate_update(state, wrong_factor, task, method)
    not_a_gram = copy.deepcopy(update)
    gram = not_a_gram.arrays[HEAD_GRAM]
    gram[1] = 10 * (abs(gram).max() + 1)  # an off-diagonal entry beyond Cauchy-Schwarz
    with pytest.raises(RejectedUpdate, match="Cauchy-Schwarz"):
        validate_update(state, not_a_gram, task, method)


def test_lorm_finishes_two_tasks_in_process(tiny_config):
    """The real ClientApp and server loop: round 1 of a task merges B (A as sent), round 2
    merges A (B as merged), and both tasks are evaluated."""
    metrics, grid = run_in_process(tiny_config(method="lorm", lorm_rank=4), num_nodes=2)
    assert len(metrics["accuracy_matrix"]) == 2
    sent = {}
    for message, state in sent_states(grid):
        config = message.content["config"]
        sent.setdefault((config["task"], config["round"]), state)
    for task in (0, 1):
        first, second = sent[(task, 1)], sent[(task, 2)]
        assert not first[FACTOR_B + "0"].any()  # a fresh task: B = 0
        assert first[FACTOR_B + "0"].shape == second[FACTOR_B + "0"].shape
        assert second[FACTOR_B + "0"].any()  # round 1 merged B ...
        assert np.array_equal(first[FACTOR_A + "0"], second[FACTOR_A + "0"])  # ... not A
    assert not np.array_equal(sent[(0, 1)][FACTOR_A + "0"], sent[(1, 1)][FACTOR_A + "0"])
