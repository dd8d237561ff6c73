"""Client sampling: which of the run's clients train in a round (`fraction-train`,
`min-train-clients`), drawn from (seed, task, round) alone, so every process, a retried
round and a resumed run draw the same subset.

Clients are drawn as partition ids, which stay the same across runs and resumes (node ids
do not), and mapped to the nodes holding them in this run. With `clients-per-task`, a task's
rounds draw among the clients taking part in it only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from multifcl.client_schedule import ClientSchedule
from multifcl.seeding import derive_seed

SAMPLING_STREAM = 0x53414D50  # "SAMP": keeps the draw apart from the clients' seeds


@dataclass(frozen=True)
class ClientSampler:
    """Draws each round's clients among the run's `partitions` (node id -> partition id)
    that take part in the round's task (`schedule`; all by default).

    A round samples max(floor(`fraction` x clients), `min_clients`) of them (all when that
    is as many as take part), as Flower's FedAvg does.
    """

    partitions: Mapping[int, int]
    fraction: float = 1.0
    min_clients: int = 1
    seed: int = 0
    schedule: ClientSchedule = field(default_factory=ClientSchedule)

    @property
    def size(self) -> int:
        """How many clients a round samples when every client takes part."""
        return self.size_among(len(self.partitions))

    def size_among(self, clients: int) -> int:
        """How many of `clients` taking part in a task each of its rounds samples."""
        return min(clients, max(self.min_clients, math.floor(self.fraction * clients + 1e-9)))

    @property
    def samples_all(self) -> bool:
        """Whether every round samples every client taking part in its task."""
        return self.fraction >= 1 or self.min_clients >= len(self.partitions)

    def taking_part(self, task: int) -> list[int]:
        """The sorted partition ids held in this run that take part in `task` (0-based)."""
        return sorted(p for p in self.partitions.values() if self.schedule.takes_part(p, task))

    def partition_ids(self, task: int, server_round: int) -> list[int]:
        """The sorted partition ids sampled for round `server_round` of task `task` (0-based)."""
        return self.draw(self.taking_part(task), task, server_round)

    def draw(self, held: list[int], task: int, server_round: int) -> list[int]:
        """The sorted partition ids sampled among the sorted `held` for round `server_round`
        of `task` (0-based; a stage's index in an asynchronous stream)."""
        size = self.size_among(len(held))
        if size == len(held):
            return held
        rng = np.random.default_rng(derive_seed(SAMPLING_STREAM, self.seed, task, server_round))
        return sorted(int(p) for p in rng.choice(held, size, replace=False))

    def node_ids(self, task: int, server_round: int) -> list[int]:
        """The sorted node ids holding the round's sampled partitions."""
        sampled = set(self.partition_ids(task, server_round))
        return sorted(node for node, part in self.partitions.items() if part in sampled)


def sampled_label(partition_ids: Sequence[int]) -> str:
    """The `sampled_clients` cell of rounds.csv: partition ids joined by `;`."""
    return ";".join(str(p) for p in partition_ids)


def never_sampled_classes(
    sampler: ClientSampler, task: int, rounds: int, holdings: Mapping[int, set[int]]
) -> list[int]:
    """The classes some client holds (`holdings`: partition id -> its classes in `task`)
    but none of the clients sampled in any of the task's `rounds` rounds."""
    sampled: set[int] = set()
    for server_round in range(1, rounds + 1):
        sampled.update(sampler.partition_ids(task, server_round))
    held = set().union(*holdings.values()) if holdings else set()
    reached = set().union(*(holdings.get(p, set()) for p in sampled)) if sampled else set()
    return sorted(held - reached)
