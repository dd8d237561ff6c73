"""Metrics on hand-made accuracy matrices, against the formulas in the README."""

import pytest

from multifcl.metrics import summarize

MATRIX = [
    [90.0],
    [70.0, 80.0],
    [60.0, 75.0, 85.0],
]


def test_metrics_of_a_three_task_matrix():
    m = summarize(MATRIX)
    assert m.stage_accuracy == pytest.approx([90.0, 75.0, 220.0 / 3])
    assert m.last == pytest.approx(220.0 / 3)
    assert m.avg == pytest.approx((90.0 + 75.0 + 220.0 / 3) / 3)
    # forgetting: task 0: max(90, 70) - 60 = 30; task 1: max(80) - 75 = 5
    assert m.forgetting == pytest.approx(17.5)
    assert m.forgetting_first_task == pytest.approx(30.0)
    # bwt: (60 - 90 + 75 - 80) / 2
    assert m.bwt == pytest.approx(-17.5)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    m = summarize([[50.0], [70.0, 80.0], [40.0, 80.0, 90.0]])
    assert m.forgetting == pytest.approx(((70 - 40) + (80 - 80)) / 2)
    assert m.bwt == pytest.approx(((40 - 50) + (80 - 80)) / 2)


def test_single_task():
    m = summarize([[42.0]])
    assert (m.last, m.avg, m.forgetting, m.bwt) == (42.0, 42.0, 0.0, 0.0)


def test_empty_matrix_is_refused():
    with pytest.raises(ValueError):
        summarize([])
