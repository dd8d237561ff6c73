"""`val-fraction`: a seeded share of each class's training samples held out from training
and scored like the test set after every task."""

import json

import numpy as np
import pytest

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import FederatedStream, TaskStream
from multifcl.data.federation import VALIDATION
from multifcl.data.validation_split import hold_out
from multifcl.evaluation import evaluate_seen_tasks, evaluation_cache
from multifcl.experiment import load_experiment
from multifcl.metrics.continual import summarize
from multifcl.results.resume import config_differences
from tests.conftest import run_in_process
from tests.test_config import one_line_error
from tests.test_task_stream import fake_splits


def test_each_class_holds_out_its_rounded_share_seeded_by_seed_task_and_class():
    labels = np.repeat(np.arange(4), [10, 7, 5, 1])
    pool = np.arange(len(labels))
    train, held = hold_out(pool, labels, 0.25, seed=3, classes_per_task=2)
    assert np.array_equal(np.sort(np.concatenate([train, held])), pool)
    assert not set(train) & set(held)
    # round(0.25 x n), halves up: 10 -> 3 (2.5), 7 -> 2 (1.75), 5 -> 1 (1.25), 1 -> 0
    assert np.bincount(labels[held], minlength=4).tolist() == [3, 2, 1, 0]
    assert np.array_equal(hold_out(pool, labels, 0.25, 3, 2)[1], held)
    assert not np.array_equal(hold_out(pool, labels, 0.25, 4, 2)[1], held)
    train_none, held_none = hold_out(pool, labels, 0.0, 3, 2)
    assert train_none is pool and len(held_none) == 0


def test_val_fraction_zero_leaves_the_training_pool_and_partitions_as_they_were():
    splits = fake_splits(10, per_class=9)
    before = TaskStream(splits, ExperimentConfig(num_tasks=2, max_train_per_class=6))
    config = ExperimentConfig(num_tasks=2, max_train_per_class=6, val_fraction=0.34)
    after = TaskStream(splits, config)
    for task in before:
        capped = before.train_indices(task)
        train, held = after.train_indices(task), after.validation_indices(task)
        assert len(held) == 10 and len(train) == 20  # 2 of each class's 6 (0.34 x 6 = 2.04)
        assert np.array_equal(np.sort(np.concatenate([train, held])), capped)
        assert len(before.validation_indices(task)) == 0


def test_no_client_trains_on_a_held_out_sample(tiny_config):
    config = tiny_config(val_fraction=0.2, partition="dirichlet", beta=0.5)
    data = FederatedStream(load_experiment(config).data.splits, config)
    for task in data.stream:
        held = set(data.stream.validation_indices(task).tolist())
        clients = np.concatenate(data.client_parts(task, 3))
        assert held and not held & set(clients.tolist())
        assert len(held) + len(clients) == len(
            TaskStream(data.splits, tiny_config()).train_indices(task)
        )
        assert len(data.validation_set(task)) == len(held)


@pytest.mark.parametrize(
    ("fraction", "message"),
    [
        (1.0, "run config key 'val-fraction': must be in [0, 1), got 1.0"),
        (-0.1, "run config key 'val-fraction': must be in [0, 1), got -0.1"),
    ],
)
def test_a_fraction_outside_zero_to_one_is_refused(fraction, message):
    assert message in one_line_error(ConfigError, lambda: ExperimentConfig(val_fraction=fraction))


def test_a_class_left_without_training_samples_or_a_task_without_validation_is_refused():
    splits = fake_splits(4, per_class=1)
    message = one_line_error(
        ConfigError, lambda: TaskStream(splits, ExperimentConfig(num_tasks=2, val_fraction=0.5))
    )
    assert "'val-fraction': 0.5 holds out all 1 training samples of class 0 (task 1)" in message
    message = one_line_error(
        ConfigError, lambda: TaskStream(splits, ExperimentConfig(num_tasks=2, val_fraction=0.4))
    )
    assert "'val-fraction': 0.4 holds out no sample of task 1" in message


def test_val_fraction_changes_results_so_a_resume_must_keep_it():
    saved = ExperimentConfig().to_run_config()
    del saved["val-fraction"]  # a run folder from before the key: its default, 0
    changed = config_differences(saved, ExperimentConfig(val_fraction=0.1))
    assert changed == [("val-fraction", 0.0, 0.1)]


def test_metrics_gain_the_validation_matrix_and_its_summary(tiny_config):
    config = tiny_config(method="prototypes", rounds_per_task=1, val_fraction=0.25)
    metrics, _ = run_in_process(config)
    saved = json.loads((config.output_dir / "metrics.json").read_text())
    assert saved["val"] == metrics["val"]
    matrix = saved["val_accuracy_matrix"]
    assert matrix[0][1] is None and all(a is not None for a in matrix[1])
    rows = [[a for a in row if a is not None] for row in matrix]
    assert saved["val"] == summarize(rows).as_dict()
    assert saved["val_til"]["last"] >= saved["val"]["last"]
    assert saved["accuracy_matrix"] != matrix  # the test set is scored apart


def test_validation_features_are_cached_apart_from_test_features(tiny_config):
    experiment = load_experiment(tiny_config(method="prototypes", val_fraction=0.25))
    method, data = experiment.method, experiment.data
    state, last = method.initial_state(), data.stream.task(1)
    assert {len(data.validation_set(t)) for t in data.stream} == {60}  # 5 classes x 12 of 48
    evaluate_seen_tasks(method, state, data, last)
    validation = evaluate_seen_tasks(method, state, data, last, subset=VALIDATION)
    assert len(evaluation_cache(method, "evaluation")) == 2
    assert len(evaluation_cache(method, "validation")) == 2
    again = evaluate_seen_tasks(method, state, data, last, subset=VALIDATION)
    assert again == validation
    assert evaluation_cache(method, "validation").hits == 2
