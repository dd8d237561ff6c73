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

    @classmethod
    def columns(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    def as_row(self) -> list:
        return [
            "" if value is None else value for value in (getattr(self, c) for c in self.columns())
        ]
