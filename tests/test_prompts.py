"""The prompt methods (l2p, coda-prompt): shapes, the attention prefix, frozen components,
the CNN refusal, and a short in-process run of each."""

from __future__ import annotations

import types

import pytest
import torch

from multifcl.backbones import load_backbone
from multifcl.backbones.attention_prefixes import attention_module
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import Task
from multifcl.experiment import load_experiment
from multifcl.methods.coda_prompt import CodaPromptMethod, orthonormal_rows
from multifcl.methods.l2p import L2PMethod
from tests.conftest import random_images, run_in_process
from tests.test_config import one_line_error

CLASS_NAMES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def vit_tiny():
    return load_backbone("vit-tiny")


def _method(kind, backbone, **keys):
    config = ExperimentConfig(method=kind.name, backbone="vit-tiny", num_tasks=2, **keys)
    return kind(config, backbone, CLASS_NAMES)


def test_l2p_pool_selection_and_sequence_length(vit_tiny):
    method = _method(L2PMethod, vit_tiny, l2p_pool_size=6, l2p_prompt_length=3, l2p_top_k=2)
    pool = method.model.prompts
    assert pool.keys.shape == (6, vit_tiny.feature_dim)
    assert pool.prompts.shape == (6, 3, vit_tiny.block_dims[0])
    pixels = vit_tiny.preprocess(random_images(4, 32))
    query = method.model.query(pixels)
    chosen, pull = pool.select(query)
    assert chosen.shape == (4, 2 * 3, vit_tiny.block_dims[0])
    # the pull is the mean over samples of the summed cosine to the chosen keys: <= top_k
    assert 0 < pull.item() <= 2 + 1e-5
    tokens = vit_tiny.stem(pixels).shape[1]
    assert vit_tiny.prompted_hidden(pixels, chosen).shape[1] == tokens + 2 * 3
    features, term = pool.features(vit_tiny, pixels, query)
    assert features.shape == (4, vit_tiny.feature_dim)
    assert torch.isclose(term, -0.1 * pull)


def test_an_attention_prefix_is_what_extra_tokens_would_add_as_keys_and_values(vit_tiny):
    """One block: the original tokens' outputs with a prefix equal their outputs when the
    prefix's tokens are in the sequence (their keys and values are all they contribute)."""
    torch.manual_seed(0)
    block = vit_tiny.blocks[0]
    hidden = vit_tiny.stem(vit_tiny.preprocess(random_images(2, 32)))
    extra = torch.randn(2, 3, hidden.shape[2])
    with torch.no_grad():
        expected = vit_tiny.run_block(block, torch.cat([hidden, extra], 1))[:, : hidden.shape[1]]
        attention = attention_module(block)
        normed = block.layernorm_before(extra)
        prefix = (attention.k_proj(normed), attention.v_proj(normed))
        with vit_tiny.attention_prefixes({0: prefix}):
            prefixed = vit_tiny.run_block(block, hidden)
        plain = vit_tiny.run_block(block, hidden)
    torch.testing.assert_close(prefixed, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, expected)  # outside the context: no prefix


def test_coda_composition_shape_and_orthogonal_task_components(vit_tiny):
    method = _method(CodaPromptMethod, vit_tiny, coda_pool_size=10, coda_prompt_length=4)
    pool = method.model.prompts
    layers = min(5, vit_tiny.num_blocks)
    assert pool.components.shape == (layers, 10, 4, vit_tiny.block_dims[0])
    assert pool.keys.shape == pool.attention.shape == (layers, 10, vit_tiny.feature_dim)
    query = method.model.query(vit_tiny.preprocess(random_images(3, 32)))
    assert pool.compose(query).shape == (3, layers, 4, vit_tiny.block_dims[0])
    assert not pool.keys[:, 5:].any()  # task 2's components wait for task 2
    pool.start_task(1, seed=1)
    rows = pool.keys[0]
    torch.testing.assert_close(rows @ rows.T, torch.eye(10), atol=1e-5, rtol=0)
    wide = orthonormal_rows(torch.zeros(0, 3, dtype=torch.float64), 5, torch.Generator())
    assert torch.allclose(wide.norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_coda_components_of_finished_tasks_get_no_gradient(vit_tiny):
    method = _method(CodaPromptMethod, vit_tiny, coda_pool_size=10, coda_prompt_length=4)
    pool = method.model.prompts
    pool.start_task(1, seed=1)
    pool.training_task = Task(index=1, classes=range(5, 10), seen_classes=range(10))
    method._classes = range(5, 10)
    pixels = vit_tiny.preprocess(random_images(3, 32))
    method._loss(pixels, method.model.query(pixels), torch.tensor([5, 6, 7])).backward()
    for array in (pool.keys, pool.attention, pool.components):
        assert not array.grad[:, :5].any()  # task 1's: frozen
        assert array.grad[:, 5:].abs().sum() > 0  # task 2's: trained


def test_prompt_methods_refuse_a_cnn_in_one_line():
    message = one_line_error(
        ConfigError, lambda: ExperimentConfig(method="l2p", backbone="efficientnet-lite0")
    )
    assert "'method'" in message and "'backbone'" in message and "efficientnet-lite0" in message
    cnn = types.SimpleNamespace(token_features=False, name="some-cnn")
    message = one_line_error(
        ConfigError, lambda: CodaPromptMethod(ExperimentConfig(), cnn, CLASS_NAMES)
    )
    assert "'coda-prompt'" in message and "some-cnn" in message


@pytest.mark.parametrize(
    "keys",
    [
        {"l2p_top_k": 11},
        {"coda_prompt_length": 7},
        {"coda_pool_size": 1},
        {"head": "etf"},
    ],
)
def test_prompt_keys_that_cannot_work_are_refused(keys):
    method = "l2p" if "l2p_top_k" in keys else "coda-prompt"
    key = next(iter(keys)).replace("_", "-")
    message = one_line_error(ConfigError, lambda: ExperimentConfig(method=method, **keys))
    assert f"'{key}'" in message


@pytest.mark.parametrize("name", ["l2p", "coda-prompt"])
def test_each_prompt_method_finishes_the_tiny_quickstart(name, tiny_config):
    metrics, _ = run_in_process(tiny_config(method=name, coda_pool_size=10, rounds_per_task=1))
    accuracies = metrics["accuracy_matrix"]
    assert len(accuracies) == 2 and all(0 <= a <= 100 for a in accuracies[-1])


def test_l2p_training_moves_the_chosen_prompts_and_the_current_task_head_rows(tiny_config):
    experiment = load_experiment(tiny_config(method="l2p"))
    method, data = experiment.method, experiment.data
    task = data.stream.task(0)
    state = method.initial_state()
    update = method.train_client(state, data.client_train_set(task, 0, 2), task, seed=0)
    moved = (update.arrays["head.weight"] != state["head.weight"]).any(axis=1)
    assert moved[list(task.classes)].all() and not moved[len(task.classes) :].any()
    assert (update.arrays["prompts.prompts"] != state["prompts.prompts"]).any()
