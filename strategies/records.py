"""The message protocol between the server and clients: record names and conversions."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from multifcl.methods import ClientUpdate, State

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"


def state_to_record(state: State) -> ArrayRecord:
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in state.items()})


def record_to_state(record: ArrayRecord) -> State:
    return {key: array.numpy() for key, array in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of the serialized arrays, as they travel."""
    return sum(len(array.data) for array in record.values())


def update_to_content(update: ClientUpdate) -> RecordDict:
    metrics = {NUM_EXAMPLES: update.num_examples, **update.metrics}
    if update.train_loss is not None:
        metrics[TRAIN_LOSS] = float(update.train_loss)
    return RecordDict({ARRAYS: state_to_record(update.arrays), METRICS: MetricRecord(metrics)})


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
