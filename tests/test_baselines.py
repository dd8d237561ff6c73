"""The PiLoRA and FedLwF baselines: their losses, frozen LoRA, merges, uploads, short runs."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.losses.distillation import distillation_loss
from multifcl.losses.orthogonality import orthogonality_loss
from multifcl.methods.lwf import TEACHER_PREFIX
from multifcl.methods.pilora import (
    PROTOTYPES,
    SCHEDULE,
    DistanceClassifier,
    PiLoRAMethod,
    cosine_round_factor,
    prototype_distances,
    reweighting_weights,
)
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.update_validation import RejectedUpdate, validate_update
from protocol.messages import CONFIG
from tests.conftest import run_in_process, sent_states
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
    absolute = orthogonality_loss(current, overlapping, power=1)  # PiLoRA's official form
    assert absolute.item() == pytest.approx(0.6 + 0.5)
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
        method._task_classes, method._distilled = range(4), torch.arange(0)  # task 1
        plain = method._loss(pixels, labels, 4)
        method._task_classes, method._distilled = range(2, 4), torch.arange(2)  # task 2
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
def _pilora(tiny_config, **changes):
    experiment = load_experiment(tiny_config(method="pilora", **changes))
    return experiment.method, experiment.data, experiment.data.stream


def test_pilora_lora_sits_in_the_first_blocks_query_and_value_only(tiny_config):
    method = _pilora(tiny_config)[0]
    wrapped = [
        name for name, module in method.encoder.named_modules() if module in method.lora.layers
    ]
    assert len(wrapped) == 2 and all(".layers.0." in name for name in wrapped)
    assert sorted(name.rsplit(".", 1)[-1] for name in wrapped) == ["q_proj", "v_proj"]
    first_block = set(method.encoder.blocks[0].modules())
    assert all(layer in first_block for layer in method.lora.layers)
    assert all(a.shape[0] == 4 for a in method.lora.down_projections(0))  # rank 4


def test_pilora_global_model_is_w_plus_summed_factors_of_task_1_and_task_t(tiny_config):
    method = _pilora(tiny_config)[0]
    state = method.initial_state()
    generator = torch.Generator().manual_seed(0)
    for key in state:
        if key.startswith("adapter/"):
            state[key] = torch.randn(state[key].shape, generator=generator).numpy()
    layer = method.lora.layers[0]  # block 0's query projection

    def factors(index):
        name = f"set-{index}"
        return (
            torch.from_numpy(
                state[next(k for k in state if f"lora_A.{name}." in k and ".q_proj." in k)]
            ),
            torch.from_numpy(
                state[next(k for k in state if f"lora_B.{name}." in k and ".q_proj." in k)]
            ),
        )

    x = torch.randn(3, 5, layer.in_features, generator=generator)
    (a_0, b_0), (a_1, b_1) = factors(0), factors(1)
    for task, expected_update in ((1, (b_0 + b_1) @ (a_0 + a_1)), (0, b_0 @ a_0)):
        state[SCHEDULE] = np.array([task, 2], np.int64)
        method.classifier(state)  # loads the global model
        with torch.no_grad():
            expected = layer.base_layer(x) + x @ expected_update.T
            assert torch.allclose(layer(x), expected, atol=1e-5)
    assert not torch.allclose(b_0 @ a_0 + b_1 @ a_1, (b_0 + b_1) @ (a_0 + a_1), atol=1e-3)


def test_pilora_local_model_uses_the_current_tasks_lora_only(tiny_config):
    method, data, stream = _pilora(tiny_config)
    state = method.initial_state()
    for key in state:
        if key.startswith("adapter/set-0/") and "lora_B" in key:
            state[key] = np.full_like(state[key], 0.5)  # a trained task-1 set
    seen = []
    method.loss = lambda features, *rest: seen.append(features) or features.sum() * 0
    task = stream.task(1)
    method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    images = data.client_train_set(task, 0, 2).images
    method.lora.activate([])
    with torch.no_grad():
        plain = method.encoder(method.encoder.preprocess(images))
    # set 1 is untrained (B = 0): the local model is the backbone itself, set 0 is ignored
    assert torch.allclose(torch.sort(torch.cat(seen), 0)[0], torch.sort(plain, 0)[0], atol=1e-5)


def test_pilora_distances_and_logits_on_a_hand_made_example():
    features = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    prototypes = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    distances = prototype_distances(features, prototypes)  # sqrt(||f - c||^2 / 4)
    expected = torch.tensor([[1.0, 1.0], [math.sqrt(4 / 4), 0.0]])
    assert torch.allclose(distances, expected, atol=1e-5)
    classifier = DistanceClassifier(torch.nn.Identity(), prototypes)
    assert torch.allclose(classifier(features), -expected, atol=1e-5)


def test_pilora_loss_is_cross_entropy_pull_l1_and_absolute_orthogonality(tiny_config):
    method, _, stream = _pilora(tiny_config)
    torch.manual_seed(0)
    for index in (0, 1):
        for a in method.lora.down_projections(index):
            a.data.normal_()
    features, prototypes = torch.randn(4, 8), torch.randn(10, 8)
    target = torch.tensor([0, 1, 2, 3])
    distances = prototype_distances(features, prototypes)
    cross_entropy = torch.nn.functional.cross_entropy(-distances, target)
    pull = distances[torch.arange(4), target].mean()
    current = method.lora.down_projections(1)
    l1 = sum(a.abs().sum() for a in current)
    ortho = sum((a @ b.T).abs().sum() for a, b in zip(current, method.lora.down_projections(0)))
    by_hand = cross_entropy + 0.001 * pull + 0.01 * l1 + 0.5 * ortho
    assert method.loss(features, target, prototypes, stream.task(1)).item() == pytest.approx(
        by_hand.item(), rel=1e-5
    )
    first_task = (
        cross_entropy
        + 0.001 * pull
        + 0.01 * sum(a.abs().sum() for a in method.lora.down_projections(0))
    )
    assert method.loss(features, target, prototypes, stream.task(0)).item() == pytest.approx(
        first_task.item(), rel=1e-5
    )


def test_pilora_trains_lora_and_prototypes_with_adam_at_their_own_rates(tiny_config):
    method, data, stream = _pilora(
        tiny_config, rounds_per_task=4, pilora_lora_lr=1e-4, pilora_prototype_lr=3e-3
    )
    built = []
    make = method.local_optimizer
    method.local_optimizer = lambda *args: built.append(make(*args)) or built[-1]
    state = method.initial_state()
    task = stream.task(1)
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, 0)
    optimizer = built[-1]
    assert isinstance(optimizer, torch.optim.Adam)
    lora, prototypes = optimizer.param_groups
    assert (lora["name"], lora["lr"], lora["weight_decay"]) == ("lora", 1e-4, 1e-5)
    assert (prototypes["name"], prototypes["lr"]) == ("prototypes", 3e-3)
    set_1 = {id(p) for p in method.lora.set_parameters(1).values()}
    assert {id(p) for p in lora["params"]} == set_1
    assert prototypes["params"][0].shape == (len(task.classes), state[PROTOTYPES].shape[1])
    # only the task's prototype rows move, all of them
    merged = method.merge(state, [update])
    changed = np.abs(merged[PROTOTYPES] - state[PROTOTYPES]).sum(1) > 0
    assert changed.tolist() == [c in task.classes for c in range(len(changed))]
    # the rates follow a cosine over the task's rounds; rounds 1 and 2 share the base rate
    factors = [cosine_round_factor(r, 4) for r in range(4)]
    assert factors == pytest.approx([1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5])
    second = method.train_client(merged, data.client_train_set(task, 0, 2), task, 0)
    method.train_client(method.merge(merged, [second]), data.client_train_set(task, 0, 2), task, 0)
    assert [o.param_groups[0]["lr"] for o in built] == pytest.approx(
        [1e-4 * f for f in factors[:3]]
    )


def test_pilora_reweighting_is_a_softmax_over_clients_at_temperature_0_2():
    prototypes = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    holder_means = np.array([[0.0, 0.0], [0.0, 2.0]])  # two of the clients hold the class
    summed = np.array([0 + 2, 3 + math.sqrt(13), 1 + 1])  # distances to both means
    inverse = 1 / summed
    normalised = (inverse - inverse.min()) / (inverse.max() - inverse.min())
    expected = np.exp(normalised / 0.2) / np.exp(normalised / 0.2).sum()
    assert reweighting_weights(prototypes, holder_means) == pytest.approx(expected)
    assert expected[0] == pytest.approx(expected[2]) and expected[1] < 0.01
    assert reweighting_weights(prototypes, holder_means[:0]) == pytest.approx([1 / 3] * 3)


def test_pilora_merge_reweights_prototypes_and_averages_the_task_lora(tiny_config):
    method, data, stream = _pilora(tiny_config)
    state = method.initial_state()
    task = stream.task(0)
    updates = [
        method.train_client(state, data.client_train_set(task, c, 2), task, c) for c in (0, 1)
    ]
    merged = method.merge(state, updates)
    weights = PiLoRAMethod.prototype_weights(updates)
    for i, c in enumerate(task.classes):
        by_hand = sum(
            w[i] * u.arrays[PROTOTYPES][i].astype(np.float64) for w, u in zip(weights, updates)
        )
        assert np.allclose(merged[PROTOTYPES][c], by_hand / sum(w[i] for w in weights), atol=1e-6)
    sizes = [u.num_examples for u in updates]
    for key in (k for k in updates[0].arrays if k.startswith(LORA_SET_0)):
        fedavg = sum(n * u.arrays[key] for n, u in zip(sizes, updates)) / sum(sizes)
        assert np.allclose(merged[key], fedavg, atol=1e-7)
    assert merged[SCHEDULE].tolist() == [0, 1]
    plain = _pilora(tiny_config, pilora_reweight=False)[0]
    by_count = plain.merge(state, updates)
    counts = [u.arrays["class-counts"] for u in updates]
    c = task.classes.start
    expected = sum(n[0] * u.arrays[PROTOTYPES][0] for n, u in zip(counts, updates)) / sum(
        n[0] for n in counts
    )
    assert np.allclose(by_count[PROTOTYPES][c], expected, atol=1e-6)


def test_earlier_lora_stays_bit_identical_and_orthogonality_pulls_the_new_one_away(tiny_config):
    method, data, stream = _pilora(
        tiny_config, local_epochs=3, pilora_lora_lr=0.05, pilora_ortho_lambda=5.0
    )
    state = method.initial_state()
    first = method.train_client(
        state, data.client_train_set(stream.task(0), 0, 1), stream.task(0), 1
    )
    assert any(k.startswith(LORA_SET_0) for k in first.arrays)
    assert not any(k.startswith("adapter/set-1/") for k in first.arrays)
    state = method.merge(state, [first])
    set_0 = {k: v.copy() for k, v in state.items() if k.startswith(LORA_SET_0)}
    assert any(np.abs(v).sum() > 0 for k, v in set_0.items() if "lora_B" in k)  # set 0 learned

    def ortho():
        earlier = [method.lora.down_projections(0)]
        return orthogonality_loss(method.lora.down_projections(1), earlier, 1).item()

    before = ortho()
    second = method.train_client(
        state, data.client_train_set(stream.task(1), 0, 1), stream.task(1), 2
    )
    after = ortho()
    assert not any(k.startswith(LORA_SET_0) for k in second.arrays)
    in_model = {"adapter/" + k: v for k, v in method.lora.set_parameters(0).items()}
    assert all(torch.equal(in_model[k].cpu(), torch.from_numpy(v)) for k, v in set_0.items())
    state = method.merge(state, [second])
    assert all(np.array_equal(state[k], v) for k, v in set_0.items())
    assert after < 0.75 * before


@pytest.mark.parametrize(
    "key, value",
    [
        ("head", "etf"),
        ("optimizer", "adamw"),
        ("lr-schedule", "tempbalance"),
        ("lr", 1e-5),
        ("weight-decay", 0.1),
    ],
)
def test_pilora_refuses_plugins_that_would_change_its_training_in_one_line(key, value):
    run_config = {"method": "pilora", key: value}
    message = one_line_error(ConfigError, lambda: ExperimentConfig.from_run_config(run_config))
    assert message.startswith(f"run config key '{key}': pilora ")


# --- both: config, uploads, plug-ins, whole runs -------------------------------------------
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("pilora-rank", 0, "'pilora-rank': must be > 0"),
        ("pilora-ortho-lambda", -1.0, "'pilora-ortho-lambda': must be >= 0"),
        ("pilora-pull-lambda", -0.5, "'pilora-pull-lambda': must be >= 0"),
        ("pilora-reweight", "yes", "'pilora-reweight': expected true or false"),
        ("pilora-l1-lambda", -0.1, "'pilora-l1-lambda': must be >= 0"),
        ("pilora-prototype-lr", 0.0, "'pilora-prototype-lr': must be > 0"),
        ("pilora-lora-lr", -1e-5, "'pilora-lora-lr': must be > 0"),
        ("pilora-weight-decay", -1.0, "'pilora-weight-decay': must be >= 0"),
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
        ("pilora", {"partition": "dirichlet", "beta": 0.3}),
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
        (m.content[CONFIG]["task"], m.content[CONFIG]["round"], state)
        for m, state in sent_states(grid)
        if m.metadata.dst_node_id == first
    ]


def test_pilora_three_tasks_in_process(tmp_path):
    config = _three_task_config(tmp_path, "pilora")
    metrics, grid = run_in_process(config, base_dir=tmp_path)
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
    assert (config.output_dir / "adapters" / "lora-global").is_dir()


def test_lwf_three_tasks_in_process_with_the_previous_task_as_teacher(tmp_path):
    config = _three_task_config(tmp_path, "lwf")
    metrics, grid = run_in_process(config, base_dir=tmp_path)
    assert [sum(a is not None for a in row) for row in metrics["accuracy_matrix"]] == [1, 2, 3]
    sent = _sent_states(grid)
    for task_start in (0, 2, 4):  # every round's teacher: the model at the task's start
        start_model = sent[task_start][2]
        for _, _, state in sent[task_start : task_start + 2]:
            teacher_keys = [k for k in state if k.startswith(TEACHER_PREFIX)]
            assert teacher_keys and len(teacher_keys) * 2 == len(state)  # no other key
            for key in teacher_keys:
                assert np.array_equal(state[key], start_model[key.removeprefix(TEACHER_PREFIX)])
        assert not np.array_equal(
            sent[task_start + 1][2]["head.weight"], start_model["head.weight"]
        )
    final = latest_checkpoint(config.output_dir).state  # the last task's end: its own teacher
    model = {k: v for k, v in final.items() if not k.startswith(TEACHER_PREFIX)}
    assert all(np.array_equal(final[TEACHER_PREFIX + k], v) for k, v in model.items())


@pytest.mark.parametrize(
    "name", ["pilora", "lwf", "fedproto", "analytic", "l2p", "coda-prompt", "lorm"]
)
def test_presets_are_valid_run_configs(name):
    preset = Path(__file__).resolve().parents[1] / "configs" / "baselines" / f"{name}.toml"
    config = ExperimentConfig.from_run_config(tomllib.loads(preset.read_text()))
    assert config.method == name


def test_impossible_values_are_rejected_by_the_methods_own_checks(tiny_config):
    experiment = load_experiment(tiny_config(method="pilora"))
    method, data = experiment.method, experiment.data
    task = data.stream.task(0)
    state = method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, seed=0)
    validate_update(state, update, task, method)  # the genuine update passes
    update.arrays[SCHEDULE] = np.full_like(update.arrays[SCHEDULE], 7)
    with pytest.raises(RejectedUpdate, match=SCHEDULE):
        validate_update(state, update, task, method)
