"""Client partitions of one task's training samples: Dirichlet, quality-based, IID.

A partition is a pure function of (task labels, task index, number of clients, seed):
every process that computes it gets the same split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from multifcl.config import ExperimentConfig
from multifcl.data.images import DataError

DIRICHLET_DRAWS = 100  # redraws allowed before giving up on leaving no client empty


class Partition(ABC):
    """Splits the indices of one task's samples among clients."""

    name: str

    def split(self, labels: np.ndarray, num_clients: int, task: int, seed: int) -> list[np.ndarray]:
        """Positions into `labels` for each client, each sorted; raises if a client is empty."""
        if num_clients < 1:
            raise DataError(
                f"partition {self.name!r}: needs at least one client, got {num_clients}"
            )
        rng = np.random.default_rng([seed, task, num_clients])
        parts = [np.sort(part) for part in self._split(labels, num_clients, rng)]
        for client, part in enumerate(parts):
            if len(part) == 0:
                raise DataError(
                    f"partition {self.name!r} ({self.describe()}) leaves client {client} of "
                    f"{num_clients} with no samples in task {task}; use fewer clients or "
                    "another partition"
                )
        return parts

    def describe(self) -> str:
        return ""

    @abstractmethod
    def _split(self, labels: np.ndarray, num_clients: int, rng) -> list[np.ndarray]: ...


class IidPartition(Partition):
    """Shuffled samples dealt into equal shares."""

    name = "iid"

    def _split(self, labels, num_clients, rng):
        return np.array_split(rng.permutation(len(labels)), num_clients)


class DirichletPartition(Partition):
    """Each class's samples split by proportions drawn from Dirichlet(beta)."""

    name = "dirichlet"

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def describe(self) -> str:
        return f"beta={self.beta}"

    def _split(self, labels, num_clients, rng):
        for _ in range(DIRICHLET_DRAWS):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for label in np.unique(labels):
                members = rng.permutation(np.flatnonzero(labels == label))
                shares = rng.dirichlet(np.full(num_clients, self.beta))
                cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
                for client, piece in enumerate(np.split(members, cuts)):
                    parts[client].append(piece)
            merged = [np.concatenate(pieces) for pieces in parts]
            if all(len(part) for part in merged):
                return merged
        return merged


class QualityPartition(Partition):
    """Each client gets `alpha` classes; a class's samples split evenly among its holders.

    Classes are dealt round-robin from a shuffled order, so every class has a holder
    whenever clients x alpha >= classes.
    """

    name = "quality"

    def __init__(self, alpha: int) -> None:
        self.alpha = alpha

    def describe(self) -> str:
        return f"alpha={self.alpha}"

    def _split(self, labels, num_clients, rng):
        classes = rng.permutation(np.unique(labels))
        holders: dict[int, list[int]] = {int(c): [] for c in classes}
        for client in range(num_clients):
            for slot in range(self.alpha):
                holders[int(classes[(client * self.alpha + slot) % len(classes)])].append(client)
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label, clients in holders.items():
            if not clients:
                continue
            members = rng.permutation(np.flatnonzero(labels == label))
            for client, piece in zip(clients, np.array_split(members, len(clients))):
                parts[client].append(piece)
        return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def make_partition(config: ExperimentConfig) -> Partition:
    """The partition the config names."""
    if config.partition == "dirichlet":
        return DirichletPartition(config.beta)
    if config.partition == "quality":
        return QualityPartition(config.alpha)
    return IidPartition()
