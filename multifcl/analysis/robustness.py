"""Robustness of a model to rotated and flipped test sets, with and without equizero.

Every test transform and every equizero candidate is an element of the square's dihedral
group, so the classifier runs once per element (8 passes per image) and every table entry
is read off those logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from multifcl.data import InMemoryImages
from multifcl.equizero import (
    ROTATIONS,
    TRANSFORM_GROUPS,
    PixelTransform,
    group_transforms,
    horizontal_flip,
    most_confident,
    vertical_flip,
)
from multifcl.methods import Method, State

DIHEDRAL = TRANSFORM_GROUPS["flip-rot90"]
TEST_TRANSFORMS = {
    "upright": ROTATIONS["rot0"],
    "rotated 90": ROTATIONS["rot90"],
    "rotated 180": ROTATIONS["rot180"],
    "rotated 270": ROTATIONS["rot270"],
    "flipped left-right": horizontal_flip,
    "flipped up-down": vertical_flip,
}


@dataclass
class RobustnessRow:
    """CIL accuracy (percent) over the seen classes on one transformed test set."""

    test_set: str
    plain: float
    equizero: float


def dihedral_element(transform: PixelTransform) -> str:
    """The name of the dihedral element that `transform` equals (found on a marker image)."""
    marker = torch.arange(9.0).view(1, 1, 3, 3)
    for name, element in DIHEDRAL.items():
        if torch.equal(transform(marker), element(marker)):
            return name
    raise ValueError("the transform is not a symmetry of the square")


@torch.no_grad()
def robustness_table(
    method: Method, state: State, test_sets: list[InMemoryImages], seen: int, group: str
) -> list[RobustnessRow]:
    """Accuracy of `state` on the union of `test_sets` (classes < `seen`) under every test
    transform, plain and with equizero over `group`."""
    classifier = method.classifier(state)
    candidates = list(group_transforms(group).values())
    plan = {  # test set -> (element seen plainly, elements equizero chooses among)
        name: (
            dihedral_element(shown),
            [dihedral_element(lambda x, g=g, t=shown: g(t(x))) for g in candidates],
        )
        for name, shown in TEST_TRANSFORMS.items()
    }
    images = torch.cat([s.images for s in test_sets])
    labels = torch.as_tensor(np.concatenate([s.labels for s in test_sets]))
    correct = {name: [0, 0] for name in TEST_TRANSFORMS}
    batch_size = method.config.batch_size
    for start in range(0, len(labels), batch_size):
        pixels = method.backbone.preprocess(images[start : start + batch_size])
        logits = {n: classifier(e(pixels)).float().cpu()[:, :seen] for n, e in DIHEDRAL.items()}
        target = labels[start : start + batch_size]
        for name, (plain, choices) in plan.items():
            canonical = most_confident([logits[c] for c in choices], seen)
            correct[name][0] += int((logits[plain].argmax(1) == target).sum())
            correct[name][1] += int((canonical.argmax(1) == target).sum())
    total = max(len(labels), 1)
    return [
        RobustnessRow(name, 100.0 * plain / total, 100.0 * canonical / total)
        for name, (plain, canonical) in correct.items()
    ]
