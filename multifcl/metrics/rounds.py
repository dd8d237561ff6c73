"""What one federated round cost: bytes each way, wall time, training loss, failures."""

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

    @classmethod
    def columns(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    def as_row(self) -> list:
        return [
            "" if value is None else value for value in (getattr(self, c) for c in self.columns())
        ]
