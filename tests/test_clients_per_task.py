"""Clients that join later (`clients-per-task`): only the first k_t partition ids take part
in task t, hold its data and get its messages; a late joiner starts from the global state;
bad schedules are one line at start; the key changes results on resume."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from flwr.app import Message

from multifcl.client_sampling import ClientSampler
from multifcl.client_schedule import ClientSchedule
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import DataError
from multifcl.experiment import load_experiment
from multifcl.results.resume import config_differences
from protocol.messages import CONFIG
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from tests.conftest import TINY, in_process_grid, run_in_process, sent_states
from tests.test_client_sampling import Interrupted, interrupting, rows_of

NODES = 3
LATE = {"clients_per_task": "1,3", "save_task_checkpoints": True}  # task 1: partition 0 alone


@pytest.mark.parametrize(
    "text, tasks, counts",
    [
        ("", 3, ()),
        ("10,15,20", 3, (10, 15, 20)),
        ("2, 4", 4, (2, 4, 4, 4)),  # a shorter list repeats its last value
        ("7", 2, (7, 7)),
        ("4+2", 4, (4, 6, 8, 10)),
        ("3+0", 2, (3, 3)),
    ],
)
def test_a_schedule_is_a_list_or_a_growth_rule(text, tasks, counts):
    assert ClientSchedule.parse(text, tasks).counts == counts


@pytest.mark.parametrize(
    "value, message",
    [
        ("0,2", "every task needs at least 1 client, got '0,2'"),
        ("0+1", "every task needs at least 1 client, got '0+1'"),
        ("3,2", "the clients of a task must not decrease from task to task, got '3,2'"),
        ("1,2,3,4,5,6", "'1,2,3,4,5,6' lists 6 tasks, the stream has num-tasks=5"),
        ("4-2", "expected a comma list of clients per task such as '10,15,20' or a growth"),
        ("1;2", "expected a comma list of clients per task such as '10,15,20' or a growth"),
    ],
)
def test_a_bad_schedule_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as refused:
        ExperimentConfig.from_run_config({"clients-per-task": value, "num-tasks": 5})
    text = str(refused.value)
    assert text.startswith(f"run config key 'clients-per-task': {message}") and "\n" not in text


def test_a_schedule_longer_than_the_federation_fails_before_any_message(tmp_path):
    config = ExperimentConfig(**TINY, output_dir=tmp_path / "run", clients_per_task="1+2")
    grid = in_process_grid(config, 2)
    with pytest.raises(ConfigError) as refused:
        run_continual_learning(grid, config, tmp_path)
    assert str(refused.value).startswith(
        "run config key 'clients-per-task': '1+2' asks for 3 clients in task 2, more than "
        "the federation's 2"
    )
    assert grid.sent == [] and grid.queried == []


def test_sampling_draws_among_the_clients_taking_part_and_is_unchanged_without_a_schedule():
    partitions = {1000 + p: p for p in range(10)}
    schedule = ClientSchedule.parse("4+3", 3)  # 4, 7, 10 clients
    sampler = ClientSampler(partitions, 0.5, 1, 7, schedule)
    for task, active in enumerate((4, 7, 10)):
        draws = [sampler.partition_ids(task, r) for r in range(1, 6)]
        assert all(len(d) == active // 2 and max(d) < active for d in draws)
    unscheduled = ClientSampler(partitions, 0.5, 1, 7)
    assert sampler.partition_ids(2, 3) == unscheduled.partition_ids(2, 3)  # all take part


def test_a_client_that_has_not_joined_holds_no_data_of_the_task(tiny_config):
    data = load_experiment(tiny_config(**LATE)).data
    first, second = data.stream
    assert len(data.client_parts(first, NODES)) == 1
    assert len(data.client_indices(first, 0, NODES)) == len(data.stream.train_indices(first))
    with pytest.raises(DataError, match="partition-id 2 takes no part in task 1"):
        data.client_train_set(first, 2, NODES)
    assert len(data.client_parts(second, NODES)) == NODES


def test_late_joiners_get_no_message_before_their_first_task_then_the_global_state(tiny_config):
    config = tiny_config(**LATE, method="multifcl", use_text_init=False)
    _, grid = run_in_process(config, NODES)
    received = defaultdict(dict)  # (task, round) -> node -> the state it was sent
    for message, state in sent_states(grid):
        key = (message.content[CONFIG]["task"], message.content[CONFIG]["round"])
        received[key][message.metadata.dst_node_id] = state
    assert {key: sorted(nodes) for key, nodes in received.items()} == {
        (0, 1): [1000],
        (0, 2): [1000],
        (1, 1): [1000, 1001, 1002],
        (1, 2): [1000, 1001, 1002],
    }
    after_task_1 = dict(np.load(config.output_dir / "task-checkpoints" / "task-01.npz"))
    for node in (1001, 1002):  # their first round starts from the global state after task 1
        sent = received[1, 1][node]
        assert sent.keys() == after_task_1.keys()
        assert all(np.array_equal(sent[k], after_task_1[k].astype(sent[k].dtype)) for k in sent)
    adapters = [k for k in after_task_1 if k.startswith("adapter/")]
    assert adapters and all(  # trained in task 1 only: the joiners got them frozen
        np.array_equal(received[1, 2][1002][k], received[0, 2][1000][k]) for k in adapters
    )


def test_partition_json_and_rounds_csv_show_who_takes_part(tiny_config):
    config = tiny_config(**LATE, method="finetune")
    run_in_process(config, NODES)
    data = load_experiment(config).data
    saved = json.loads((config.output_dir / "partition.json").read_text())
    first, second = saved["tasks"]
    assert (first["clients"], second["clients"]) == (1, NODES)
    assert [sum(row) for row in first["counts"]][1:] == [0, 0]
    assert sum(first["counts"][0]) == len(data.stream.train_indices(data.stream.task(0)))
    assert all(sum(row) > 0 for row in second["counts"])
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["task"], r["sampled_clients"], r["clients"]) for r in rows] == [
        ("1", "0", "1"),
        ("1", "0", "1"),
        ("2", "0;1;2", "3"),
        ("2", "0;1;2", "3"),
    ]


def test_a_reply_from_a_node_the_round_was_not_sent_to_is_rejected(tiny_config):
    config = tiny_config(**LATE, method="finetune", num_tasks=2)

    class ForgingGrid(InProcessGrid):
        """Adds to every round's replies one from node 1002, which takes no part in task 1."""

        def send_and_receive(self, messages, *, timeout=None):
            replies = list(super().send_and_receive(messages, timeout=timeout))
            training = messages and CONFIG in messages[0].content.config_records
            if training and messages[0].content[CONFIG]["task"] == 0:
                sent = Message(messages[0].content, dst_node_id=1002, message_type="train")
                sent.metadata.__dict__["_message_id"] = "forged"
                replies.append(Message(replies[0].content, reply_to=sent))
            return replies

    from clients.client_app import train

    grid = ForgingGrid(train, config.to_run_config(), NODES)
    run_continual_learning(grid, config, config.output_dir)
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert all(r["failed_clients"].startswith("1002: rejected: a reply") for r in rows[:2])
    assert all(r["clients"] == "1" and r["merged"] == "True" for r in rows[:2])


def test_clients_per_task_changes_results_on_resume():
    saved = ExperimentConfig().to_run_config()
    now = ExperimentConfig(clients_per_task="2+1")
    assert config_differences(saved, now) == [("clients-per-task", "", "2+1")]


def test_a_resumed_run_with_late_joiners_matches_an_unbroken_one(tiny_config, tmp_path):
    late = {"clients_per_task": "1,3", "method": "finetune"}
    reference = tiny_config(**late, output_dir=tmp_path / "reference")
    run_in_process(reference, NODES, base_dir=tmp_path)
    config = tiny_config(**late)
    with pytest.raises(Interrupted):  # in task 2 round 1, after 2 rounds of 1 client
        run_in_process(config, NODES, base_dir=tmp_path, handler=interrupting(3))
    resume = tiny_config(**late, output_dir=None, resume_from=config.output_dir)
    run_in_process(resume, NODES, base_dir=tmp_path)
    folder, expected = config.output_dir, reference.output_dir
    for name in ("metrics.json", "partition.json"):
        assert json.loads((folder / name).read_text()) == json.loads((expected / name).read_text())
    assert rows_of(folder) == rows_of(expected)


def test_a_schedule_longer_than_expected_clients_fails_when_the_config_is_read():
    with pytest.raises(ConfigError, match="'30\\+10' asks for 110 clients in task 9, more than"):
        ExperimentConfig(num_tasks=10, clients_per_task="30+10", expected_clients=100)
