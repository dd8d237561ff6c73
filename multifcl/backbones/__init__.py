"""Pretrained image encoders with multi-scale taps."""

from multifcl.backbones.vision_transformer import VisionBackbone, load_backbone, resolve_device

__all__ = ["VisionBackbone", "load_backbone", "resolve_device"]
