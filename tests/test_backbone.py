"""Backbones: the real from_pretrained path on tiny models saved locally, presets, taps."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, ViTConfig, ViTModel

from multifcl.backbones import load_backbone
from multifcl.backbones.presets import build_vit_tiny
from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ConfigError
from tests.conftest import random_images
from tests.test_config import one_line_error

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def test_vit_saved_with_save_pretrained_loads_through_from_pretrained(tmp_path):
    torch.manual_seed(0)
    original = ViTModel(ViTConfig(**TINY), add_pooling_layer=False)
    original.save_pretrained(tmp_path / "tiny-vit")
    backbone = load_backbone(str(tmp_path / "tiny-vit"))
    assert (backbone.num_blocks, backbone.feature_dim, backbone.image_size) == (3, 32, 32)
    pixels = backbone.preprocess(random_images())
    expected = original(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(backbone(pixels), expected, atol=1e-5)
    assert not any(p.requires_grad for p in backbone.parameters())


def test_clip_vision_tower_loads_with_clip_normalisation(tmp_path):
    torch.manual_seed(0)
    original = CLIPVisionModel(CLIPVisionConfig(**TINY))
    original.save_pretrained(tmp_path / "tiny-clip")
    backbone = load_backbone(str(tmp_path / "tiny-clip"))
    pixels = backbone.preprocess(random_images())
    assert torch.allclose(backbone(pixels), original(pixel_values=pixels).pooler_output, atol=1e-5)
    assert backbone.mean.flatten()[0].item() == pytest.approx(0.48145466)


def test_taps_are_the_cls_tokens_of_each_block_and_the_last_is_the_final_feature():
    backbone = TransformerBackbone(build_vit_tiny(), "vit-tiny")
    assert (backbone.num_taps, backbone.tap_dims) == (4, [64] * 4)
    pixels = backbone.preprocess(random_images())
    hidden = backbone.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    taps = backbone.taps(pixels, [0, 2, 3])
    for block, feature in zip([0, 2], taps):
        assert torch.allclose(feature, hidden[block + 1][:, 0], atol=1e-5)
    assert torch.allclose(taps[2], backbone(pixels), atol=1e-6)


def test_preset_is_identical_in_every_process():
    first, second = build_vit_tiny().state_dict(), build_vit_tiny().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_preprocess_resizes_and_normalises():
    backbone = load_backbone("vit-tiny")
    pixels = backbone.preprocess(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8))
    assert pixels.shape == (2, 3, 32, 32)
    assert torch.allclose(pixels, torch.ones_like(pixels))  # (1 - 0.5) / 0.5


def test_unknown_backbone_is_one_line():
    message = one_line_error(ConfigError, lambda: load_backbone("resnet-9000"))
    assert "'backbone': unknown backbone 'resnet-9000'" in message


def test_folder_without_a_model_is_one_line(tmp_path):
    message = one_line_error(ConfigError, lambda: load_backbone(str(tmp_path)))
    assert "'backbone': cannot load" in message


def test_full_clip_checkpoint_loads_its_image_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
    }
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=TINY, projection_dim=8))
    full.save_pretrained(tmp_path / "tiny-clip-full")
    backbone = load_backbone(str(tmp_path / "tiny-clip-full"))
    pixels = backbone.preprocess(random_images())
    expected = full.vision_model(pixel_values=pixels).pooler_output
    assert backbone.num_blocks == 3 and torch.allclose(backbone(pixels), expected, atol=1e-5)
