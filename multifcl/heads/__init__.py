"""Classifier heads."""

from multifcl.heads.cosine_prototypes import CosinePrototypeHead

__all__ = ["CosinePrototypeHead"]
