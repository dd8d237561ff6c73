"""A long evaluation says where it is at a fixed interval; the accuracies do not change."""

import dataclasses
import logging

from multifcl import evaluation
from multifcl.evaluation import EvaluationProgress, evaluate_seen_tasks
from multifcl.experiment import load_experiment


def test_progress_is_logged_on_a_timer_and_the_accuracies_are_the_same(
    tiny_config, monkeypatch, caplog
):
    experiment = load_experiment(tiny_config(method="prototypes", cache_features=False))
    method, data = experiment.method, experiment.data
    state, last = method.initial_state(), data.stream.task(data.stream.num_tasks - 1)
    quiet = evaluate_seen_tasks(method, state, data, last)

    monkeypatch.setattr(evaluation, "PROGRESS_INTERVAL_S", 0.001)
    with caplog.at_level(logging.INFO, logger="flwr"):
        logged = evaluate_seen_tasks(method, state, data, last)
    assert dataclasses.asdict(logged) == dataclasses.asdict(quiet)
    lines = [r.getMessage() for r in caplog.records if "evaluation after task" in r.getMessage()]
    assert lines and lines[0].startswith("evaluation after task 2/2: test set ")
    assert all(line.endswith("s so far") for line in lines)


def test_progress_names_the_test_set_and_the_samples_scored():
    progress = EvaluationProgress(after_task=3, num_tasks=5)
    with progress:
        progress.task(2, size=400)
        progress.scored(128)
        assert progress.describe().startswith("test set 2/3, 128/400 samples scored, ")
        progress.in_equizero = True
        assert progress.describe().startswith("equizero over the 3 seen test sets, ")
