"""The interface every backbone offers to methods.

A backbone is a frozen pretrained image encoder cut into a stem, a list of blocks (the
places where adapters go) and a `final` module that turns the last block's output into
the final image feature. Taps are pooled features after chosen blocks (the CLS token for
transformers, a global average pool for CNNs); the last tap is always the final feature,
so multi-scale experts can end on it. Input size and normalisation belong to the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones.host_transfer import to_device
from multifcl.backbones.pass_batches import PassBatches
from multifcl.backbones.precision import backbone_autocast, pass_precision

AfterBlock = Callable[[int, torch.Tensor], torch.Tensor]
KeyValuePrefix = tuple[torch.Tensor, torch.Tensor]  # (N x P x d keys, N x P x d values)


class Backbone(nn.Module):
    """Frozen encoder: stem -> blocks -> final, with pooled taps after chosen blocks.

    Subclasses set `stem`, `blocks`, `final`, `block_dims` (width of each block's output),
    `tap_blocks` (the block after which each tap pools; the last is the last block),
    `tap_dims`, `feature_dim` and `lora_targets` (module names peft's LoRA wraps), and
    implement `pool`.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    final: nn.Module
    block_dims: list[int]
    tap_blocks: list[int]
    tap_dims: list[int]
    feature_dim: int
    lora_targets: tuple[str, ...]
    token_features: bool  # True: blocks output N x tokens x d; False: N x C x H x W
    supports_attention_prefixes = False  # `attention_prefixes` works (prefix-tuning)
    precision: str = "fp32"  # "bf16"/"auto" (precision.py): autocast; features leave as fp32

    def __init__(
        self, name: str, image_size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.name = name
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> None:
        """Freeze every parameter and fix normalisation statistics (eval mode)."""
        self.requires_grad_(False)
        self.eval()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_taps(self) -> int:
        return len(self.tap_blocks)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def run_block(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Apply one block (a copy of one of `blocks` is fine)."""
        return block(hidden)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """A block output pooled to one vector per image."""
        raise NotImplementedError

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x H x W -> float pixels at the backbone's size and normalisation."""
        pixels = to_device(images, self.device).float().div_(255.0)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        return (pixels - self.mean) / self.std

    @property
    def frozen_precision(self) -> str:
        """What passes without gradients run at (what cached features were computed at)."""
        return pass_precision(self.device, self.precision, grad_enabled=False)

    def autocast(self):
        """The autocast context of this backbone's passes (`precision`)."""
        return backbone_autocast(self.device, self.precision)

    def hidden_before(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """The block input of block `block` (0-based); `num_blocks` gives the last output."""
        with self.autocast():
            hidden = self._hidden_before(pixels, block)
        return hidden.float()

    def _hidden_before(self, pixels: torch.Tensor, block: int) -> torch.Tensor:
        """`hidden_before` in the caller's precision context, not cast back."""
        hidden = self.stem(pixels)
        for layer in self.blocks[:block]:
            hidden = self.run_block(layer, hidden)
        return hidden

    def prompted_hidden(self, pixels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The last block's output when `prompts` (N x P x d tokens) are inserted into the
        stem's token sequence right after its first (class) token: N x (1 + P + rest) x d.
        Token backbones only (prompt-tuning)."""
        with self.autocast():
            hidden = self.stem(pixels)
            prompts = prompts.to(hidden.dtype)
            hidden = torch.cat([hidden[:, :1], prompts, hidden[:, 1:]], dim=1)
            for layer in self.blocks:
                hidden = self.run_block(layer, hidden)
        return hidden.float()

    def token_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each token of a last-block output through the final norm, unpooled (token
        backbones)."""
        raise NotImplementedError(f"{type(self).__name__} has no token outputs")

    @contextmanager
    def attention_prefixes(self, prefixes: Mapping[int, KeyValuePrefix]) -> Iterator[None]:
        """Inside: block i's attention also attends to the keys and values `prefixes[i]`
        (prefix-tuning); only where `supports_attention_prefixes`."""
        raise NotImplementedError(f"{type(self).__name__} takes no attention prefixes")
        yield

    def taps(
        self, pixels: torch.Tensor, taps: Sequence[int], after_block: AfterBlock | None = None
    ) -> list[torch.Tensor]:
        """Pooled features of the taps `taps` (indices into `tap_blocks`).

        `after_block(i, hidden)` runs after block i and may change its output (adapters).
        """
        wanted = {self.tap_blocks[tap]: tap for tap in taps}
        last_block = max(wanted)
        features: dict[int, torch.Tensor] = {}
        with self.autocast():
            hidden = self.stem(pixels)
            for index, layer in enumerate(self.blocks[: last_block + 1]):
                hidden = self.run_block(layer, hidden)
                if after_block is not None:
                    hidden = after_block(index, hidden)
                if index in wanted:
                    is_final = index == self.num_blocks - 1
                    pooled = self.final(hidden) if is_final else self.pool(hidden)
                    features[wanted[index]] = pooled.float()
        return [features[tap] for tap in taps]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final image feature."""
        with self.autocast():
            final = self.final(self._hidden_before(pixels, self.num_blocks))
        return final.float()

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batches: int | PassBatches) -> torch.Tensor:
        """Final features of uint8 images, computed in batches (a size, or `PassBatches`)
        without gradients."""
        if isinstance(batches, int):
            batches = PassBatches("encode", batches, batches, self.device)
        parts = batches.map(len(images), lambda a, b: self(self.preprocess(images[a:b])))
        batches = [features for _, _, features in parts]
        if not batches:
            return torch.zeros(0, self.feature_dim, device=self.device)
        return torch.cat(batches)
