"""Class order, equal disjoint tasks and the per-class cap."""

import numpy as np
import pytest

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import DatasetSplits, InMemoryImages, TaskStream
from tests.test_config import one_line_error


def fake_splits(num_classes: int, per_class: int = 4) -> DatasetSplits:
    import torch

    labels = np.repeat(np.arange(num_classes), per_class)
    images = InMemoryImages(torch.zeros((len(labels), 3, 2, 2), dtype=torch.uint8), labels)
    return DatasetSplits(images, images, [f"c{i}" for i in range(num_classes)])


def test_cifar100_order_follows_the_pycil_convention():
    stream = TaskStream(fake_splits(100), ExperimentConfig(num_tasks=10))
    assert stream.class_order[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert stream.class_names[0] == "c68"


def test_tasks_are_equal_and_disjoint_and_cover_every_class():
    splits = fake_splits(20)
    stream = TaskStream(splits, ExperimentConfig(num_tasks=4))
    seen = []
    for task in stream:
        labels = stream.train_labels[stream.train_indices(task)]
        assert sorted(set(labels)) == list(task.classes)
        assert len(task.classes) == 5
        assert task.seen_classes == range(task.classes.stop)
        seen.extend(stream.class_order[list(task.classes)])
    assert sorted(seen) == list(range(20))


def test_stream_labels_map_back_to_source_classes():
    splits = fake_splits(10)
    stream = TaskStream(splits, ExperimentConfig(num_tasks=2, class_order_seed=7))
    assert np.array_equal(stream.class_order[stream.train_labels], splits.train.labels)


def test_cap_keeps_at_most_n_per_class_deterministically():
    splits = fake_splits(10, per_class=9)
    config = ExperimentConfig(num_tasks=2, max_train_per_class=3)
    first = TaskStream(splits, config).train_indices(TaskStream(splits, config).task(0))
    again = TaskStream(splits, config).train_indices(TaskStream(splits, config).task(0))
    assert len(first) == 15 and np.array_equal(first, again)


def test_num_tasks_must_divide_the_classes():
    message = one_line_error(
        ConfigError, lambda: TaskStream(fake_splits(10), ExperimentConfig(num_tasks=3))
    )
    assert "'num-tasks': 3 does not divide the 10 classes" in message


def test_alpha_larger_than_task_classes_is_refused():
    config = ExperimentConfig(num_tasks=5, partition="quality", alpha=3)
    message = one_line_error(ConfigError, lambda: TaskStream(fake_splits(10), config))
    assert "'alpha': 3 is more than the 2 classes" in message


def test_task_index_out_of_range():
    with pytest.raises(IndexError):
        TaskStream(fake_splits(10), ExperimentConfig(num_tasks=2)).task(2)
