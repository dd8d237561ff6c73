"""Merge rules: FedAvg and per-class count-weighted prototype rows."""

import numpy as np

from multifcl.aggregation import merge_class_rows, weighted_average


def test_weighted_average_weights_by_sample_count():
    merged = weighted_average(
        [{"w": np.array([0.0, 2.0], np.float32)}, {"w": np.array([4.0, 2.0], np.float32)}], [3, 1]
    )
    assert np.allclose(merged["w"], [1.0, 2.0]) and merged["w"].dtype == np.float32


def test_class_rows_merge_to_the_global_class_mean():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 4))
    labels = rng.integers(0, 3, 30)
    owners = rng.integers(0, 2, 30)
    ids, rows, counts = [], [], []
    for client in range(2):
        mine = owners == client
        classes = np.unique(labels[mine])
        ids.append(classes)
        rows.append(np.stack([features[mine & (labels == c)].mean(0) for c in classes]))
        counts.append(np.array([(mine & (labels == c)).sum() for c in classes], np.float32))
    start = np.full((5, 4), 7.0, np.float32)
    merged, merged_counts = merge_class_rows(start, np.zeros(5, np.float32), ids, rows, counts)
    for c in range(3):
        assert np.allclose(merged[c], features[labels == c].mean(0), atol=1e-6)
        assert merged_counts[c] == (labels == c).sum()
    assert np.all(merged[3:] == 7.0)  # classes nobody reported keep their rows
