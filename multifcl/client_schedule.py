"""Clients that join later (`clients-per-task`): only the first k_t clients, by partition
id, take part in task t, as in GLFC's setting where new clients arrive with new tasks.

The schedule is a comma list of k_t, one per task ("10,15,20"; a shorter list repeats its
last value), or a growth rule START+STEP ("4+2": 4 clients in task 1, 2 more in each later
task). "" (the default): every client in every task. k_t never decreases (clients that
leave are failed clients: `min-fit-fraction`), is at least 1 and at most the federation's
client count. A task's data is split among its k_t clients only.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from multifcl.errors import ConfigError

KEY = "run config key 'clients-per-task'"
COUNT_LIST = re.compile(r"\d+(,\d+)*")
GROWTH_RULE = re.compile(r"(\d+)\+(\d+)")


@dataclass(frozen=True)
class ClientSchedule:
    """How many clients (the first, by partition id) take part in each task."""

    text: str = ""  # the `clients-per-task` value, for error messages
    counts: tuple[int, ...] = ()  # k_t per task (0-based); empty: every client in every task

    @classmethod
    def parse(cls, text: str, num_tasks: int) -> ClientSchedule:
        """The schedule `text` gives a stream of `num_tasks` tasks; one ConfigError line
        naming the key and the value when it is malformed, below 1, decreasing or longer
        than the stream."""
        spec = "".join(text.split())
        if not spec:
            return cls()
        if GROWTH_RULE.fullmatch(spec):
            start, step = (int(n) for n in GROWTH_RULE.fullmatch(spec).groups())
            counts = [start + step * task for task in range(num_tasks)]
        elif COUNT_LIST.fullmatch(spec):
            counts = [int(n) for n in spec.split(",")]
            if len(counts) > num_tasks:
                raise ConfigError(
                    f"{KEY}: {text!r} lists {len(counts)} tasks, the stream has "
                    f"num-tasks={num_tasks}"
                )
            counts += counts[-1:] * (num_tasks - len(counts))  # the last value repeats
        else:
            raise ConfigError(
                f"{KEY}: expected a comma list of clients per task such as '10,15,20' or a "
                f"growth rule START+STEP such as '4+2', got {text!r}"
            )
        if min(counts) < 1:
            raise ConfigError(f"{KEY}: every task needs at least 1 client, got {text!r}")
        if any(later < earlier for earlier, later in itertools.pairwise(counts)):
            raise ConfigError(
                f"{KEY}: the clients of a task must not decrease from task to task, got "
                f"{text!r} (clients that leave are failed clients: min-fit-fraction)"
            )
        return cls(text, tuple(counts))

    def active(self, task: int, num_clients: int) -> int:
        """k_t: how many of the federation's `num_clients` clients take part in `task`
        (0-based); a one-line ConfigError when the schedule asks for more."""
        if not self.counts:
            return num_clients
        wanted = self.counts[task]
        if wanted > num_clients:
            raise ConfigError(
                f"{KEY}: {self.text!r} asks for {wanted} clients in task {task + 1}, more "
                f"than the federation's {num_clients} (start as many SuperNodes: "
                f'--federation-config "num-supernodes={self.counts[-1]}")'
            )
        return wanted

    def takes_part(self, partition: int, task: int) -> bool:
        """Whether the client holding partition id `partition` trains in `task` (0-based)."""
        return not self.counts or partition < self.counts[task]

    def check_federation(self, num_clients: int) -> None:
        """Refuse, in one line, a schedule longer than a federation of `num_clients`."""
        for task in range(len(self.counts)):
            self.active(task, num_clients)
