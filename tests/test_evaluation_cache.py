"""The server's evaluation cache: same accuracies, test features computed once per encoder."""

import dataclasses

import numpy as np
import pytest

from multifcl.evaluation import evaluate_seen_tasks
from multifcl.experiment import load_experiment
from multifcl.features import FeatureCache
from tests.test_feature_cache import MULTIFCL, ImageCounter, run_rounds


def evaluate_twice(config, state, cache: FeatureCache):
    """Evaluations after task 1 and after task 2, and the test images each one encoded."""
    experiment = load_experiment(config)
    counter = ImageCounter(experiment.backbone)
    stages, images = [], []
    try:
        for task in experiment.data.stream:
            before = counter.images
            stages.append(
                evaluate_seen_tasks(experiment.method, state, experiment.data, task, cache)
            )
            images.append(counter.images - before)
    finally:
        counter.close()
    return stages, images


# on a CNN the trained top's input is cached: fedproto shares finetune's (and lwf's) trunk
# split and scores its own way
CNN_TOP = {"method": "fedproto", "backbone": "efficientnet-lite0"}


@pytest.mark.parametrize(
    "changes",
    [MULTIFCL, {"method": "prototypes"}, CNN_TOP],
    ids=["multifcl", "prototypes", "fedproto-cnn"],
)
def test_cached_evaluation_equals_uncached_and_encodes_only_the_new_task(tiny_config, changes):
    config = tiny_config(**changes, num_tasks=2)
    state, _ = run_rounds(config, rounds=1)
    cache = FeatureCache(memory_bytes=2**30)
    cached, cached_images = evaluate_twice(config, state, cache)
    plain, plain_images = evaluate_twice(
        dataclasses.replace(config, cache_features=False), state, None
    )
    assert [dataclasses.asdict(s) for s in cached] == [dataclasses.asdict(s) for s in plain]
    test_sizes = [
        len(load_experiment(config).data.test_set(t)) for t in load_experiment(config).data.stream
    ]
    assert plain_images == [test_sizes[0], test_sizes[0] + test_sizes[1]]
    assert cached_images == [test_sizes[0], test_sizes[1]]  # task 1's features are reused
    assert (cache.misses, cache.hits) == (2, 1)


def test_new_adapter_weights_invalidate_the_test_features(tiny_config):
    config = tiny_config(**{**MULTIFCL, "adapter_policy": "per-task"}, num_tasks=2)
    experiment = load_experiment(config)
    state, _ = run_rounds(config, rounds=1)
    task = experiment.data.stream.task(0)
    cache = FeatureCache(memory_bytes=2**30)
    evaluate_seen_tasks(experiment.method, state, experiment.data, task, cache)
    changed = dict(state)
    key = next(k for k in state if k.startswith("adapter/set-1/") and k.endswith("up.weight"))
    changed[key] = state[key] + np.float32(0.05)
    stage = evaluate_seen_tasks(experiment.method, changed, experiment.data, task, cache)
    uncached = dataclasses.replace(config, cache_features=False)
    plain = evaluate_seen_tasks(
        load_experiment(uncached).method, changed, load_experiment(uncached).data, task
    )
    assert cache.misses == 2 and cache.hits == 0 and len(cache) == 1  # the stale entry is gone
    assert dataclasses.asdict(stage) == dataclasses.asdict(plain)


def test_finetune_trains_upstream_of_its_head_so_evaluation_is_not_cached(tiny_config):
    method = load_experiment(tiny_config(method="finetune")).method
    assert method.feature_split(method.initial_state()) is None
