"""The GPU path's switches, checked on the CPU: `precision = "auto"`, `tf32`, automatic
extraction/evaluation batch sizes (halved on out-of-memory), losses summed on the device,
`compile`, and that batch sizes do not change results."""

import dataclasses

import numpy as np
import pytest
import torch

from multifcl.backbones import load_backbone
from multifcl.backbones.loading import compile_backbone
from multifcl.backbones.pass_batches import AUTO_CUDA_MAX, PassBatches
from multifcl.backbones.precision import pass_precision, tf32_enabled, use_tf32
from multifcl.backbones.presets import build_vit_tiny
from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ConfigError
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.experiment import load_experiment
from multifcl.optim.local_training import LossSum
from tests.test_feature_cache import MULTIFCL, run_rounds

CUDA = torch.device("cuda")  # a device object only: nothing runs on it


def test_auto_precision_is_bf16_only_for_no_grad_passes_on_a_bf16_gpu(monkeypatch):
    cpu = torch.device("cpu")
    assert pass_precision(cpu, "auto", grad_enabled=False) == "fp32"
    assert pass_precision(cpu, "bf16", grad_enabled=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pass_precision(CUDA, "auto", grad_enabled=False) == "bf16"
    assert pass_precision(CUDA, "auto", grad_enabled=True) == "fp32"  # adapters train in fp32
    assert pass_precision(CUDA, "fp32", grad_enabled=False) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pass_precision(CUDA, "auto", grad_enabled=False) == "fp32"


def test_auto_precision_on_the_cpu_is_fp32_exactly():
    auto, fp32 = load_backbone("vit-tiny", precision="auto"), load_backbone("vit-tiny")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    assert auto.frozen_precision == "fp32"
    assert torch.equal(auto.encode(images, 4), fp32.encode(images, 4))


def test_tf32_switch_leaves_the_cpu_alone_and_sets_cuda_matmuls():
    before = tf32_enabled()
    try:
        use_tf32(not before, torch.device("cpu"))
        assert tf32_enabled() == before
        use_tf32(True, CUDA)
        assert tf32_enabled()
        use_tf32(False, CUDA)
        assert not tf32_enabled()
    finally:
        use_tf32(before, CUDA)


def test_automatic_batches_halve_on_out_of_memory_and_remember_the_size():
    fits = 300
    sizes = []

    def compute(start: int, stop: int) -> tuple[int, int]:
        sizes.append(stop - start)
        if stop - start > fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return start, stop

    batches = PassBatches("test-oom", 0, 32, CUDA)
    ranges = [result for _, _, result in batches.map(1100, compute)]
    assert sizes[:3] == [AUTO_CUDA_MAX, 512, 256]
    assert ranges == [(0, 256), (256, 512), (512, 768), (768, 1024), (1024, 1100)]
    assert PassBatches("test-oom", 0, 32, CUDA).size == 256  # kept for the process
    assert PassBatches("test-oom", 0, 32, torch.device("cpu")).size == 32  # CPU: batch-size
    fixed = PassBatches("test-fixed", 400, 32, CUDA)
    with pytest.raises(torch.OutOfMemoryError):  # a configured size is never changed
        list(fixed.map(1000, compute))


def test_loss_sum_equals_the_python_float_sum():
    losses = torch.rand(50, generator=torch.Generator().manual_seed(0)) * 3
    counts = [7, 32, 1] * 16 + [5, 9]
    python_total, summed = 0.0, LossSum()
    for loss, count in zip(losses, counts):
        python_total += float(loss) * count
        summed.add(loss, count)
    assert summed.mean() == python_total / sum(counts)  # bit for bit
    assert LossSum().mean() == 0.0


def test_compile_wraps_stem_and_blocks_in_place_once():
    backbone = TransformerBackbone(build_vit_tiny(), "vit-tiny")  # not the shared one
    names = sorted(backbone.state_dict())
    compile_backbone(backbone)
    compile_backbone(backbone)  # idempotent
    assert all(block._compiled_call_impl is not None for block in backbone.blocks)
    assert backbone.stem._compiled_call_impl is not None
    assert sorted(backbone.state_dict()) == names  # parameter names unchanged


@pytest.mark.parametrize("key", ["extract-batch-size", "eval-batch-size"])
def test_negative_batch_size_is_one_line(tiny_config, key):
    with pytest.raises(ConfigError, match=f"run config key '{key}': must be >= 0, got -1"):
        tiny_config(**{key.replace("-", "_"): -1})


def test_extraction_and_evaluation_batch_sizes_do_not_change_results(tiny_config):
    config = tiny_config(**MULTIFCL, num_tasks=2)
    state, _ = run_rounds(config, rounds=1)
    stages, features = [], []
    for sizes in ({}, {"extract_batch_size": 7, "eval_batch_size": 5}):
        experiment = load_experiment(dataclasses.replace(config, **sizes))
        method, data = experiment.method, experiment.data
        task = data.stream.task(1)
        stages.append(dataclasses.asdict(evaluate_seen_tasks(method, state, data, task)))
        features.append(method._encode(data.test_set(task).images))
    assert stages[0] == stages[1]
    for a, b in zip(*features):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
