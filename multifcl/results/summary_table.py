"""The end-of-run summary printed to the console: accuracy matrix and metrics."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_summary(metrics: dict, title: str, console: Console | None = None) -> None:
    """Print the CIL accuracy matrix, the stage accuracies and the summary metrics."""
    console = console or Console(width=120)
    matrix = metrics["accuracy_matrix"]
    table = Table(title=escape(f"{title}: CIL accuracy a[t][j] (%)"))
    stages = "num_stages" in metrics  # an asynchronous stream: a row per stage
    table.add_column("after stage" if stages else "after task", justify="right")
    for j in range(metrics["num_tasks"]):
        table.add_column(f"task {j + 1}", justify="right")
    table.add_column("A_t", justify="right", style="bold")
    for t, row in enumerate(matrix):
        if t >= metrics["tasks_finished"]:
            break
        cells = ["" if value is None else f"{value:.1f}" for value in row]
        table.add_row(str(t + 1), *cells, f"{metrics['stage_accuracy'][t]:.1f}")
    console.print(table)
    summary = Table(title="Summary (%)")
    for name in ("Last", "Avg", "Forgetting", "F (first task)", "BWT", "TIL Last"):
        summary.add_column(name, justify="right")
    summary.add_row(
        *(
            f"{value:.2f}"
            for value in (
                metrics["last"],
                metrics["avg"],
                metrics["forgetting"],
                metrics["forgetting_first_task"],
                metrics["bwt"],
                metrics["til"]["last"],
            )
        )
    )
    console.print(summary)
