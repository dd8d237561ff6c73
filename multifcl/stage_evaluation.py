"""Accuracy of a global state after a stage of an asynchronous stream: on every global task
seen so far, predicting among the seen classes only (docs/asynchronous.md).

The seen tasks need not be 0 ... t: a client may start with task 3. When they are, this is
exactly `evaluate_seen_tasks` (the synchronous row).
"""

from __future__ import annotations

import torch

from multifcl.backbones.host_transfer import to_device
from multifcl.data import FederatedStream
from multifcl.evaluation import (
    EvaluationProgress,
    StageAccuracy,
    evaluate_seen_tasks,
    evaluation_cache,
    scored_batches,
)
from multifcl.methods import Method, State


@torch.no_grad()
def evaluate_stage(
    method: Method, state: State, data: FederatedStream, seen_tasks: list[int]
) -> StageAccuracy:
    """The stage's row of each matrix: one entry per global task up to the last seen one,
    None for a task not seen yet."""
    stream = data.stream
    title = f"evaluation of the {len(seen_tasks)} seen tasks (of {stream.num_tasks})"
    if seen_tasks == list(range(len(seen_tasks))):
        last = stream.task(len(seen_tasks) - 1)
        return evaluate_seen_tasks(method, state, data, last, title=title)
    split = method.feature_split(state) if method.config.cache_features else None
    cache = None
    if split is not None:
        cache = evaluation_cache(method)
        cache.keep_only(lambda key: key.encoder == split.encoder)
    tasks = [stream.task(index) for index in seen_tasks]
    seen_classes = torch.tensor([c for task in tasks for c in task.classes])
    cil: list[float | None] = [None] * (seen_tasks[-1] + 1)
    til = list(cil)
    correct_total = count_total = 0
    with EvaluationProgress(len(seen_tasks), stream.num_tasks, title=title) as progress:
        for number, task in enumerate(tasks, start=1):
            test_set = data.test_set(task)
            progress.task(number, len(test_set))
            scored = scored_batches(method, state, test_set, task.index, split, cache)
            correct_cil = correct_til = 0
            for logits, labels in scored:
                logits, labels = logits.float(), to_device(labels, logits.device)
                classes = to_device(seen_classes, logits.device)
                predicted = classes[logits[:, classes].argmax(1)]
                within_task = logits[:, task.classes.start : task.classes.stop].argmax(1)
                correct_cil += int((predicted == labels).sum())
                correct_til += int((within_task + task.classes.start == labels).sum())
                progress.scored(len(labels))
            total = max(len(test_set), 1)
            cil[task.index] = 100.0 * correct_cil / total
            til[task.index] = 100.0 * correct_til / total
            correct_total += correct_cil
            count_total += len(test_set)
    return StageAccuracy(cil, til, 100.0 * correct_total / max(count_total, 1))
