"""The round runner: one federated round as one call, merged by the method's own rule,
with failed clients recorded and rounds retried when too few usable updates came back."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from multifcl.client_sampling import ClientSampler, sampled_label
from multifcl.client_stream_schedule import Stage
from multifcl.data import Task, TaskStream
from multifcl.features import CACHE_HITS, CACHE_MISSES
from multifcl.methods import ClientUpdate, Method, State
from multifcl.methods.base import CLASS_MEAN_COSINE, PROTOTYPE_MOVEMENT, SECONDS_PER_STEP
from multifcl.metrics import RoundRecord
from multifcl.metrics.resources import CLIENT_SECONDS, PEAK_RSS_MB
from multifcl.update_validation import (
    RejectedUpdate,
    check_trained_claim,
    outlier_updates,
    validate_update,
)
from protocol.broadcast import CHUNKS, MANIFEST, BroadcastLedger, ChunkedState, lacks_chunks
from protocol.messages import (
    ARRAYS,
    CONFIG,
    content_to_update,
    record_bytes,
    record_to_state,
    state_to_record,
    trained_claim,
)

REASON_MAX_CHARS = 200  # a failure reason in rounds.csv and the log stays one short line


class RoundFailed(RuntimeError):
    """A round got too few usable updates in every one of its attempts."""


@dataclass
class RoundResult:
    """A merged round: the new global state, the `RoundRecord` of every attempt (the last
    one merged) and, when asked for, each client's own model (node id -> its update alone
    merged into the round's state)."""

    state: State
    records: list[RoundRecord]
    client_states: dict[int, State] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundPlan:
    """An asynchronous round (docs/asynchronous.md): each sampled client's own global task
    and its round within that task, by node id; `clients` counts the sampled clients
    (connected or not) and `sampled` names them as rounds.csv does."""

    positions: Mapping[int, tuple[Task, int]]
    clients: int
    sampled: str = ""


@dataclass
class _Attempt:
    """What one attempt of a round knows while it waits for and judges the replies."""

    task: Task | Stage  # the round's task; a stage (only its index) when there is a plan
    server_round: int
    number: int  # 1 for the first attempt, 2 for the first retry, ...
    state: State  # the global state as the clients received it
    nodes: list[int]  # the connected nodes the round is sent to
    clients: int  # how many clients the round is for (the sampled ones, connected or not)
    sampled: str = ""  # the sampled partition ids, as rounds.csv records them
    started: float = field(default_factory=time.perf_counter)
    bytes_down: int = 0
    destinations: dict[str, int] = field(default_factory=dict)  # message id -> node
    positions: Mapping[int, tuple[Task, int]] = field(default_factory=dict)  # a plan's

    def position(self, node: int) -> tuple[Task, int]:
        """The (task, round within it) `node` is sent: its own in a planned round."""
        return self.positions.get(node, (self.task, self.server_round))


@dataclass
class _Replies:
    """An attempt's replies sorted out: usable updates and failed clients, by node."""

    updates: dict[int, ClientUpdate] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0

    def in_merge_order(self) -> list[ClientUpdate]:
        """The usable updates in content order: arrival order and node ids vary from run to
        run, the content does not, so equal replies always merge to a bit-identical state."""
        return sorted(self.updates.values(), key=_content_digest)


class RoundRunner:
    """Sends the global state and {task, round} to the round's sampled nodes (every node
    without a `sampler`); merges with `method.merge`. Unsampled nodes get no message.

    It holds settings and the `BroadcastLedger` of the chunks each node holds, so a node is
    sent only the chunks of the state it lacks (`protocol/broadcast.py`); a node that
    cannot assemble the state is resent all of it within the same attempt. `train_round`
    runs one round as one call. A client that returns
    an error, does not answer within `round_timeout`, or sends a reply that cannot be
    decoded, fails `validate_update` or is one of the round's `outlier_updates`
    (`max-row-norm-ratio`, `max-change-ratio`) is a failed client: it is excluded from the
    merge, logged, and recorded with its reason in the attempt's `RoundRecord`.

    Parameters
    ----------
    method : Method
        Provides the merge rule for the clients' updates.
    stream : TaskStream
        The task stream; replies are validated against the classes of the round's task.
    round_timeout : float
        Seconds to wait for the replies of one attempt of a round (also the messages' ttl).
    min_fit_fraction : float
        The share (0, 1] of the round's clients (the sampled ones) whose usable updates a
        round needs to be merged (rounded up, at least one).
    max_round_retries : int
        How often `train_round` re-sends a round that got too few usable updates.
    num_clients : int
        The run's number of clients (0: the nodes each round is sent to). Nodes that have
        dropped out of the grid since the run started count as failed clients.
    sampler : ClientSampler, optional
        Draws each round's clients (the same for every attempt of the round); a sampled
        node that has left the grid counts as a failed client. None: every node.
    on_round : callable, optional
        Called with a `RoundRecord` (bytes each way, seconds, loss, failures) after each
        attempt of a round, merged or not, as soon as it is judged.
    delta_broadcast : bool
        Send each node only the chunks it lacks (True) or the whole state every round.
    partitions : mapping, optional
        Node id -> partition id (the handshake's): each usable update's `sender`, which
        per-holder merges use. None: updates carry no sender.
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
        sampler: ClientSampler | None = None,
        delta_broadcast: bool = True,
        partitions: Mapping[int, int] | None = None,
    ) -> None:
        self.method = method
        self.stream = stream
        self.round_timeout = round_timeout
        self.min_fit_fraction = min_fit_fraction
        self.max_round_retries = max_round_retries
        self.num_clients = num_clients
        self.on_round = on_round
        self.sampler = sampler
        self.ledger = BroadcastLedger(delta_broadcast)
        self.partitions = dict(partitions or {})

    def train_round(
        self,
        grid: Grid,
        state: State,
        task: Task,
        server_round: int,
        keep_client_states: bool = False,
        plan: RoundPlan | None = None,
    ) -> RoundResult:
        """Run one round of `task` from `state`, re-sending it (same seeds) up to
        `max_round_retries` times while too few clients give a usable update; RoundFailed
        when every attempt did. With a `plan` each of its nodes trains its own task (and
        `task` is the stage, whose index rounds.csv records)."""
        sent_state = record_to_state(state_to_record(state))  # as clients get it: float32
        chunked = ChunkedState.of(sent_state)
        attempts = self.max_round_retries + 1
        records: list[RoundRecord] = []
        for number in range(1, attempts + 1):
            attempt = self._attempt(grid, task, server_round, number, sent_state, plan)
            replies = self._send(grid, chunked, attempt)
            sorted_out = self._sort_out(attempt, replies)
            usable = sorted_out.in_merge_order()
            record, failure = self._judge(attempt, sorted_out, usable)
            records.append(record)
            if self.on_round is not None:
                self.on_round(record)
            if failure is None:
                merged = self.method.merge(sent_state, usable)
                kept = self._client_states(sent_state, sorted_out) if keep_client_states else {}
                return RoundResult(merged, records, kept)
            if number < attempts:
                log(WARNING, "%s; retrying (attempt %d of %d)", failure, number + 1, attempts)
        raise RoundFailed(f"{failure}; gave up after {attempts} attempt(s)")

    def _attempt(
        self,
        grid: Grid,
        task: Task | Stage,
        server_round: int,
        number: int,
        state: State,
        plan: RoundPlan | None = None,
    ) -> _Attempt:
        """An attempt of the round, for its sampled (or planned) nodes connected now."""
        connected = sorted(grid.get_node_ids())
        if plan is not None:
            nodes = sorted(set(connected) & set(plan.positions))
            attempt = _Attempt(task, server_round, number, state, nodes, plan.clients)
            attempt.sampled, attempt.positions = plan.sampled, plan.positions
            return attempt
        if self.sampler is None:
            clients = max(len(connected), self.num_clients)
            return _Attempt(task, server_round, number, state, connected, clients)
        sampled = self.sampler.node_ids(task.index, server_round)
        nodes = sorted(set(connected) & set(sampled))
        label = sampled_label(self.sampler.partition_ids(task.index, server_round))
        return _Attempt(task, server_round, number, state, nodes, len(sampled), label)

    def _send(self, grid: Grid, chunked: ChunkedState, attempt: _Attempt) -> list[Message]:
        """Send the round to every node of the attempt (the chunks each lacks); resend the
        whole state to the nodes that could not assemble it; the replies within
        `round_timeout`. A message not delivered within it is dropped (ttl), not trained on
        late."""
        replies = self._send_to(grid, chunked, attempt, attempt.nodes, self.round_timeout)
        lacking = {_sender(attempt, r) for r in replies if _lacks_chunks(r)}
        if lacking:
            log(
                INFO,
                "task %d round %d: %d node(s) lacked chunks of the state; resent it whole",
                attempt.task.index + 1,
                attempt.server_round,
                len(lacking),
            )
            self.ledger.forget(lacking)
            replies = [r for r in replies if _sender(attempt, r) not in lacking]
            left = max(self.round_timeout - (time.perf_counter() - attempt.started), 1.0)
            replies += self._send_to(grid, chunked, attempt, sorted(lacking), left, whole=True)
        assembled = [r for r in replies if not r.has_error() and not _lacks_chunks(r)]
        self.ledger.confirm([_sender(attempt, r) for r in assembled], chunked)
        return replies

    def _send_to(
        self,
        grid: Grid,
        chunked: ChunkedState,
        attempt: _Attempt,
        nodes: list[int],
        timeout: float,
        whole: bool = False,
    ) -> list[Message]:
        """One message to each of `nodes` (all of the state when `whole`, else the chunks
        each lacks), counted in the attempt's bytes down; the replies within `timeout`."""
        payloads: dict[frozenset[bytes], tuple[dict, int]] = {}
        messages = []
        for node_id in nodes:
            held = frozenset() if whole else self.ledger.held_by(node_id)
            if held not in payloads:  # nodes holding the same chunks share one record
                chunks = chunked.chunks_record(held)
                size = record_bytes(chunked.manifest_record) + record_bytes(chunks)
                payloads[held] = ({MANIFEST: chunked.manifest_record, CHUNKS: chunks}, size)
            records, size = payloads[held]
            attempt.bytes_down += size
            task, task_round = attempt.position(node_id)
            config = {"task": task.index, "round": task_round}
            messages.append(
                Message(
                    RecordDict({**records, CONFIG: ConfigRecord(config)}),
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    ttl=self.round_timeout,
                )
            )
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        attempt.destinations.update(destinations(messages))
        return replies

    def _sort_out(self, attempt: _Attempt, replies: Iterable[Message]) -> _Replies:
        """Usable updates and failed clients (error, malformed, rejected, outlier, silent)."""
        sorted_out = _Replies()
        for reply in replies:
            node = _sender(attempt, reply)
            if node not in attempt.nodes:  # not sampled, or not taking part in the task
                sorted_out.failed[node] = "rejected: a reply from a node this round was not sent to"
                continue
            if reply.has_error():
                sorted_out.failed[node] = error_reason(reply)
                continue
            if _lacks_chunks(reply):
                sorted_out.failed[node] = "could not assemble the state even when sent it whole"
                continue
            try:
                sorted_out.bytes_up += record_bytes(reply.content[ARRAYS])
                update = content_to_update(reply.content)
            except Exception as error:  # noqa: BLE001 - a malformed reply is a failed client
                sorted_out.failed[node] = f"malformed reply: {type(error).__name__}: {error}"
                continue
            task = attempt.position(node)[0]
            try:
                claim = trained_claim(reply.content)
            except Exception as error:  # noqa: BLE001 - a malformed reply is a failed client
                sorted_out.failed[node] = f"malformed reply: {type(error).__name__}: {error}"
                continue
            try:
                check_trained_claim(claim, task, required=bool(attempt.positions))
                max_examples = len(self.stream.train_indices(task))  # no client has more
                validate_update(attempt.state, update, task, self.method, max_examples)
            except RejectedUpdate as rejection:
                sorted_out.failed[node] = f"rejected: {rejection}"
            else:
                update.sender = self.partitions.get(node)
                sorted_out.updates[node] = update
        self._drop_outliers(attempt, sorted_out)
        for node in attempt.nodes:
            if node not in sorted_out.updates and node not in sorted_out.failed:
                sorted_out.failed[node] = f"no reply within {self.round_timeout:g} s"
        return sorted_out

    def _drop_outliers(self, attempt: _Attempt, sorted_out: _Replies) -> None:
        """Move the finite but absurd updates (next to the others) to the failed clients."""
        ratios = self.method.config.max_row_norm_ratio, self.method.config.max_change_ratio
        updates = sorted_out.updates
        tasks = {attempt.position(node)[0].index: attempt.position(node)[0] for node in updates}
        outliers = outlier_updates(attempt.state, updates, tasks.values(), self.method, *ratios)
        for node, reason in outliers.items():
            sorted_out.failed[node] = f"rejected: {reason}"
            del updates[node]

    def _judge(
        self, attempt: _Attempt, sorted_out: _Replies, usable: list[ClientUpdate]
    ) -> tuple[RoundRecord, str | None]:
        """The attempt's record, and why it cannot be merged (None: it can), logging each
        failed client."""
        failed = {str(node): one_line(why) for node, why in sorted(sorted_out.failed.items())}
        clients = attempt.clients
        missing = clients - len(attempt.nodes)
        if missing:
            failed["not connected"] = f"{missing} of the round's {clients} clients"
        task_number, server_round = attempt.task.index + 1, attempt.server_round
        for who, reason in failed.items():
            log(WARNING, "task %d round %d: %s: %s", task_number, server_round, who, reason)
        needed = max(1, math.ceil(self.min_fit_fraction * clients - 1e-9))
        record = _round_record(attempt, usable, sorted_out.bytes_up)
        record.failures = clients - len(usable)
        record.failed_clients = "; ".join(f"{who}: {reason}" for who, reason in failed.items())
        record.merged = len(usable) >= needed
        if record.merged:
            return record, None
        record.train_loss = record.seconds_per_step = record.class_mean_cosine = None
        record.prototype_movement = None
        return record, (
            f"task {task_number} round {server_round}: {len(usable)} of "
            f"{clients} clients sent a usable update, min-fit-fraction "
            f"{self.min_fit_fraction:g} needs {needed} (failed: {record.failed_clients})"
        )

    def _client_states(self, state: State, sorted_out: _Replies) -> dict[int, State]:
        """Each client's own model: its update alone merged into the round's state, as an
        update without a sender (its data as if it were the only client's)."""
        return {
            node: self.method.merge(state, [replace(u, sender=None)])
            for node, u in sorted_out.updates.items()
        }


def destinations(messages: Iterable[Message]) -> dict[str, int]:
    """Message id -> the node it was sent to (ids are set when the grid pushes a message).

    A reply is attributed through these, not by its sender: the error reply the SuperLink
    makes for an unreachable node comes from the SuperLink's own node id (1).
    """
    return {message.metadata.message_id: message.metadata.dst_node_id for message in messages}


def _sender(attempt: _Attempt, reply: Message) -> int:
    """The node a reply answers for: the destination of the message it replies to."""
    node = attempt.destinations.get(reply.metadata.reply_to_message_id)
    return reply.metadata.src_node_id if node is None else node


def _lacks_chunks(reply: Message) -> bool:
    """A node's answer that it could not assemble the state (it did not train): it lacks
    chunks, or holds some that do not match their digests."""
    return not reply.has_error() and lacks_chunks(reply.content)


def error_reason(reply: Message) -> str:
    """A failed reply's reason; an unreachable node is said to be one, not timed out."""
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return f"node unavailable: {reply.error.reason}"
    return f"error: {reply.error.reason}"


def _content_digest(update: ClientUpdate) -> bytes:
    """A digest of an update's arrays and counts (its place in the merge order)."""
    digest = hashlib.sha256(str(update.num_examples).encode())
    for key in sorted(update.arrays):
        array = update.arrays[key]
        digest.update(f"{key}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


def _round_record(attempt: _Attempt, updates: list[ClientUpdate], bytes_up: int) -> RoundRecord:
    """The attempt's record: sizes, time, and the merged clients' weighted diagnostics."""
    loss = _weighted_mean(updates, lambda u: u.train_loss)
    step_time = _weighted_mean(updates, lambda u: u.metrics.get(SECONDS_PER_STEP))
    cosine = _weighted_mean(updates, lambda u: u.metrics.get(CLASS_MEAN_COSINE))
    movement = _weighted_mean(updates, lambda u: u.metrics.get(PROTOTYPE_MOVEMENT))
    client_seconds = [u.metrics[CLIENT_SECONDS] for u in updates if CLIENT_SECONDS in u.metrics]
    peaks = [u.metrics[PEAK_RSS_MB] for u in updates if PEAK_RSS_MB in u.metrics]
    return RoundRecord(
        task=attempt.task.index + 1,
        round=attempt.server_round,
        clients=len(updates),
        bytes_up=bytes_up,
        bytes_down=attempt.bytes_down,
        seconds=round(time.perf_counter() - attempt.started, 3),
        train_loss=_rounded(loss, 6),
        seconds_per_step=_rounded(step_time, 6),
        class_mean_cosine=_rounded(cosine, 6),
        prototype_movement=_rounded(movement, 6),
        client_seconds=round(sum(client_seconds), 3) if client_seconds else None,
        client_peak_rss_mb=round(max(peaks), 1) if peaks else None,
        feature_cache_hits=_summed_count(updates, CACHE_HITS),
        feature_cache_misses=_summed_count(updates, CACHE_MISSES),
        attempt=attempt.number,
        sampled_clients=attempt.sampled,
    )


def _summed_count(updates: list[ClientUpdate], metric: str) -> int | None:
    """The clients' counts of `metric`, summed; None when no client reported it."""
    counts = [u.metrics[metric] for u in updates if metric in u.metrics]
    return int(sum(counts)) if counts else None


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def one_line(reason: str) -> str:
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
