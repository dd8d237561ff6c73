"""A progress line in the server log at a steady rate, however long a round takes.

Every `interval` seconds while rounds run, one line says where the run is and when it should
end: `progress: task t/T round r/R (running h:mm:ss); n/N rounds done, elapsed h:mm:ss,
ETA h:mm:ss` (`stage s/S` in an asynchronous stream, whose last stage may be shorter). The ETA is this process's mean time per round (evaluations between rounds
included) times the rounds left; a resumed run counts from where it resumed. A run shorter
than `interval` logs no such line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from logging import INFO

from flwr.common.logger import log

from multifcl.periodic import Periodic

INTERVAL_SECONDS = 60.0


def _clock_text(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class RunProgress:
    """Where the run is (task or stage, round, rounds done); `periodic` logs it every
    `interval` seconds while used as a context manager (`with progress.periodic:`)."""

    def __init__(
        self,
        step_rounds: Sequence[int],
        step_name: str = "task",
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step_rounds, self.step_name = list(step_rounds), step_name  # rounds of each step
        self.interval, self.clock = interval, clock
        self.task = self.round = 0
        self.done = 0  # rounds finished, the run's earlier processes included
        self._first: tuple[float, int] | None = None  # (time, rounds done) at the first round
        self._round_started, self._in_round = 0.0, False
        self.periodic = Periodic(self._log_line, interval, name="multifcl-progress")

    def round_started(self, task: int, server_round: int) -> None:
        """Task (or stage) and round (1-based) of the round starting now."""
        self.task, self.round = task, server_round
        self.done = sum(self.step_rounds[: task - 1]) + server_round - 1
        self._round_started, self._in_round = self.clock(), True
        if self._first is None:
            self._first = (self._round_started, self.done)

    def round_finished(self) -> None:
        """The round started last is merged and checkpointed."""
        self.done = sum(self.step_rounds[: self.task - 1]) + self.round
        self._in_round = False

    def line(self) -> str:
        """Where the run is now, with the elapsed time and the ETA."""
        now = self.clock()
        total = sum(self.step_rounds)
        started, done_before = self._first or (now, self.done)
        finished_here = self.done - done_before
        elapsed = now - started
        eta = (
            _clock_text(elapsed / finished_here * (total - self.done))
            if finished_here
            else "after the first round"
        )
        state = f"running {_clock_text(now - self._round_started)}" if self._in_round else "done"
        return (
            f"progress: {self.step_name} {self.task}/{len(self.step_rounds)} round "
            f"{self.round}/{self.step_rounds[self.task - 1]} ({state}); "
            f"{self.done}/{total} rounds done, elapsed {_clock_text(elapsed)}, ETA {eta}"
        )

    def _log_line(self) -> None:
        if self._first is not None:
            log(INFO, "%s", self.line())
