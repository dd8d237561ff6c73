"""Small backbone presets that need no download: random weights, for offline runs and tests."""

from __future__ import annotations

import torch
from transformers import ViTConfig, ViTModel

PRESET_SEED = 0  # every process builds bit-identical random weights


def build_vit_tiny() -> ViTModel:
    """A 4-block, 64-wide ViT (8x8 patches) on 32x32 inputs, random weights: NOT pretrained."""
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        initializer_range=0.1,  # wider than the 0.02 default: random features vary more
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRESET_SEED)
        return ViTModel(config, add_pooling_layer=False)


def build_vit_b16_random() -> ViTModel:
    """ViT-B/16 at 224 px (12 blocks, 768 wide) from its config, random weights: NOT
    pretrained; the paper backbone's shape and cost, for timings without a download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PRESET_SEED)
        return ViTModel(ViTConfig(), add_pooling_layer=False)


PRESETS = {"vit-tiny": build_vit_tiny, "vit-b16-random": build_vit_b16_random}
