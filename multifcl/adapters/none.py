"""The adapter bank of a method run without adapters: no sets, the backbone unchanged."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from multifcl.backbones import Backbone


class NoAdapters:
    """The interface of `BottleneckAdapters` and `LoraAdapters` with no set in it."""

    after_block = None  # the backbone's blocks run unchanged

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def set_parameters(self, index: int) -> dict[str, nn.Parameter]:
        """No set holds parameters."""
        return {}

    def trainable_module(self, index: int) -> nn.Module:
        """Nothing for TempBalance to balance."""
        return nn.Module()

    def export(self, folder: Path) -> list[Path]:
        """Nothing to write."""
        return []
