"""The PiLoRA and FedLwF baselines: their losses, frozen LoRA, merges, uploads, short runs."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.client_app import train
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.losses.distillation import distillation_loss
from multifcl.losses.orthogonality import orthogonality_loss
from multifcl.methods import ClientUpdate
from multifcl.methods.lwf import TEACHER_PREFIX, TEACHER_TASK
from multifcl.methods.pilora import ENTROPY, PROTOTYPES
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from strategies.records import ARRAYS, CONFIG, record_to_state
from strategies.update_validation import RejectedUpdate, validate_update
from tests.test_config import one_line_error
from tests.test_data_sources import make_image_folder

LORA_SET_0 = "adapter/set-0/"


# --- losses --------------------------------------------------------------------------------
def test_orthogonality_is_zero_for_orthogonal_factors_and_positive_otherwise():
    basis = torch.eye(6)
    current = [basis[:2].clone().requires_grad_(True), basis[:2, :, None, None].clone()]
    orthogonal = [[basis[2:4], basis[4:6, :, None, None]]]  # a conv factor: r x in x 1 x 1
    assert orthogonality_loss(current, orthogonal).item() == 0.0
    assert orthogonality_loss(current, []).item() == 0.0  # the first task has no earlier one
    overlapping = [[torch.tensor([[0.6, 0.0, 0.8, 0, 0, 0], [0, -0.5, 0, 0, 0, 0]]), basis[2:4]]]
    loss = orthogonality_loss(current, overlapping)
    assert loss.item() == pytest.approx(0.6**2 + 0.5**2)  # ||A_t A_j^T||_F^2
    loss.backward()
    assert current[0].grad.abs().sum() > 0  # the current factor is pushed away
    with pytest.raises(ValueError, match="2 current LoRA layers but 1 earlier"):
        orthogonality_loss(current, [[basis[2:4]]])


def test_distillation_on_a_hand_made_example():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax [3/4, 1/4] at T = 1
    by_hand_t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(by_hand_t1, abs=1e-6)
    q = math.sqrt(3.0) / (1.0 + math.sqrt(3.0))  # softmax of the teacher at T = 2
    by_hand_t2 = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(by_hand_t2, abs=1e-6)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    distillation_loss(student, teacher, 2.0).backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # the student moves towards the teacher


@pytest.mark.parametrize("ce_classes", ["task", "seen"])
def test_lwf_loss_adds_distillation_on_old_classes_only(ce_classes, tiny_config):
    config = tiny_config(method="lwf", lwf_lambda=0.5, lwf_ce_classes=ce_classes)
    method = load_experiment(config).method
    torch.manual_seed(0)
    pixels = method.backbone.preprocess(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    labels = torch.tensor([2, 3, 2, 3])
    with torch.no_grad():
        for parameter in method.teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        method._old_classes = 0
        plain = method._loss(pixels, labels, 4)
        method._old_classes = 2
        with_teacher = method._loss(pixels, labels, 4)
        student, teacher = method.model(pixels), method.teacher(pixels)
        plain_by_hand = torch.nn.functional.cross_entropy(student[:, :4], labels)
        if ce_classes == "task":  # task 2 holds classes 2 and 3
            cross_entropy = torch.nn.functional.cross_entropy(student[:, 2:4], labels - 2)
        else:
            cross_entropy = plain_by_hand
        by_hand = (
            cross_entropy
            + (  # PyCIL's form: no T^2
                0.5
                * torch.nn.functional.kl_div(
                    torch.log_softmax(student[:, :2] / 2, 1),
                    torch.log_softmax(teacher[:, :2] / 2, 1),
                    log_target=True,
                    reduction="batchmean",
                )
            )
        )
        method.teacher.head.bias[2:] += 5.0  # new classes' teacher logits do not matter
        unchanged = method._loss(pixels, labels, 4)
    assert plain.item() == pytest.approx(plain_by_hand.item(), rel=1e-6)  # task 1: no teacher
    assert with_teacher.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert with_teacher.item() > cross_entropy.item()  # the teacher disagrees a little
    assert unchanged.item() == pytest.approx(with_teacher.item(), rel=1e-6)


# --- PiLoRA --------------------------------------------------------------------------------
def test_earlier_lora_stays_bit_identical_and_orthogonality_pulls_the_new_one_away(tiny_config):
    config = tiny_config(
        method="pilora",
        optimizer="msam-adamw",  # weight decay and perturbation would touch any optimized tensor
        weight_decay=0.1,
        lr=0.05,
        local_epochs=3,
        pilora_ortho_lambda=5.0,
    )
    experiment = load_experiment(config)
    method, data, stream = experiment.method, experiment.data, experiment.data.stream
    state = method.initial_state()
    first = method.train_client(
        state, data.client_train_set(stream.task(0), 0, 1), stream.task(0), 1
    )
    assert any(k.startswith(LORA_SET_0) for k in first.arrays)
    assert not any(k.startswith("adapter/set-1/") for k in first.arrays)
    state = method.merge(state, [first])
    set_0 = {k: v.copy() for k, v in state.items() if k.startswith(LORA_SET_0)}
    assert any(np.abs(v).sum() > 0 for k, v in set_0.items() if "lora_B" in k)  # set 0 learned

    method._load_adapters(state)
    before = orthogonality_loss(method.down_projections(1), [method.down_projections(0)]).item()
    second = method.train_client(
        state, data.client_train_set(stream.task(1), 0, 1), stream.task(1), 2
    )
    after = orthogonality_loss(method.down_projections(1), [method.down_projections(0)]).item()
    assert not any(k.startswith(LORA_SET_0) for k in second.arrays)
    in_model = method._adapter_parameters([0])
    assert all(torch.equal(in_model[k].cpu(), torch.from_numpy(v)) for k, v in set_0.items())
    state = method.merge(state, [second])
    assert all(np.array_equal(state[k], v) for k, v in set_0.items())
    assert after < 0.5 * before


def test_pilora_merge_weighs_prototypes_by_count_and_confidence(tiny_config):
    method = load_experiment(tiny_config(method="pilora")).method
    state = method.initial_state()
    dim = state[PROTOTYPES].shape[1]
    rows = [np.full((1, dim), 1.0, np.float32), np.full((1, dim), 4.0, np.float32)]
    entropies = [np.zeros((1, 1), np.float32), np.full((1, 1), math.log(2.0), np.float32)]
    updates = [
        ClientUpdate(
            {
                "class-ids": np.array([3]),
                "class-counts": np.array([2.0], np.float32),
                PROTOTYPES: row,
                ENTROPY: entropy,
            },
            num_examples=2,
        )
        for row, entropy in zip(rows, entropies)
    ]
    merged = method.merge(state, updates)
    assert np.allclose(merged[PROTOTYPES][3], (2 * 1.0 + 2 * 0.5 * 4.0) / (2 + 2 * 0.5))
    assert merged[ENTROPY][3, 0] == pytest.approx(math.log(2.0) / 2)
    assert merged["class-counts"][3] == 4.0 and not merged[PROTOTYPES][[0, 1, 2, 4]].any()
    plain = load_experiment(tiny_config(method="pilora", pilora_reweight=False)).method
    updates = [
        ClientUpdate({k: v for k, v in u.arrays.items() if k != ENTROPY}, 2) for u in updates
    ]
    assert np.allclose(plain.merge(plain.initial_state(), updates)[PROTOTYPES][3], 2.5)


def test_pilora_needs_tempbalance_layers_and_says_so_in_one_line(tiny_config):
    message = one_line_error(
        ConfigError,
        lambda: load_experiment(tiny_config(method="pilora", lr_schedule="tempbalance")),
    )
    assert message.startswith("run config key 'lr-schedule': tempbalance needs")


# --- both: config, uploads, plug-ins, whole runs -------------------------------------------
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("pilora-rank", 0, "'pilora-rank': must be > 0"),
        ("pilora-ortho-lambda", -1.0, "'pilora-ortho-lambda': must be >= 0"),
        ("pilora-pull-lambda", -0.5, "'pilora-pull-lambda': must be >= 0"),
        ("pilora-reweight", "yes", "'pilora-reweight': expected true or false"),
        ("lwf-temperature", 0.0, "'lwf-temperature': must be > 0"),
        ("lwf-lambda", -1.0, "'lwf-lambda': must be >= 0"),
        ("lwf-lambda", "high", "'lwf-lambda': expected a number"),
        ("lwf-ce-classes", "old", "'lwf-ce-classes': unknown value 'old' (choose from task, seen)"),
    ],
)
def test_bad_baseline_keys_are_one_line(key, value, expected):
    message = one_line_error(ConfigError, lambda: ExperimentConfig.from_run_config({key: value}))
    assert expected in message


@pytest.mark.parametrize(
    "method, changes",
    [
        ("pilora", {}),
        ("pilora", {"head": "etf", "optimizer": "sam"}),
        ("lwf", {"optimizer": "msam", "lr_schedule": "cosine"}),
        ("lwf", {"head": "etf", "partition": "dirichlet", "beta": 0.3}),
    ],
)
def test_uploads_follow_the_update_conventions(method, changes, tiny_config):
    experiment = load_experiment(tiny_config(method=method, **changes))
    method, data, task = experiment.method, experiment.data, experiment.data.stream.task(1)
    state = method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, seed=4)
    assert math.isfinite(update.train_loss)
    k = len(update.arrays.get("class-ids", []))
    for key, value in update.arrays.items():
        assert np.isfinite(value).all(), key
        if key == "class-ids":
            assert value.dtype == np.int64 and set(value) <= set(task.classes)
        elif key == "class-counts":
            assert value.dtype == np.float32 and value.shape == (k,)
        elif state[key].shape == value.shape:
            assert state[key].dtype == value.dtype, key
        else:  # per-class rows of a (num_classes, d) state matrix
            assert value.shape == (k, state[key].shape[1]) and value.dtype == state[key].dtype
    validate_update(state, update, task, method)  # what the server checks before merging
    validate_update(state, update, task)  # and from the conventions alone
    merged = method.merge(state, [update])
    assert set(merged) == set(state)
    assert all(merged[key].shape == state[key].shape for key in state)


def _three_task_config(tmp_path, method, **changes):
    root = make_image_folder(tmp_path / "data", ("a", "b", "c", "d", "e", "f"), per_class=6)
    return ExperimentConfig(
        method=method,
        dataset="imagefolder",
        data_root=root,
        backbone="vit-tiny",
        num_tasks=3,
        rounds_per_task=2,
        batch_size=8,
        partition="iid",
        output_dir=tmp_path / "run",
        **changes,
    )


def _sent_states(grid):
    """(task, round, state) of every message the server sent to the first node."""
    first = min(grid.contexts)
    return [
        (m.content[CONFIG]["task"], m.content[CONFIG]["round"], record_to_state(m.content[ARRAYS]))
        for m in grid.sent
        if m.metadata.dst_node_id == first
    ]


def test_pilora_three_tasks_in_process(tmp_path):
    config = _three_task_config(tmp_path, "pilora")
    grid = InProcessGrid(train, config.to_run_config(), num_nodes=2)
    metrics = run_continual_learning(grid, config, base_dir=tmp_path)
    matrix = metrics["accuracy_matrix"]
    assert [sum(a is not None for a in row) for row in matrix] == [1, 2, 3]
    sent = _sent_states(grid)
    assert [(t, r) for t, r, _ in sent] == [(t, r) for t in range(3) for r in (1, 2)]
    for frozen_set, first_frozen in ((0, 2), (1, 4)):  # set t is frozen from task t + 1 on
        prefix = f"adapter/set-{frozen_set}/"
        reference = sent[first_frozen][2]
        for _, _, state in sent[first_frozen:]:
            assert all(
                np.array_equal(v, reference[k]) for k, v in state.items() if k.startswith(prefix)
            )
    assert (config.output_dir / "adapters" / "lora-set-2").is_dir()


def test_lwf_three_tasks_in_process_with_the_previous_task_as_teacher(tmp_path):
    config = _three_task_config(tmp_path, "lwf")
    grid = InProcessGrid(train, config.to_run_config(), num_nodes=2)
    metrics = run_continual_learning(grid, config, base_dir=tmp_path)
    assert [sum(a is not None for a in row) for row in metrics["accuracy_matrix"]] == [1, 2, 3]
    sent = _sent_states(grid)
    assert [int(s[TEACHER_TASK][0]) for _, _, s in sent] == [0, 0, 0, 1, 1, 2]
    for task_start in (2, 4):  # round 2 of tasks 2 and 3: teacher = model at the task's start
        start_model, round_2 = sent[task_start][2], sent[task_start + 1][2]
        teacher_keys = [k for k in round_2 if k.startswith(TEACHER_PREFIX)]
        assert teacher_keys
        for key in teacher_keys:
            assert np.array_equal(round_2[key], start_model[key.removeprefix(TEACHER_PREFIX)])
        assert not np.array_equal(round_2["head.weight"], start_model["head.weight"])


@pytest.mark.parametrize("name", ["pilora", "lwf"])
def test_presets_are_valid_run_configs(name):
    preset = Path(__file__).resolve().parents[1] / "configs" / "baselines" / f"{name}.toml"
    config = ExperimentConfig.from_run_config(tomllib.loads(preset.read_text()))
    assert config.method == name


def test_impossible_values_are_rejected_by_the_methods_own_checks(tiny_config):
    for method_name, key, bad in (("lwf", "teacher-task", 7), ("pilora", "prototype-entropy", -1)):
        experiment = load_experiment(tiny_config(method=method_name))
        method, data = experiment.method, experiment.data
        task = data.stream.task(0)
        state = method.initial_state()
        update = method.train_client(state, data.client_train_set(task, 0, 2), task, seed=0)
        validate_update(state, update, task, method)  # the genuine update passes
        update.arrays[key] = np.full_like(update.arrays[key], bad)
        with pytest.raises(RejectedUpdate, match=key):
            validate_update(state, update, task, method)
