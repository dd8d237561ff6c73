"""Equizero: zero-shot test-time canonicalization over a finite group of image transforms.

The classifier sees every transform of the input in the group and the prediction of the
transform with the highest softmax confidence is kept (Basu et al., "Efficient equivariant
transfer learning from pretrained models", NeurIPS 2023). Nothing is trained. Transforms act
on preprocessed pixel tensors (N x C x H x W, square images).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from multifcl.config import check_name

if TYPE_CHECKING:
    from multifcl.data import InMemoryImages

PixelTransform = Callable[[torch.Tensor], torch.Tensor]


def rotation(quarter_turns: int) -> PixelTransform:
    """Rotate images counter-clockwise by `quarter_turns` x 90 degrees."""
    return lambda pixels: torch.rot90(pixels, quarter_turns, dims=(-2, -1))


def horizontal_flip(pixels: torch.Tensor) -> torch.Tensor:
    return torch.flip(pixels, dims=(-1,))


def vertical_flip(pixels: torch.Tensor) -> torch.Tensor:
    return torch.flip(pixels, dims=(-2,))


def _flipped_rotation(quarter_turns: int) -> PixelTransform:
    turn = rotation(quarter_turns)
    return lambda pixels: turn(horizontal_flip(pixels))


def _identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


ROTATIONS = {"rot0": _identity, "rot90": rotation(1), "rot180": rotation(2), "rot270": rotation(3)}
TRANSFORM_GROUPS: dict[str, dict[str, PixelTransform]] = {
    "flip": {"identity": _identity, "hflip": horizontal_flip},
    "rot90": ROTATIONS,
    "flip-rot90": {  # the dihedral group of the square: 4 rotations, 4 reflections
        **ROTATIONS,
        **{f"hflip-rot{90 * k}": _flipped_rotation(k) for k in range(4)},
    },
}


def group_transforms(
    group: str, where: str = "run config key 'eval-group'"
) -> dict[str, PixelTransform]:
    """The named transforms of `group`; a one-line ConfigError saying `where` otherwise."""
    check_name(where, "group", group, TRANSFORM_GROUPS)
    return TRANSFORM_GROUPS[group]


class EquizeroClassifier(nn.Module):
    """Wraps a pixels -> logits classifier: for each sample, the logits of the group
    transform whose softmax is most confident.

    `num_classes` limits the confidence to the first classes (the classes seen so far in a
    class-incremental stream); the returned logits still cover every class.
    """

    def __init__(self, classifier: nn.Module, group: str, num_classes: int | None = None):
        super().__init__()
        self.classifier = classifier
        self.transforms = list(group_transforms(group).values())
        self.num_classes = num_classes

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        candidates = [self.classifier(transform(pixels)) for transform in self.transforms]
        return most_confident(candidates, self.num_classes)


def most_confident(candidates: list[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    """Per sample, the candidate logits whose softmax over the first `num_classes` classes
    has the highest maximum (the first candidate wins ties)."""
    stacked = torch.stack(candidates)  # transforms x samples x classes
    confidence = torch.softmax(stacked[:, :, :num_classes].float(), dim=2).amax(dim=2)
    chosen = confidence.argmax(dim=0)  # first maximum: the earliest transform on ties
    return stacked[chosen, torch.arange(stacked.shape[1], device=stacked.device)]


@torch.no_grad()
def class_incremental_accuracy(
    classifier: nn.Module,
    preprocess: PixelTransform,
    test_set: InMemoryImages,
    seen: int,
    batch_size: int,
    transform: PixelTransform = _identity,
) -> float:
    """Accuracy (percent) over the first `seen` classes on `test_set`, each preprocessed
    image passed through `transform` first (a rotated or flipped test set)."""
    correct = 0
    labels = torch.as_tensor(test_set.labels)
    for start in range(0, len(test_set), batch_size):
        pixels = transform(preprocess(test_set.images[start : start + batch_size]))
        logits = classifier(pixels).float().cpu()
        correct += int((logits[:, :seen].argmax(1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / max(len(test_set), 1)


def equizero_accuracies(
    classifier: nn.Module,
    preprocess: PixelTransform,
    test_sets: list[InMemoryImages],
    seen: int,
    group: str,
    batch_size: int,
) -> list[float]:
    """Class-incremental accuracy of each test set under equizero over `group` (fresh
    forward passes: transformed inputs cannot reuse cached features)."""
    canonicalized = EquizeroClassifier(classifier, group, seen)
    return [
        class_incremental_accuracy(canonicalized, preprocess, test_set, seen, batch_size)
        for test_set in test_sets
    ]
