"""The paper's adapter: `x + up(act(down(x)))` after every block, with biases.

For transformers the projections are Linear layers on each token; for CNNs they are 1x1
convolutions on the block's feature map (a parallel adapter on the block's output).
Several sets add their outputs; a set whose `up` is still zero is the identity.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from multifcl.adapters.policy import set_name
from multifcl.backbones import Backbone

EXPORT_FORMAT = "multifcl-bottleneck-adapters/1"


class BottleneckAdapter(nn.Module):
    """down: d -> r, ReLU, up: r -> d (zero-initialised), both with biases."""

    def __init__(self, dim: int, rank: int, feature_maps: bool) -> None:
        super().__init__()
        if feature_maps:
            self.down, self.up = nn.Conv2d(dim, rank, 1), nn.Conv2d(rank, dim, 1)
        else:
            self.down, self.up = nn.Linear(dim, rank), nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The residual this adapter adds (not the sum)."""
        return self.up(torch.relu(self.down(hidden)))


class BottleneckAdapters(nn.Module):
    """`num_sets` sets of one adapter per block, applied by the backbone's `after_block` hook."""

    def __init__(self, backbone: Backbone, rank: int, num_sets: int, seed: int) -> None:
        super().__init__()
        self.backbone = backbone  # shared and untouched: the adapters run beside it
        self.rank = rank
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sets = nn.ModuleDict(
                {
                    set_name(index): nn.ModuleList(
                        BottleneckAdapter(dim, rank, not backbone.token_features)
                        for dim in backbone.block_dims
                    )
                    for index in range(num_sets)
                }
            )
        self.to(backbone.device)

    def after_block(self, block: int, hidden: torch.Tensor) -> torch.Tensor:
        residual = sum(adapters[block](hidden) for adapters in self.sets.values())
        return hidden + residual

    def set_parameters(self, index: int) -> dict[str, nn.Parameter]:
        """The parameters of set `index`, by state key."""
        name = set_name(index)
        return {f"{name}/{key}": value for key, value in self.sets[name].named_parameters()}

    def trainable_module(self, index: int) -> nn.Module:
        """The module whose layers TempBalance balances while set `index` trains."""
        return self.sets[set_name(index)]

    def export(self, folder: Path) -> list[Path]:
        """One file `bottleneck-adapters.pt` that plain `torch.load` reads back."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "bottleneck-adapters.pt"
        payload = {
            "format": EXPORT_FORMAT,
            "rank": self.rank,
            "block_dims": list(self.backbone.block_dims),
            "backbone": self.backbone.name,
            "sets": {
                name: {k: v.detach().cpu() for k, v in adapters.state_dict().items()}
                for name, adapters in self.sets.items()
            },
        }
        torch.save(payload, path)
        return [path]
