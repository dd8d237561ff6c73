"""LoRA adapters through `peft`: one named peft adapter per set, all active at once.

peft changes the modules it wraps, so the adapters live in the method's own copy of the
backbone; the shared backbone of the process stays untouched.
"""

from __future__ import annotations

import copy
import warnings
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
    """`num_sets` LoRA adapters (rank `rank`, alpha = rank) on the backbone's `lora_targets`."""

    after_block = None  # LoRA acts inside the wrapped layers, not after blocks

    def __init__(self, backbone: Backbone, rank: int, num_sets: int, seed: int) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.wrapped = getattr(self.backbone, "model", self.backbone)  # what peft sees
        self.config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=list(backbone.lora_targets)
        )
        self.names = [set_name(index) for index in range(num_sets)]
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns that a second adapter joins the first
            torch.manual_seed(seed)
            for name in self.names:
                inject_adapter_in_model(self.config, self.wrapped, adapter_name=name)
        for layer in self.backbone.modules():
            if isinstance(layer, LoraLayer):
                layer.set_adapter(self.names)  # every set is active in the forward pass
        self.backbone.requires_grad_(False)
        self.backbone.to(backbone.device)

    def set_parameters(self, index: int) -> dict[str, nn.Parameter]:
        """The parameters of set `index`, by state key."""
        marker = f".{self.names[index]}."
        return {
            f"{self.names[index]}/{key}": value
            for key, value in self.wrapped.named_parameters()
            if marker in key
        }

    def export(self, folder: Path) -> list[Path]:
        """One folder per set that `peft.PeftModel.from_pretrained(base, folder)` reads back."""
        written = []
        for name in self.names:
            target = folder / f"lora-{name}"
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
