"""The client feature cache: same results as without it, one backbone pass per sample per task."""

import csv
import gc

import numpy as np
import pytest
import torch

from multifcl.experiment import load_experiment
from multifcl.features import FeatureCache, FeatureKey, feature_cache_for
from multifcl.seeding import derive_seed
from tests.conftest import run_in_process

MULTIFCL = {"method": "multifcl", "use_text_init": False, "adapter_policy": "first-task"}
NUM_CLIENTS = 2


class ImageCounter:
    """Counts the images that go through the backbone's stem (one per sample per pass)."""

    def __init__(self, backbone) -> None:
        self.images = 0
        self.handle = backbone.stem.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += len(inputs[0])

    def close(self) -> None:
        self.handle.remove()


def run_rounds(config, rounds: int = 2):
    """Every task: `rounds` rounds of all clients' train_client then merge (the server's loop).

    Returns the final state and the backbone images per task.
    """
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    counter = ImageCounter(experiment.backbone)
    state, images_per_task = method.initial_state(), []
    try:
        for task in data.stream:
            before = counter.images
            for round_number in range(1, rounds + 1):
                updates = []
                for client in range(NUM_CLIENTS):
                    client_data = data.client_train_set(task, client, NUM_CLIENTS)
                    seed = derive_seed(config.seed, task.index, round_number, client)
                    updates.append(method.train_client(state, client_data, task, seed))
                state = method.merge(state, updates)
            images_per_task.append(counter.images - before)
    finally:
        counter.close()
    return state, images_per_task


@pytest.mark.parametrize(
    "changes",
    [MULTIFCL, {**MULTIFCL, "use_adapters": False}, {"method": "prototypes"}],
    ids=["multifcl-first-task", "multifcl-no-adapters", "prototypes"],
)
def test_cache_changes_no_result_and_passes_each_sample_once_per_task(tiny_config, changes):
    cached_state, cached_images = run_rounds(tiny_config(**changes, cache_features=True))
    plain_state, plain_images = run_rounds(tiny_config(**changes, cache_features=False))
    assert cached_state.keys() == plain_state.keys()
    for key in plain_state:
        np.testing.assert_allclose(cached_state[key], plain_state[key], rtol=0, atol=1e-6)
    config = tiny_config(**changes)
    data = load_experiment(config).data
    task_sizes = [
        sum(len(data.client_indices(task, c, NUM_CLIENTS)) for c in range(NUM_CLIENTS))
        for task in data.stream
    ]
    # frozen encoder (task 2 of first-task adapters, every task otherwise): one pass per
    # sample per round without the cache, one per task with it; while adapters train, each
    # round makes one feature pass and one training pass per epoch, cache or not
    first, second = task_sizes
    if changes.get("use_adapters", True) and changes["method"] == "multifcl":
        training = 2 * (1 + config.local_epochs) * first
        assert plain_images == [training, 2 * second] and cached_images == [training, second]
    else:
        assert plain_images == [2 * first, 2 * second] and cached_images == [first, second]


def test_new_adapter_weights_are_a_new_encoder(tiny_config):
    config = tiny_config(**MULTIFCL, num_tasks=2)
    method, data = load_experiment(config).method, load_experiment(config).data
    task = data.stream.task(1)
    client_data = data.client_train_set(task, 0, NUM_CLIENTS)
    state = method.initial_state()
    method.train_client(state, client_data, task, seed=1)
    method.train_client(state, client_data, task, seed=2)
    assert (method.feature_cache.misses, method.feature_cache.hits) == (1, 1)
    changed = dict(state)
    key = next(k for k in state if k.startswith("adapter/") and k.endswith("up.bias"))
    changed[key] = state[key] + 0.5
    method.train_client(changed, client_data, task, seed=3)
    assert method.feature_cache.misses == 2 and len(method.feature_cache) == 1  # stale dropped


def test_entries_over_the_memory_budget_spill_to_disk_and_come_back(tmp_path):
    cache = FeatureCache(memory_bytes=1000, spill_dir=tmp_path / "spill")
    made = {t: [torch.randn(10, 8), torch.randn(10, 4)] for t in range(3)}  # 480 bytes each
    for task, features in made.items():
        cache.get_or_compute(FeatureKey("data", "encoder", task), lambda f=features: f)
    assert len(list((tmp_path / "spill").iterdir())) == 1 and cache.bytes_in_memory <= 1000

    def never() -> list[torch.Tensor]:
        raise AssertionError("recomputed")

    for task, features in made.items():
        again = cache.get_or_compute(FeatureKey("data", "encoder", task), never)
        assert all(torch.equal(a, b) for a, b in zip(again, features))
    assert (cache.misses, cache.hits) == (3, 3)
    cache.keep_only(lambda key: key.task == 2)
    assert len(cache) == 1 and not list((tmp_path / "spill").iterdir())


def test_fingerprint_sees_every_pixel_and_label(tiny_config):
    data = load_experiment(tiny_config()).data
    images = data.client_train_set(data.stream.task(0), 0, 1)
    base = images.fingerprint
    pixel = type(images)(images.images.clone(), images.labels.copy())
    pixel.images[-1, -1, -1, -1] ^= 1
    label = type(images)(images.images, images.labels.copy())
    label.labels[0] += 1
    assert len({base, pixel.fingerprint, label.fingerprint}) == 3
    assert type(images)(images.images.clone(), images.labels.copy()).fingerprint == base


def test_the_client_app_path_uses_the_cache_and_gets_the_same_run(tiny_config, tmp_path):

    results = {}
    for cache in (True, False):
        config = tiny_config(
            method="prototypes", cache_features=cache, output_dir=tmp_path / f"run-{cache}"
        )
        results[cache], _ = run_in_process(config, NUM_CLIENTS, base_dir=tmp_path)
        method = load_experiment(config).method
        assert method.feature_cache.hits == (NUM_CLIENTS * 2 if cache else 0)  # round 2 of 2 tasks
        rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
        lookups = [(r["feature_cache_hits"], r["feature_cache_misses"]) for r in rows]
        # each task: round 1 computes every client's features, round 2 reads them back
        assert lookups == ([("0", "2"), ("2", "0")] * 2 if cache else [("0", "0")] * 4)
    assert results[True]["accuracy_matrix"] == results[False]["accuracy_matrix"]


def test_the_spill_folder_goes_with_its_cache(tmp_path):
    cache = FeatureCache(memory_bytes=100, spill_dir=tmp_path / "spill")
    for task in range(2):
        cache.get_or_compute(FeatureKey("data", "encoder", task), lambda: [torch.zeros(10, 8)])
    assert len(list((tmp_path / "spill").iterdir())) == 1
    del cache
    gc.collect()
    assert not (tmp_path / "spill").exists()


def test_caches_of_one_process_spill_to_separate_folders(tiny_config):
    config = tiny_config()
    first, second = feature_cache_for(config, "train"), feature_cache_for(config, "train")
    assert first.spill_dir != second.spill_dir
    assert first.spill_dir.parent == config.output_dir / "feature-cache"


def test_a_run_folder_loses_what_a_killed_attempt_spilled(tiny_config, tmp_path):
    from multifcl.results import RunDirectory

    config = tiny_config()
    leftover = config.output_dir / "feature-cache" / "train-4242-0" / "entry.pt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"features of a killed client")
    RunDirectory(config.output_dir).start(config, {})
    assert not (config.output_dir / "feature-cache").exists()
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"features of a killed client")
    RunDirectory(config.output_dir, resume=True).reopen(config, rounds_kept=0)
    assert not (config.output_dir / "feature-cache").exists()
