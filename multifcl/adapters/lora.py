"""LoRA adapters through `peft`: one named peft adapter per set, all active at once unless
a method picks the active sets (`activate`).

peft changes the modules it wraps, so the adapters live in the method's own copy of the
backbone; the shared backbone of the process stays untouched. The wrapped layers are the
backbone's `lora_targets`, in every block or only in the blocks a method names.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from multifcl.adapters.policy import set_name
from multifcl.backbones import Backbone

PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names its keys


class LoraAdapters(nn.Module):
    """`num_sets` LoRA adapters (rank `rank`, alpha = rank) on the backbone's `lora_targets`,
    in the blocks `blocks` (None: every block)."""

    after_block = None  # LoRA acts inside the wrapped layers, not after blocks

    def __init__(
        self,
        backbone: Backbone,
        rank: int,
        num_sets: int,
        seed: int,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.wrapped = getattr(self.backbone, "model", self.backbone)  # what peft sees
        targets = list(backbone.lora_targets)
        if blocks is not None:
            targets = _targets_in_blocks(self.backbone, self.wrapped, blocks)
        self.config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
        self.names = [set_name(index) for index in range(num_sets)]
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns that a second adapter joins the first
            torch.manual_seed(seed)
            for name in self.names:
                inject_adapter_in_model(self.config, self.wrapped, adapter_name=name)
        self.layers = [layer for layer in self.backbone.modules() if isinstance(layer, LoraLayer)]
        self.activate(range(num_sets))  # every set is active in the forward pass
        self.backbone.to(backbone.device)

    def activate(self, sets: Sequence[int]) -> None:
        """Make exactly the sets `sets` act in the forward pass; every parameter stays frozen
        (peft's `set_adapter` would make the active sets trainable)."""
        for layer in self.layers:
            layer.set_adapter([self.names[index] for index in sets])
        self.backbone.requires_grad_(False)

    def down_projections(self, index: int) -> list[nn.Parameter]:
        """LoRA A (rank x in-features; a conv's: rank x in x k x k) of set `index` in every
        wrapped layer, in one order."""
        return [layer.lora_A[self.names[index]].weight for layer in self.layers]

    @torch.no_grad()
    def load_factor_sums(self, target: int, sources: Sequence[int]) -> None:
        """Set `target`'s factors to the sums of the `sources`' factors, layer by layer:
        A = sum of the sources' A, B = sum of their B (the update is B A, not sum B_j A_j)."""
        for layer in self.layers:
            for factors in (layer.lora_A, layer.lora_B):
                total = sum(factors[self.names[index]].weight for index in sources)
                factors[self.names[target]].weight.copy_(total)

    def set_parameters(self, index: int) -> dict[str, nn.Parameter]:
        """The parameters of set `index`, by state key."""
        marker = f".{self.names[index]}."
        return {
            f"{self.names[index]}/{key}": value
            for key, value in self.wrapped.named_parameters()
            if marker in key
        }

    def trainable_module(self, index: int) -> nn.Module:
        """The module whose layers TempBalance balances while set `index` trains: the whole
        backbone, where only that set's factors require grad."""
        return self.backbone

    def export(self, folder: Path, sets: Mapping[int, str] | None = None) -> list[Path]:
        """One folder per set that `peft.PeftModel.from_pretrained(base, folder)` reads back:
        `sets` maps set indices to folder names (default: every set, as `lora-<set name>`)."""
        if sets is None:
            sets = {index: f"lora-{name}" for index, name in enumerate(self.names)}
        written = []
        for index, folder_name in sets.items():
            name = self.names[index]
            target = folder / folder_name
            target.mkdir(parents=True, exist_ok=True)
            self.config.base_model_name_or_path = self.backbone.name
            self.config.save_pretrained(str(target))
            # LoRA never wraps embeddings: skip peft's hub lookup for a changed vocabulary
            weights = get_peft_model_state_dict(
                self.wrapped, adapter_name=name, save_embedding_layers=False
            )
            save_file(
                {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in weights.items()},
                str(target / "adapter_model.safetensors"),
            )
            written.append(target)
        return written


def _targets_in_blocks(backbone: Backbone, wrapped: nn.Module, blocks: Sequence[int]) -> list[str]:
    """Full names (in `wrapped`) of the `lora_targets` modules inside the blocks `blocks`."""
    inside = {id(module) for index in blocks for module in backbone.blocks[index].modules()}
    names = [
        name
        for name, module in wrapped.named_modules()
        if id(module) in inside and name.rsplit(".", 1)[-1] in backbone.lora_targets
    ]
    if not names:
        raise ValueError(f"no LoRA target {backbone.lora_targets} in blocks {list(blocks)}")
    return names
