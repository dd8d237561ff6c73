"""Which adapter set trains in which task: the paper's `first-task` or `per-task`.

Every set exists from the start and is active in every forward pass; a set that has not
trained yet is the identity (its output projection starts at zero), so creating all sets
up front changes nothing and keeps the state's layout fixed for the whole stream.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_ADAPTERS = "none"  # the policy (and bank) of a run without adapters: no set at all


@dataclass(frozen=True)
class AdapterPolicy:
    """`first-task`: one set, trained in task 1 then frozen. `per-task`: set t trains in task t.
    `none` (`NO_ADAPTERS`): no set."""

    name: str
    num_tasks: int

    @property
    def num_sets(self) -> int:
        if self.name == NO_ADAPTERS:
            return 0
        return 1 if self.name == "first-task" else self.num_tasks

    def trainable_set(self, task_index: int) -> int | None:
        """The set trained during task `task_index` (0-based), or None once all are frozen."""
        if self.name == NO_ADAPTERS:
            return None
        if self.name == "first-task":
            return 0 if task_index == 0 else None
        return task_index


def set_name(index: int) -> str:
    """The name of adapter set `index` in states, exports and peft."""
    return f"set-{index}"
