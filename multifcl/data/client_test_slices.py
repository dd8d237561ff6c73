"""Each client's test slice (`eval-local`): the test samples of the classes it holds in a
task, split among each class's holders the way the class's training samples are split.

The rule, per task and class c: the holders are the clients with at least one training
sample of c in the task's partition; c's test samples are shuffled by a generator seeded
with (seed, task, number of clients, c) and cut, in client order, at
floor(cumulative training share x test count), so each holder gets the share of c's test
samples that it holds of c's training samples (a holder of a small share may get none).
The slices of a task are disjoint and together cover its test set; every process that
computes them gets the same ones.
"""

from __future__ import annotations

import numpy as np

TEST_SLICE_SALT = 0x7E57  # keeps these draws apart from the partition's


def split_test_set(
    train_labels: list[np.ndarray], test_labels: np.ndarray, seed: int, task: int
) -> list[np.ndarray]:
    """Positions into `test_labels` (one task's test set) of each client's slice, sorted;
    `train_labels[i]` are the labels of client i's training samples in that task."""
    num_clients = len(train_labels)
    held = np.stack([_class_counts(labels, test_labels) for labels in train_labels])
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for column, label in enumerate(np.unique(test_labels)):
        members = np.flatnonzero(test_labels == label)
        shares = held[:, column]
        if shares.sum() == 0:  # no client holds it: its test samples are nobody's
            continue
        rng = np.random.default_rng([seed, task, num_clients, TEST_SLICE_SALT, int(label)])
        members = rng.permutation(members)
        cuts = np.floor(np.cumsum(shares)[:-1] / shares.sum() * len(members)).astype(int)
        for client, piece in enumerate(np.split(members, cuts)):
            pieces[client].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=np.int64) for p in pieces]


def _class_counts(labels: np.ndarray, test_labels: np.ndarray) -> np.ndarray:
    """How many of `labels` fall in each class of `test_labels`, in ascending class order."""
    classes = np.unique(test_labels)
    return np.array([int(np.sum(labels == c)) for c in classes], dtype=np.int64)
