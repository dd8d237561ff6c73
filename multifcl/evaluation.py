"""Accuracy of a global state on the test sets of the tasks seen so far.

Class-incremental (CIL): all seen classes compete. Task-incremental (TIL): logits are
masked to the classes of the sample's own task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from multifcl.data import FederatedStream, Task
from multifcl.methods import Method, State
from multifcl.methods.base import batches


@dataclass
class StageAccuracy:
    """Accuracies (percent) after training one task: a row of each accuracy matrix."""

    cil: list[float]
    til: list[float]
    cil_all_seen: float  # sample-weighted over all seen classes (what PyCIL/PILOT print)


@torch.no_grad()
def evaluate_seen_tasks(
    method: Method, state: State, data: FederatedStream, current: Task
) -> StageAccuracy:
    """Evaluate `state` on every task up to and including `current`."""
    classifier = method.classifier(state)
    backbone = method.backbone
    seen = current.seen_classes.stop
    cil, til, correct_total, count_total = [], [], 0, 0
    for index in range(current.index + 1):
        task = data.stream.task(index)
        correct_cil = correct_til = 0
        test_set = data.test_set(task)
        for images, labels in batches(test_set, method.config.batch_size):
            logits = classifier(backbone.preprocess(images)).float().cpu()
            correct_cil += int((logits[:, :seen].argmax(1) == labels).sum())
            task_logits = logits[:, task.classes.start : task.classes.stop]
            correct_til += int((task_logits.argmax(1) + task.classes.start == labels).sum())
        total = max(len(test_set), 1)
        cil.append(100.0 * correct_cil / total)
        til.append(100.0 * correct_til / total)
        correct_total += correct_cil
        count_total += len(test_set)
    return StageAccuracy(cil, til, 100.0 * correct_total / max(count_total, 1))
