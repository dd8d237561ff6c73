"""Adapters on a frozen backbone: types (bottleneck, LoRA, none), policies, export."""

from __future__ import annotations

from multifcl.adapters.bottleneck import BottleneckAdapters
from multifcl.adapters.lora import LoraAdapters
from multifcl.adapters.none import NoAdapters
from multifcl.adapters.policy import NO_ADAPTERS, AdapterPolicy, set_name
from multifcl.backbones import Backbone

AdapterBank = BottleneckAdapters | LoraAdapters | NoAdapters


def build_adapters(kind: str, backbone: Backbone, rank: int, num_sets: int, seed: int):
    """The adapter bank of type `kind` (`bottleneck`, `lora`, or `NO_ADAPTERS`)."""
    if kind == NO_ADAPTERS:
        return NoAdapters(backbone)
    bank = BottleneckAdapters if kind == "bottleneck" else LoraAdapters
    return bank(backbone, rank, num_sets, seed)


__all__ = [
    "NO_ADAPTERS",
    "AdapterBank",
    "AdapterPolicy",
    "BottleneckAdapters",
    "LoraAdapters",
    "NoAdapters",
    "build_adapters",
    "set_name",
]
