"""Client partitions: counts, disjointness, determinism, and each scheme's shape."""

import numpy as np
import pytest

from multifcl.data.images import DataError
from multifcl.data.partitions import DirichletPartition, IidPartition, QualityPartition
from tests.test_config import one_line_error

LABELS = np.repeat(np.arange(10), 60)
SCHEMES = [IidPartition(), DirichletPartition(0.5), QualityPartition(2)]


@pytest.mark.parametrize("partition", SCHEMES, ids=lambda p: p.name)
def test_parts_are_disjoint_and_cover_the_task(partition):
    parts = partition.split(LABELS, 5, task=0, seed=1)
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))
    assert sorted(joined.tolist()) == list(range(len(LABELS)))


@pytest.mark.parametrize("partition", SCHEMES, ids=lambda p: p.name)
def test_partition_is_a_pure_function_of_its_inputs(partition):
    first = partition.split(LABELS, 4, task=2, seed=3)
    again = partition.split(LABELS, 4, task=2, seed=3)
    other_task = partition.split(LABELS, 4, task=3, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_task))


def test_iid_shares_are_equal():
    sizes = [len(p) for p in IidPartition().split(LABELS, 4, 0, 0)]
    assert sizes == [150, 150, 150, 150]


def test_smaller_beta_is_more_skewed():
    def classes_held_per_client(beta):
        parts = DirichletPartition(beta).split(LABELS, 5, 0, 0)
        return np.mean([(np.bincount(LABELS[p], minlength=10) >= 6).sum() for p in parts])

    assert classes_held_per_client(0.05) < classes_held_per_client(100.0)


def test_quality_gives_alpha_classes_split_evenly_among_holders():
    parts = QualityPartition(2).split(LABELS, 5, 0, 0)
    holders = {}
    for client, part in enumerate(parts):
        classes = np.unique(LABELS[part])
        assert len(classes) == 2
        for c in classes:
            holders.setdefault(int(c), []).append(int((LABELS[part] == c).sum()))
    # 5 clients x 2 classes over 10 classes: each class held by one client, all samples
    assert all(counts == [60] for counts in holders.values())
    parts = QualityPartition(4).split(LABELS, 5, 0, 0)  # each class held by two clients
    per_class = {}
    for part in parts:
        for c in np.unique(LABELS[part]):
            per_class.setdefault(int(c), []).append(int((LABELS[part] == c).sum()))
    assert all(counts == [30, 30] for counts in per_class.values())


def test_a_client_left_without_samples_is_an_error():
    message = one_line_error(DataError, lambda: IidPartition().split(np.arange(3), 5, 1, 0))
    assert "leaves client 3 of 5 with no samples in task 1" in message


def test_a_process_splits_each_task_once_however_many_clients_it_serves(tiny_config):
    from multifcl.data import FederatedStream, load_splits

    config = tiny_config(num_tasks=2)
    data = FederatedStream(load_splits(config, 32), config)
    splits = []
    split = data.partition.split
    data.partition.split = lambda *args: splits.append(args[2]) or split(*args)
    for task in data.stream:
        for _ in range(2):  # twice over more clients than the 8 decoded slices kept
            for client in range(12):
                data.client_train_set(task, client, 12)
    assert splits == [0, 1]  # one split per task, not one per client or call
    stream = data.stream
    for task in stream:  # the same parts as a split of its own
        pool = stream.train_indices(task)
        parts = IidPartition().split(stream.train_labels[pool], 12, task.index, config.seed)
        for client, part in enumerate(parts):
            assert np.array_equal(data.client_indices(task, client, 12), pool[part])
