"""Last, Avg, forgetting and BWT from an accuracy matrix (formulas in the README).

a[t][j] is the accuracy (percent) on task j's test set after training task t, 0-based;
only j <= t is defined. An asynchronous stream's matrix (`summarize_stages`) has a row per
stage and None where a task is not seen yet (docs/asynchronous.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ContinualMetrics:
    """Summary of an accuracy matrix, all in percent."""

    last: float  # A_{T-1}
    avg: float  # mean over t of A_t
    forgetting: float  # Chaudhry et al.
    forgetting_first_task: float  # the MultiFCL paper's: a[0][0] - a[T-1][0]
    bwt: float  # mean over j < T-1 of a[T-1][j] - a[j][j]
    stage_accuracy: list[float]  # A_t for every t

    def as_dict(self) -> dict:
        return asdict(self)


def stage_accuracy(matrix: list[list[float]]) -> list[float]:
    """A_t = mean over j <= t of a[t][j]."""
    return [sum(row[: t + 1]) / (t + 1) for t, row in enumerate(matrix)]


def summarize(matrix: list[list[float]]) -> ContinualMetrics:
    """All summary metrics of a (lower-triangular) accuracy matrix with T >= 1 rows."""
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    final = len(matrix) - 1
    stages = stage_accuracy(matrix)
    if final == 0:
        return ContinualMetrics(stages[0], stages[0], 0.0, 0.0, 0.0, stages)
    old_tasks = range(final)
    forgetting = (
        sum(max(matrix[l][j] for l in range(j, final)) - matrix[final][j] for j in old_tasks)
        / final
    )
    bwt = sum(matrix[final][j] - matrix[j][j] for j in old_tasks) / final
    return ContinualMetrics(
        last=stages[final],
        avg=sum(stages) / len(stages),
        forgetting=forgetting,
        forgetting_first_task=matrix[0][0] - matrix[final][0],
        bwt=bwt,
        stage_accuracy=stages,
    )


def is_triangular(matrix: list[list[float | None]]) -> bool:
    """Whether row t holds tasks 0 ... t exactly: the synchronous stream's matrix."""
    return all(len(row) == t + 1 and None not in row for t, row in enumerate(matrix))


def summarize_stages(matrix: list[list[float | None]]) -> ContinualMetrics:
    """The summary of an asynchronous stream's matrix (rows = stages, columns = global
    tasks, None: not seen yet; the last row sees every task), as docs/asynchronous.md
    defines it; the same numbers as `summarize` for a triangular matrix."""
    if not matrix:
        raise ValueError("the accuracy matrix is empty")
    final = len(matrix) - 1
    stages = []
    for row in matrix:
        seen = [a for a in row if a is not None]
        stages.append(sum(seen) / len(seen))
    first = {}  # task -> the first stage after which it is seen
    for stage, row in enumerate(matrix):
        for task, value in enumerate(row):
            if value is not None:
                first.setdefault(task, stage)
    old = sorted(task for task, stage in first.items() if stage < final)
    if not old:
        return ContinualMetrics(stages[final], sum(stages) / len(stages), 0.0, 0.0, 0.0, stages)
    last = matrix[final]
    forgetting = sum(
        max(matrix[stage][j] for stage in range(first[j], final)) - last[j] for j in old
    ) / len(old)
    bwt = sum(last[j] - matrix[first[j]][j] for j in old) / len(old)
    first_task = matrix[first[0]][0] - last[0] if 0 in first and first[0] < final else 0.0
    return ContinualMetrics(
        last=stages[final],
        avg=sum(stages) / len(stages),
        forgetting=forgetting,
        forgetting_first_task=first_task,
        bwt=bwt,
        stage_accuracy=stages,
    )
