"""Pretrained image encoders with multi-scale taps, behind one interface."""

from multifcl.backbones.base import Backbone
from multifcl.backbones.loading import load_backbone, resolve_device

__all__ = ["Backbone", "load_backbone", "resolve_device"]
