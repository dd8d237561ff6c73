"""Broadcasts that send only what changed: the global state as content-addressed chunks.

The server splits each state array into chunks (its rows, where a row is at least
`ROW_CHUNK_BYTES`; otherwise the whole array) and names each chunk by a digest of its
content (dtype, shape and bytes). A train message carries the manifest (every array's chunk
digests, in order) and only the chunks its node is not known to hold. The node keeps the
chunks of the last state it assembled in its `context.state`, which Flower keeps per node
across rounds both in simulation (whichever Ray actor serves the node) and in deployment
(where every message runs in a fresh ClientApp process, so a per-process store would
always be empty).

A wrong store can never change results: every chunk's digest is recomputed when it is used,
and a chunk that is absent or does not match makes the node reply `MISSING` instead of
training; the server then resends that node the whole state within the same round. So a
fresh node, a restarted SuperNode, a resumed run or a lost context costs one extra message
for that node, never a wrong value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from multifcl.methods import State

MANIFEST = "manifest"  # ArrayRecord: state key -> uint8 (chunks, DIGEST_BYTES) digests
CHUNKS = "chunks"  # ArrayRecord: state key -> the chunks of it the node lacks, stacked
STORE = "broadcast-store"  # the node's context.state record: digest (hex) -> chunk
MISSING = "broadcast-missing"  # a node's reply when it cannot assemble the state
DIGEST_BYTES = 16  # 128 bits of SHA-256: an accidental collision is out of reach
ROW_CHUNK_BYTES = 1024  # arrays whose rows are at least this large travel row by row


def chunk_digest(chunk: np.ndarray) -> bytes:
    """The digest naming a chunk: SHA-256 of its dtype, shape and bytes, truncated."""
    digest = hashlib.sha256(f"{chunk.dtype.str}|{chunk.shape}|".encode())
    digest.update(np.ascontiguousarray(chunk).tobytes())
    return digest.digest()[:DIGEST_BYTES]


def split_rows(value: np.ndarray) -> bool:
    """Whether an array travels row by row: two rows or more, each `ROW_CHUNK_BYTES` or more
    (per-class prototype rows; a small array is one chunk)."""
    return value.ndim >= 1 and value.shape[0] >= 2 and value[0].nbytes >= ROW_CHUNK_BYTES


@dataclass(frozen=True)
class ChunkedState:
    """A state as chunks: `manifest` (key -> chunk digests in order) and `chunks`."""

    manifest: dict[str, list[bytes]]
    chunks: dict[bytes, np.ndarray]

    @classmethod
    def of(cls, state: State) -> ChunkedState:
        manifest: dict[str, list[bytes]] = {}
        chunks: dict[bytes, np.ndarray] = {}
        for key, value in state.items():
            value = np.ascontiguousarray(value)
            parts = [value[i : i + 1] for i in range(len(value))] if split_rows(value) else [value]
            digests = [chunk_digest(part) for part in parts]
            chunks.update(zip(digests, parts, strict=True))
            manifest[key] = digests
        return cls(manifest, chunks)

    @property
    def digests(self) -> frozenset[bytes]:
        return frozenset(self.chunks)

    @cached_property
    def manifest_record(self) -> ArrayRecord:
        """The manifest as sent: each key's digests as a uint8 (chunks, DIGEST_BYTES) array."""
        return ArrayRecord(
            {
                key: Array(np.frombuffer(b"".join(digests), np.uint8).reshape(-1, DIGEST_BYTES))
                for key, digests in self.manifest.items()
            }
        )

    def chunks_record(self, held: frozenset[bytes] = frozenset()) -> ArrayRecord:
        """The chunks a node holding `held` lacks: for each array, its lacking rows stacked
        in manifest order (an array of one chunk: that chunk). One Array per state key,
        not per row: a row of its own would add about 440 bytes of Flower's framing."""
        record = ArrayRecord()
        for key, digests in self.manifest.items():
            lacking = [d for d in dict.fromkeys(digests) if d not in held]
            if lacking:
                parts = [self.chunks[d] for d in lacking]
                record[key] = Array(parts[0] if len(digests) == 1 else np.concatenate(parts))
        return record


def assemble_state(content: RecordDict, node_state: RecordDict) -> State | None:
    """The state a train message carries, from its chunks and the node's store, or None
    when a chunk is in neither. A chunk is found by the digest of its content (computed
    here, for the chunks sent and those stored alike), so a damaged one is never used. On
    success the node's store becomes exactly this state's chunks."""
    manifest = {key: _digests(array) for key, array in content[MANIFEST].items()}
    received = {}
    for key, array in content[CHUNKS].items():
        value = array.numpy()
        parts = (
            [value] if len(manifest[key]) == 1 else [value[i : i + 1] for i in range(len(value))]
        )
        received.update((chunk_digest(part), part) for part in parts)
    stored = node_state.get(STORE, ArrayRecord())
    state, kept = {}, {}
    for key, digests in manifest.items():
        parts = [received.get(d) if d in received else _verified(stored, d) for d in digests]
        if any(part is None for part in parts):
            return None
        kept.update(zip(digests, parts, strict=True))
        state[key] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    node_state[STORE] = ArrayRecord({d.hex(): Array(part) for d, part in kept.items()})
    return state


def _digests(table: Array) -> list[bytes]:
    """A manifest entry's digests, in order."""
    return [row.tobytes() for row in table.numpy().reshape(-1, DIGEST_BYTES)]


def _verified(record: ArrayRecord, digest: bytes) -> np.ndarray | None:
    """The stored chunk named `digest` when its content has that digest, else None."""
    name = digest.hex()
    if name not in record:
        return None
    chunk = record[name].numpy()
    return chunk if chunk_digest(chunk) == digest else None


def missing_content() -> RecordDict:
    """A node's reply when it cannot assemble the broadcast state (the server resends it)."""
    return RecordDict({MISSING: ConfigRecord({"reason": "chunks absent or not matching"})})


def lacks_chunks(content: RecordDict) -> bool:
    return MISSING in content


@dataclass
class BroadcastLedger:
    """The server's record of which chunks each node holds: those of the last state it
    assembled and answered for. A node not in it (new, or after a failure) holds nothing.
    `delta=False` sends every node the whole state every round (for comparison)."""

    delta: bool = True
    held: dict[int, frozenset[bytes]] = field(default_factory=dict)

    def held_by(self, node: int) -> frozenset[bytes]:
        return self.held.get(node, frozenset()) if self.delta else frozenset()

    def confirm(self, nodes: Iterable[int], chunked: ChunkedState) -> None:
        """These nodes assembled `chunked`: their stores now hold exactly its chunks."""
        for node in nodes:
            self.held[node] = chunked.digests

    def forget(self, nodes: Iterable[int]) -> None:
        """These nodes may hold anything: send them the whole state next time."""
        for node in nodes:
            self.held.pop(node, None)
