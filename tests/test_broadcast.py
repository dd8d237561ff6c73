"""Broadcasts that send only what changed: a node lacking chunks (a fresh context, as a
fresh process, SuperNode or resumed run has) or holding damaged ones still trains on the
exact state, and the results equal those of nodes that always held everything."""

from __future__ import annotations

import csv
import json

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from clients.client_app import train
from protocol.broadcast import (
    CHUNKS,
    MANIFEST,
    STORE,
    ChunkedState,
    assemble_state,
    lacks_chunks,
)
from tests.conftest import run_in_process
from tests.test_fault_tolerance import final_state

ROWS = np.random.default_rng(0).standard_normal((6, 300)).astype(np.float32)  # 1.2 KB rows


def _state(rows: np.ndarray = ROWS) -> dict:
    return {
        "prototypes": rows,
        "counts": np.arange(6, dtype=np.float32),
        "ids": np.array([3, 1], np.int64),
        "scale": np.array([2.0], np.float32),
    }


def _message_content(chunked: ChunkedState, held: frozenset = frozenset()) -> RecordDict:
    return RecordDict({MANIFEST: chunked.manifest_record, CHUNKS: chunked.chunks_record(held)})


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


def test_a_node_is_sent_only_the_rows_that_changed_and_assembles_the_exact_state():
    node = RecordDict()
    first = ChunkedState.of(_state())
    assert _equal(assemble_state(_message_content(first), node), _state())
    changed = ROWS.copy()
    changed[4] += 1.0
    second = ChunkedState.of(_state(changed))
    content = _message_content(second, held=first.digests)
    assert content[CHUNKS]["prototypes"].numpy().shape == (1, 300)  # the changed row alone
    assert set(content[CHUNKS]) == {"prototypes"}
    assert _equal(assemble_state(content, node), _state(changed))
    assert set(node[STORE]) == {d.hex() for d in second.digests}  # the old row is dropped


def test_a_node_without_the_chunks_or_with_damaged_ones_asks_instead_of_training():
    first, node = ChunkedState.of(_state()), RecordDict()
    assemble_state(_message_content(first), node)
    changed = ROWS.copy()
    changed[0] = 0.0
    delta = _message_content(ChunkedState.of(_state(changed)), held=first.digests)
    assert assemble_state(delta, RecordDict()) is None  # a fresh context
    kept = assemble_state(delta, RecordDict(node))  # a copy of the intact store serves
    assert _equal(kept, _state(changed))
    row = node[STORE][first.manifest["prototypes"][1].hex()]
    node[STORE][first.manifest["prototypes"][1].hex()] = Array(row.numpy() + 1.0)  # same name
    assert assemble_state(delta, node) is None


def _rows(config) -> list[dict]:
    with (config.output_dir / "rounds.csv").open() as file:
        return list(csv.DictReader(file))


def test_fresh_and_damaged_stores_give_the_same_run_as_intact_ones(tiny_config, tmp_path):
    """Node 0 loses its store before every round (a new process or SuperNode each time);
    node 1's store is damaged before task 2's first round. Each is resent the state whole and the run's
    results equal an undisturbed run's, bit for bit."""
    resent = []

    def forgetful(message, context):
        partition, task = context.node_config["partition-id"], message.content["config"]["task"]
        first_of_task_2 = (task, message.content["config"]["round"]) == (1, 1)
        if partition == 0:
            context.state = RecordDict()
        if partition == 1 and first_of_task_2 and STORE in context.state:
            store = context.state[STORE]
            context.state[STORE] = ArrayRecord(
                {name: Array(array.numpy() * 0) for name, array in store.items()}
            )
        reply = train(message, context)
        resent.append((partition, task, lacks_chunks(reply.content)))
        return reply

    clean = tiny_config(method="multifcl", use_text_init=False, output_dir=tmp_path / "clean")
    run_in_process(clean, base_dir=tmp_path)
    config = tiny_config(method="multifcl", use_text_init=False, output_dir=tmp_path / "lossy")
    run_in_process(config, base_dir=tmp_path, handler=forgetful)
    # in task 1 every chunk changes every round, so no store is needed; from task 2 on
    # (adapters frozen) node 0 asks in every round, node 1 once after its damage
    assert [(node, task) for node, task, asked in resent if asked] == [(0, 1), (1, 1), (0, 1)]
    clean_rows, rows = _rows(clean), _rows(config)
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in clean_rows]
    resends = [int(r["bytes_down"]) > int(c["bytes_down"]) for r, c in zip(rows, clean_rows)]
    assert resends == [False, False, True, True]  # the extra messages are counted
    matrices = [json.loads((c.output_dir / "metrics.json").read_text()) for c in (clean, config)]
    assert matrices[0]["accuracy_matrix"] == matrices[1]["accuracy_matrix"]
    assert _equal(final_state(clean), final_state(config))
    # the undisturbed run sends less once the adapters froze (task 2) than in its first round
    assert all(int(r["bytes_down"]) < int(clean_rows[0]["bytes_down"]) for r in clean_rows[2:])
