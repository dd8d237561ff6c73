"""The continual-learning strategy: one task's rounds, merged by the method's own rule."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from multifcl.methods import ClientUpdate, Method
from multifcl.methods.base import CLASS_MEAN_COSINE, SECONDS_PER_STEP
from multifcl.metrics import RoundRecord
from strategies.records import (
    ARRAYS,
    CONFIG,
    content_to_update,
    record_bytes,
    record_to_state,
    state_to_record,
)


class ClientFailure(RuntimeError):
    """No client returned a usable update for a round."""


class ContinualStrategy(Strategy):
    """Sends the global state and {task, round} to every node; merges with `method.merge`.

    Parameters
    ----------
    method : Method
        Provides the merge rule for the clients' updates.
    on_round : callable, optional
        Called with a `RoundRecord` (bytes each way, seconds, loss) after each round.
    """

    def __init__(
        self, method: Method, on_round: Callable[[RoundRecord], None] | None = None
    ) -> None:
        self.method = method
        self.on_round = on_round
        self._state = None
        self._round_started = 0.0
        self._bytes_down = 0
        self._sent = 0
        self._task = 0

    def summary(self) -> None:
        log(INFO, "\t└── ContinualStrategy with method %r", self.method.name)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        node_ids = sorted(grid.get_node_ids())
        self._state = record_to_state(arrays)
        self._task = int(config["task"])
        self._round_started = time.perf_counter()
        self._bytes_down = record_bytes(arrays) * len(node_ids)
        self._sent = len(node_ids)
        messages = []
        for node_id in node_ids:
            round_config = ConfigRecord({**dict(config), "round": server_round})
            content = RecordDict({ARRAYS: arrays, CONFIG: round_config})
            messages.append(Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        updates, bytes_up, reasons = [], 0, []
        for reply in replies:
            if reply.has_error():
                reasons.append(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                continue
            bytes_up += record_bytes(reply.content[ARRAYS])
            updates.append(content_to_update(reply.content))
        failures = self._sent - len(updates)
        for reason in reasons:
            log(
                WARNING, "task %d round %d: client failed: %s", self._task + 1, server_round, reason
            )
        if not updates:
            raise ClientFailure(
                f"task {self._task + 1} round {server_round}: no client returned an update "
                f"({'; '.join(reasons) or 'no replies'})"
            )
        merged = self.method.merge(self._state, updates)
        loss = _weighted_mean(updates, lambda u: u.train_loss)
        step_time = _weighted_mean(updates, lambda u: u.metrics.get(SECONDS_PER_STEP))
        cosine = _weighted_mean(updates, lambda u: u.metrics.get(CLASS_MEAN_COSINE))
        record = RoundRecord(
            task=self._task + 1,
            round=server_round,
            clients=len(updates),
            bytes_up=bytes_up,
            bytes_down=self._bytes_down,
            seconds=round(time.perf_counter() - self._round_started, 3),
            train_loss=None if loss is None else round(loss, 6),
            failures=failures,
            seconds_per_step=None if step_time is None else round(step_time, 6),
            class_mean_cosine=None if cosine is None else round(cosine, 6),
        )
        if self.on_round is not None:
            self.on_round(record)
        metrics = {"num-examples": sum(u.num_examples for u in updates)}
        if loss is not None:
            metrics["train-loss"] = loss
        return state_to_record(merged), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global state itself, after each task

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def _weighted_mean(updates: list[ClientUpdate], value_of) -> float | None:
    """Sample-weighted mean of a per-client value over the clients that report it."""
    values = [(value_of(u), u.num_examples) for u in updates]
    pairs = [(value, n) for value, n in values if value is not None]
    if not pairs:
        return None
    return sum(value * n for value, n in pairs) / sum(n for _, n in pairs)
