"""Server-side merge rules shared by methods: FedAvg, per-class weighted rows, and their
robust variants (`robust-merge`).

Both merges combine, for each array (FedAvg) or each class's row (rows), the values of the
clients that sent it. `MergeRule` says how: the weighted mean (`"none"`), or a statistic one
or more malicious senders cannot drag arbitrarily far (`"trimmed-mean"`, `"median"`,
`"norm-clip"`). A robust statistic needs honest senders in the majority: a row sent by one
or two clients (a class few clients hold) is merged by their plain weighted mean whatever the
rule; `multifcl/update_validation.py` bounds what such a row can be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MergeRule:
    """How the server combines k clients' values of one array or one class's row.

    - `"none"`: the weighted mean (weights: sample counts, or per-class counts);
    - `"trimmed-mean"`: per coordinate, the plain mean after dropping the
      ceil(`trim_fraction` x k) largest and as many smallest values, at most (k - 1) // 2
      each side (Yin et al., 2018);
    - `"median"`: per coordinate, the median (the mean of the middle two for even k);
    - `"norm-clip"`: each client's change from the current value is scaled down to at most
      the median of the clients' change norms, then the weighted mean (Sun et al., 2019).

    Trimmed mean and median ignore the weights (a claimed count buys no larger say); every
    rule is the weighted mean for k <= 2, where no majority exists.
    """

    name: str = "none"
    trim_fraction: float = 0.25

    def combine(
        self, values: np.ndarray, weights: np.ndarray, current: np.ndarray | None
    ) -> np.ndarray:
        """(k, ...) float64 values and (k,) weights -> the merged value (float64).
        `current` is the value before the round (needed by `"norm-clip"`)."""
        k = len(values)
        if self.name == "none" or k <= 2:
            return _weighted_mean(values, weights)
        if self.name == "median":
            return np.median(values, axis=0)
        if self.name == "trimmed-mean":
            cut = min(math.ceil(self.trim_fraction * k), (k - 1) // 2)
            return np.sort(values, axis=0)[cut : k - cut].mean(axis=0)
        if self.name == "norm-clip":
            changes = values - current
            norms = np.sqrt((changes.reshape(k, -1) ** 2).sum(axis=1))
            scale = np.minimum(1.0, np.median(norms) / np.maximum(norms, 1e-300))
            return current + _weighted_mean(changes * _per_client(scale, changes), weights)
        raise ValueError(f"unknown merge rule {self.name!r}")


NO_RULE = MergeRule()


def weighted_average(
    arrays: Sequence[dict[str, np.ndarray]],
    weights: Sequence[float],
    rule: MergeRule = NO_RULE,
    current: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """FedAvg: each key averaged across clients, weighted (e.g. by sample count), or
    combined by `rule`; `current` (the state before the round) is what `"norm-clip"`
    measures changes from."""
    total = float(sum(weights))
    if not arrays or total <= 0:
        raise ValueError("weighted_average needs at least one client with a positive weight")
    if rule.name == "norm-clip" and current is None:
        raise ValueError("the norm-clip merge needs the current state")
    if rule.name == "none":
        return {
            key: np.asarray(
                sum(w * a[key].astype(np.float64) for a, w in zip(arrays, weights)) / total
            ).astype(arrays[0][key].dtype)
            for key in arrays[0]
        }
    weights = np.asarray(weights, np.float64)
    return {
        key: rule.combine(
            np.stack([a[key].astype(np.float64) for a in arrays]),
            weights,
            None if current is None else current[key].astype(np.float64),
        ).astype(arrays[0][key].dtype)
        for key in arrays[0]
    }


def merge_class_rows(
    rows: np.ndarray,
    counts: np.ndarray,
    client_classes: Sequence[np.ndarray],
    client_rows: Sequence[np.ndarray],
    client_counts: Sequence[np.ndarray],
    rule: MergeRule = NO_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each reported class's row by the count-weighted mean of the clients' rows,
    or by `rule` over the clients that sent that class's row.

    Rows of classes no client reported keep their current value; a reported class's count
    becomes the sum of its clients' counts.
    """
    sums = np.zeros(rows.shape, dtype=np.float64)
    totals = np.zeros(len(rows), dtype=np.float64)
    for classes, values, weights in zip(client_classes, client_rows, client_counts):
        np.add.at(sums, classes, values.astype(np.float64) * weights[:, None])
        np.add.at(totals, classes, weights)
    reported = totals > 0
    merged_rows, merged_counts = rows.copy(), counts.copy()
    merged_counts[reported] = totals[reported]
    if rule.name == "none":
        merged_rows[reported] = (sums[reported] / totals[reported, None]).astype(rows.dtype)
        return merged_rows, merged_counts
    senders: dict[int, list[tuple[np.ndarray, float]]] = {}
    for classes, values, weights in zip(client_classes, client_rows, client_counts):
        for c, value, weight in zip(classes.tolist(), values, weights):
            senders.setdefault(c, []).append((value.astype(np.float64), float(weight)))
    for c in np.flatnonzero(reported).tolist():
        values = np.stack([value for value, _ in senders[c]])
        weights = np.array([weight for _, weight in senders[c]])
        # a row is replaced by a fresh estimate each round, not moved by a step: norm-clip
        # bounds each sender's distance from the senders' median row, not from the old row
        # (which is all zeros before a class's first merge)
        reference = np.median(values, axis=0)
        merged_rows[c] = rule.combine(values, weights, reference)
    return merged_rows, merged_counts


def fold_in_new_holders(
    rows: np.ndarray,
    counts: np.ndarray,
    holders: np.ndarray,
    senders: Sequence[int],
    client_classes: Sequence[np.ndarray],
    client_rows: Sequence[np.ndarray],
    client_counts: Sequence[np.ndarray],
    rule: MergeRule = NO_RULE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class rows that keep every holder's contribution across rounds, for rows a client
    computes the same way whenever it sends them (class means of a frozen encoder).

    `holders[c, p]` is 1 once client `p` (a partition id, `senders[i]` for the i-th update)
    has been folded into class c's row; a row it sends again is skipped. The rows of a
    class's new holders are combined by `merge_class_rows` (and `rule`) and then folded into
    its count-weighted running mean. Returns (rows, counts, holders); `holders` gains
    columns when a sender's id is past its width. With every holder sending in one round
    this is `merge_class_rows`, bit for bit; under asynchronous streams and client sampling
    a class's row covers all the holders that have sent it, not only the latest round's.
    """
    holders = _widened(holders, senders)
    fresh_classes, fresh_rows, fresh_counts = [], [], []
    for sender, classes, values, weights in zip(
        senders, client_classes, client_rows, client_counts
    ):
        new = holders[classes, sender] == 0
        fresh_classes.append(classes[new])
        fresh_rows.append(values[new])
        fresh_counts.append(weights[new])
    new_rows, new_counts = merge_class_rows(
        np.zeros_like(rows), np.zeros_like(counts), fresh_classes, fresh_rows, fresh_counts, rule
    )
    reported = new_counts > 0
    old_counts = counts[reported].astype(np.float64)[:, None]
    added = new_counts[reported].astype(np.float64)[:, None]
    total = old_counts + added
    old_sums = rows[reported].astype(np.float64) * old_counts
    merged_rows, merged_counts = rows.copy(), counts.copy()
    merged_rows[reported] = (
        (old_sums + new_rows[reported].astype(np.float64) * added) / total
    ).astype(rows.dtype)
    merged_counts[reported] = total[:, 0]
    for sender, classes, weights in zip(senders, fresh_classes, fresh_counts):
        holders[classes[weights > 0], sender] = 1
    return merged_rows, merged_counts, holders


def merge_rows_keeping_absent_holders(
    rows: np.ndarray,
    counts: np.ndarray,
    holder_counts: np.ndarray,
    senders: Sequence[int],
    client_classes: Sequence[np.ndarray],
    client_rows: Sequence[np.ndarray],
    client_counts: Sequence[np.ndarray],
    rule: MergeRule = NO_RULE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class rows a client retrains from the global row whenever it sends them
    (MultiFCL's experts): the round's senders' rows merged by `merge_class_rows` (and
    `rule`), then a class's holders absent from the round weigh in with the class's current
    global row, by their sample counts, as FedAvg counts a client that returns the model it
    received.

    `holder_counts[c, p]` is the count of class c that client `p` (partition id,
    `senders[i]` for the i-th update) last sent; it gains columns when a sender's id is past
    its width. Returns (rows, counts, holder_counts); a class's count covers all its holders.
    When every holder of each reported class sends in the round (a synchronous stream without
    sampling) this is `merge_class_rows`, bit for bit; when a class's holders train it in
    different rounds (asynchronous streams, client sampling) its row no longer forgets the
    earlier ones.
    """
    holder_counts = _widened(holder_counts, senders)
    merged_rows, merged_counts = merge_class_rows(
        rows, counts, client_classes, client_rows, client_counts, rule
    )
    present = np.zeros(holder_counts.shape, dtype=bool)
    for sender, classes in zip(senders, client_classes):
        present[classes, sender] = True
    absent = np.where(present, 0.0, holder_counts.astype(np.float64)).sum(axis=1)
    folded = present.any(axis=1) & (absent > 0)
    round_counts = merged_counts[folded].astype(np.float64)[:, None]
    weight = absent[folded][:, None]
    merged_rows[folded] = (
        (merged_rows[folded] * round_counts + rows[folded] * weight) / (round_counts + weight)
    ).astype(rows.dtype)
    merged_counts[folded] = (round_counts + weight)[:, 0]
    for sender, classes, weights in zip(senders, client_classes, client_counts):
        holder_counts[classes, sender] = weights
    return merged_rows, merged_counts, holder_counts


def _widened(holders: np.ndarray, senders: Sequence[int]) -> np.ndarray:
    """A classes x partition-ids table with a column for every sender (zeros added)."""
    width = max([holders.shape[1], *(p + 1 for p in senders)])
    return np.pad(holders, ((0, 0), (0, width - holders.shape[1])))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, np.float64)
    return (values * _per_client(weights, values)).sum(axis=0) / weights.sum()


def _per_client(factors: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(k,) factors shaped to broadcast over (k, ...) values."""
    return factors.reshape((len(factors),) + (1,) * (values.ndim - 1))
