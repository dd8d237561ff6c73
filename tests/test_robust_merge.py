"""Robust merges (`robust-merge`): with 1 to (n - 1) // 2 malicious clients out of n, the
merged rows and arrays stay where the honest clients put them."""

from __future__ import annotations

import numpy as np
import pytest

from multifcl.aggregation import MergeRule, merge_class_rows, weighted_average
from multifcl.config import ConfigError, ExperimentConfig

WIDTH = 6
HONEST = np.linspace(1.0, 2.0, WIDTH)  # what every honest client's value is close to


def honest_values(n: int, rng) -> np.ndarray:
    return HONEST + 0.05 * rng.standard_normal((n, WIDTH))


ATTACKS = {
    "scaled": lambda v, rng: v * 1e30,
    "sign-flipped": lambda v, rng: -v,
    "random": lambda v, rng: (
        rng.standard_normal(v.shape) * (np.linalg.norm(v, axis=1) / np.sqrt(WIDTH))[:, None]
    ),
}
CASES = [(n, bad) for n in (3, 5, 10) for bad in range(1, (n - 1) // 2 + 1)]


def poisoned(n: int, bad: int, attack: str, seed: int = 0):
    """(values, weights): n clients, the first `bad` malicious (with the largest weights)."""
    rng = np.random.default_rng(seed)
    values = honest_values(n, rng)
    values[:bad] = ATTACKS[attack](values[:bad], rng)
    weights = np.where(np.arange(n) < bad, 100.0, 1.0 + rng.integers(0, 5, n))
    return values, weights, values[bad:]


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize(("n", "bad"), CASES)
def test_median_and_trimmed_mean_stay_within_the_honest_values(n, bad, attack):
    """Per coordinate, between the smallest and largest honest value (trimmed mean: when
    it cuts at least as many values per side as there are malicious clients)."""
    values, weights, honest = poisoned(n, bad, attack)
    low, high = honest.min(axis=0), honest.max(axis=0)
    rules = [MergeRule("median"), MergeRule("trimmed-mean", 0.45)]
    if bad <= np.ceil(0.25 * n):
        rules.append(MergeRule("trimmed-mean"))  # the default fraction, 0.25
    for rule in rules:
        merged = rule.combine(values, weights, np.zeros(WIDTH))
        assert np.all((low - 1e-12 <= merged) & (merged <= high + 1e-12)), rule
    mean = MergeRule().combine(values, weights, np.zeros(WIDTH))
    assert not np.all((low <= mean) & (mean <= high))  # the weighted mean is dragged away


@pytest.mark.parametrize(("n", "bad"), CASES)
def test_norm_clip_bounds_a_scaled_update_by_the_median_change(n, bad):
    current = HONEST + 0.5
    values, weights, honest = poisoned(n, bad, "scaled")
    merged = MergeRule("norm-clip").combine(values, weights, current)
    largest_honest_change = np.linalg.norm(honest - current, axis=1).max()
    assert np.linalg.norm(merged - current) <= largest_honest_change + 1e-9


def test_with_one_or_two_senders_every_rule_is_the_weighted_mean():
    values = np.array([[1.0, 2.0], [3.0, 10.0]])
    weights = np.array([3.0, 1.0])
    for name in ("none", "trimmed-mean", "median", "norm-clip"):
        rule = MergeRule(name)
        assert np.allclose(rule.combine(values, weights, np.zeros(2)), [1.5, 4.0])
        assert np.allclose(rule.combine(values[:1], weights[:1], np.zeros(2)), [1.0, 2.0])


def test_class_rows_are_merged_robustly_over_the_clients_that_sent_each_class():
    """Class 0 has three senders (one malicious), class 1 two, class 2 one; counts add up."""
    ids = [np.array([0, 1]), np.array([0, 1, 2]), np.array([0])]
    rows = [
        np.array([[1.0, 1.0], [5.0, 5.0]], np.float32),
        np.array([[1.2, 0.8], [7.0, 7.0], [9.0, 9.0]], np.float32),
        np.array([[1e30, -1e30]], np.float32),
    ]
    counts = [np.array([2.0, 1.0], np.float32), np.array([1.0, 3.0, 4.0], np.float32)]
    counts.append(np.array([50.0], np.float32))
    start = np.full((4, 2), -3.0, np.float32)
    merged, merged_counts = merge_class_rows(
        start, np.zeros(4, np.float32), ids, rows, counts, MergeRule("median")
    )
    assert np.allclose(merged[0], [1.2, 0.8])  # per-coordinate median of the three senders
    assert np.allclose(merged[1], [6.5, 6.5])  # two senders: their count-weighted mean
    assert np.allclose(merged[2], [9.0, 9.0]) and np.all(merged[3] == -3.0)
    assert merged.dtype == np.float32 and merged_counts.tolist() == [53.0, 4.0, 4.0, 0.0]
    plain, plain_counts = merge_class_rows(start, np.zeros(4, np.float32), ids, rows, counts)
    assert plain_counts.tolist() == merged_counts.tolist() and abs(plain[0, 0]) > 1e28


def test_dense_arrays_are_merged_robustly_key_by_key():
    current = {"w": np.zeros((2, 2), np.float32), "step": np.array(4, np.int64)}
    honest = [{"w": np.full((2, 2), v, np.float32), "step": np.array(5)} for v in (1.0, 1.1)]
    arrays = [*honest, {"w": np.full((2, 2), 1e30, np.float32), "step": np.array(5)}]
    for name in ("trimmed-mean", "median", "norm-clip"):
        merged = weighted_average(arrays, [10, 10, 1000], MergeRule(name), current)
        assert merged["w"].dtype == np.float32 and np.all(merged["w"] <= 1.1 + 1e-6), name
        assert merged["step"].dtype == np.int64 and merged["step"] == 5
    with pytest.raises(ValueError, match="norm-clip merge needs the current state"):
        weighted_average(arrays, [1, 1, 1], MergeRule("norm-clip"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("robust_merge", "mean", "'robust-merge': .*'mean'"),
        ("robust_trim_fraction", 0.5, "'robust-trim-fraction': must be in \\(0, 0.5\\)"),
        ("robust_trim_fraction", 0.0, "'robust-trim-fraction'"),
        ("max_row_norm_ratio", 1.0, "'max-row-norm-ratio': must be > 1 \\(or 0: off\\)"),
        ("max_change_ratio", -2.0, "'max-change-ratio': must be > 1"),
    ],
)
def test_each_bad_robustness_value_is_a_one_line_error_naming_its_key(key, value, message):
    with pytest.raises(ConfigError, match=message) as raised:
        ExperimentConfig(**{key: value})
    assert "\n" not in str(raised.value)
    assert ExperimentConfig(max_row_norm_ratio=0, max_change_ratio=0).robust_merge == "none"


def test_norm_clip_of_a_first_class_row_keeps_the_honest_mean():
    """A class's row starts at zeros and is replaced by a fresh mean each round: norm-clip
    measures senders against their median row, so honest means keep their norm."""
    from multifcl.aggregation import merge_class_rows

    honest = [np.array([[10.0, 0.0]]), np.array([[11.0, 0.0]]), np.array([[12.0, 0.0]])]
    rows, counts = merge_class_rows(
        np.zeros((1, 2), np.float32),
        np.zeros(1),
        [np.array([0])] * 3,
        honest,
        [np.array([1.0])] * 3,
        MergeRule("norm-clip"),
    )
    assert rows[0, 0] == pytest.approx(11.0) and counts[0] == 3


def test_pilora_refuses_a_rule_that_would_drop_its_reweighting_weights():
    with pytest.raises(ConfigError, match="run config key 'robust-merge': 'median' ignores"):
        ExperimentConfig(method="pilora", robust_merge="median")
    assert ExperimentConfig(method="pilora", robust_merge="norm-clip").robust_merge == "norm-clip"
    assert ExperimentConfig(method="pilora", robust_merge="median", pilora_reweight=False)
