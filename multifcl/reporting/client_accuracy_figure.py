"""The per-client accuracy figure of an `eval-local` run: each client's accuracy on its own
test slice after every task, for the global model and for the clients' own models, with
their mean, ± one std band and worst client."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from multifcl.reporting.report_figures import new_figure, save_figure

SERIES = {"global": ("C0", "global model"), "local": ("C1", "client's own model")}
OFFSET = 0.08  # the two models' dots sit either side of the task


def client_accuracy(client_metrics: Mapping, title: str, path: Path) -> Path:
    """Per model: every client's accuracy over its seen test slice after each task (dots),
    the mean over clients (line) with a ± one std band, and the worst client (dashed)."""
    with new_figure(figsize=(7.5, 4.8)) as (figure, axis):
        longest = 1
        for side, (model, (colour, name)) in zip((-1, 1), SERIES.items()):
            summary = client_metrics[model]
            rows = summary["accuracy_all_seen"]
            steps = np.arange(1, len(rows) + 1)
            longest = max(longest, len(rows))
            if all(m is None for m in summary["mean"]):
                continue
            for step, row in zip(steps, rows):
                values = [v for v in row if v is not None]
                axis.scatter(
                    np.full(len(values), step + side * OFFSET),
                    values,
                    s=12,
                    color=colour,
                    alpha=0.35,
                )
            mean, std, worst = (_floats(summary[key]) for key in ("mean", "std", "worst"))
            axis.plot(steps, mean, marker="o", linewidth=2, color=colour, label=f"{name}: mean")
            axis.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15)
            axis.plot(
                steps,
                worst,
                linestyle="--",
                marker="v",
                color=colour,
                label=f"{name}: worst client",
            )
        axis.set(
            xlabel="tasks trained",
            ylabel="client's accuracy on its own test slice (%)",
            ylim=(0, 102),
            yticks=range(0, 101, 20),
            xlim=(0.6, longest + 0.4),
            title=title,
        )
        axis.set_xticks(range(1, longest + 1))
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
        save_figure(figure, path)
    return path


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)
