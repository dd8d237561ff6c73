"""Per-class rows that keep every holder's contribution across rounds
(`multifcl.aggregation.fold_in_new_holders`, the `prototypes` merge, and
`merge_rows_keeping_absent_holders`, MultiFCL's experts)."""

from __future__ import annotations

import numpy as np
import pytest

from multifcl.aggregation import (
    MergeRule,
    fold_in_new_holders,
    merge_class_rows,
    merge_rows_keeping_absent_holders,
)

CLASSES, WIDTH = 4, 3


def _updates(seed: int, senders: int):
    """`senders` clients' rows of classes 0-2 (and class 3 for odd senders) and counts."""
    rng = np.random.default_rng(seed)
    ids = [np.array([0, 1, 2] + ([3] if p % 2 else []), np.int64) for p in range(senders)]
    rows = [rng.normal(size=(len(i), WIDTH)).astype(np.float32) for i in ids]
    counts = [rng.integers(1, 50, size=len(i)).astype(np.float32) for i in ids]
    return ids, rows, counts


def _empty():
    return (
        np.zeros((CLASSES, WIDTH), np.float32),
        np.zeros(CLASSES, np.float32),
        np.zeros((CLASSES, 1), np.float32),
    )


@pytest.mark.parametrize("rule", ["none", "median", "trimmed-mean"])
def test_every_holder_in_one_round_is_the_round_merge_bit_for_bit(rule):
    ids, rows, counts = _updates(0, 5)
    start_rows, start_counts, holders = _empty()
    expected = merge_class_rows(start_rows, start_counts, ids, rows, counts, MergeRule(rule))
    merged_rows, merged_counts, holders = fold_in_new_holders(
        start_rows, start_counts, holders, range(5), ids, rows, counts, MergeRule(rule)
    )
    np.testing.assert_array_equal(merged_rows, expected[0])
    np.testing.assert_array_equal(merged_counts, expected[1])
    assert (
        holders.shape == (CLASSES, 5)
        and holders[:3].all()
        and holders[3].tolist() == [0, 1, 0, 1, 0]
    )


def test_holders_over_several_rounds_give_the_mean_of_all_and_a_resent_row_is_not_recounted():
    ids, rows, counts = _updates(1, 4)
    state, sent_before = _empty(), set()
    for round_senders in ([2], [0, 2], [3, 1], [1]):  # 2 and 1 send again in later rounds
        # a row sent again is moved far away: counted again, it would move the mean
        sent = [rows[p] + 100.0 * (p in sent_before) for p in round_senders]
        sent_before.update(round_senders)
        state = fold_in_new_holders(
            *state,
            round_senders,
            [ids[p] for p in round_senders],
            sent,
            [counts[p] for p in round_senders],
        )
    merged_rows, merged_counts, holders = state
    expected_rows, expected_counts = merge_class_rows(*_empty()[:2], ids, rows, counts)
    np.testing.assert_allclose(merged_rows, expected_rows, rtol=1e-6)
    np.testing.assert_array_equal(merged_counts, expected_counts)
    assert holders.shape == (CLASSES, 4) and holders[:3].all()


def test_a_class_no_new_holder_sends_keeps_its_row_and_count():
    ids, rows, counts = _updates(2, 2)
    state = fold_in_new_holders(*_empty(), [0], ids[:1], rows[:1], counts[:1])
    again = fold_in_new_holders(*state, [0], ids[:1], rows[:1], counts[:1])
    for before, after in zip(state, again):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("rule", ["none", "median"])
def test_retrained_rows_with_every_holder_present_are_the_round_merge_bit_for_bit(rule):
    ids, rows, counts = _updates(2, 5)
    start_rows, start_counts, holder_counts = _empty()
    state = (start_rows, start_counts, holder_counts)
    for _ in range(2):  # a synchronous task's two rounds: the same holders each time
        expected = merge_class_rows(state[0], state[1], ids, rows, counts, MergeRule(rule))
        state = merge_rows_keeping_absent_holders(
            *state, range(5), ids, rows, counts, MergeRule(rule)
        )
        np.testing.assert_array_equal(state[0], expected[0])
        np.testing.assert_array_equal(state[1], expected[1])
    assert state[2][3].tolist() == [0, counts[1][3], 0, counts[3][3], 0]


def test_holders_absent_from_a_round_weigh_in_with_the_global_row():
    ids, rows, counts = _updates(3, 3)
    state = _empty()
    state = merge_rows_keeping_absent_holders(*state, [0], ids[:1], rows[:1], counts[:1])
    global_row = state[0].copy()
    merged_rows, merged_counts, holder_counts = merge_rows_keeping_absent_holders(
        *state, [2], ids[2:], rows[2:], counts[2:]
    )
    for c in range(3):  # held by clients 0 and 2: client 0 absent, counted with the global row
        n0, n2 = float(counts[0][c]), float(counts[2][c])
        expected = (n2 * rows[2][c].astype(np.float64) + n0 * global_row[c]) / (n0 + n2)
        np.testing.assert_allclose(merged_rows[c], expected, rtol=1e-6)
        assert merged_counts[c] == n0 + n2
    np.testing.assert_array_equal(merged_rows[3], global_row[3])  # nobody sent class 3
    assert holder_counts.shape == (CLASSES, 3) and holder_counts[0, 1] == 0
