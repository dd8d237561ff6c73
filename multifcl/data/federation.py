"""The federated view of a task stream: which samples each client holds in each task."""

from __future__ import annotations

from functools import cached_property, lru_cache

import numpy as np

from multifcl.client_schedule import ClientSchedule
from multifcl.config import ExperimentConfig
from multifcl.data.client_test_slices import split_test_set
from multifcl.data.fingerprint import DataFingerprint, split_fingerprint
from multifcl.data.images import DataError, InMemoryImages
from multifcl.data.partitions import make_partition
from multifcl.data.splits import DatasetSplits
from multifcl.data.task_stream import Task, TaskStream

READ_CHECK_CHUNK = 2048
TEST, VALIDATION = "test", "validation"  # the held-out sets the server scores


class FederatedStream:
    """A task stream split among clients; each task's partition and the decoded slices of the
    last clients served are cached per process."""

    def __init__(self, splits: DatasetSplits, config: ExperimentConfig) -> None:
        self.splits = splits
        self.stream = TaskStream(splits, config)
        self.partition = make_partition(config)
        self.schedule = ClientSchedule.parse(config.clients_per_task, config.num_tasks)
        self.seed = config.seed
        self.client_parts = lru_cache(maxsize=None)(self._client_parts)  # one per task
        self.client_train_set = lru_cache(maxsize=8)(self._client_train_set)
        self.test_set = lru_cache(maxsize=None)(self._test_set)
        self.validation_set = lru_cache(maxsize=None)(self._validation_set)

    @cached_property
    def fingerprint(self) -> DataFingerprint:
        """The train split's fingerprint (class names, sample count, digests), computed once."""
        splits = self.splits
        return split_fingerprint(splits.train, splits.class_names, splits.split_digest)

    def _client_parts(self, task: Task, num_clients: int) -> tuple[np.ndarray, ...]:
        """Indices into the train split held by each client taking part in `task`: the task's
        samples split among its first k_t of `num_clients` clients (`clients-per-task`; all
        of them by default), so none goes to a client that has not joined (raises if a
        taking-part client would be empty); computed once per task and number of clients,
        then looked up by client."""
        pool = self.stream.train_indices(task)
        labels = self.stream.train_labels[pool]
        active = self.schedule.active(task.index, num_clients)
        return tuple(
            pool[part] for part in self.partition.split(labels, active, task.index, self.seed)
        )

    def client_indices(self, task: Task, client: int, num_clients: int) -> np.ndarray:
        """Indices into the train split of the samples `client` holds in `task`; a
        DataError for a client that takes no part in `task`."""
        parts = self.client_parts(task, num_clients)
        if client >= len(parts):
            raise DataError(
                f"partition-id {client} takes no part in task {task.index + 1}: "
                f"clients-per-task={self.schedule.text!r} lets only partition ids 0 to "
                f"{len(parts) - 1} train in it"
            )
        return parts[client]

    def client_test_positions(self, task: Task, num_clients: int) -> list[np.ndarray]:
        """Positions into `test_set(task)` of each client's test slice (`client_test_slices`)."""
        parts = self.client_parts(task, num_clients)
        test_labels = self.stream.test_labels[self.stream.test_indices(task)]
        held = [self.stream.train_labels[part] for part in parts]
        not_joined = np.empty(0, dtype=self.stream.train_labels.dtype)  # holds nothing yet
        held += [not_joined] * (num_clients - len(parts))
        return split_test_set(held, test_labels, self.seed, task.index)

    def client_test_set(self, task: Task, client: int, num_clients: int) -> InMemoryImages:
        """The test images and labels of `client`'s slice of `task` (decoded once per task)."""
        positions = self.client_test_positions(task, num_clients)[client]
        return self.test_set(task).take(positions)

    def check_clients(self, num_clients: int) -> None:
        """Raise before any training if some client would hold no samples in some task it
        takes part in, or the schedule asks for more than `num_clients` clients."""
        for task in self.stream:
            self.client_parts(task, num_clients)

    def check_readable(self) -> None:
        """Decode every image the run will use once, so a bad file fails before training.

        Test and validation sets stay cached for evaluation; decoded train images are dropped.
        """
        for task in self.stream:
            self.test_set(task)
            if len(self.stream.validation_indices(task)):  # val-fraction > 0
                self.validation_set(task)
        pool = np.concatenate([self.stream.train_indices(task) for task in self.stream])
        for start in range(0, len(pool), READ_CHECK_CHUNK):  # chunks bound the memory used
            self.splits.train.take(pool[start : start + READ_CHECK_CHUNK])

    def _client_train_set(self, task: Task, client: int, num_clients: int) -> InMemoryImages:
        indices = self.client_indices(task, client, num_clients)
        return _with_stream_labels(
            self.splits.train.take(indices), self.stream.train_labels[indices]
        )

    def held_out_set(self, task: Task, subset: str) -> InMemoryImages:
        """The task's `test` set or its `validation` set (`val-fraction`)."""
        if subset == VALIDATION:
            return self.validation_set(task)
        return self.test_set(task)

    def _validation_set(self, task: Task) -> InMemoryImages:
        indices = self.stream.validation_indices(task)
        return _with_stream_labels(
            self.splits.train.take(indices), self.stream.train_labels[indices]
        )

    def _test_set(self, task: Task) -> InMemoryImages:
        indices = self.stream.test_indices(task)
        return _with_stream_labels(self.splits.test.take(indices), self.stream.test_labels[indices])


def _with_stream_labels(images: InMemoryImages, stream_labels: np.ndarray) -> InMemoryImages:
    return InMemoryImages(images.images, stream_labels)
