"""MultiFCL as Algorithm 1 runs it: adapters alone, then experts on the frozen adapters;
prototypes refined once per local epoch; prototypes that move under the optimizer."""

import csv

import numpy as np
import pytest
import torch

from multifcl.config import ConfigError
from multifcl.experiment import load_experiment
from multifcl.heads.prototype_initialization import halve_towards
from multifcl.methods.multifcl import ADAPTER_ROUNDS
from multifcl.optim.local_training import LocalTraining
from protocol.messages import CONFIG
from tests.conftest import run_in_process, sent_states

# a trained prototype row moves by at least 0.3% of its norm in a round of one local epoch
# at the default prototype-lr (raw-norm prototypes at the adapters' rate moved 0.01-0.02%)
MOVES_AT_LEAST = 0.003


def _run(config):
    _, grid = run_in_process(config)
    sent = {}
    for message, state in sent_states(grid):
        key = (message.content[CONFIG]["task"], message.content[CONFIG]["round"])
        sent[key] = state
    with (config.output_dir / "rounds.csv").open() as file:
        rounds = {(int(r["task"]), int(r["round"])): r for r in csv.DictReader(file)}
    return sent, rounds


def _adapters(state):
    return {k: v for k, v in state.items() if k.startswith("adapter/")}


def test_task_one_trains_the_adapters_alone_then_the_experts_on_them_frozen(tiny_config):
    config = tiny_config(method="multifcl", rounds_per_task=3, use_text_init=False)
    sent, rounds = _run(config)
    assert [int(sent[(0, r)][ADAPTER_ROUNDS][0]) for r in (1, 2, 3)] == [0, 1, 2]
    first, second, third = (_adapters(sent[(0, r)]) for r in (1, 2, 3))
    after_task = _adapters(sent[(1, 1)])
    assert all(not np.array_equal(first[k], second[k]) for k in first)  # adapter rounds
    assert all(not np.array_equal(second[k], third[k]) for k in first)
    assert all(np.array_equal(third[k], after_task[k]) for k in first)  # experts: frozen
    # adapter rounds train no prototype; the experts' round and every later one do
    assert rounds[(1, 1)]["prototype_movement"] == rounds[(1, 2)]["prototype_movement"] == ""
    for key in ((1, 3), (2, 1), (2, 3)):
        assert float(rounds[key]["prototype_movement"]) > MOVES_AT_LEAST, key


def test_the_adapter_phase_uploads_class_means_under_the_trained_adapters(tiny_config):
    """While the adapters train alone, the shallow experts learn nothing: every expert's
    rows are the unit class means of the features under the client's trained adapters."""
    experiment = load_experiment(tiny_config(method="multifcl", use_text_init=False))
    method, task = experiment.method, experiment.data.stream.task(0)
    data = experiment.data.client_train_set(task, 0, 1)
    labels = torch.as_tensor(data.labels)
    update = method.train_client(method.initial_state(), data, task, seed=0)
    assert any(key.startswith("adapter/") for key in update.arrays)
    assert "prototype-movement" not in update.metrics
    state = {**method.initial_state(), **_adapters(update.arrays)}
    method.adapters.load(state)
    features = method._encode(data.images)
    for m, feature in enumerate(features):
        for row, c in zip(update.arrays[f"expert-{m}/prototypes"], update.arrays["class-ids"]):
            mean = torch.nn.functional.normalize(feature[labels == c].mean(0), dim=0)
            np.testing.assert_allclose(row, mean.numpy(), atol=1e-5)


def test_no_shallow_expert_loss_reaches_the_adapters_in_their_phase(tiny_config, monkeypatch):
    """While the adapters train alone, only the final expert's loss is computed: the sum of
    the experts' losses and self-distillation are never called."""
    experiment = load_experiment(tiny_config(method="multifcl", use_text_init=False))
    method, task = experiment.method, experiment.data.stream.task(0)
    called = []
    monkeypatch.setattr(method.experts, "loss", lambda *args: called.append("loss"))
    update = method.train_client(
        method.initial_state(), experiment.data.client_train_set(task, 0, 1), task, seed=0
    )
    assert _adapters(update.arrays) and called == []


def test_the_experts_round_sends_no_adapters_and_gets_no_gradient_into_them(tiny_config):
    experiment = load_experiment(tiny_config(method="multifcl", use_text_init=False))
    method, task = experiment.method, experiment.data.stream.task(0)
    data = experiment.data.client_train_set(task, 0, 1)
    state = method.initial_state()
    state[ADAPTER_ROUNDS] = np.array([1], np.int64)  # the adapter phase is over
    before = {k: v.copy() for k, v in _adapters(state).items()}
    update = method.train_client(state, data, task, seed=0)
    assert not _adapters(update.arrays)
    assert update.metrics["prototype-movement"] > MOVES_AT_LEAST
    after = method.adapters.arrays(range(method.adapters.num_sets))
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert method.update_layout(state, task).dense == frozenset()


def test_per_epoch_refinement_halves_towards_the_class_mean(tiny_config):
    assert torch.equal(
        halve_towards(torch.tensor([4.0, 0.0]), torch.tensor([0.0, 2.0])), torch.tensor([2.0, 1.0])
    )
    # fixed prototypes (no experts): three epochs leave init / 8 + 7/8 x the class mean
    config = tiny_config(method="multifcl", use_experts=False, use_self_kd=False, local_epochs=3)
    method = load_experiment(config).method
    init, mean = torch.tensor([[8.0, 0.0]]), torch.tensor([0.0, 8.0])
    method.experts.prototypes = [init]
    method.experts.refine([{0: mean}])
    assert torch.allclose(init, torch.tensor([[1.0, 7.0]]))


def test_joint_schedule_stays_available_for_comparison(tiny_config):
    config = tiny_config(
        method="multifcl",
        task1_schedule="joint",
        prototype_refine="running-mean",
        use_text_init=False,
    )
    sent, rounds = _run(config)
    assert ADAPTER_ROUNDS not in sent[(1, 1)] or not sent[(1, 1)][ADAPTER_ROUNDS].any()
    first, second = _adapters(sent[(0, 1)]), _adapters(sent[(0, 2)])
    assert all(not np.array_equal(first[k], second[k]) for k in first)
    assert float(rounds[(1, 1)]["prototype_movement"]) > 0  # experts train from round 1


def test_prototypes_train_at_their_own_rate(tiny_config):
    config = tiny_config(method="multifcl", lr=0.01, prototype_lr=0.2)
    prototypes = torch.zeros(3, 4, requires_grad=True)
    layer = torch.nn.Linear(4, 4)
    training = LocalTraining(config, layer, 1, extra=[prototypes], extra_lr=0.2)
    training.step(lambda: (layer.weight.sum() + prototypes.sum()) ** 2)
    rates = sorted(group["lr"] for group in training.optimizer.param_groups)
    assert rates == pytest.approx([0.01, 0.2])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rounds_per_task": 1}, "'task1-schedule': 'two-phase' .* rounds-per-task >= 2"),
        ({"task1_schedule": "both"}, "'task1-schedule'"),
        ({"prototype_lr": 0.0}, "'prototype-lr': must be > 0"),
        ({"prototype_refine": "mean"}, "'prototype-refine'"),
        ({"fraction_train": 0.5}, "'fraction-train': multifcl's 'two-phase' .* unsampled"),
    ],
)
def test_bad_schedule_inputs_are_one_line(tiny_config, changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        tiny_config(method="multifcl", **changes)
    assert "\n" not in str(error.value)
    if "rounds_per_task" in changes:  # without adapters there is only one phase
        tiny_config(method="multifcl", use_adapters=False, **changes)
