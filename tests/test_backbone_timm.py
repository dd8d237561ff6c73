"""timm ViTs: tiny random models saved by timm load through the real from-folder path."""

import copy
import json
import sys

import pytest

timm = pytest.importorskip("timm")

import torch

from multifcl.backbones import load_backbone
from multifcl.backbones.timm_models import load_timm_backbone
from multifcl.config import ConfigError
from tests.conftest import random_images
from tests.test_config import one_line_error

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 64, "num_heads": 4}


def save_tiny_vit(folder, **changes):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT, **changes)
    timm.models.save_for_hf(model, folder)
    return model.eval()


def test_saved_vit_loads_and_its_final_feature_is_timms_pre_logits(tmp_path):
    original = save_tiny_vit(tmp_path / "vit")
    backbone = load_backbone(f"timm:{tmp_path / 'vit'}")
    assert (backbone.num_blocks, backbone.feature_dim, backbone.image_size) == (3, 64, 32)
    assert (backbone.tap_blocks, backbone.tap_dims, backbone.lora_targets) == (
        [0, 1, 2],
        [64] * 3,
        ("qkv",),
    )
    assert backbone.mean.flatten().tolist() == [0.5] * 3  # from the model's pretrained_cfg
    assert not any(p.requires_grad for p in backbone.parameters())
    pixels = backbone.preprocess(random_images())
    with torch.no_grad():
        expected = original.forward_head(original.forward_features(pixels), pre_logits=True)
        taps = backbone.taps(pixels, [0, 1, 2])
        hidden = original.blocks[0](
            original.norm_pre(original._pos_embed(original.patch_embed(pixels)))
        )
    assert torch.allclose(backbone(pixels), expected, atol=1e-6)
    assert torch.equal(taps[2], backbone(pixels))
    assert torch.allclose(taps[0], hidden[:, 0], atol=1e-6)  # the CLS token after block 0


@pytest.mark.parametrize(
    "changes",
    [
        {"global_pool": "avg"},  # patch-token mean, then fc_norm instead of norm
        {"reg_tokens": 2, "no_embed_class": True},  # more prefix tokens
        {"global_pool": "map", "class_token": False},  # attention pooling
    ],
)
def test_other_vit_variants_match_timms_pre_logits(tmp_path, changes):
    original = save_tiny_vit(tmp_path / "vit", **changes)
    backbone = load_timm_backbone(str(tmp_path / "vit"), 0)
    pixels = backbone.preprocess(random_images())
    with torch.no_grad():
        expected = original.forward_head(original.forward_features(pixels), pre_logits=True)
        assert torch.allclose(backbone(pixels), expected, atol=1e-6)
        tap = backbone.taps(pixels, [0])[0]
    assert tap.shape == (3, 64)


def test_image_size_rebuilds_the_position_embedding(tmp_path):
    save_tiny_vit(tmp_path / "vit")
    backbone = load_timm_backbone(str(tmp_path / "vit"), 48)
    assert backbone.image_size == 48
    assert backbone(backbone.preprocess(random_images())).shape == (3, 64)


def test_lora_wraps_qkv_and_starts_as_the_identity(tmp_path):
    peft = pytest.importorskip("peft")
    save_tiny_vit(tmp_path / "vit")
    backbone = load_timm_backbone(str(tmp_path / "vit"), 0)
    config = peft.LoraConfig(r=4, target_modules=list(backbone.lora_targets))
    adapted = peft.inject_adapter_in_model(config, copy.deepcopy(backbone))
    assert sum(name.endswith("qkv.lora_A") for name, _ in adapted.named_modules()) == 3
    pixels = backbone.preprocess(random_images())
    with torch.no_grad():
        assert torch.allclose(adapted(pixels), backbone(pixels), atol=1e-6)


def test_unknown_timm_name_is_one_line():
    message = one_line_error(ConfigError, lambda: load_timm_backbone("vit_tiny_patch16_22", 0))
    assert "'backbone': unknown timm model 'vit_tiny_patch16_22'" in message
    assert "vit_tiny_patch16_224" in message  # a close name


def test_checkpoint_with_keys_that_do_not_match_is_one_line(tmp_path):
    save_tiny_vit(tmp_path / "vit")
    weights = tmp_path / "vit" / "pytorch_model.bin"
    state = torch.load(weights)
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.2.")}, weights)
    message = one_line_error(ConfigError, lambda: load_timm_backbone(str(tmp_path / "vit"), 0))
    assert f"'backbone': cannot load timm model '{tmp_path / 'vit'}'" in message
    assert "blocks.2." in message


def test_folder_without_a_timm_config_is_one_line(tmp_path):
    message = one_line_error(ConfigError, lambda: load_timm_backbone(str(tmp_path), 0))
    assert "config.json" in message


def test_non_vit_timm_model_is_one_line(tmp_path):
    timm.models.save_for_hf(timm.create_model("test_resnet", pretrained=False), tmp_path / "cnn")
    config = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert config["architecture"] == "test_resnet"
    message = one_line_error(ConfigError, lambda: load_timm_backbone(str(tmp_path / "cnn"), 0))
    assert "is a ResNet; only ViT-style timm models" in message


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    message = one_line_error(ConfigError, lambda: load_timm_backbone("vit_base_patch16_224", 0))
    assert "'backbone': 'timm:vit_base_patch16_224' needs timm" in message
    assert 'pip install -e ".[timm]"' in message
