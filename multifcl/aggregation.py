"""Server-side merge rules shared by methods: FedAvg and per-class weighted rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_average(
    arrays: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """FedAvg: each key averaged across clients, weighted (e.g. by sample count)."""
    total = float(sum(weights))
    if not arrays or total <= 0:
        raise ValueError("weighted_average needs at least one client with a positive weight")
    return {
        key: np.asarray(
            sum(w * a[key].astype(np.float64) for a, w in zip(arrays, weights)) / total
        ).astype(arrays[0][key].dtype)
        for key in arrays[0]
    }


def merge_class_rows(
    rows: np.ndarray,
    counts: np.ndarray,
    client_classes: Sequence[np.ndarray],
    client_rows: Sequence[np.ndarray],
    client_counts: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each reported class's row by the count-weighted mean of the clients' rows.

    Rows of classes no client reported keep their current value.
    """
    sums = np.zeros(rows.shape, dtype=np.float64)
    totals = np.zeros(len(rows), dtype=np.float64)
    for classes, values, weights in zip(client_classes, client_rows, client_counts):
        np.add.at(sums, classes, values.astype(np.float64) * weights[:, None])
        np.add.at(totals, classes, weights)
    reported = totals > 0
    merged_rows, merged_counts = rows.copy(), counts.copy()
    merged_rows[reported] = (sums[reported] / totals[reported, None]).astype(rows.dtype)
    merged_counts[reported] = totals[reported]
    return merged_rows, merged_counts
