"""The server rejects client updates that must not be merged, and merges the rest as before."""

from __future__ import annotations

import copy
import csv
import logging
import re

import numpy as np
import pytest
from flwr.app import Message

from clients.client_app import train
from multifcl.data import Task
from multifcl.experiment import load_experiment
from multifcl.methods import ClientUpdate
from multifcl.methods.base import UpdateLayout
from multifcl.update_validation import (
    MAX_EXAMPLES,
    RejectedUpdate,
    max_update_bytes,
    outlier_updates,
    validate_update,
)
from protocol.messages import CONFIG, content_to_update, update_to_content
from tests.conftest import run_in_process

TASK_1 = Task(0, range(3), range(3))
TASK_2 = Task(1, range(3, 6), range(6))


class DeclaredLayout:
    """Stands in for a method: validation reads its `update_layout` and value check."""

    def __init__(self, layout: UpdateLayout) -> None:
        self.layout = layout

    def update_layout(self, state, task) -> UpdateLayout:
        return self.layout

    def update_value_problem(self, state, update, task) -> str | None:
        return None


# the layouts of the hand-made states below: a prototypes-like method and a FedAvg one
PER_CLASS = DeclaredLayout(
    UpdateLayout(
        rows={"class-counts": "class-counts", "class-means": "prototypes"},
        dense=frozenset({"adapter/w"}),
        feature_rows=frozenset({"class-means"}),
    )
)
DENSE = DeclaredLayout(UpdateLayout(dense=frozenset({"w", "b"})))


# --- unit checks on hand-made states ---------------------------------------------------------
def per_class_state() -> dict:
    """A prototypes-like state (6 classes, width 4) with an adapter weight sent whole."""
    return {
        "prototypes": np.zeros((6, 4), np.float32),
        "class-counts": np.zeros(6, np.float32),
        "adapter/w": np.ones((2, 4), np.float32),
    }


def per_class_update() -> ClientUpdate:
    """A genuine update of TASK_2: classes 3 and 5, 7 samples."""
    arrays = {
        "class-ids": np.array([3, 5], np.int64),
        "class-means": np.arange(8, dtype=np.float32).reshape(2, 4),
        "class-counts": np.array([3.0, 4.0], np.float32),
        "adapter/w": np.full((2, 4), 0.5, np.float32),
    }
    return ClientUpdate(arrays, num_examples=7, train_loss=0.25, metrics={"m": 1.0})


def dense_state() -> dict:
    return {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}


def dense_update() -> ClientUpdate:
    return ClientUpdate({"w": np.ones((3, 2), np.float32), "b": np.ones(3, np.float32)}, 5)


def test_genuine_hand_made_updates_pass_and_float16_is_accepted_for_float32():
    validate_update(per_class_state(), per_class_update(), TASK_2, PER_CLASS)
    validate_update(dense_state(), dense_update(), TASK_1, DENSE)
    half = per_class_update()
    half.arrays = {
        k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in half.arrays.items()
    }
    validate_update(per_class_state(), half, TASK_2, PER_CLASS)


def set_item(key, index, value):
    def corrupt(update):
        update.arrays[key] = update.arrays[key].copy()
        update.arrays[key][index] = value

    return corrupt


def replace(key, value):
    def corrupt(update):
        update.arrays[key] = value

    return corrupt


def delete(key):
    return lambda update: update.arrays.pop(key)


def set_field(name, value):
    return lambda update: setattr(update, name, value)


PER_CLASS_FAULTS = {
    "nan row": (set_item("class-means", (0, 1), np.nan), "'class-means' has 1 non-finite"),
    "inf dense": (set_item("adapter/w", (1, 1), np.inf), "'adapter/w' has 1 non-finite"),
    "row width": (
        replace("class-means", np.zeros((2, 5), np.float32)),
        r"shape \(2, 5\), expected \(2, 4\)",
    ),
    "row count": (
        replace("class-means", np.zeros((3, 4), np.float32)),
        r"shape \(3, 4\), expected \(2, 4\)",
    ),
    "dense shape": (
        replace("adapter/w", np.zeros((4, 2), np.float32)),
        r"'adapter/w' has shape \(4, 2\)",
    ),
    "float64": (replace("adapter/w", np.zeros((2, 4))), "dtype float64, expected float32"),
    "missing rows": (delete("class-means"), "missing key.*'class-means'"),
    "missing ids": (delete("class-ids"), "missing key.*'class-ids'"),
    "missing counts": (delete("class-counts"), "missing key.*'class-counts'"),
    "extra key": (replace("backdoor", np.zeros(1, np.float32)), "unknown key.*'backdoor'"),
    "state key sent whole": (  # the method sends rows of 'prototypes', never the matrix
        replace("prototypes", np.zeros((6, 4), np.float32)),
        "unknown key.*'prototypes'",
    ),
    "not an array": (replace("adapter/w", [[0.0] * 4] * 2), "'adapter/w' is a list"),
    "float ids": (
        replace("class-ids", np.array([3.0, 5.0], np.float32)),
        "'class-ids' must be .* integer",
    ),
    "2-D ids": (replace("class-ids", np.array([[3, 5]])), "'class-ids' must be a non-empty 1-D"),
    "repeated id": (replace("class-ids", np.array([3, 3])), "'class-ids' repeats a class"),
    "earlier task": (
        replace("class-ids", np.array([1, 5])),
        r"\[1\] are not classes of task 2 \(3..5\)",
    ),
    "later task": (replace("class-ids", np.array([3, 6])), r"\[6\] are not classes of task 2"),
    "negative count": (
        replace("class-counts", np.array([-3.0, 10.0], np.float32)),
        "negative count",
    ),
    "huge counts": (
        replace("class-counts", np.array([3e9, 4e9], np.float32)),
        "adds up to 7e\\+09, not num-examples 7",
    ),
    "fractional count": (
        replace("class-counts", np.array([2.5, 4.5], np.float32)),
        "not a whole number",
    ),
    "count length": (
        replace("class-counts", np.array([7.0], np.float32)),
        r"'class-counts' has shape \(1,\)",
    ),
    "nan count": (set_item("class-counts", 0, np.nan), "'class-counts' has 1 non-finite"),
    "zero examples": (set_field("num_examples", 0), "num-examples 0 is outside 1.."),
    "absurd examples": (
        set_field("num_examples", MAX_EXAMPLES + 1),
        f"num-examples {MAX_EXAMPLES + 1} is outside",
    ),
    "float examples": (set_field("num_examples", 7.0), "num-examples 7.0 is not an integer"),
    "nan loss": (set_field("train_loss", float("nan")), "train-loss nan is not a finite number"),
    "inf metric": (set_field("metrics", {"m": float("inf")}), "metric 'm' is inf"),
    "oversized": (
        replace("adapter/w", np.zeros((1000, 4), np.float32)),
        "bytes, more than the .* bound",
    ),
}


@pytest.mark.parametrize("fault", list(PER_CLASS_FAULTS))
def test_each_fault_of_a_per_class_update_is_rejected_with_its_reason(fault):
    corrupt, reason = PER_CLASS_FAULTS[fault]
    update = per_class_update()
    corrupt(update)
    with pytest.raises(RejectedUpdate, match=reason) as raised:
        validate_update(per_class_state(), update, TASK_2, PER_CLASS)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 180


DENSE_FAULTS = {
    "extra key": (replace("class-ids", np.array([0])), "unknown key.*'class-ids'"),
    "nothing sent": (lambda u: u.arrays.clear(), "missing key.*'b', 'w'"),
    "wrong shape": (replace("w", np.zeros((2, 3), np.float32)), r"'w' has shape \(2, 3\)"),
    "nan": (set_item("b", 2, np.nan), "'b' has 1 non-finite"),
    "int dtype": (replace("b", np.zeros(3, np.int64)), "'b' has dtype int64, expected float32"),
}


@pytest.mark.parametrize("fault", list(DENSE_FAULTS))
def test_each_fault_of_a_fedavg_update_is_rejected_with_its_reason(fault):
    corrupt, reason = DENSE_FAULTS[fault]
    update = dense_update()
    corrupt(update)
    with pytest.raises(RejectedUpdate, match=reason):
        validate_update(dense_state(), update, TASK_1, DENSE)


def test_the_byte_bound_covers_every_update_that_passes_the_shape_checks():
    state = per_class_state()
    # whole state (24 + 6 + 8 floats) + per task class: one row of each array + an int64 id
    assert max_update_bytes(state, TASK_2) == 4 * 38 + 3 * (4 * (4 + 1 + 4) + 8)
    largest = {
        "class-ids": np.array([3, 4, 5]),
        "class-means": np.zeros((3, 4), np.float32),
        "class-counts": np.array([1.0, 1.0, 1.0], np.float32),
        "adapter/w": np.zeros((2, 4), np.float32),
    }
    validate_update(state, ClientUpdate(largest, 3), TASK_2, PER_CLASS)
    assert sum(v.nbytes for v in largest.values()) <= max_update_bytes(state, TASK_2)


def test_the_sample_count_cap_can_be_tightened_by_the_caller():
    with pytest.raises(RejectedUpdate, match="num-examples 7 is outside 1..6"):
        validate_update(per_class_state(), per_class_update(), TASK_2, PER_CLASS, max_examples=6)


def test_the_declared_layout_rejects_a_missing_or_an_extra_state_key():
    state = {**per_class_state(), "adapter/v": np.ones((6, 4), np.float32)}
    genuine = per_class_update()
    validate_update(state, genuine, TASK_2, PER_CLASS)
    without_adapter = copy.deepcopy(genuine)
    del without_adapter.arrays["adapter/w"]
    with pytest.raises(RejectedUpdate, match="missing key.*'adapter/w'"):
        validate_update(state, without_adapter, TASK_2, PER_CLASS)
    frozen = copy.deepcopy(genuine)  # a row-shaped array the method never sends
    frozen.arrays["adapter/v"] = np.ones((6, 4), np.float32)
    with pytest.raises(RejectedUpdate, match="unknown key.*'adapter/v'"):
        validate_update(state, frozen, TASK_2, PER_CLASS)


# --- genuine updates of every method ---------------------------------------------------------
METHOD_CONFIGS = {
    "prototypes": {"method": "prototypes"},
    "finetune": {"method": "finetune"},
    "finetune-etf": {"method": "finetune", "head": "etf"},
    "multifcl": {"method": "multifcl", "use_text_init": False},
    "multifcl-etf": {"method": "multifcl", "head": "etf", "use_text_init": False},
    "multifcl-lora-per-task": {
        "method": "multifcl",
        "adapter": "lora",
        "adapter_policy": "per-task",
        "use_text_init": False,
    },
    "pilora": {"method": "pilora"},
    "lwf": {"method": "lwf"},
    "fedproto": {"method": "fedproto"},
    "analytic": {"method": "analytic", "analytic_projection_dim": 64},
    "l2p": {"method": "l2p"},
    "coda-prompt": {"method": "coda-prompt"},
    "lorm": {"method": "lorm", "lorm_rank": 4},
}


def genuine_rounds(config, tasks=2):
    """(state, update, task) of client 0 of 2 in the first round of each task, merged."""
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = method.initial_state()
    rounds = []
    for task in list(data.stream)[:tasks]:
        update = method.train_client(state, data.client_train_set(task, 0, 2), task, task.index)
        rounds.append((state, update, task))
        state = method.end_task(method.merge(state, [update]), task)
    return method, rounds


def over_the_wire(update: ClientUpdate, transmit_dtype: str) -> ClientUpdate:
    return content_to_update(update_to_content(update, transmit_dtype))


@pytest.mark.parametrize("name", list(METHOD_CONFIGS))
def test_genuine_updates_of_every_method_pass(name, tiny_config):
    method, rounds = genuine_rounds(tiny_config(**METHOD_CONFIGS[name]))
    for state, update, task in rounds:
        for transmit_dtype in ("float32", "float16"):
            received = over_the_wire(update, transmit_dtype)
            validate_update(state, received, task, method)


@pytest.mark.parametrize(
    "name", ["prototypes", "multifcl-lora-per-task", "finetune", "pilora", "analytic", "lorm"]
)
def test_no_genuine_update_is_an_outlier(name, tiny_config):
    """Three Dirichlet clients per task, float16 on the wire, two tasks merged in turn
    (feature rows; rows and LoRA; dense weights. Every entry of METHOD_CONFIGS passed
    this too, at seven times the cost)."""
    config = tiny_config(**METHOD_CONFIGS[name], partition="dirichlet", transmit_dtype="float16")
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = method.initial_state()
    for task in list(data.stream)[:2]:
        updates = {
            client: over_the_wire(
                method.train_client(state, data.client_train_set(task, client, 3), task, client),
                "float16",
            )
            for client in range(3)
        }
        assert outlier_updates(state, updates, [task], method) == {}
        state = method.end_task(method.merge(state, list(updates.values())), task)


def test_declared_multifcl_layout_rejects_partial_and_misshapen_uploads(tiny_config):
    config = tiny_config(method="multifcl", adapter_policy="per-task", use_text_init=False)
    method, rounds = genuine_rounds(config)
    (state_1, update_1, task_1), (state_2, update_2, task_2) = rounds
    adapter_keys = [k for k in update_1.arrays if k.startswith("adapter/set-0/")]
    assert adapter_keys and all(k.startswith("adapter/set-1/") is False for k in update_1.arrays)

    def rejected(state, update, task, reason):
        with pytest.raises(RejectedUpdate, match=reason):
            validate_update(state, update, task, method)

    partial = copy.deepcopy(update_1)
    del partial.arrays[adapter_keys[0]]
    rejected(state_1, partial, task_1, "missing key")
    no_expert = copy.deepcopy(update_1)
    del no_expert.arrays["expert-1/prototypes"]
    rejected(state_1, no_expert, task_1, "missing key.*'expert-1/prototypes'")
    whole_matrix = copy.deepcopy(update_1)  # every class's row instead of the client's own
    whole_matrix.arrays["expert-0/prototypes"] = state_1["expert-0/prototypes"].copy()
    rejected(state_1, whole_matrix, task_1, "'expert-0/prototypes' has shape")
    frozen_set = copy.deepcopy(update_2)  # task 2 must not touch task 1's adapter set
    frozen_set.arrays[adapter_keys[0]] = state_2[adapter_keys[0]].copy()
    rejected(state_2, frozen_set, task_2, f"unknown key.*'{adapter_keys[0]}'")


# --- bounded updates: finite but absurd next to the round's other updates ----------------------
def rows_update(scale: float = 1.0, seed: int = 0, adapter_step: float = 0.1) -> ClientUpdate:
    """A genuine-looking update of TASK_2 (rows of norm about 2, a small adapter step),
    its class means multiplied by `scale`."""
    update = per_class_update()
    rng = np.random.default_rng(seed)
    update.arrays["class-means"] = (1 + 0.1 * rng.random((2, 4), np.float32)) * np.float32(scale)
    update.arrays["adapter/w"] = 1 + adapter_step * rng.standard_normal((2, 4)).astype(np.float32)
    return update


def test_a_row_far_from_the_median_row_norm_is_an_outlier_both_ways():
    for scale, shown in ((1e30, r"2\.\d+e\+30"), (1e-30, r"2\.\d+e-30"), (11.0, r"2\d\.\d")):
        updates = {"a": rows_update(seed=1), "b": rows_update(scale, seed=2), "c": rows_update()}
        reasons = outlier_updates(per_class_state(), updates, [TASK_2], PER_CLASS)
        assert list(reasons) == ["b"]
        assert re.fullmatch(
            f"key 'class-means': a row of norm {shown} is outside \\[0.2\\d+, 2\\d.\\d\\], "
            "10x around the median norm 2.\\d+",
            reasons["b"],
        ), reasons["b"]
    honest = {"a": rows_update(seed=1), "b": rows_update(9.0, seed=2), "c": rows_update()}
    assert outlier_updates(per_class_state(), honest, [TASK_2], PER_CLASS) == {}


def test_merged_rows_bound_a_round_with_too_few_clients_for_a_median():
    pair = {"a": rows_update(), "b": rows_update(1e30, seed=2)}
    # no majority to judge by
    assert outlier_updates(per_class_state(), pair, [TASK_2], PER_CLASS) == {}
    state = per_class_state()
    state["prototypes"][:3], state["class-counts"][:3] = 2.0, 5.0  # task 1's merged rows
    assert list(outlier_updates(state, pair, [TASK_2], PER_CLASS)) == ["b"]
    assert list(outlier_updates(state, {"b": rows_update(1e30)}, [TASK_2], PER_CLASS)) == ["b"]
    assert outlier_updates(state, pair, [TASK_2], PER_CLASS, max_row_norm_ratio=0) == {}  # off


def test_a_dense_change_far_above_the_median_change_is_an_outlier():
    updates = {node: rows_update(seed=seed) for seed, node in enumerate("abc")}
    updates["d"] = rows_update(seed=3, adapter_step=1e3)
    reasons = outlier_updates(per_class_state(), updates, [TASK_2], PER_CLASS)
    assert list(reasons) == ["d"]
    assert re.fullmatch(
        r"key 'adapter/w' changed by 4.\d+e\+03, more than 100x the median change 0.\d+",
        reasons["d"],
    ), reasons["d"]
    assert (
        outlier_updates(per_class_state(), updates, [TASK_2], PER_CLASS, max_change_ratio=0) == {}
    )
    # a client whose data moved it 50x further than the median client is not an outlier
    updates["d"] = rows_update(seed=3, adapter_step=5.0)
    assert outlier_updates(per_class_state(), updates, [TASK_2], PER_CLASS) == {}


def test_float16_rounding_of_an_unchanged_array_is_never_an_outlier():
    state = per_class_state()
    state["adapter/w"] = np.full((2, 4), 1 / 3, np.float32)
    updates = {node: rows_update(seed=seed) for seed, node in enumerate("abc")}
    for update in updates.values():
        update.arrays["adapter/w"] = state["adapter/w"].copy()
    updates["a"].arrays["adapter/w"] = state["adapter/w"].astype(np.float16).astype(np.float32)
    assert outlier_updates(state, updates, [TASK_2], PER_CLASS) == {}


# --- fault injection through the real strategy -----------------------------------------------
ROUNDS_PER_TASK = 3
FAULTY_PARTITION = 2
FAULTY_NODE = 1000 + FAULTY_PARTITION


def negate_first_count(update):
    counts = update.arrays["class-counts"].copy()
    counts[1] += 2 * counts[0]  # the sum still matches: only the sign is wrong
    counts[0] = -counts[0]
    update.arrays["class-counts"] = counts


def widen_rows(update):
    rows = update.arrays["class-means"]
    update.arrays["class-means"] = np.concatenate([rows, rows[:, :1]], axis=1)


ROUND_FAULTS = [  # one per round: 2 tasks x 3 rounds
    (set_item("class-means", (0, 0), np.nan), "'class-means' has 1 non-finite value"),
    (widen_rows, "'class-means' has shape"),
    (lambda u: u.arrays.update({"class-counts": u.arrays["class-counts"] * 1e9}), "adds up to"),
    (delete("class-means"), "missing key(s) 'class-means'"),
    (replace("backdoor", np.zeros(4, np.float32)), "unknown key(s) 'backdoor'"),
    (negate_first_count, "'class-counts' has a negative count"),
]


def faulty_partition(corrupt_reply):
    """The real ClientApp handler, with the faulty partition's reply handed to `corrupt_reply`."""

    def handler(message: Message, context):
        if context.node_config["partition-id"] != FAULTY_PARTITION:
            return train(message, context)
        return corrupt_reply(message, context)

    return handler


def corrupted_reply(message: Message, context) -> Message:
    config = message.content[CONFIG]
    corrupt, _ = ROUND_FAULTS[int(config["task"]) * ROUNDS_PER_TASK + int(config["round"]) - 1]
    update = content_to_update(train(message, context).content)
    corrupt(update)
    return Message(update_to_content(update), reply_to=message)


def no_reply(message: Message, context) -> Message:
    raise RuntimeError("this node's replies are left out")


def run_recording_merges(config, handler, monkeypatch) -> tuple[dict, list]:
    method = load_experiment(config).method
    merges, merge = [], method.merge

    def recording_merge(state, updates):
        merged = merge(state, updates)
        merges.append({k: v.copy() for k, v in merged.items()})
        return merged

    monkeypatch.setattr(method, "merge", recording_merge)
    return run_in_process(config, 3, handler=handler)[0], merges


def test_rejected_replies_are_logged_and_the_state_equals_a_run_without_them(
    tiny_config, tmp_path, monkeypatch, caplog
):
    common = {"method": "prototypes", "rounds_per_task": ROUNDS_PER_TASK, "min_fit_fraction": 0.5}
    clean = tiny_config(**common, output_dir=tmp_path / "clean")
    faulty = tiny_config(**common, output_dir=tmp_path / "faulty")
    clean_metrics, clean_merges = run_recording_merges(
        clean, faulty_partition(no_reply), monkeypatch
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        faulty_metrics, faulty_merges = run_recording_merges(
            faulty, faulty_partition(corrupted_reply), monkeypatch
        )

    assert len(faulty_merges) == len(clean_merges) == 2 * ROUNDS_PER_TASK
    for clean_state, faulty_state in zip(clean_merges, faulty_merges):
        assert clean_state.keys() == faulty_state.keys()
        for key, value in clean_state.items():
            assert faulty_state[key].dtype == value.dtype
            assert faulty_state[key].tobytes() == value.tobytes()  # bit-identical
    assert faulty_metrics == clean_metrics

    rejections = [
        r.getMessage() for r in caplog.records if f": {FAULTY_NODE}: rejected: " in r.getMessage()
    ]
    assert len(rejections) == len(ROUND_FAULTS)
    rows = list(csv.DictReader((faulty.output_dir / "rounds.csv").open()))
    clean_rows = list(csv.DictReader((clean.output_dir / "rounds.csv").open()))
    assert len(rows) == len(ROUND_FAULTS)
    for row, clean_row, message, (_, reason) in zip(rows, clean_rows, rejections, ROUND_FAULTS):
        assert "rejected" in message and reason in message
        assert (
            row["failed_clients"].startswith(f"{FAULTY_NODE}: rejected")
            and reason in row["failed_clients"]
        )
        assert (row["clients"], row["failures"]) == ("2", "1")
        assert row["train_loss"] == clean_row["train_loss"]


def scale_class_means(message: Message, context) -> Message:
    """Issue 18's finding: the genuine reply with every class mean x 1e30 (finite)."""
    update = content_to_update(train(message, context).content)
    update.arrays["class-means"] = update.arrays["class-means"] * np.float32(1e30)
    return Message(update_to_content(update), reply_to=message)


def test_class_means_x_1e30_from_one_of_three_clients_are_rejected(
    tiny_config, tmp_path, monkeypatch
):
    """They used to be merged and took accuracy to chance; now the state, metrics and
    losses equal those of a run without that client."""
    common = {"method": "prototypes", "rounds_per_task": 1}
    clean = tiny_config(**common, output_dir=tmp_path / "clean")
    poisoned = tiny_config(**common, output_dir=tmp_path / "poisoned")
    clean_metrics, clean_merges = run_recording_merges(
        clean, faulty_partition(no_reply), monkeypatch
    )
    metrics, merges = run_recording_merges(
        poisoned, faulty_partition(scale_class_means), monkeypatch
    )
    assert len(merges) == len(clean_merges) == 2
    for clean_state, state in zip(clean_merges, merges):
        assert all(state[k].tobytes() == value.tobytes() for k, value in clean_state.items())
    assert metrics == clean_metrics
    rows = list(csv.DictReader((poisoned.output_dir / "rounds.csv").open()))
    for row in rows:
        assert row["failed_clients"].startswith(
            f"{FAULTY_NODE}: rejected: key 'class-means': a row of norm "
        )
        assert (row["clients"], row["failures"]) == ("2", "1")
