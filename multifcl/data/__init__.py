"""Data sets, the class-incremental task stream and client partitions."""

from multifcl.data.federation import FederatedStream
from multifcl.data.images import DataError, InMemoryImages
from multifcl.data.sources import load_splits
from multifcl.data.splits import DatasetSplits
from multifcl.data.task_stream import Task, TaskStream

__all__ = [
    "DataError",
    "DatasetSplits",
    "FederatedStream",
    "InMemoryImages",
    "Task",
    "TaskStream",
    "load_splits",
]
