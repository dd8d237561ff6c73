"""Hugging Face vision transformers (ViT, or CLIP's image tower) behind the backbone interface.

Taps are the CLS token after each block; the final feature is the CLS token after the
final layer norm. Adapters go after each block; LoRA wraps the query and value projections.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, ViTModel

from multifcl.backbones import attention_prefixes
from multifcl.backbones.base import Backbone, KeyValuePrefix
from multifcl.config import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


class ClsFeature(nn.Module):
    """The CLS token of a token sequence, through a final norm."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden[:, 0])


class TransformerBackbone(Backbone):
    """A transformers ViT or CLIP image tower, split into embedding, blocks and final norm."""

    token_features = True
    supports_attention_prefixes = attention_prefixes.REGISTERED

    def __init__(self, model: nn.Module, name: str) -> None:
        is_clip = isinstance(model, CLIPVisionModel)
        mean, std = (CLIP_MEAN, CLIP_STD) if is_clip else (VIT_MEAN, VIT_STD)
        super().__init__(name, int(model.config.image_size), mean, std)
        self.model = model
        self.is_clip = is_clip
        tower = getattr(model, "vision_model", model)  # transformers 4.x nests CLIP's tower
        if is_clip:
            self.stem = nn.Sequential(tower.embeddings, tower.pre_layrnorm)
            self.final = ClsFeature(tower.post_layernorm)
        else:
            self.stem = tower.embeddings
            self.final = ClsFeature(tower.layernorm)
        self.blocks = _transformer_blocks(tower)
        self.lora_targets = _query_value_projections(self.blocks[0])
        self.feature_dim = int(model.config.hidden_size)
        self.block_dims = [self.feature_dim] * len(self.blocks)
        self.tap_blocks = list(range(len(self.blocks)))
        self.tap_dims = list(self.block_dims)
        self.freeze()

    def run_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        output = block(hidden, None)  # ViT and CLIP blocks take an optional mask
        return output[0] if isinstance(output, tuple) else output

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0]

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final.norm(hidden)

    @contextmanager
    def attention_prefixes(self, prefixes: Mapping[int, KeyValuePrefix]) -> Iterator[None]:
        with attention_prefixes.prefixed_attention(self.blocks, prefixes):
            yield


def _transformer_blocks(tower: nn.Module) -> nn.ModuleList:
    """The block list, wherever this transformers version keeps it."""
    for path in ("layers", "encoder.layers", "encoder.layer"):
        owner = tower
        for part in path.split("."):
            owner = getattr(owner, part, None)
        if isinstance(owner, nn.ModuleList):
            return owner
    raise TypeError(f"cannot find the transformer blocks of {type(tower).__name__}")


def _query_value_projections(block: nn.Module) -> tuple[str, ...]:
    """The names of the query and value projections (they differ across transformers versions)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in block.named_modules()}
    for pair in (("q_proj", "v_proj"), ("query", "value")):
        if set(pair) <= names:
            return pair
    raise TypeError(f"cannot find the query/value projections in {type(block).__name__}")


def load_hugging_face_vit(name: str) -> TransformerBackbone:
    """A ViT or CLIP image tower by Hugging Face model id or local folder."""
    looks_like_hub_id = name.count("/") == 1 and " " not in name and not name.startswith(("/", "."))
    if not Path(name).is_dir() and not looks_like_hub_id:
        raise ConfigError(
            f"run config key 'backbone': unknown backbone {name!r} (use a preset, "
            "efficientnet-lite0, timm:<name>, a Hugging Face model id owner/name, "
            "or a local folder)"
        )
    try:
        model_type = AutoConfig.from_pretrained(name).model_type
        if model_type in CLIP_MODEL_TYPES:
            return TransformerBackbone(CLIPVisionModel.from_pretrained(name), name)
        if model_type == "vit":
            return TransformerBackbone(
                ViTModel.from_pretrained(name, add_pooling_layer=False), name
            )
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"run config key 'backbone': cannot load {name!r}: {reason}") from None
    raise ConfigError(
        f"run config key 'backbone': {name!r} is a {model_type!r} model; use a ViT or CLIP model"
    )
