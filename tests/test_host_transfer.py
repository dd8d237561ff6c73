"""Host-to-GPU batches go through pinned memory; CPU runs copy nothing."""

from __future__ import annotations

import pytest
import torch

from multifcl.backbones import host_transfer
from multifcl.backbones.host_transfer import to_device, uses_pinned_memory

CUDA = torch.device("cuda")


def test_cpu_tensors_stay_as_they_are_on_the_cpu():
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    assert to_device(images, torch.device("cpu")) is images
    assert not uses_pinned_memory(images, torch.device("cpu"))


def test_only_host_tensors_bound_for_cuda_are_pinned():
    assert uses_pinned_memory(torch.zeros(2), CUDA)
    assert not uses_pinned_memory(torch.zeros(2, device="meta"), CUDA)


def test_a_cuda_copy_is_pinned_first_and_sent_without_blocking(monkeypatch):
    calls: list[tuple] = []

    def pin_memory(self):
        calls.append(("pin",))
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", *args, kwargs.get("non_blocking", False)))
        return self

    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(torch.zeros(3), CUDA)
    assert calls == [("pin",), ("to", CUDA, True)]


def test_backbone_pixels_and_stored_features_travel_through_it(monkeypatch):
    from multifcl.backbones import base
    from multifcl.features import cache as feature_cache
    from multifcl.features.cache import FeatureCache, FeatureKey

    moved: list[tuple[int, ...]] = []

    def spy(tensor, device):
        moved.append(tuple(tensor.shape))
        return host_transfer.to_device(tensor, device)

    monkeypatch.setattr(base, "to_device", spy)
    monkeypatch.setattr(feature_cache, "to_device", spy)
    backbone = base.Backbone("test", 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    backbone.preprocess(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    FeatureCache(2**20).get_or_compute(
        FeatureKey("d", "e", 0), lambda: [torch.zeros(5, 4)], torch.device("cpu")
    )
    assert moved == [(2, 3, 8, 8), (5, 4)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_copy_on_a_real_gpu_equals_the_source():
    images = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8)
    moved = to_device(images, CUDA)
    torch.cuda.synchronize()
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), images)
