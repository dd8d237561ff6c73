"""The continual-learning strategy: one round at a time, merged by the method's own rule,
with failed clients recorded and rounds retried when too few usable updates came back."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from multifcl.data import Task, TaskStream
from multifcl.methods import ClientUpdate, Method, State
from multifcl.methods.base import CLASS_MEAN_COSINE, PROTOTYPE_MOVEMENT, SECONDS_PER_STEP
from multifcl.metrics import RoundRecord
from multifcl.metrics.resources import CLIENT_SECONDS, PEAK_RSS_MB
from multifcl.update_validation import RejectedUpdate, outlier_updates, validate_update
from protocol.messages import (
    ARRAYS,
    CONFIG,
    content_to_update,
    record_bytes,
    record_to_state,
    state_to_record,
)

REASON_MAX_CHARS = 200  # a failure reason in rounds.csv and the log stays one short line


class TooFewReplies(RuntimeError):
    """One attempt of a round got fewer usable updates than `min-fit-fraction` asks for."""


class RoundFailed(RuntimeError):
    """A round got too few usable updates in every one of its attempts."""


class ContinualStrategy(Strategy):
    """Sends the global state and {task, round} to every node; merges with `method.merge`.

    A client that returns an error, does not answer within `round_timeout`, or sends a
    reply that cannot be decoded, fails `validate_update` or is one of the round's
    `outlier_updates` (`max-row-norm-ratio`, `max-change-ratio`) is a failed client: it is
    excluded from the merge, logged, and recorded with its reason in the round's
    `RoundRecord`.

    Parameters
    ----------
    method : Method
        Provides the merge rule for the clients' updates.
    stream : TaskStream
        The task stream; replies are validated against the classes of the round's task.
    round_timeout : float
        Seconds to wait for the replies of one attempt of a round.
    min_fit_fraction : float
        The share (0, 1] of the clients whose usable updates a round needs to be merged
        (rounded up, at least one).
    num_clients : int
        The run's number of clients (0: the nodes each round is sent to). Nodes that have
        dropped out of the grid since the run started count as failed clients.
    max_round_retries : int
        How often `train_round` re-sends a round that got too few usable updates.
    on_round : callable, optional
        Called with a `RoundRecord` (bytes each way, seconds, loss, failures) after each
        attempt of a round, merged or not.
    """

    def __init__(
        self,
        method: Method,
        stream: TaskStream,
        round_timeout: float = 86400.0,
        min_fit_fraction: float = 0.5,
        max_round_retries: int = 2,
        num_clients: int = 0,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.method = method
        self.stream = stream
        self.round_timeout = round_timeout
        self.min_fit_fraction = min_fit_fraction
        self.max_round_retries = max_round_retries
        self.num_clients = num_clients
        self.on_round = on_round
        self._state: State = {}
        self._task: Task | None = None
        self._task_examples = 0
        self._nodes: list[int] = []
        self._attempt = 1
        self._round_started = 0.0
        self._bytes_down = 0
        self._destinations: dict[str, int] = {}  # message id -> the node it was sent to
        self.keep_client_states = False  # True: the next rounds keep `client_states`
        self.client_states: dict[int, State] = {}  # node id -> its model after the round

    def summary(self) -> None:
        log(INFO, "\t└── ContinualStrategy with method %r", self.method.name)

    def train_round(
        self, grid: Grid, arrays: ArrayRecord, task: Task, server_round: int
    ) -> ArrayRecord:
        """Run one round of `task`, re-sending it (same seeds) up to `max_round_retries`
        times while too few clients give a usable update; the merged global state."""
        config = ConfigRecord({"task": task.index})
        attempts = self.max_round_retries + 1
        for attempt in range(1, attempts + 1):
            self._attempt = attempt
            messages = list(self.configure_train(server_round, arrays, config, grid))
            replies = grid.send_and_receive(messages, timeout=self.round_timeout)
            self._destinations = destinations(messages)
            try:
                merged, _ = self.aggregate_train(server_round, replies)
                return merged
            except TooFewReplies as error:
                failure = error
                if attempt < attempts:
                    log(WARNING, "%s; retrying (attempt %d of %d)", error, attempt + 1, attempts)
        raise RoundFailed(f"{failure}; gave up after {attempts} attempt(s)")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._nodes = sorted(grid.get_node_ids())
        self._state = record_to_state(arrays)
        self._task = self.stream.task(int(config["task"]))
        self._task_examples = len(self.stream.train_indices(self._task))  # no client has more
        self._round_started = time.perf_counter()
        self._bytes_down = record_bytes(arrays) * len(self._nodes)
        messages = []
        for node_id in self._nodes:
            round_config = ConfigRecord({**dict(config), "round": server_round})
            content = RecordDict({ARRAYS: arrays, CONFIG: round_config})
            messages.append(
                Message(
                    content,
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    ttl=self.round_timeout,  # a late message is dropped, not trained on
                )
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge the usable updates; TooFewReplies when fewer than `min_fit_fraction` of the
        nodes sent one (the attempt is still recorded)."""
        task_number = self._task.index + 1
        updates, failed, bytes_up = {}, {}, 0
        for reply in replies:
            node = self._destinations.get(reply.metadata.reply_to_message_id)
            node = reply.metadata.src_node_id if node is None else node
            if reply.has_error():
                failed[node] = error_reason(reply)
                continue
            try:
                bytes_up += record_bytes(reply.content[ARRAYS])
                update = content_to_update(reply.content)
            except Exception as error:  # noqa: BLE001 - a malformed reply is a failed client
                failed[node] = f"malformed reply: {type(error).__name__}: {error}"
                continue
            try:
                validate_update(
                    self._state,
                    update,
                    self._task,
                    method=self.method,
                    max_examples=self._task_examples,
                )
            except RejectedUpdate as rejection:
                failed[node] = f"rejected: {rejection}"
            else:
                updates[node] = update
        config = self.method.config
        ratios = config.max_row_norm_ratio, config.max_change_ratio
        outliers = outlier_updates(self._state, updates, self._task, self.method, *ratios)
        for node, reason in outliers.items():  # finite, but absurd next to the others
            failed[node] = f"rejected: {reason}"
            del updates[node]
        for node in self._nodes:
            if node not in updates and node not in failed:
                failed[node] = f"no reply within {self.round_timeout:g} s"
        failed = {str(node): _one_line(reason) for node, reason in sorted(failed.items())}
        clients = max(len(self._nodes), self.num_clients)
        missing = clients - len(self._nodes)
        if missing:
            failed["not connected"] = f"{missing} of the run's {clients} clients"
        for who, reason in failed.items():
            log(WARNING, "task %d round %d: %s: %s", task_number, server_round, who, reason)
        needed = max(1, math.ceil(self.min_fit_fraction * clients - 1e-9))
        # arrival order and node ids vary from run to run; the content does not
        merged_updates = sorted(updates.values(), key=_content_digest)
        record = self._record(server_round, merged_updates, bytes_up)
        record.failures = clients - len(merged_updates)
        record.failed_clients = "; ".join(f"{who}: {reason}" for who, reason in failed.items())
        record.merged = len(merged_updates) >= needed
        if not record.merged:
            record.train_loss = record.seconds_per_step = record.class_mean_cosine = None
            record.prototype_movement = None
            self._report(record)
            raise TooFewReplies(
                f"task {task_number} round {server_round}: {len(merged_updates)} of "
                f"{clients} clients sent a usable update, min-fit-fraction "
                f"{self.min_fit_fraction:g} needs {needed} (failed: {record.failed_clients})"
            )
        self._report(record)
        merged = self.method.merge(self._state, merged_updates)
        if self.keep_client_states:  # each client's own model: its update alone merged
            self.client_states = {
                node: self.method.merge(self._state, [update]) for node, update in updates.items()
            }
        metrics = {"num-examples": sum(u.num_examples for u in merged_updates)}
        if record.train_loss is not None:
            metrics["train-loss"] = record.train_loss
        return state_to_record(merged), MetricRecord(metrics)

    def _record(
        self,
        server_round: int,
        updates: list[ClientUpdate],
        bytes_up: int,
    ) -> RoundRecord:
        loss = _weighted_mean(updates, lambda u: u.train_loss)
        step_time = _weighted_mean(updates, lambda u: u.metrics.get(SECONDS_PER_STEP))
        cosine = _weighted_mean(updates, lambda u: u.metrics.get(CLASS_MEAN_COSINE))
        movement = _weighted_mean(updates, lambda u: u.metrics.get(PROTOTYPE_MOVEMENT))
        client_seconds = [u.metrics[CLIENT_SECONDS] for u in updates if CLIENT_SECONDS in u.metrics]
        peaks = [u.metrics[PEAK_RSS_MB] for u in updates if PEAK_RSS_MB in u.metrics]
        return RoundRecord(
            task=self._task.index + 1,
            round=server_round,
            clients=len(updates),
            bytes_up=bytes_up,
            bytes_down=self._bytes_down,
            seconds=round(time.perf_counter() - self._round_started, 3),
            train_loss=None if loss is None else round(loss, 6),
            seconds_per_step=None if step_time is None else round(step_time, 6),
            class_mean_cosine=None if cosine is None else round(cosine, 6),
            prototype_movement=None if movement is None else round(movement, 6),
            client_seconds=round(sum(client_seconds), 3) if client_seconds else None,
            client_peak_rss_mb=round(max(peaks), 1) if peaks else None,
            attempt=self._attempt,
        )

    def _report(self, record: RoundRecord) -> None:
        if self.on_round is not None:
            self.on_round(record)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global state itself, after each task

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def destinations(messages: Iterable[Message]) -> dict[str, int]:
    """Message id -> the node it was sent to (ids are set when the grid pushes a message).

    A reply is attributed through these, not by its sender: the error reply the SuperLink
    makes for an unreachable node comes from the SuperLink's own node id (1).
    """
    return {message.metadata.message_id: message.metadata.dst_node_id for message in messages}


def error_reason(reply: Message) -> str:
    """A failed reply's reason; an unreachable node is said to be one, not timed out."""
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return f"node unavailable: {reply.error.reason}"
    return f"error: {reply.error.reason}"


def _content_digest(update: ClientUpdate) -> bytes:
    """A digest of an update's arrays and counts: a merge order that does not depend on
    which node sent what or when, so equal replies always give a bit-identical state."""
    digest = hashlib.sha256(str(update.num_examples).encode())
    for key in sorted(update.arrays):
        array = update.arrays[key]
        digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def _one_line(reason: str) -> str:
    """A reason as one short line without the `; ` that separates clients in rounds.csv."""
    text = " ".join(reason.replace(";", ",").split())
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."


def _weighted_mean(updates: list[ClientUpdate], value_of) -> float | None:
    """Sample-weighted mean of a per-client value over the clients that report it."""
    values = [(value_of(u), u.num_examples) for u in updates]
    pairs = [(value, n) for value, n in values if value is not None]
    if not pairs:
        return None
    return sum(value * n for value, n in pairs) / sum(n for _, n in pairs)
