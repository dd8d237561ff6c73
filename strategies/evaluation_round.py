"""The clients' evaluation round after a task (`eval-local`): the global model, and each
client's own model where it has one, to every client of the federation (sampled in the
task's rounds or not) as EVALUATE messages; each report is checked against the client's
test slice before it counts. A client that errs, stays silent or sends a report that does
not fit its slice is left out (logged, and named in the round's rounds.csv row); its
entries stay None. The round is not retried."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from multifcl.client_evaluation import (
    RejectedReport,
    SliceScores,
    check_report,
    expected_slice,
    slice_scores,
)
from multifcl.data import FederatedStream, Task
from multifcl.methods import State
from multifcl.metrics import RoundRecord
from multifcl.metrics.client_accuracy import ClientStage
from multifcl.metrics.resources import CLIENT_SECONDS
from protocol.messages import (
    ARRAYS,
    CONFIG,
    LOCAL_ARRAYS,
    METRICS,
    REPORT,
    record_bytes,
    record_to_state,
    state_to_record,
)
from strategies.continual import destinations, error_reason, one_line


@dataclass
class _Reports:
    """An evaluation round's replies sorted out, by partition id."""

    scores: dict[int, SliceScores] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # node id -> reason
    bytes_up: int = 0
    client_seconds: float = 0.0


class EvaluationRound:
    """Runs the clients' evaluation after a task over `partitions` (node id -> partition
    id) of a federation of `num_partitions`, waiting `round_timeout` seconds for replies;
    its rounds.csv row is numbered `rounds_per_task + 1`."""

    def __init__(
        self,
        data: FederatedStream,
        num_partitions: int,
        round_timeout: float,
        rounds_per_task: int,
    ) -> None:
        self.data = data
        self.num_partitions = num_partitions
        self.round_timeout = round_timeout
        self.rounds_per_task = rounds_per_task

    def run(
        self,
        grid: Grid,
        partitions: dict[int, int],
        state: State,
        local_models: dict[int, State],
        task: Task,
    ) -> tuple[ClientStage, RoundRecord]:
        """Every connected client's checked scores after `task`, and the round's record."""
        started = time.perf_counter()
        nodes = [node for node in sorted(grid.get_node_ids()) if node in partitions]
        messages, bytes_down = self._messages(nodes, partitions, state, local_models, task)
        replies = grid.send_and_receive(messages, timeout=self.round_timeout)
        sent = destinations(messages)
        reports = _Reports()
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            with_local = partitions.get(node) in local_models
            self._sort_out(reply, node, partitions, with_local, task, reports)
        for node in nodes:
            if partitions[node] not in reports.scores and node not in reports.failed:
                reports.failed[node] = f"no reply within {self.round_timeout:g} s"
        for node, reason in sorted(reports.failed.items()):
            log(WARNING, "task %d evaluation: %d: %s", task.index + 1, node, reason)
        record = RoundRecord(
            task=task.index + 1,
            round=self.rounds_per_task + 1,
            clients=len(reports.scores),
            bytes_up=reports.bytes_up,
            bytes_down=bytes_down,
            seconds=round(time.perf_counter() - started, 3),
            train_loss=None,
            failures=len(partitions) - len(reports.scores),
            client_seconds=round(reports.client_seconds, 3),
            failed_clients="; ".join(
                f"{node}: {one_line(why)}" for node, why in sorted(reports.failed.items())
            ),
            phase="evaluate",
        )
        return self._stage(reports), record

    def _messages(
        self,
        nodes: list[int],
        partitions: dict[int, int],
        state: State,
        local_models: dict[int, State],
        task: Task,
    ) -> tuple[list[Message], int]:
        """One EVALUATE message per node (the global model, the node's own model where it
        has one), and the bytes they carry."""
        global_arrays = state_to_record(state)
        messages, bytes_down = [], 0
        for node in nodes:
            content = RecordDict(
                {ARRAYS: global_arrays, CONFIG: ConfigRecord({"task": task.index})}
            )
            bytes_down += record_bytes(global_arrays)
            local = local_models.get(partitions[node])
            if local is not None:
                content[LOCAL_ARRAYS] = state_to_record(local)
                bytes_down += record_bytes(content[LOCAL_ARRAYS])
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=MessageType.EVALUATE,
                    ttl=self.round_timeout,
                )
            )
        return messages, bytes_down

    def _sort_out(
        self,
        reply: Message,
        node: int,
        partitions: dict[int, int],
        with_local: bool,
        task: Task,
        reports: _Reports,
    ) -> None:
        """Count `reply` as `node`'s scores, or as its failure with the reason."""
        if node not in partitions:
            return
        if reply.has_error():
            reports.failed[node] = error_reason(reply)
            return
        try:
            reports.bytes_up += record_bytes(reply.content[REPORT])
            report = record_to_state(reply.content[REPORT])
            seconds = float(dict(reply.content[METRICS]).get(CLIENT_SECONDS, 0.0))
        except Exception as error:  # noqa: BLE001 - a malformed reply is a failed client
            reports.failed[node] = f"malformed reply: {type(error).__name__}: {error}"
            return
        partition = partitions[node]
        expected = expected_slice(self.data, task, partition, self.num_partitions)
        try:
            check_report(report, expected, with_local, self.data.stream.class_names)
        except RejectedReport as rejection:
            reports.failed[node] = f"rejected: {rejection}"
            return
        reports.scores[partition] = slice_scores(report, self.data, task)
        reports.client_seconds += seconds

    def _stage(self, reports: _Reports) -> ClientStage:
        """The accepted scores as one evaluation round's row of every partition."""
        scores = [reports.scores.get(p) for p in range(self.num_partitions)]
        return ClientStage(
            samples=[None if s is None else s.samples for s in scores],
            correct_global=[None if s is None else s.correct_global for s in scores],
            correct_local=[None if s is None else s.correct_local for s in scores],
        )
