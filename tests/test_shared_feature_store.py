"""One feature store per machine: processes of a run reuse each other's features, a damaged
entry is a miss, results are those of a run without it, and finished runs leave nothing."""

import numpy as np
import pytest
import torch

from multifcl.experiment import load_experiment
from multifcl.features import FeatureCache, FeatureKey
from multifcl.features.shared_store import (
    SharedFeatureStore,
    remove_abandoned_runs,
    remove_run_stores,
    share_features_on_this_machine,
)
from multifcl.methods import build_method
from multifcl.seeding import derive_seed
from tests.test_feature_cache import ImageCounter

KEY = FeatureKey("0123abcd", "feedbeef", 1)
NUM_CLIENTS = 2


def features() -> list[torch.Tensor]:
    return [torch.randn(5, 7), torch.randn(5, 3).to(torch.bfloat16), torch.randn(5, 64)]


def never() -> list[torch.Tensor]:
    raise AssertionError("recomputed")


def two_actors(folder, memory_bytes: int = 2**20) -> tuple[FeatureCache, FeatureCache]:
    """Two processes' caches of one run on one machine."""
    first, second = FeatureCache(memory_bytes), FeatureCache(memory_bytes)
    first.shared_store, second.shared_store = SharedFeatureStore(folder), SharedFeatureStore(folder)
    return first, second


def test_a_second_process_reads_what_the_first_computed(tmp_path):
    first, second = two_actors(tmp_path / "run")
    made = features()
    first.get_or_compute(KEY, lambda: made)
    read = second.get_or_compute(KEY, never)
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(read, made))
    assert (first.misses, first.hits, second.misses, second.hits) == (1, 0, 0, 1)
    first.keep_only(lambda key: key.task != KEY.task)  # stale for one: stale for all
    assert not list((tmp_path / "run").glob("*.features"))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "other-key", "empty"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path, damage):
    first, second = two_actors(tmp_path / "run")
    made = features()
    first.get_or_compute(KEY, lambda: made)
    (path,) = (tmp_path / "run").glob("*.features")
    raw = bytearray(path.read_bytes())
    if damage == "other-key":
        other = FeatureKey("0123abcd", "feedbeef", 2)
        first.get_or_compute(other, features)
        raw = bytearray(next((tmp_path / "run").glob("2-*.features")).read_bytes())
    damaged = {
        "truncated": raw[: len(raw) - 9],  # a writer killed mid-file (were it renamed)
        "flipped": raw[:-1] + bytes([raw[-1] ^ 1]),
        "garbage": b"not features" * 40,
        "other-key": raw,
        "empty": b"",
    }[damage]
    path.write_bytes(bytes(damaged))
    again = features()
    read = second.get_or_compute(KEY, lambda: again)
    assert second.misses == 1 and all(torch.equal(a, b) for a, b in zip(read, again))
    third = FeatureCache(2**20)
    third.shared_store = SharedFeatureStore(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(third.get_or_compute(KEY, never), again))


def test_memory_evictions_are_read_back_from_the_store_not_spilled(tmp_path):
    cache = FeatureCache(memory_bytes=1, spill_dir=tmp_path / "spill")
    cache.shared_store = SharedFeatureStore(tmp_path / "run")
    made = {task: features() for task in range(3)}
    for task, values in made.items():
        cache.get_or_compute(FeatureKey("d", "e", task), lambda v=values: v)
    assert not (tmp_path / "spill").exists()
    for task, values in made.items():
        read = cache.get_or_compute(FeatureKey("d", "e", task), never)
        assert all(torch.equal(a, b) for a, b in zip(read, values))


def test_only_folders_no_live_process_holds_are_removed(tmp_path):
    held = SharedFeatureStore(tmp_path / "run-1-aaaa")
    released = SharedFeatureStore(tmp_path / "run-2-bbbb")
    released.close()
    (tmp_path / "run-3-cccc").mkdir()  # being created: no lock yet, young
    remove_abandoned_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-1-aaaa", "run-3-cccc"]
    held.put(KEY, features())
    assert held.holds(KEY)
    remove_run_stores(1, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-3-cccc"]


def run_on_two_actors(config, rounds: int, share: bool):
    """Every round, client c trains on actor (c + round) % 2: two methods built apart, as
    two Ray actors build theirs; `share` gives both the machine's store of one run.

    Returns the final state, the misses in a task's rounds after its first round that
    looked features up, and the images the backbone encoded."""
    experiment = load_experiment(config)
    data = experiment.data
    actors = [build_method(config, experiment.backbone, data.stream.class_names) for _ in "ab"]
    if share:
        for actor in actors:
            share_features_on_this_machine(actor, run_id=77)
    counter = ImageCounter(experiment.backbone)
    state, late_misses = actors[0].initial_state(), 0
    try:
        for task in data.stream:
            looked_up = False
            for round_number in range(1, rounds + 1):
                before = [(a.feature_cache.hits, a.feature_cache.misses) for a in actors]
                updates = []
                for client in range(NUM_CLIENTS):
                    actor = actors[(client + round_number) % 2]
                    client_data = data.client_train_set(task, client, NUM_CLIENTS)
                    seed = derive_seed(config.seed, task.index, round_number, client)
                    updates.append(actor.train_client(state, client_data, task, seed))
                state = actors[0].merge(state, updates)
                after = [(a.feature_cache.hits, a.feature_cache.misses) for a in actors]
                hits, misses = np.subtract(after, before).sum(axis=0)
                late_misses += misses if looked_up else 0
                looked_up = looked_up or hits + misses > 0
    finally:
        counter.close()
    return state, late_misses, counter.images


@pytest.mark.parametrize("method", ["prototypes", "multifcl"])
def test_two_actors_sharing_the_store_give_the_same_run_with_one_pass_per_task(tiny_config, method):
    changes = {"method": method, "use_text_init": False, "rounds_per_task": 3}
    config = tiny_config(**changes)
    shared_state, shared_misses, shared_images = run_on_two_actors(config, 3, share=True)
    alone_state, alone_misses, alone_images = run_on_two_actors(config, 3, share=False)
    plain_state, _, _ = run_on_two_actors(tiny_config(**changes, cache_features=False), 3, False)
    for key in plain_state:
        np.testing.assert_array_equal(shared_state[key], alone_state[key])
        np.testing.assert_allclose(shared_state[key], plain_state[key], rtol=0, atol=1e-6)
    assert shared_misses == 0 and alone_misses > 0 and shared_images < alone_images
