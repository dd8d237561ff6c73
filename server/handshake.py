"""The handshake before a run's first round (and again on resume): every node says which
partition it holds and proves which data it holds; a federation that does not add up is
refused in one line naming the node, before any round.

The run then sees the grid through `FederationGrid`: only the nodes that passed, each told
in every round the partition it proved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from multifcl.data.fingerprint import DataFingerprint
from multifcl.errors import FederationRefused
from protocol.messages import CLAIM, CONFIG, HANDSHAKE, NUM_PARTITIONS, PARTITION_ID
from strategies.continual import destinations, error_reason


@dataclass(frozen=True)
class Federation:
    """The partitions the run splits its data into, and which node holds which."""

    num_partitions: int
    partitions: dict[int, int]  # node id -> partition id

    @property
    def held(self) -> list[int]:
        """The partition ids some node holds, in order."""
        return sorted(self.partitions.values())


def handshake(
    grid: Grid, reference: DataFingerprint, timeout: float, allow_missing: bool = False
) -> Federation:
    """Ask every connected node for its partition and data fingerprint; the federation, or
    FederationRefused for a failed or missing reply, num-partitions that differ, a
    partition id out of range or held twice, data unlike `reference` (the server's), or
    (unless `allow_missing`) a partition no node holds."""
    nodes = sorted(grid.get_node_ids())
    messages = [
        Message(RecordDict(), dst_node_id=node, message_type=HANDSHAKE, ttl=timeout)
        for node in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    sent = destinations(messages)
    claims: dict[int, ConfigRecord] = {}
    for reply in replies:
        node = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            raise FederationRefused(
                f"node {node}: the handshake failed: {_line(error_reason(reply))}"
            )
        if CLAIM not in reply.content.config_records:
            raise FederationRefused(f"node {node}: its handshake reply has no {CLAIM!r} record")
        claims[node] = reply.content.config_records[CLAIM]
    for node in nodes:
        if node not in claims:
            raise FederationRefused(f"node {node}: no handshake reply within {timeout:g} s")
    partitions = {node: int(claim[PARTITION_ID]) for node, claim in claims.items()}
    num_partitions = _agreed_num_partitions(claims)
    _check_partition_ids(partitions, num_partitions)
    for node, claim in claims.items():
        difference = DataFingerprint.from_record(claim).difference(reference)
        if difference is not None:
            raise FederationRefused(
                f"node {node} (partition-id={partitions[node]}): its data differs from the "
                f"server's: {difference}; every machine needs the same copy of the data set"
            )
    federation = Federation(num_partitions, partitions)
    missing = sorted(set(range(num_partitions)) - set(partitions.values()))
    if missing:
        line = (
            f"partition-id {_ids(missing)} of num-partitions={num_partitions} held by no node "
            f"({len(nodes)} connected: {_holders(partitions)})"
        )
        if not allow_missing:
            raise FederationRefused(
                f"{line}; start the missing SuperNode(s), or set allow-missing-partitions=true "
                "to run without their data"
            )
        log(WARNING, "multifcl: %s; running without them (allow-missing-partitions)", line)
    return federation


class FederationGrid(Grid):
    """`grid` limited to the nodes of `federation`: a node that joins later is left out
    (logged once; resume the run to take it in), and every round's config carries the
    partition id the node proved, which the ClientApp checks against its own."""

    def __init__(self, grid: Grid, federation: Federation) -> None:
        self.grid = grid
        self.federation = federation
        self._newcomers: set[int] = set()

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        connected = list(self.grid.get_node_ids())
        for node in sorted(set(connected) - set(self.federation.partitions) - self._newcomers):
            self._newcomers.add(node)
            log(
                WARNING,
                "multifcl: node %d joined after the handshake and is not part of this run "
                "(resume the run to take it in)",
                node,
            )
        return [node for node in connected if node in self.federation.partitions]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(self._tagged(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None) -> Iterable[Message]:
        return self.grid.send_and_receive(self._tagged(messages), timeout=timeout)

    def _tagged(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for message in messages:
            if CONFIG in message.content.config_records:
                partition = self.federation.partitions[message.metadata.dst_node_id]
                message.content.config_records[CONFIG][PARTITION_ID] = partition
        return messages


def _agreed_num_partitions(claims: dict[int, ConfigRecord]) -> int:
    counts = {node: int(claim[NUM_PARTITIONS]) for node, claim in claims.items()}
    first = min(counts)
    for node, count in counts.items():
        if count < 1:
            raise FederationRefused(f"node {node}: num-partitions={count} must be at least 1")
        if count != counts[first]:
            raise FederationRefused(
                f"node {node} says num-partitions={count}, node {first} says "
                f"{counts[first]}: every SuperNode's --node-config needs the same num-partitions"
            )
    return counts[first]


def _check_partition_ids(partitions: dict[int, int], num_partitions: int) -> None:
    holder: dict[int, int] = {}
    for node, partition in sorted(partitions.items()):
        if not 0 <= partition < num_partitions:
            raise FederationRefused(
                f"node {node}: partition-id={partition} is out of range for "
                f"num-partitions={num_partitions} (0 to {num_partitions - 1})"
            )
        if partition in holder:
            raise FederationRefused(
                f"node {node}: partition-id={partition} is already held by node "
                f"{holder[partition]} (num-partitions={num_partitions}): give every SuperNode "
                "its own partition-id"
            )
        holder[partition] = node


def _holders(partitions: dict[int, int]) -> str:
    return ", ".join(
        f"node {n} holds {p}" for n, p in sorted(partitions.items(), key=lambda i: i[1])
    )


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _line(text: str) -> str:
    return " ".join(text.split())
