"""A run's accuracy history: one row of each accuracy matrix per evaluated task, and the
metrics.json summary of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from multifcl.metrics.client_accuracy import ClientStage, client_accuracy_metrics
from multifcl.metrics.continual import is_triangular, summarize, summarize_stages

if TYPE_CHECKING:
    from multifcl.evaluation import StageAccuracy

FORMULAS = {
    "a[t][j]": "accuracy (%) on task j's test set after training task t (0-based)",
    "A_t": "mean over j <= t of a[t][j]",
    "last": "A_{T-1}",
    "avg": "mean over t of A_t",
    "forgetting": "mean over j < T-1 of (max over l in [j, T-2] of a[l][j]) - a[T-1][j]",
    "forgetting_first_task": "a[0][0] - a[T-1][0] (the MultiFCL paper's F)",
    "bwt": "mean over j < T-1 of a[T-1][j] - a[j][j]",
    "val_*": "the same on the validation split (val-fraction): a[t][j] on task j's held-out "
    "training samples; for selecting settings, never the test set",
}


STAGE_FORMULAS = {  # an asynchronous stream (docs/asynchronous.md)
    "a[s][j]": "accuracy (%) on global task j's test set after stage s (null: j not seen)",
    "A_s": "mean over the tasks j seen after stage s of a[s][j]",
    "last": "A_{S-1}",
    "avg": "mean over s of A_s",
    "forgetting": "mean over j seen before stage S-1 of (max over seen l < S-1 of a[l][j]) "
    "- a[S-1][j]",
    "forgetting_first_task": "a[f_0][0] - a[S-1][0], f_j the first stage j is seen after",
    "bwt": "mean over j seen before stage S-1 of a[S-1][j] - a[f_j][j]",
}


@dataclass
class AccuracyHistory:
    """Accuracies (percent) after each evaluated task: class-incremental (`cil`) and
    task-incremental (`til`) matrix rows, CIL over all seen classes, and the equizero CIL
    rows (eval-canonicalize = "equizero"; a run resumed from before it has fewer), the
    clients' scores of their own test slices (eval-local), and the CIL and TIL rows on the
    validation split (val-fraction > 0)."""

    cil: list[list[float]] = field(default_factory=list)
    til: list[list[float]] = field(default_factory=list)
    cil_all_seen: list[float] = field(default_factory=list)
    cil_equizero: list[list[float]] = field(default_factory=list)
    clients: list[ClientStage] = field(default_factory=list)
    val_cil: list[list[float]] = field(default_factory=list)  # with val-fraction > 0
    val_til: list[list[float]] = field(default_factory=list)

    @property
    def tasks_evaluated(self) -> int:
        return len(self.cil)

    def appended(
        self,
        stage: StageAccuracy,
        clients: ClientStage | None = None,
        validation: StageAccuracy | None = None,
    ) -> AccuracyHistory:
        """A new history: this one with the rows of one more evaluated task (`validation`:
        the scores of the validation split, with val-fraction > 0)."""
        equizero = [] if stage.cil_equizero is None else [stage.cil_equizero]
        return AccuracyHistory(
            [*self.cil, stage.cil],
            [*self.til, stage.til],
            [*self.cil_all_seen, stage.cil_all_seen],
            [*self.cil_equizero, *equizero],
            [*self.clients, *([] if clients is None else [clients])],
            [*self.val_cil, *([] if validation is None else [validation.cil])],
            [*self.val_til, *([] if validation is None else [validation.til])],
        )

    def metrics(self, num_tasks: int) -> dict:
        """What metrics.json holds: the matrices as num_tasks x num_tasks (None where not
        defined), their summaries, and the formulas (`FORMULAS`)."""
        if not is_triangular(self.cil):  # an asynchronous stream's stages
            return self._stage_metrics(num_tasks)
        metrics = {
            "accuracy_matrix": _square(self.cil, num_tasks),
            "til_accuracy_matrix": _square(self.til, num_tasks),
            **summarize(self.cil).as_dict(),
            "til": summarize(self.til).as_dict(),
            "accuracy_all_seen_classes": self.cil_all_seen,
            "tasks_finished": len(self.cil),
            "num_tasks": num_tasks,
            "units": "percent",
            "formulas": FORMULAS,
        }
        if self.cil_equizero and len(self.cil_equizero) == len(self.cil):  # rows aligned
            metrics["accuracy_matrix_equizero"] = _square(self.cil_equizero, num_tasks)
            metrics["equizero"] = summarize(self.cil_equizero).as_dict()
        if self.clients:
            metrics["client_accuracy"] = client_accuracy_metrics(self.clients, num_tasks)
        if self.val_cil:
            metrics["val_accuracy_matrix"] = _square(self.val_cil, num_tasks)
            metrics["val_til_accuracy_matrix"] = _square(self.val_til, num_tasks)
            metrics["val"] = summarize(self.val_cil).as_dict()
            metrics["val_til"] = summarize(self.val_til).as_dict()
        return metrics

    def _stage_metrics(self, num_tasks: int) -> dict:
        """metrics.json of an asynchronous stream: a row per stage (docs/asynchronous.md)."""
        cil, til = _padded(self.cil, num_tasks), _padded(self.til, num_tasks)
        return {
            "accuracy_matrix": cil,
            "til_accuracy_matrix": til,
            **summarize_stages(cil).as_dict(),
            "til": summarize_stages(til).as_dict(),
            "accuracy_all_seen_classes": self.cil_all_seen,
            "tasks_finished": len(self.cil),
            "num_tasks": num_tasks,
            "units": "percent",
            "formulas": STAGE_FORMULAS,
        }


def _padded(rows: list[list[float | None]], size: int) -> list[list[float | None]]:
    """Each stage's row over all `size` global tasks, None where a task is not seen yet."""
    return [[*row, *[None] * (size - len(row))] for row in rows]


def _square(rows: list[list[float]], size: int) -> list[list[float | None]]:
    """The matrix as size x size with None where a[t][j] is not defined (j > t or not run)."""
    return [
        [rows[t][j] if t < len(rows) and j <= t else None for j in range(size)] for t in range(size)
    ]
