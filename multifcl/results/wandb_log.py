"""Weights & Biases runs (`logger = "wandb"`), a `run_loggers.Sink`.

One W&B run per run, logged by the server: its id is the run's id (a resumed run continues
it), its name the run folder's, its config what config.json holds, its `group`
`logger-group` (default: the method; `multifcl compare` sets the row's label) and its
`job_type` `seed-<seed>`, so W&B shows a comparison's seeds of one row as one line with a
band. The project is `WANDB_PROJECT` (default "multifcl"); the run's files go to
`WANDB_DIR`, default the run folder. The usual W&B variables apply where the ServerApp runs:
`WANDB_MODE=offline` logs without an account or network (`wandb sync` uploads later).
"""

from __future__ import annotations

import os
from pathlib import Path

from multifcl.config import ExperimentConfig
from multifcl.results.run_loggers import ROUND_AXIS, TASK_AXIS, Scalars

DEFAULT_PROJECT = "multifcl"
TASK_PREFIXES = ("task", "summary", "cil_per_task")  # the scalars on the task axis


class WandbLog:
    """Scalars against their own axis (W&B's `define_metric`); at the end the accuracy
    matrix as a table and accuracy.png as an image."""

    def __init__(
        self, config: ExperimentConfig, folder: Path, run_id: str, run_config: dict
    ) -> None:
        import wandb

        self._wandb = wandb
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            dir=os.environ.get("WANDB_DIR") or str(folder),
            id=run_id,
            resume="allow",
            name=folder.name,
            group=config.logger_group or config.method,
            job_type=f"seed-{config.seed}",
            config=run_config,
            settings=wandb.Settings(console="off"),  # Flower's log stays Flower's
        )
        for axis, prefixes in ((ROUND_AXIS, ("round",)), (TASK_AXIS, TASK_PREFIXES)):
            self._run.define_metric(axis)
            for prefix in prefixes:
                self._run.define_metric(f"{prefix}/*", step_metric=axis)

    def write(self, scalars: Scalars) -> None:
        self._run.log({scalars.axis: scalars.step, **scalars.values})

    def finish(self, metrics: dict, plot: Path) -> None:
        matrix = metrics["accuracy_matrix"]
        columns = ["after task", *[f"task {j + 1}" for j in range(len(matrix))], "A_t"]
        rows = [  # a[t][j] is None for the tasks not trained yet (j > t)
            [t + 1, *row, a_t]
            for t, (row, a_t) in enumerate(zip(matrix, metrics["stage_accuracy"], strict=True))
        ]
        self._run.log(
            {
                "accuracy_matrix": self._wandb.Table(columns=columns, data=rows),
                "accuracy_plot": self._wandb.Image(str(plot)),
            }
        )
        self._run.finish()
