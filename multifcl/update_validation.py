"""Server-side checks of a client's update before it is merged.

A reply is merged only when it has the arrays a genuine update has (per-class rows of the
task's classes, dense arrays in the state's shape and dtype), finite values, counts that add
up to its sample count, and a size no genuine update can exceed. The exact layout comes from
the method (`Method.update_layout`): per-class uploads are `class-ids` (integers, shape
(k,)), `class-counts` (shape (k,)) and row arrays of shape (k, ...) of a (num_classes, ...)
state array; dense arrays are sent whole; float arrays may travel as float16 where the state
holds float32 (`transmit-dtype`).

`outlier_updates` then compares the round's updates that passed with each other: a finite
value can still be absurd (a class mean x 1e30), which only its size next to the genuine
updates gives away (see its docstring for the bounds).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping

import numpy as np

from multifcl.data import Task
from multifcl.methods import ClientUpdate, Method, State
from multifcl.methods.base import UpdateLayout

CLASS_IDS = "class-ids"
CLASS_COUNTS = "class-counts"
# Class counts travel as float32, which holds every whole number up to 2**24 exactly.
MAX_EXAMPLES = 2**24
# float16 rounds a number x to within |x| * 2**-11: the slack of the counts' sum, and the
# change of an array that travelled as float16 unchanged.
FLOAT16_ROUNDING = float(np.finfo(np.float16).eps)
INT64_BYTES = 8
NAMES_SHOWN = 3  # keys named in a reason before "... (n in all)"
MIN_VOTES = 3  # a median of fewer values is not a majority's: no outlier check


class RejectedUpdate(ValueError):
    """A client's update that must not be merged; the message is a one-line reason."""


def validate_update(
    state: State,
    update: ClientUpdate,
    task: Task,
    method: Method,
    max_examples: int = MAX_EXAMPLES,
) -> None:
    """Raise RejectedUpdate(one-line reason) when the update must not be merged.

    `method` gives the exact layout of a genuine update of `task` and its value check.
    `max_examples` caps the sample count a client may claim (e.g. the task's training-set
    size, when the caller knows it).
    """
    _check_examples(update.num_examples, max_examples)
    _check_diagnostics(update)
    arrays = update.arrays
    _check_size(arrays, max_update_bytes(state, task))
    layout = method.update_layout(state, task)
    _check_keys(arrays, layout)
    if layout.rows:
        ids = _checked_class_ids(arrays[CLASS_IDS], task)
        for key, target in layout.rows.items():
            _check_rows(key, arrays[key], state, target, ids)
    for key in layout.dense:
        _check_array(key, arrays[key], state[key], state[key].shape)
    if CLASS_COUNTS in layout.rows:
        _check_counts(arrays[CLASS_COUNTS], update.num_examples)
    problem = method.update_value_problem(state, update, task)
    if problem is not None:
        raise RejectedUpdate(problem)


def check_trained_claim(claim: tuple[int, list[int]] | None, task: Task, required: bool) -> None:
    """Raise RejectedUpdate when a reply's claim (global task, classes trained) is not the
    task the client was sent, or names classes outside it; a reply without a claim is
    rejected only where one is `required` (an asynchronous round)."""
    if claim is None:
        if required:
            raise RejectedUpdate("the reply does not name the task and classes it trained")
        return
    claimed, classes = claim
    if claimed != task.index:
        raise RejectedUpdate(
            f"trained task {claimed + 1}, but this client was sent task {task.index + 1}"
        )
    outside = [c for c in classes if c not in task.classes]
    if not classes or outside:
        raise RejectedUpdate(
            f"trained classes {outside[:NAMES_SHOWN] or classes} are not classes of task "
            f"{task.index + 1} ({task.classes.start}..{task.classes.stop - 1})"
        )


def outlier_updates(
    state: State,
    updates: Mapping[Hashable, ClientUpdate],
    tasks: Collection[Task],
    method: Method,
    max_row_norm_ratio: float = 10.0,
    max_change_ratio: float = 100.0,
) -> dict[Hashable, str]:
    """One-line reasons, by client, for the updates (each already passed `validate_update`)
    whose size is implausible next to the others; 0 turns a check off.

    - Feature rows (`UpdateLayout.feature_rows`: class means, prototypes) must have norms
      within a factor `max_row_norm_ratio` of a reference m: m / ratio <= ||row|| <= m x
      ratio. A class mean of a frozen backbone's features is at most the largest feature
      norm, which the server does not know; rows of one feature space have norms of one
      scale, and m estimates it: the median of one vote per update (the median norm of its
      rows) and one per merged row of the state (classes with a count, validated before).
    - Each dense array's change from the broadcast state, ||sent - state||, must be at most
      `max_change_ratio` x the median change of that array across the updates (changes
      within float16 rounding of the state never count).

    A median needs genuine voters in the majority, so with fewer than three votes (one or
    two updates, and no merged rows for the row check) nothing is an outlier.

    `tasks` are the tasks the updates trained (one in a synchronous round; an asynchronous
    round may mix them): every key of their layouts is checked among the updates that carry it.
    """
    if not updates:
        return {}
    layouts = [method.update_layout(state, task) for task in tasks]
    feature_rows = {key: layout.rows[key] for layout in layouts for key in layout.feature_rows}
    dense = {key for layout in layouts for key in layout.dense}
    found: list[dict[Hashable, str]] = []
    if max_row_norm_ratio:
        found += [
            _row_outliers(key, state, feature_rows[key], updates, max_row_norm_ratio)
            for key in sorted(feature_rows)
        ]
    if max_change_ratio and len(updates) >= MIN_VOTES:
        found += [
            _change_outliers(key, state[key], updates, max_change_ratio)
            for key in sorted(dense)
            if state[key].dtype.kind == "f"
        ]
    reasons: dict[Hashable, str] = {}
    for outliers in found:  # the first reason found for each client
        for node, reason in outliers.items():
            reasons.setdefault(node, reason)
    return reasons


def _row_outliers(key: str, state: State, target: str, updates, ratio: float) -> dict:
    """Updates with a row of `key` whose norm is outside [m / ratio, m x ratio]."""
    norms = {node: _row_norms(u.arrays[key]) for node, u in updates.items() if key in u.arrays}
    votes = [float(np.median(rows)) for rows in norms.values()]
    if CLASS_COUNTS in state:
        votes += _row_norms(state[target][state[CLASS_COUNTS] > 0]).tolist()
    median = float(np.median(votes)) if len(votes) >= MIN_VOTES else 0.0
    if median == 0:
        return {}
    low, high = median / ratio, median * ratio
    reasons = {}
    for node, rows in norms.items():
        bad = rows[(rows < low) | (rows > high)]
        if len(bad):
            reasons[node] = (
                f"key {key!r}: a row of norm {bad[0]:.3g} is outside [{low:.3g}, {high:.3g}], "
                f"{ratio:g}x around the median norm {median:.3g}"
            )
    return reasons


def _change_outliers(key: str, current: np.ndarray, updates, ratio: float) -> dict:
    """Updates that change `key` by more than `ratio` x the median change (and by more than
    float16 rounding)."""
    current = current.astype(np.float64)
    changes = {
        node: float(np.linalg.norm(u.arrays[key].astype(np.float64) - current))
        for node, u in updates.items()
        if key in u.arrays  # a FedAvg update may leave a key out
    }
    if len(changes) < MIN_VOTES:  # too few to say what a usual change is
        return {}
    median = float(np.median(list(changes.values())))
    bound = max(median * ratio, FLOAT16_ROUNDING * (float(np.linalg.norm(current)) + 1.0))
    return {
        node: f"key {key!r} changed by {change:.3g}, more than {ratio:g}x the median "
        f"change {median:.3g}"
        for node, change in changes.items()
        if change > bound
    }


def _row_norms(rows: np.ndarray) -> np.ndarray:
    flat = rows.astype(np.float64).reshape(len(rows), int(np.prod(rows.shape[1:])))
    return np.sqrt((flat**2).sum(axis=1))


def max_update_bytes(state: State, task: Task) -> int:
    """The most bytes an update can hold and pass the shape and dtype checks.

    Each state array is updated at most once, either whole (its own size; float16 only
    shrinks it) or as rows of the task's classes (row size x classes of the task), so
    the update is at most every state array whole plus every state array's rows of all the
    task's classes, plus the class ids as int64. No update that passes the other checks
    exceeds it; checked first, it rejects an oversized reply before any value is read.
    """
    whole = sum(value.nbytes for value in state.values())
    row_bytes = sum(
        value.nbytes // value.shape[0] for value in state.values() if value.ndim and value.shape[0]
    )
    return whole + len(task.classes) * (row_bytes + INT64_BYTES)


def _check_examples(num_examples, max_examples: int) -> None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)):
        raise RejectedUpdate(f"num-examples {num_examples!r} is not an integer")
    if not 1 <= num_examples <= max_examples:
        raise RejectedUpdate(f"num-examples {num_examples} is outside 1..{max_examples}")


def _check_diagnostics(update: ClientUpdate) -> None:
    """The loss must be finite; a metric may be NaN (not measurable) but never infinite."""
    loss = update.train_loss
    if loss is not None and not (_is_real(loss) and math.isfinite(loss)):
        raise RejectedUpdate(f"train-loss {loss!r} is not a finite number")
    for name, value in update.metrics.items():
        if not _is_real(value) or math.isinf(value):
            raise RejectedUpdate(f"metric {name!r} is {value!r}, not a number or NaN")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_size(arrays: State, limit: int) -> None:
    size = sum(value.nbytes for value in arrays.values() if isinstance(value, np.ndarray))
    if size > limit:
        raise RejectedUpdate(f"update holds {size} bytes, more than the {limit} bytes bound")


def _check_keys(arrays: State, layout: UpdateLayout) -> None:
    expected = set(layout.rows) | set(layout.dense) | ({CLASS_IDS} if layout.rows else set())
    unknown = set(arrays) - expected
    if unknown:
        raise RejectedUpdate(f"unknown key(s) {_names(unknown)}")
    missing = expected - set(arrays)
    if missing:
        raise RejectedUpdate(f"missing key(s) {_names(missing)}")
    targets = list(layout.rows.values()) + list(layout.dense)
    twice = {target for target in targets if targets.count(target) > 1}
    if twice:
        raise RejectedUpdate(f"state key(s) {_names(twice)} sent under two names")
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise RejectedUpdate(f"key {key!r} is a {type(value).__name__}, not an array")


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(key) for key in keys[:NAMES_SHOWN])
    return shown if len(keys) <= NAMES_SHOWN else f"{shown} ... ({len(keys)} in all)"


def _checked_class_ids(ids: np.ndarray, task: Task) -> np.ndarray:
    """The class ids, once they are distinct integers among the task's classes."""
    if not np.issubdtype(ids.dtype, np.integer) or ids.ndim != 1 or len(ids) == 0:
        raise RejectedUpdate(
            f"key {CLASS_IDS!r} must be a non-empty 1-D integer array, got {ids.dtype} "
            f"of shape {ids.shape}"
        )
    if len(np.unique(ids)) != len(ids):
        raise RejectedUpdate(f"key {CLASS_IDS!r} repeats a class")
    classes = task.classes
    outside = ids[(ids < classes.start) | (ids >= classes.stop)]
    if len(outside):
        raise RejectedUpdate(
            f"key {CLASS_IDS!r}: {outside[:NAMES_SHOWN].tolist()} are not classes of task "
            f"{task.index + 1} ({classes.start}..{classes.stop - 1})"
        )
    return ids


def _check_rows(key: str, value: np.ndarray, state: State, target: str, ids) -> None:
    if target not in state:
        raise RejectedUpdate(f"key {key!r}: its state key {target!r} is not in the global state")
    reference = state[target]
    if reference.ndim == 0 or reference.shape[0] <= ids.max():
        raise RejectedUpdate(f"key {key!r}: state key {target!r} has no row per class")
    _check_array(key, value, reference, (len(ids), *reference.shape[1:]))


def _check_array(key: str, value: np.ndarray, reference: np.ndarray, shape: tuple) -> None:
    """Expected shape, the reference's dtype (float16 for float32 too), finite values."""
    if value.shape != tuple(shape):
        raise RejectedUpdate(f"key {key!r} has shape {value.shape}, expected {tuple(shape)}")
    dtype, expected = value.dtype, reference.dtype
    if dtype != expected and not (expected == np.float32 and dtype == np.float16):
        raise RejectedUpdate(f"key {key!r} has dtype {dtype}, expected {expected}")
    if dtype.kind == "f":
        bad = np.size(value) - np.count_nonzero(np.isfinite(value))
        if bad:
            raise RejectedUpdate(f"key {key!r} has {bad} non-finite value(s)")


def _check_counts(counts: np.ndarray, num_examples: int) -> None:
    """Whole, non-negative counts that add up to the sample count, up to float16 rounding
    (counts may travel as float16, which rounds whole numbers above 2048)."""
    if (counts < 0).any():
        raise RejectedUpdate(f"key {CLASS_COUNTS!r} has a negative count")
    if (counts != np.round(counts)).any():
        raise RejectedUpdate(f"key {CLASS_COUNTS!r} has a count that is not a whole number")
    total = float(counts.astype(np.float64).sum())
    if abs(total - num_examples) > num_examples * FLOAT16_ROUNDING:
        raise RejectedUpdate(
            f"key {CLASS_COUNTS!r} adds up to {total:g}, not num-examples {num_examples}"
        )


__all__ = [
    "MAX_EXAMPLES",
    "RejectedUpdate",
    "check_trained_claim",
    "max_update_bytes",
    "outlier_updates",
    "validate_update",
]
