"""The validation split (`val-fraction`): a seeded share of each class's training samples
held out from training and scored like the test set after every task.

The rule, per class c of task t (after the `max-train-per-class` cap): c's training
samples are shuffled by a generator seeded with (seed, VALIDATION_SALT, t, c), and the
first round(val-fraction x count) of them (halves round up) are held out; the rest stay
for training. It depends on the run's seed, the task and the class alone, not on the
federation, so every process computes the same split, and the clients' partitions are
drawn from what stays for training: no client ever trains on a held-out sample. With
val-fraction = 0 nothing is held out and the training pool is exactly what it was.
"""

from __future__ import annotations

import math

import numpy as np

from multifcl.errors import ConfigError

VALIDATION_SALT = 0x7A11  # keeps these draws apart from the partition's and the test slices'


def hold_out(
    pool: np.ndarray, labels: np.ndarray, fraction: float, seed: int, classes_per_task: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices, each sorted, from `pool` (indices whose stream labels
    are `labels[pool]`); a one-line ConfigError when a class would keep no training sample or
    a task would hold out nothing."""
    if fraction == 0:
        return pool, np.empty(0, dtype=pool.dtype)
    pool_labels = labels[pool]
    kept, held = [], []
    for label in np.unique(pool_labels):
        members = pool[pool_labels == label]
        task = int(label) // classes_per_task
        count = math.floor(fraction * len(members) + 0.5)
        if count >= len(members):
            raise ConfigError(
                f"run config key 'val-fraction': {fraction} holds out all {len(members)} "
                f"training samples of class {int(label)} (task {task + 1}); every class keeps "
                "at least one, so lower val-fraction or raise max-train-per-class"
            )
        rng = np.random.default_rng([seed, VALIDATION_SALT, task, int(label)])
        members = rng.permutation(members)
        held.append(members[:count])
        kept.append(members[count:])
    validation = np.sort(np.concatenate(held))
    _check_every_task_held_out(
        labels[validation], np.unique(pool_labels), fraction, classes_per_task
    )
    return np.sort(np.concatenate(kept)), validation


def _check_every_task_held_out(
    held_labels: np.ndarray, classes: np.ndarray, fraction: float, classes_per_task: int
) -> None:
    """A one-line ConfigError naming the first task of which nothing is held out."""
    tasks_held = set((held_labels // classes_per_task).tolist())
    for task in sorted(set((classes // classes_per_task).tolist())):
        if task not in tasks_held:
            raise ConfigError(
                f"run config key 'val-fraction': {fraction} holds out no sample of task "
                f"{task + 1} (its classes have too few training samples); raise val-fraction"
            )
