"""The server's progress line: where the run is, elapsed time and ETA, at a steady rate."""

from __future__ import annotations

import logging
import time

from server.progress import RunProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_line_names_task_round_and_an_eta_from_the_rounds_done_here():
    clock = FakeClock()
    progress = RunProgress([3, 3], clock=clock)
    progress.round_started(1, 1)
    clock.now += 30
    assert progress.line() == (
        "progress: task 1/2 round 1/3 (running 0:00:30); 0/6 rounds done, "
        "elapsed 0:00:30, ETA after the first round"
    )
    clock.now += 30
    progress.round_finished()  # one round in 60 s: 5 left
    assert progress.line().endswith("(done); 1/6 rounds done, elapsed 0:01:00, ETA 0:05:00")
    progress.round_started(1, 2)
    clock.now += 90
    assert progress.line().startswith("progress: task 1/2 round 2/3 (running 0:01:30)")


def test_a_resumed_run_counts_from_where_it_resumed():
    clock = FakeClock()
    progress = RunProgress([2] * 5, clock=clock)
    progress.round_started(3, 1)  # 4 rounds were done before the resume
    clock.now += 100
    progress.round_finished()
    assert "5/10 rounds done, elapsed 0:01:40, ETA 0:08:20" in progress.line()


def test_an_asynchronous_stream_counts_stages_and_its_shorter_last_stage():
    clock = FakeClock()
    progress = RunProgress([2, 2, 1], step_name="stage", clock=clock)  # G = 5 global rounds
    progress.round_started(3, 1)
    clock.now += 10
    progress.round_finished()
    assert progress.line().startswith("progress: stage 3/3 round 1/1 (done); 5/5 rounds done")


def test_the_background_line_is_logged_and_stops_with_the_run(caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        progress = RunProgress([1], interval=0.01)
        with progress.periodic:
            progress.round_started(1, 1)
            for _ in range(2000):  # a bound, not a timing: the first line comes at ~0.01 s
                if any("progress: task 1/1" in r.getMessage() for r in caplog.records):
                    break
                time.sleep(0.01)
        assert any("progress: task 1/1 round 1/1" in r.getMessage() for r in caplog.records)
        assert not progress.periodic.running
