"""Client-side evaluation (`eval-local`): after each task a client scores the global model
and its own locally trained model on its own test slice (`data/client_test_slices.py`) of every
task seen so far, and the server checks that report before it counts it.

A report holds, for every class with at least one test sample in the client's slice, in
ascending class order: `class-ids`, `class-counts` (its test samples) and `correct-global`
and `correct-local` (how many of them the global and the local model classify right, the
argmax over all seen classes, as in the server's CIL accuracy). `correct-local` is there
exactly when the server sent the client a local model. The server knows every slice (the
split is a pure function of the run config), so it accepts a report only when its classes
and counts are exactly the client's slice and every correct count is a whole number
between 0 and its class's count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multifcl.data import FederatedStream, Task
from multifcl.evaluation import seen_class_predictions
from multifcl.methods import Method, State

CLASS_IDS, CLASS_COUNTS = "class-ids", "class-counts"
CORRECT_GLOBAL, CORRECT_LOCAL = "correct-global", "correct-local"


class RejectedReport(ValueError):
    """A client's evaluation report that does not fit its test slice (one line)."""


@dataclass(frozen=True)
class SliceScores:
    """One client's checked report after one task, per task j seen so far: its test samples
    in the client's slice, and how many of them the global and the local model got right
    (`correct_local` None: the client had no local model this task)."""

    samples: list[int]
    correct_global: list[int]
    correct_local: list[int] | None


def score_own_slice(
    method: Method,
    data: FederatedStream,
    task: Task,
    client: int,
    num_clients: int,
    global_state: State,
    local_state: State | None,
) -> State:
    """The client's report after `task`: its slice of every task seen so far scored under
    the global state and, when given, its local state."""
    seen = task.seen_classes.stop
    slices = [
        data.client_test_set(data.stream.task(j), client, num_clients)
        for j in range(task.index + 1)
    ]
    labels = np.concatenate([s.labels for s in slices]).astype(np.int64)
    ids = np.unique(labels)
    report = {CLASS_IDS: ids, CLASS_COUNTS: np.bincount(labels, minlength=seen)[ids]}
    for key, state in ((CORRECT_GLOBAL, global_state), (CORRECT_LOCAL, local_state)):
        if state is None:
            continue
        predicted = [
            seen_class_predictions(method, state, s, j, seen) for j, s in enumerate(slices)
        ]
        right = labels[np.concatenate(predicted) == labels]
        report[key] = np.bincount(right, minlength=seen)[ids].astype(np.float32)
    return report


def expected_slice(
    data: FederatedStream, task: Task, client: int, num_clients: int
) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, test counts) of the classes in `client`'s slice of the tasks seen by
    `task` that have at least one test sample there, in ascending class order."""
    stream = data.stream
    labels = [
        stream.test_labels[stream.test_indices(stream.task(j))][
            data.client_test_positions(stream.task(j), num_clients)[client]
        ]
        for j in range(task.index + 1)
    ]
    counts = np.bincount(np.concatenate(labels).astype(np.int64), minlength=stream.num_classes)
    ids = np.flatnonzero(counts)
    return ids, counts[ids]


def check_report(
    report: State,
    expected: tuple[np.ndarray, np.ndarray],
    with_local: bool,
    class_names: list[str],
) -> None:
    """RejectedReport (one line) unless `report` is a genuine report of the slice whose
    (class ids, counts) are `expected`, with `correct-local` exactly when `with_local`."""
    ids, counts = expected
    keys = {CLASS_IDS, CLASS_COUNTS, CORRECT_GLOBAL} | ({CORRECT_LOCAL} if with_local else set())
    if set(report) != keys:
        raise RejectedReport(f"report holds {sorted(report)}, expected {sorted(keys)}")
    for key in sorted(keys):
        if report[key].shape != ids.shape:
            raise RejectedReport(f"{key!r} has shape {report[key].shape}, expected {ids.shape}")
    reported = report[CLASS_IDS]
    foreign = sorted(set(reported.tolist()) - set(ids.tolist()))
    if foreign:
        named = ", ".join(_class(c, class_names) for c in foreign[:5])
        raise RejectedReport(f"reports class(es) {named}, which its test slice does not hold")
    if not np.array_equal(reported, ids):
        raise RejectedReport(
            f"'{CLASS_IDS}' {reported.tolist()} differ from its slice's {ids.tolist()}"
        )
    if not np.array_equal(report[CLASS_COUNTS], counts):
        raise RejectedReport(
            f"'{CLASS_COUNTS}' {report[CLASS_COUNTS].tolist()} differ from its slice's "
            f"{counts.tolist()}"
        )
    for key in sorted(keys - {CLASS_IDS, CLASS_COUNTS}):
        _check_correct_counts(key, report[key], counts)


def _check_correct_counts(key: str, correct: np.ndarray, counts: np.ndarray) -> None:
    values = correct.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise RejectedReport(f"{key!r} holds NaN or infinite values")
    if not np.array_equal(values, np.round(values)):
        raise RejectedReport(f"{key!r} holds values that are not whole counts")
    if np.any(values < 0) or np.any(values > counts):
        raise RejectedReport(f"{key!r} holds counts outside 0 to the class's test samples")


def slice_scores(report: State, data: FederatedStream, task: Task) -> SliceScores:
    """A checked report summed per seen task."""
    ids = report[CLASS_IDS].astype(np.int64)
    per_task = [data.stream.task(j).classes for j in range(task.index + 1)]

    def totals(values: np.ndarray) -> list[int]:
        return [round(float(values[(ids >= c.start) & (ids < c.stop)].sum())) for c in per_task]

    local = report.get(CORRECT_LOCAL)
    return SliceScores(
        totals(report[CLASS_COUNTS]),
        totals(report[CORRECT_GLOBAL]),
        None if local is None else totals(local),
    )


def _class(index: int, class_names: list[str]) -> str:
    name = class_names[index] if 0 <= index < len(class_names) else "out of range"
    return f"{index} ({name!r})"
