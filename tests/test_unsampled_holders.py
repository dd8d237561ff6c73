"""A round whose sampled clients hold none of a class's samples: the merge keeps that
class's global rows and count (docs/fault-tolerance.md, "Client sampling"), for every
method that keeps per-class rows."""

from __future__ import annotations

import numpy as np
import pytest

from multifcl.experiment import load_experiment
from multifcl.methods.pilora import COUNTS, FEATURE_MEANS, PROTOTYPES


def two_rounds(tiny_config, method: str, **changes):
    """The state after a round with a holder of the task's first class, the state after a
    next round whose only client lacks it, the layout, the class and the second update."""
    experiment = load_experiment(tiny_config(method=method, **changes))
    method, data = experiment.method, experiment.data
    task = data.stream.task(0)
    holder = data.client_train_set(task, 0, 1)  # every sample of the task
    dropped = task.classes.start
    lacking = holder.take(np.flatnonzero(np.asarray(holder.labels) != dropped))
    state = method.initial_state()
    first = method.merge(state, [method.train_client(state, holder, task, seed=1)])
    update = method.train_client(first, lacking, task, seed=2)
    second = method.merge(first, [update])
    return first, second, method.update_layout(first, task), dropped, update


@pytest.mark.parametrize(
    "method, changes",
    [
        ("prototypes", {}),
        ("multifcl", {"use_text_init": False}),
        ("multifcl", {"use_text_init": False, "head": "etf"}),
        ("pilora", {"pilora_reweight": False}),
    ],
)
def test_a_class_without_a_sampled_holder_keeps_its_rows_and_count(tiny_config, method, changes):
    first, second, layout, dropped, update = two_rounds(tiny_config, method, **changes)
    ids, counts = update.arrays["class-ids"], update.arrays["class-counts"]
    assert counts[ids == dropped].sum() == 0 < counts.sum() and first["class-counts"][dropped] > 0
    for key in set(layout.rows.values()):
        np.testing.assert_array_equal(second[key][dropped], first[key][dropped], err_msg=key)


def test_pilora_reweighting_keeps_counts_and_means_and_averages_the_senders_prototypes(
    tiny_config,
):
    """As in PiLoRA's code (10 of 30 clients a round): every client trains every prototype
    of the task, a class none of them holds is merged with uniform weights."""
    first, second, _, dropped, update = two_rounds(tiny_config, "pilora")
    for key in (COUNTS, FEATURE_MEANS):
        np.testing.assert_array_equal(second[key][dropped], first[key][dropped])
    row = update.arrays[PROTOTYPES][0]  # the client's row of the task's first class
    np.testing.assert_allclose(second[PROTOTYPES][dropped], row, rtol=1e-6)
