"""Backbones by name: presets, EfficientNet-Lite0, timm models, Hugging Face ids or folders."""

from __future__ import annotations

from functools import lru_cache

import torch

from multifcl.backbones.base import Backbone
from multifcl.backbones.presets import PRESETS
from multifcl.backbones.vision_transformer import TransformerBackbone, load_hugging_face_vit
from multifcl.config import ConfigError

EFFICIENTNET_LITE0 = "efficientnet-lite0"
TIMM_PREFIX = "timm:"


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
def load_backbone(
    name: str, device: str = "cpu", image_size: int = 0, precision: str = "fp32"
) -> Backbone:
    """The frozen backbone `name`, loaded once per process.

    `image_size` > 0 sets the input size where the backbone allows it (CNNs); 0 keeps
    the backbone's own default. `precision` "bf16" runs its passes under bf16 autocast.
    """
    if name in PRESETS:
        backbone: Backbone = TransformerBackbone(PRESETS[name](), name)
    elif name == EFFICIENTNET_LITE0:
        from multifcl.backbones.efficientnet import load_efficientnet_lite0

        backbone = load_efficientnet_lite0(image_size)
    elif name.startswith(TIMM_PREFIX):
        from multifcl.backbones.timm_models import load_timm_backbone

        backbone = load_timm_backbone(name[len(TIMM_PREFIX) :], image_size)
    else:
        backbone = load_hugging_face_vit(name)
    backbone.precision = precision
    return backbone.to(resolve_device(device))


def compile_backbone(backbone: Backbone) -> None:
    """`torch.compile` the stem and every block in place (`compile = true`): parameter
    names and adapters' hooks are unchanged; the first passes of each shape compile."""
    if getattr(backbone, "compiled", False):
        return
    backbone.stem.compile()
    for block in backbone.blocks:
        block.compile()
    backbone.compiled = True
