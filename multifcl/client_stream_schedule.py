"""Each client's own task order and start (`client-task-order`, `client-start-delay-rounds`):
which global task, and which round of it, a client trains in each global round, and the
stages the server evaluates after (semantics: docs/asynchronous.md).

Everything is drawn from (`seed`, partition id) alone, so every process and a resumed run
compute the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.seeding import derive_seed

ORDER_STREAM = 0x4F524452  # "ORDR": a client's task order, apart from every other draw
DELAY_STREAM = 0x444C4159  # "DLAY": the clients' places in the spread of start offsets
IDLE = -1  # a client that trains no task in a round (client_tasks)


def is_asynchronous(config: ExperimentConfig) -> bool:
    """Whether the config asks for anything but the synchronous stream."""
    return config.client_task_order != "shared" or config.client_start_delay_rounds > 0


@dataclass(frozen=True)
class Stage:
    """Global rounds `first_round` ... `last_round` (1-based), evaluated after the last."""

    index: int
    first_round: int
    last_round: int

    @property
    def rounds(self) -> int:
        return self.last_round - self.first_round + 1


@dataclass(frozen=True)
class StreamSchedule:
    """Client c (partition id) trains tasks `orders[c]` one after the other, `rounds_per_task`
    rounds each, starting after `offsets[c]` idle rounds; the server runs T x R + `delay`
    global rounds."""

    orders: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    rounds_per_task: int
    delay: int
    order: str = "shared"  # the `client-task-order` value, for metrics.json

    @classmethod
    def of(cls, config: ExperimentConfig, num_clients: int) -> StreamSchedule:
        """The schedule of `config` over `num_clients` clients; one ConfigError line when a
        delay needs more clients than there are."""
        tasks, delay = config.num_tasks, config.client_start_delay_rounds
        if delay and num_clients < 2:
            raise ConfigError(
                f"run config key 'client-start-delay-rounds': {delay} spreads the clients' "
                f"starts over {delay} rounds, which needs at least 2 clients, got {num_clients}"
            )
        if config.client_task_order == "per-client":
            orders = tuple(
                tuple(int(t) for t in _rng(config.seed, ORDER_STREAM, c).permutation(tasks))
                for c in range(num_clients)
            )
        else:
            orders = (tuple(range(tasks)),) * num_clients
        offsets = [0] * num_clients
        if delay:
            places = _rng(config.seed, DELAY_STREAM).permutation(num_clients)
            for place, client in enumerate(places):
                offsets[int(client)] = place * delay // (num_clients - 1)
        return cls(orders, tuple(offsets), config.rounds_per_task, delay, config.client_task_order)

    @property
    def num_tasks(self) -> int:
        return len(self.orders[0]) if self.orders else 0

    @property
    def total_rounds(self) -> int:
        """G = T x R + D global rounds."""
        return self.num_tasks * self.rounds_per_task + self.delay

    @property
    def stages(self) -> list[Stage]:
        """A stage every R global rounds, and one ending at the last round."""
        size, total = self.rounds_per_task, self.total_rounds
        return [
            Stage(s, s * size + 1, min((s + 1) * size, total))
            for s in range(math.ceil(total / size))
        ]

    def position(self, client: int, global_round: int) -> tuple[int, int] | None:
        """(global task, round within it, 1-based) client `client` trains in `global_round`
        (1-based); None while it is idle."""
        local = global_round - 1 - self.offsets[client]
        if not 0 <= local < self.num_tasks * self.rounds_per_task:
            return None
        place, round_in_task = divmod(local, self.rounds_per_task)
        return self.orders[client][place], round_in_task + 1

    def training(self, global_round: int) -> dict[int, tuple[int, int]]:
        """Partition id -> (task, round within it) of every client training in the round."""
        positions = {c: self.position(c, global_round) for c in range(len(self.offsets))}
        return {c: p for c, p in positions.items() if p is not None}

    def seen_tasks(self, stage: Stage) -> list[int]:
        """The global tasks some client has trained for a round by the end of `stage`."""
        return sorted({t for c in range(len(self.orders)) for t in self.client_seen(c, stage)})

    def client_seen(self, client: int, stage: Stage) -> list[int]:
        """The global tasks `client` has trained for a round by the end of `stage`."""
        started = stage.last_round - self.offsets[client]  # rounds since its start
        if started <= 0:
            return []
        order = self.orders[client]
        return sorted(order[: min(-(-started // self.rounds_per_task), len(order))])

    def client_accuracy(
        self, matrix: Sequence[Sequence[float | None]], test_sizes: Sequence[int]
    ) -> dict:
        """Each client's accuracy on its own seen classes after each stage: the global
        model's (among the stage's seen classes, as `matrix`) on the test images of the
        tasks the client has trained, i.e. the test-size-weighted mean of a[s][j] over them
        (None before its first round); with the mean and worst over clients per stage."""
        per_stage = []
        for stage, row in zip(self.stages, matrix):
            scores = []
            for client in range(len(self.orders)):
                seen = self.client_seen(client, stage)
                weight = sum(test_sizes[j] for j in seen)
                scores.append(
                    sum(row[j] * test_sizes[j] for j in seen) / weight if weight else None
                )
            per_stage.append(scores)
        scored = [[a for a in scores if a is not None] for scores in per_stage]
        return {
            "accuracy_own_seen": per_stage,
            "mean": [sum(a) / len(a) if a else None for a in scored],
            "worst": [min(a) if a else None for a in scored],
        }

    def ended_tasks(self, stage: Stage) -> list[int]:
        """The global tasks whose last client finishes them within `stage`."""
        ends: dict[int, int] = {}  # task -> the last global round any client trains it
        for client, order in enumerate(self.orders):
            for place, task in enumerate(order):
                end = self.offsets[client] + (place + 1) * self.rounds_per_task
                ends[task] = max(ends.get(task, 0), end)
        return sorted(t for t, end in ends.items() if stage.first_round <= end <= stage.last_round)

    def client_tasks(self) -> list[list[int]]:
        """Clients x global rounds: the task each client trains in each round (IDLE: none)."""
        rounds = range(1, self.total_rounds + 1)
        return [
            [IDLE if (p := self.position(c, r)) is None else p[0] for r in rounds]
            for c in range(len(self.offsets))
        ]

    def as_record(self) -> dict:
        """What metrics.json says about the schedule (`stream_schedule`)."""
        return {
            "client_task_order": self.order,
            "client_start_delay_rounds": self.delay,
            "rounds_per_task": self.rounds_per_task,
            "global_rounds": self.total_rounds,
            "orders": [list(order) for order in self.orders],
            "offsets": list(self.offsets),
            "seen_tasks": [self.seen_tasks(stage) for stage in self.stages],
            "client_tasks": self.client_tasks(),
        }


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))
