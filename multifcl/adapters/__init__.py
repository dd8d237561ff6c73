"""Adapters on a frozen backbone: types (bottleneck, LoRA), policies, export."""

from __future__ import annotations

from multifcl.adapters.bottleneck import BottleneckAdapters
from multifcl.adapters.lora import LoraAdapters
from multifcl.adapters.policy import AdapterPolicy, set_name
from multifcl.backbones import Backbone

AdapterBank = BottleneckAdapters | LoraAdapters


def build_adapters(kind: str, backbone: Backbone, rank: int, num_sets: int, seed: int):
    """The adapter bank of type `kind` (`bottleneck` or `lora`)."""
    bank = BottleneckAdapters if kind == "bottleneck" else LoraAdapters
    return bank(backbone, rank, num_sets, seed)


__all__ = [
    "AdapterBank",
    "AdapterPolicy",
    "BottleneckAdapters",
    "LoraAdapters",
    "build_adapters",
    "set_name",
]
