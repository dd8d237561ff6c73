"""The class-incremental task stream: class order, equal disjoint tasks, stream labels.

Classes are renumbered in stream order: stream class `c` is source class `class_order[c]`,
so task `t` holds stream classes `t*k ... (t+1)*k - 1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data.splits import DatasetSplits
from multifcl.data.validation_split import hold_out


@dataclass(frozen=True)
class Task:
    """One task of the stream: its index and its classes, and every class seen so far."""

    index: int
    classes: range
    seen_classes: range


def check_divides(num_classes: int, config: ExperimentConfig) -> None:
    """A one-line ConfigError when `num-tasks` cannot split `num_classes` into equal tasks."""
    if num_classes % config.num_tasks != 0:
        raise ConfigError(
            f"run config key 'num-tasks': {config.num_tasks} does not divide the "
            f"{num_classes} classes of dataset {config.dataset!r}"
        )


class TaskStream:
    """Splits a data set's classes into `num-tasks` equal tasks in a seeded order."""

    def __init__(self, splits: DatasetSplits, config: ExperimentConfig) -> None:
        num_classes = splits.num_classes
        check_divides(num_classes, config)
        self.num_tasks = config.num_tasks
        self.classes_per_task = num_classes // config.num_tasks
        if config.partition == "quality" and config.alpha > self.classes_per_task:
            raise ConfigError(
                f"run config key 'alpha': {config.alpha} is more than the "
                f"{self.classes_per_task} classes of each task"
            )
        self.class_order = np.random.RandomState(config.class_order_seed).permutation(num_classes)
        self._stream_label = np.empty(num_classes, dtype=np.int64)
        self._stream_label[self.class_order] = np.arange(num_classes)
        self.class_names = [splits.class_names[c] for c in self.class_order]
        self.train_labels = self._stream_label[splits.train.labels]
        self.test_labels = self._stream_label[splits.test.labels]
        capped = _cap_per_class(self.train_labels, config.max_train_per_class, config.seed)
        self._train_pool, self._validation_pool = hold_out(
            capped, self.train_labels, config.val_fraction, config.seed, self.classes_per_task
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    def task(self, index: int) -> Task:
        if not 0 <= index < self.num_tasks:
            raise IndexError(f"task {index} is outside the stream of {self.num_tasks} tasks")
        k = self.classes_per_task
        return Task(index, range(index * k, (index + 1) * k), range((index + 1) * k))

    def __iter__(self):
        return (self.task(index) for index in range(self.num_tasks))

    def train_indices(self, task: Task) -> np.ndarray:
        """Indices into the train split of the task's training samples (after the per-class
        cap, without the validation split)."""
        return self._train_pool[_in_classes(self.train_labels[self._train_pool], task.classes)]

    def validation_indices(self, task: Task) -> np.ndarray:
        """Indices into the train split of the task's held-out samples (`val-fraction`;
        empty when it is 0)."""
        pool = self._validation_pool
        return pool[_in_classes(self.train_labels[pool], task.classes)]

    def test_indices(self, task: Task) -> np.ndarray:
        """Indices into the test split of the task's samples."""
        return np.flatnonzero(_in_classes(self.test_labels, task.classes))


def _in_classes(labels: np.ndarray, classes: range) -> np.ndarray:
    return (labels >= classes.start) & (labels < classes.stop)


def _cap_per_class(labels: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random `cap` of each class's indices, in ascending order."""
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kept.append(members if len(members) <= cap else rng.choice(members, cap, replace=False))
    return np.sort(np.concatenate(kept))
