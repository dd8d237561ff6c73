"""Per-client accuracy (`eval-local`): each client's accuracy on its own test slice after
every task, for the global model and for its own locally trained model, as per-client
accuracy matrices and their mean, std and worst client in metrics.json."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MODELS = ("global", "local")
CLIENT_FORMULAS = {
    "accuracy_matrices[i][t][j]": "accuracy (%) of client i's test slice of task j after "
    "training task t (0-based; None: j > t, no test sample of task j in the slice, or no "
    "accepted report)",
    "accuracy_all_seen[t][i]": "accuracy (%) of client i on its whole slice of the tasks seen "
    "after task t (every test sample counted once)",
    "mean, std, worst": "over the clients with a value in accuracy_all_seen[t]: mean, "
    "population std (ddof 0) and minimum; worst_client is its partition id",
    "sample_weighted_mean": "accuracy_all_seen[t] weighted by the clients' slice sizes "
    "(for the global model, the server's accuracy_all_seen_classes when every client reports)",
}
LOCAL_MODEL_NOTE = (
    "local: each client's own model after its last local training in the task (the round's "
    "starting state with only its update merged, in the global state's format); None for a "
    "client not sampled in the task"
)


@dataclass
class ClientStage:
    """The accepted reports of one evaluation round, per partition id (None: no accepted
    report; local None: no local model), each a list over the tasks seen so far."""

    samples: list[list[int] | None]
    correct_global: list[list[int] | None]
    correct_local: list[list[int] | None]

    def as_json(self) -> dict:
        return {
            "samples": self.samples,
            "correct_global": self.correct_global,
            "correct_local": self.correct_local,
        }

    @classmethod
    def from_json(cls, saved: dict) -> ClientStage:
        return cls(saved["samples"], saved["correct_global"], saved["correct_local"])

    def correct(self, model: str) -> list[list[int] | None]:
        return self.correct_global if model == "global" else self.correct_local


def client_accuracy_metrics(stages: Sequence[ClientStage], num_tasks: int) -> dict:
    """metrics.json's `client_accuracy`: for the global and the local model, every client's
    accuracy matrix (num_tasks x num_tasks), its accuracy over all seen classes after each
    task, and the mean, std and worst client after each task (`CLIENT_FORMULAS`)."""
    num_clients = len(stages[0].samples) if stages else 0
    metrics: dict = {
        "num_clients": num_clients,
        "test_samples": [[_total(s) for s in stage.samples] for stage in stages],
    }
    for model in MODELS:
        all_seen = [_all_seen(stage.samples, stage.correct(model)) for stage in stages]
        metrics[model] = {
            "accuracy_matrices": [
                _client_matrix(stages, model, client, num_tasks) for client in range(num_clients)
            ],
            "accuracy_all_seen": all_seen,
            **_spread(all_seen, metrics["test_samples"]),
        }
    metrics["formulas"] = CLIENT_FORMULAS
    metrics["note"] = LOCAL_MODEL_NOTE
    return metrics


def _client_matrix(
    stages: Sequence[ClientStage], model: str, client: int, num_tasks: int
) -> list[list[float | None]]:
    rows = []
    for t in range(num_tasks):
        row: list[float | None] = [None] * num_tasks
        if t < len(stages):
            samples, correct = stages[t].samples[client], stages[t].correct(model)[client]
            if samples is not None and correct is not None:
                for j, (n, right) in enumerate(zip(samples, correct)):
                    row[j] = 100.0 * right / n if n else None
        rows.append(row)
    return rows


def _all_seen(
    samples: list[list[int] | None], correct: list[list[int] | None]
) -> list[float | None]:
    values = []
    for counts, right in zip(samples, correct):
        total = _total(counts)
        values.append(100.0 * sum(right) / total if right is not None and total else None)
    return values


def _spread(all_seen: list[list[float | None]], sizes: list[list[int | None]]) -> dict:
    """Mean, std, worst value and client, sample-weighted mean of each row."""
    summary: dict[str, list] = {
        "mean": [],
        "std": [],
        "worst": [],
        "worst_client": [],
        "sample_weighted_mean": [],
        "clients_scored": [],
    }
    for row, row_sizes in zip(all_seen, sizes):
        scored = [(c, v, row_sizes[c]) for c, v in enumerate(row) if v is not None]
        values = [v for _, v, _ in scored]
        mean = sum(values) / len(values) if values else None
        worst = min(scored, key=lambda item: (item[1], item[0])) if scored else None
        weight = sum(n for _, _, n in scored)
        summary["mean"].append(mean)
        summary["std"].append(
            math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
        )
        summary["worst"].append(worst[1] if worst else None)
        summary["worst_client"].append(worst[0] if worst else None)
        summary["sample_weighted_mean"].append(
            sum(v * n for _, v, n in scored) / weight if weight else None
        )
        summary["clients_scored"].append(len(values))
    return summary


def _total(counts: list[int] | None) -> int | None:
    return None if counts is None else sum(counts)
