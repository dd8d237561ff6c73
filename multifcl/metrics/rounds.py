"""What one federated round cost: bytes each way, wall time, training loss, and which
clients failed (raised, timed out, or sent an update that was rejected). A training round
is `phase = "train"`; the clients' evaluation after a task (eval-local) is one
`phase = "evaluate"` row, numbered one past the task's last round."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class RoundRecord:
    """One row of `rounds.csv`."""

    task: int
    round: int
    clients: int
    bytes_up: int
    bytes_down: int
    seconds: float
    train_loss: float | None
    failures: int = 0
    seconds_per_step: float | None = None  # optimizer step, mean over clients
    class_mean_cosine: float | None = None  # ETF heads: mean pairwise cosine of class means
    prototype_movement: float | None = None  # trained prototypes: mean |optimizer step| / |row|
    client_seconds: float | None = None  # sum of the replying clients' training seconds
    client_peak_rss_mb: float | None = None  # largest peak RSS among the replying processes
    feature_cache_hits: int | None = None  # training-feature lookups a cache answered, summed
    feature_cache_misses: int | None = None  # training-feature lookups that ran the encoder
    attempt: int = 1  # 1 for the first try; a retried round has one row per attempt
    merged: bool = True  # False: too few usable replies, the attempt was discarded
    failed_clients: str = ""  # "node-id: reason; ..." for errors, timeouts and rejected updates
    sampled_clients: str = ""  # the round's sampled partition ids, "0;3;4" (stable across runs)
    phase: str = "train"  # "evaluate": the clients' evaluation after the task (eval-local)

    @classmethod
    def columns(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    def as_row(self) -> list:
        return [
            "" if value is None else value for value in (getattr(self, c) for c in self.columns())
        ]
