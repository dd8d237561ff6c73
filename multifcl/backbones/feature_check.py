"""Class-mean prototype accuracy: a quick check that a backbone's pretrained features work.

Wrong weights, normalisation or input size show up as a drop to near chance, long before a
federated run would reveal it. The classifier is the one of the `prototypes` method: the
mean final feature of the first `train_per_class` images of each class, and the cosine-
nearest prototype for each of the first `test_per_class` test images (file names sorted,
so the check is deterministic). The folder holds `train/<class>/` and `test/<class>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multifcl.backbones.base import Backbone
from multifcl.data.images import (
    DataError,
    class_folder_names,
    decode_image,
    image_files,
    stack_images,
)

ENCODE_BATCH_SIZE = 32  # small batches: activations stay in cache, and CPU runs are fastest


@dataclass(frozen=True)
class PrototypeAccuracy:
    """The accuracy and how it was measured."""

    accuracy: float
    num_classes: int
    train_per_class: int
    test_per_class: int


def first_images_per_class(
    split_root: Path, class_names: list[str], per_class: int, fallback_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` images (sorted file names) of each class, and their labels."""
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        folder = split_root / name
        if not folder.is_dir():
            raise DataError(f"folder {str(folder)!r} does not exist")
        files = image_files(folder)
        if len(files) < per_class:
            raise DataError(f"folder {str(folder)!r} has {len(files)} images, {per_class} needed")
        arrays.extend(decode_image(path) for path in files[:per_class])
        labels.extend([label] * per_class)
    return stack_images(arrays, fallback_size), torch.tensor(labels)


def class_mean_prototype_accuracy(
    backbone: Backbone, data_root: Path, train_per_class: int = 200, test_per_class: int = 100
) -> PrototypeAccuracy:
    """Cosine nearest-class-mean accuracy of `backbone`'s final feature on `data_root`."""
    train_root, test_root = Path(data_root) / "train", Path(data_root) / "test"
    if not train_root.is_dir():
        raise DataError(f"folder {str(train_root)!r} does not exist")
    class_names = class_folder_names(train_root)
    size = backbone.image_size
    train_images, train_labels = first_images_per_class(
        train_root, class_names, train_per_class, size
    )
    test_images, test_labels = first_images_per_class(test_root, class_names, test_per_class, size)
    train_features = backbone.encode(train_images, ENCODE_BATCH_SIZE).double().cpu()
    test_features = backbone.encode(test_images, ENCODE_BATCH_SIZE).double().cpu()
    prototypes = torch.stack(
        [train_features[train_labels == label].mean(0) for label in range(len(class_names))]
    )
    similarity = F.normalize(test_features, dim=1) @ F.normalize(prototypes, dim=1).T
    accuracy = (similarity.argmax(1) == test_labels).double().mean().item()
    return PrototypeAccuracy(accuracy, len(class_names), train_per_class, test_per_class)
