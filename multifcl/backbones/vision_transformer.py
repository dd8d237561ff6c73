"""Frozen pretrained vision transformers (Hugging Face ViT or CLIP's image tower).

The backbone owns its input size and normalisation and exposes the CLS feature after
any block, so methods can tap several depths (multi-scale experts).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, ViTModel

from multifcl.backbones.presets import PRESETS
from multifcl.config import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


class VisionBackbone(nn.Module):
    """A ViT split into embedding, blocks and final norm; frozen unless a method says so."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.name = name
        self.model = model
        tower = getattr(model, "vision_model", model)  # transformers 4.x nests CLIP's tower
        if isinstance(model, CLIPVisionModel):
            self.embed = nn.Sequential(tower.embeddings, tower.pre_layrnorm)
            self.final_norm = tower.post_layernorm
            mean, std = CLIP_MEAN, CLIP_STD
        else:
            self.embed = tower.embeddings
            self.final_norm = tower.layernorm
            mean, std = VIT_MEAN, VIT_STD
        self.blocks = _transformer_blocks(tower)
        self.image_size = int(model.config.image_size)
        self.feature_dim = int(model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float pixels at the backbone's size and normalisation."""
        pixels = images.to(self.device, non_blocking=True).float().div_(255.0)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        return (pixels - self.mean) / self.std

    def tokens_before(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """The token sequence that enters block `block` (0-based)."""
        hidden = self.embed(pixels)
        for layer in self.blocks[:block]:
            hidden = run_block(layer, hidden)
        return hidden

    def block_features(self, pixels: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:
        """CLS token after each block in `blocks` (0-based), without the final norm."""
        wanted = set(blocks)
        hidden = self.embed(pixels)
        features = {}
        for index, layer in enumerate(self.blocks[: max(blocks) + 1]):
            hidden = run_block(layer, hidden)
            if index in wanted:
                features[index] = hidden[:, 0]
        return [features[index] for index in blocks]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Final features of uint8 images, computed in batches without gradients."""
        batches = [
            self(self.preprocess(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return (
            torch.cat(batches) if batches else torch.zeros(0, self.feature_dim, device=self.device)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final image feature: CLS after the last block and the final norm."""
        hidden = self.tokens_before(pixels, self.num_blocks)
        return self.final_norm(hidden[:, 0])


def _transformer_blocks(tower: nn.Module) -> nn.ModuleList:
    """The block list, wherever this transformers version keeps it."""
    for path in ("layers", "encoder.layers", "encoder.layer"):
        owner = tower
        for part in path.split("."):
            owner = getattr(owner, part, None)
        if isinstance(owner, nn.ModuleList):
            return owner
    raise TypeError(f"cannot find the transformer blocks of {type(tower).__name__}")


def run_block(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Apply one transformer block (ViT and CLIP blocks take an optional mask)."""
    output = layer(hidden, None)
    return output[0] if isinstance(output, tuple) else output


def resolve_device(device: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "run config key 'device': 'cuda' asked for, but no CUDA device is visible"
        )
    return torch.device(device)


@lru_cache(maxsize=2)
def load_backbone(name: str, device: str = "cpu") -> VisionBackbone:
    """The backbone by preset name, Hugging Face model id or local folder; once per process."""
    if name in PRESETS:
        model = PRESETS[name]()
    else:
        model = _from_pretrained(name)
    return VisionBackbone(model, name).to(resolve_device(device))


def _from_pretrained(name: str) -> nn.Module:
    looks_like_hub_id = name.count("/") == 1 and " " not in name and not name.startswith(("/", "."))
    if not Path(name).is_dir() and not looks_like_hub_id:
        raise ConfigError(
            f"run config key 'backbone': unknown backbone {name!r} (use a preset "
            f"{', '.join(PRESETS)}, a Hugging Face model id owner/name, or a local folder)"
        )
    try:
        model_type = AutoConfig.from_pretrained(name).model_type
        if model_type in CLIP_MODEL_TYPES:
            return CLIPVisionModel.from_pretrained(name)
        if model_type == "vit":
            return ViTModel.from_pretrained(name, add_pooling_layer=False)
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"run config key 'backbone': cannot load {name!r}: {reason}") from None
    raise ConfigError(
        f"run config key 'backbone': {name!r} is a {model_type!r} model; use a ViT or CLIP model"
    )
