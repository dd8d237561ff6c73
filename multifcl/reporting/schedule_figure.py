"""The schedule figure of an asynchronous run (docs/asynchronous.md): which task each client
trains in each global round (client x round, coloured by task), next to the accuracy after
each stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from multifcl.reporting.report_figures import new_figure, save_figure


def stream_schedule(metrics: Mapping, title: str, path: Path) -> Path:
    """Left: the clients' tasks per global round (blank: idle), stage ends as lines; right:
    A_s after each stage, at the stage's last round, and the mean and worst client's
    accuracy on its own seen classes."""
    schedule = metrics["stream_schedule"]
    table = np.array(schedule["client_tasks"], dtype=float)
    table[table < 0] = np.nan  # idle
    num_tasks = metrics["num_tasks"]
    rounds = table.shape[1]
    size = schedule["rounds_per_task"]  # a stage ends every rounds-per-task global rounds
    ends = [min((s + 1) * size, rounds) for s in range(len(metrics["stage_accuracy"]))]
    with new_figure(figsize=(11, 4.2), columns=2) as (figure, (left, right)):
        image = left.imshow(
            table,
            aspect="auto",
            interpolation="nearest",
            cmap="tab10" if num_tasks <= 10 else "tab20",
            vmin=-0.5,
            vmax=(10 if num_tasks <= 10 else 20) - 0.5,
            extent=(0.5, rounds + 0.5, table.shape[0] - 0.5, -0.5),
        )
        for end in ends[:-1]:
            left.axvline(end + 0.5, color="black", linewidth=0.8)
        left.set(xlabel="global round", ylabel="client (partition id)", title="task trained")
        colorbar = figure.colorbar(image, ax=left, ticks=range(num_tasks))
        colorbar.ax.set_yticklabels([f"task {t + 1}" for t in range(num_tasks)])
        colorbar.ax.set_ylim(-0.5, num_tasks - 0.5)
        right.plot(ends, metrics["stage_accuracy"], marker="o", color="black", label="A_s")
        own = metrics.get("client_seen_accuracy")  # each client on its own seen classes
        for key, style in (("mean", "--"), ("worst", ":")):
            points = [(e, a) for e, a in zip(ends, own[key] if own else []) if a is not None]
            if points:
                right.plot(*zip(*points), style, marker=".", label=f"clients' own seen, {key}")
        right.legend(loc="lower left", fontsize=8)
        right.set(
            xlabel="global round (end of stage)",
            ylabel="CIL accuracy on seen classes (%)",
            ylim=(0, 100),
            xlim=(0.5, rounds + 0.5),
            title=f"Last {metrics['last']:.1f}, Avg {metrics['avg']:.1f}, "
            f"forgetting {metrics['forgetting']:.1f}",
        )
        right.grid(alpha=0.3)
        figure.suptitle(title)
        save_figure(figure, path)
    return path
