"""Failed clients (errors, timeouts, malformed or rejected replies), min-fit-fraction,
round retries, and a clear stop with a checkpoint when the retries run out."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from clients.client_app import train
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.update_validation import RejectedUpdate
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from strategies import continual
from strategies.continual import RoundFailed
from tests.conftest import in_process_grid, run_in_process


class DroppingGrid(InProcessGrid):
    """Train replies of the nodes in `silent` never arrive, as when a client outlives the
    timeout; `reverse` hands the replies back in reverse order."""

    def __init__(self, *args, silent=(), reverse=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.silent, self.reverse, self.timeouts = set(silent), reverse, []

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        replies = super().send_and_receive(messages, timeout=timeout)
        if self.sent:  # the handshake (before the first train message) is answered
            replies = [r for r in replies if r.metadata.src_node_id not in self.silent]
        return replies[::-1] if self.reverse else replies


def rows_of(config: ExperimentConfig) -> list[dict]:
    return list(csv.DictReader((config.output_dir / "rounds.csv").open()))


def final_state(config: ExperimentConfig) -> dict:
    return latest_checkpoint(config.output_dir).state


def failing(nodes: set[int], attempts: set[int] | None = None):
    """A handler that raises on the given partitions (on every call, or on the calls
    counted in `attempts`, 1-based per partition)."""
    calls: dict[int, int] = {}

    def handler(message: Message, context):
        partition = context.node_config["partition-id"]
        calls[partition] = calls.get(partition, 0) + 1
        if partition in nodes and (attempts is None or calls[partition] in attempts):
            raise RuntimeError(f"disk on fire\non partition {partition}; really")
        return train(message, context)

    return handler


def test_a_raising_client_is_recorded_and_the_others_are_merged(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=1)
    run_in_process(config, 3, base_dir=tmp_path, handler=failing({1}))
    rows = rows_of(config)
    assert [(r["clients"], r["failures"], r["merged"]) for r in rows] == [("2", "1", "True")] * 2
    reason = rows[0]["failed_clients"]
    assert reason.startswith("1001: error: ") and "disk on fire" in reason
    assert "partition 1, really" in reason  # "; " separates clients in the column


def test_a_silent_client_times_out_and_is_recorded(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=1, round_timeout=5.0)
    grid = DroppingGrid(train, config.to_run_config(), num_nodes=3, silent={1002})
    run_continual_learning(grid, config, tmp_path)
    rows = rows_of(config)
    assert [r["failed_clients"] for r in rows] == ["1002: no reply within 5 s"] * 2
    assert grid.timeouts == [5.0, 5.0, 5.0]  # the handshake and two rounds
    assert all(m.metadata.ttl == 5.0 for m in grid.sent)  # late messages expire


class DeadNodeGrid(InProcessGrid):
    """Node 1002's SuperNode died after the handshake: for each message to it, the
    SuperLink's own "node unavailable" error reply (sent from node 1) comes back at once."""

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        if not self.sent:
            return replies
        dead = [m for m in self.sent[-len(replies) :] if m.metadata.dst_node_id == 1002]
        replies = [r for r in replies if r.metadata.src_node_id != 1002]
        for message in dead:
            message.metadata.__dict__["_created_at"] = time.time()
            message.metadata.__dict__["_ttl"] = timeout
        return replies + [
            create_message_error_unavailable_res_message(m.metadata, "node_unavail") for m in dead
        ]


def test_a_dead_node_is_named_and_not_reported_as_a_timeout(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=1)
    run_continual_learning(DeadNodeGrid(train, config.to_run_config(), 3), config, tmp_path)
    rows = rows_of(config)
    assert [(r["clients"], r["failures"]) for r in rows] == [("2", "1"), ("2", "1")]
    reason = rows[0]["failed_clients"]
    assert reason.startswith("1002: node unavailable: Error: Node Unavailable"), reason
    assert "no reply" not in reason and not reason.startswith("1:")


class ShrinkingGrid(InProcessGrid):
    """Node 1002 leaves the grid after the first round, as a SuperNode that died."""

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n != 1002 or not self.sent]


def test_a_node_that_left_the_grid_counts_as_a_failed_client(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=1)
    run_continual_learning(ShrinkingGrid(train, config.to_run_config(), 3), config, tmp_path)
    rows = rows_of(config)
    assert [(r["clients"], r["failures"], r["failed_clients"]) for r in rows] == [
        ("3", "0", ""),
        ("2", "1", "not connected: 1 of the round's 3 clients"),
    ]


def test_a_malformed_reply_is_a_failed_client(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=1)

    def malformed(message: Message, context):
        reply = train(message, context)
        if context.node_config["partition-id"] == 0:
            return Message(RecordDict({"arrays": reply.content["arrays"]}), reply_to=message)
        return reply

    run_in_process(config, 3, base_dir=tmp_path, handler=malformed)
    assert rows_of(config)[0]["failed_clients"].startswith("1000: malformed reply: KeyError")


def test_a_rejected_update_is_excluded_like_a_failed_client(tiny_config, tmp_path, monkeypatch):
    """Every decoded reply goes through validate_update (a stand-in here, so this checks the
    wiring, not the rules: tests/test_update_validation.py has those)."""
    calls = []

    def validate_update(state, update, task, method, max_examples):
        calls.append((task.index, max_examples))
        if update.num_examples == 99999:
            raise RejectedUpdate("num_examples 99999 is more than the task holds")

    monkeypatch.setattr(continual, "validate_update", validate_update)

    def inflating(message: Message, context):
        reply = train(message, context)
        if context.node_config["partition-id"] == 2:
            metrics = MetricRecord({**reply.content["metrics"], "num-examples": 99999})
            content = RecordDict({"arrays": reply.content["arrays"], "metrics": metrics})
            return Message(content, reply_to=message)
        return reply

    config = tiny_config(num_tasks=2, rounds_per_task=1)
    run_in_process(config, 3, base_dir=tmp_path, handler=inflating)
    first = rows_of(config)[0]
    assert (
        first["failed_clients"] == "1002: rejected: num_examples 99999 is more than the task holds"
    )
    assert (first["clients"], first["failures"], first["merged"]) == ("2", "1", "True")
    stream = load_experiment(config).data.stream
    task_sizes = [len(stream.train_indices(stream.task(t))) for t in (0, 1)]
    assert calls == [(t, task_sizes[t]) for t in (0, 1) for _ in range(3)]


def test_too_few_replies_retry_the_round_with_the_same_seeds(tiny_config, tmp_path):
    """Two of three clients fail the first attempt of each round: min-fit-fraction 0.5
    needs 2, so each round is re-sent once, and the result equals an undisturbed run's."""
    clean = tiny_config(output_dir=tmp_path / "clean", method="finetune")
    run_in_process(clean, 3, base_dir=tmp_path)
    config = tiny_config(output_dir=tmp_path / "flaky", method="finetune")
    handler = failing({0, 2}, attempts={1, 3, 5, 7})  # the first attempt of every round
    metrics, _ = run_in_process(config, 3, base_dir=tmp_path, handler=handler)
    rows = rows_of(config)
    assert [(r["task"], r["round"], r["attempt"], r["merged"]) for r in rows] == [
        (t, r, a, m) for t in "12" for r in "12" for a, m in (("1", "False"), ("2", "True"))
    ]
    assert all(row["train_loss"] == "" for row in rows[::2])
    clean_rows = rows_of(clean)
    assert [r["train_loss"] for r in rows[1::2]] == [r["train_loss"] for r in clean_rows]
    clean_state, state = final_state(clean), final_state(config)
    assert all(np.array_equal(clean_state[k], state[k]) for k in clean_state)
    assert metrics["accuracy_matrix"] == _metrics(clean)["accuracy_matrix"]


def test_exhausted_retries_stop_with_a_clear_message_and_a_checkpoint(tiny_config, tmp_path):
    config = tiny_config(num_tasks=2, rounds_per_task=2, max_round_retries=1)
    calls = []

    def broken_in_task_2(message: Message, context):
        calls.append(message.content["config"]["task"])
        if message.content["config"]["task"] == 1 and context.node_config["partition-id"] > 0:
            raise RuntimeError("out of memory")
        return train(message, context)

    grid = in_process_grid(config, 3, handler=broken_in_task_2)
    started = time.perf_counter()
    with pytest.raises(RoundFailed) as stopped:
        run_continual_learning(grid, config, tmp_path)
    assert time.perf_counter() - started < 60
    message = str(stopped.value)
    assert "\n" not in message
    assert "task 2 round 1: 1 of 3 clients sent a usable update" in message
    assert "min-fit-fraction 0.5 needs 2" in message and "gave up after 2 attempt(s)" in message
    assert f"resume-from='{config.output_dir}'" in message
    assert calls.count(1) == 6  # 3 clients x 2 attempts, then no more messages
    rows = rows_of(config)
    assert [(r["task"], r["attempt"], r["merged"]) for r in rows[-2:]] == [
        ("2", "1", "False"),
        ("2", "2", "False"),
    ]
    checkpoint = latest_checkpoint(config.output_dir)
    assert (checkpoint.task, checkpoint.rounds_done, checkpoint.task_evaluated) == (0, 2, True)

    # the stopped run continues once the clients are fixed (or the fraction is lowered)
    resumed = ExperimentConfig(**{**vars(config), "resume_from": config.output_dir})
    metrics, grid = run_in_process(resumed, 3, base_dir=tmp_path)
    assert metrics["tasks_finished"] == 2
    assert {m.content["config"]["task"] for m in grid.sent} == {1}
    assert [(r["task"], r["round"]) for r in rows_of(config) if r["merged"] == "True"] == [
        ("1", "1"),
        ("1", "2"),
        ("2", "1"),
        ("2", "2"),
    ]


def test_replies_are_merged_in_the_same_order_whatever_order_they_arrive_in(
    tiny_config, tmp_path, monkeypatch
):
    """Ray hands replies back as they complete and node ids are random per run: the merge
    order must come from the replies' content, or sums in float would differ run to run."""
    orders = []
    for name, reverse in (("forward", False), ("reverse", True)):
        config = tiny_config(output_dir=tmp_path / name, num_tasks=2, rounds_per_task=1)
        method = load_experiment(config).method
        merged_orders: list = []

        def spy(state, updates, merge=method.merge, seen=merged_orders):
            seen.append([_fingerprint(u.arrays) for u in updates])
            return merge(state, updates)

        monkeypatch.setattr(method, "merge", spy)
        grid = DroppingGrid(train, config.to_run_config(), num_nodes=3, reverse=reverse)
        run_continual_learning(grid, config, tmp_path)
        orders.append(merged_orders)
    assert len(orders[0]) == 2 and all(len(set(order)) == 3 for order in orders[0])
    assert orders[0] == orders[1]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("round-timeout", 0.0, "must be > 0"),
        ("min-fit-fraction", 0.0, "must be in (0, 1]"),
        ("min-fit-fraction", 1.5, "must be in (0, 1]"),
        ("max-round-retries", -1, "must be >= 0"),
        ("save-task-checkpoints", "yes", "expected true or false"),
    ],
)
def test_fault_tolerance_keys_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=rf"^run config key '{key}': .*{re.escape(message)}"):
        ExperimentConfig.from_run_config({key: value})


def _fingerprint(arrays: dict) -> str:
    return hashlib.sha1(b"".join(arrays[key].tobytes() for key in sorted(arrays))).hexdigest()


def _metrics(config: ExperimentConfig) -> dict:
    return json.loads((config.output_dir / "metrics.json").read_text())


def test_a_dead_ray_actor_is_replaced_in_the_simulation_pool(monkeypatch):
    """Flower's pool puts a failed job's actor back; after an ActorDiedError that must be a
    live actor, or every later message routed to it fails too."""
    from flwr.simulation.ray_transport import ray_actor
    from ray.exceptions import ActorDiedError, RayTaskError

    from server.ray_actor_pool import _PATCHED, replace_dead_actors

    pool_class = ray_actor.BasicActorPool
    original = pool_class.fetch_result_and_return_actor_to_pool
    # start unpatched, and leave Flower's class as it was after the test
    monkeypatch.setattr(pool_class, "fetch_result_and_return_actor_to_pool", original)
    monkeypatch.setattr(pool_class, _PATCHED, False, raising=False)
    assert replace_dead_actors() and replace_dead_actors()
    created: list[str] = []
    pool = pool_class.__new__(pool_class)
    pool.pool = []
    pool.create_actor_fn = lambda: created.append("fresh actor") or "fresh actor"
    pool._future_to_actor = {"died": "dead actor", "raised": "live actor"}
    errors = {"died": ActorDiedError(), "raised": RayTaskError("train", "traceback", KeyError())}

    def get(future):
        raise errors[future]

    monkeypatch.setattr(ray_actor.ray, "get", get)
    for future in ("died", "raised"):
        with pytest.raises(type(errors[future])):
            pool.fetch_result_and_return_actor_to_pool(future)
        pool.add_actor_back_to_pool(future)  # what RayBackend.process_message does next
    assert pool.pool == ["fresh actor", "live actor"]
    assert created == ["fresh actor"]  # patched once: a second call wraps nothing again


def test_failure_reasons_become_one_short_line_for_rounds_csv():
    flower_reason = "<class 'ClientAppException'>:<'\nException occurred; Message: boom\n'>"
    line = continual.one_line(flower_reason + " x" * 200)
    assert "\n" not in line and ";" not in line and len(line) == continual.REASON_MAX_CHARS
    assert line.startswith("<class 'ClientAppException'>:<' Exception occurred, Message: boom")
    assert line.endswith("...")


def test_a_federation_of_another_size_is_refused_before_anything_loads(
    tiny_config, tmp_path, monkeypatch
):
    from server import continual_loop

    config = tiny_config(expected_clients=3)

    def must_not_load(config):
        raise AssertionError("the experiment loaded before the client count was checked")

    monkeypatch.setattr(continual_loop, "load_experiment", must_not_load)
    grid = in_process_grid(config, num_nodes=2)
    message = (
        "run config key 'expected-clients': this config expects 3 clients, the federation "
        'has 2 (in simulation: --federation-config "num-supernodes=3")'
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_continual_learning(grid, config, tmp_path)
    assert not config.output_dir.exists() and not grid.sent


def test_a_federation_of_the_expected_size_goes_on_to_load_the_experiment(
    tiny_config, tmp_path, monkeypatch
):
    from server import continual_loop

    class Loading(Exception):
        """Raised where the run would load the backbone and data: the check let it through."""

    def loading(config):
        raise Loading

    monkeypatch.setattr(continual_loop, "load_experiment", loading)
    config = tiny_config(expected_clients=2)
    with pytest.raises(Loading):
        run_in_process(config, base_dir=tmp_path)
