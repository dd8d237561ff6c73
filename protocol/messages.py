"""The message protocol between the server and clients: record names and conversions.

Floating arrays travel as float32, or as float16 in client uploads when
`transmit-dtype = "float16"`; receivers always get float32 back. float64 arrays travel as
float64 whatever `transmit-dtype` says: a method keeps exact sums there (the `analytic`
method's statistics). Bytes are those Flower
actually serializes: the record's object tree (record, arrays, data chunks), each distinct
object once.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from multifcl.methods import ClientUpdate, State

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
HANDSHAKE = "query.handshake"  # the message type; the ClientApp's @app.query("handshake")
CLAIM = "claim"  # the reply's ConfigRecord: partition id, number of partitions, fingerprint
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
LOCAL_ARRAYS = "local-arrays"  # eval-local: the client's own model, beside the global ARRAYS
REPORT = "report"  # eval-local: the reply's ArrayRecord of scores (multifcl.client_evaluation)
TRAINED = "trained"  # a train reply's ConfigRecord: the global task and classes it trained


def state_to_record(state: State, float_dtype: str = "float32") -> ArrayRecord:
    """The arrays as a Flower record; floating arrays cast to `float_dtype` first (but for
    float64, which stays exact)."""
    wire = np.dtype(float_dtype)
    return ArrayRecord(
        {
            key: Array(np.ascontiguousarray(value, wire if _is_rounded(value) else None))
            for key, value in state.items()
        }
    )


def record_to_state(record: ArrayRecord) -> State:
    """The record's arrays; floating arrays as float32, whatever they travelled as (but for
    float64)."""
    state = {}
    for key, array in record.items():
        value = array.numpy()
        state[key] = value.astype(np.float32, copy=False) if _is_rounded(value) else value
    return state


def record_bytes(record: ArrayRecord) -> int:
    """Bytes Flower serializes for the record: every distinct object of its tree once."""
    seen: set[str] = set()

    def size(node) -> int:
        if node.object_id in seen:
            return 0
        seen.add(node.object_id)
        return len(node.deflate()) + sum(size(child) for child in (node.children or {}).values())

    return size(record)


def update_to_content(update: ClientUpdate, transmit_dtype: str = "float32") -> RecordDict:
    """A client's reply: its arrays (floats as `transmit_dtype`) and its metrics."""
    metrics = {NUM_EXAMPLES: update.num_examples, **update.metrics}
    if update.train_loss is not None:
        metrics[TRAIN_LOSS] = float(update.train_loss)
    arrays = state_to_record(update.arrays, transmit_dtype)
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})


def content_to_update(content: RecordDict) -> ClientUpdate:
    metrics = dict(content[METRICS])
    examples = int(metrics.pop(NUM_EXAMPLES))
    loss = metrics.pop(TRAIN_LOSS, None)
    return ClientUpdate(
        record_to_state(content[ARRAYS]),
        examples,
        None if loss is None else float(loss),
        {key: float(value) for key, value in metrics.items()},
    )


def trained_record(task: int, classes) -> ConfigRecord:
    """What a client names in its reply: the global task (0-based) and classes it trained."""
    return ConfigRecord({"task": int(task), "classes": sorted(int(c) for c in classes)})


def trained_claim(content: RecordDict) -> tuple[int, list[int]] | None:
    """The (task, classes) a reply says it trained; None when it says nothing; a
    ValueError when the record is malformed."""
    if TRAINED not in content.config_records:
        return None
    record = content.config_records[TRAINED]
    task, classes = record["task"], record["classes"]
    if not isinstance(task, int) or not all(isinstance(c, int) for c in classes):
        raise ValueError(f"the {TRAINED!r} record holds {dict(record)!r}, not integers")
    return task, list(classes)


def _is_rounded(value: np.ndarray) -> bool:
    """A floating array that may travel rounded (float16/float32; float64 travels exact)."""
    dtype = np.asarray(value).dtype
    return np.issubdtype(dtype, np.floating) and dtype != np.float64
