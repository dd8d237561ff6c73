"""Data set sources: each turns the config into train and test splits with class names.

Labels here are the source's own class ids; `TaskStream` maps them to stream order. The
benchmark data sets have a module each (`cifar100`, `imagenet_r`, `tiny_imagenet`,
`cub200`); the small ones live here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from multifcl.config import ExperimentConfig, check_name
from multifcl.data.cifar100 import load_cifar100_splits
from multifcl.data.cub200 import CUB200, load_cub200_splits
from multifcl.data.imagenet_r import IMAGENET_R, imagenet_r_folder, load_imagenet_r_splits
from multifcl.data.images import (
    IMAGE_SUFFIXES,
    DataError,
    ImageFiles,
    InMemoryImages,
    class_folder_names,
    list_class_files,
)
from multifcl.data.split_file import select_split
from multifcl.data.splits import DatasetSplits
from multifcl.data.task_stream import check_divides
from multifcl.data.tiny_imagenet import TINY_IMAGENET, load_tiny_imagenet_splits

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0  # part of the data set's definition, not of the experiment
SYNTHETIC_CLASSES, SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SIZE = 10, 48, 16, 16

__all__ = ["IMAGE_SUFFIXES", "SOURCES", "DatasetSplits", "data_source", "load_splits"]

Source = Callable[[ExperimentConfig, int], DatasetSplits]


def load_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """Load the configured data set at the backbone's input size `image_size` (image folders
    of mixed sizes and the photo benchmarks ImageNet-R and CUB-200 are fitted to it)."""
    return data_source(config.dataset)(config, image_size)


def data_source(name: str) -> Source:
    """The loader of the data set called `name`; a one-line ConfigError naming the key
    otherwise."""
    check_name("run config key 'dataset'", "dataset", name, SOURCES)
    return SOURCES[name]


def load_digits_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """scikit-learn's 1,797 8x8 digits (shipped with the package), as grey RGB images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(images)[:, None].repeat(1, 3, 1, 1)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    every = InMemoryImages(images, labels)
    return DatasetSplits(every.take(train_idx), every.take(test_idx), list(DIGIT_NAMES))


def load_synthetic_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """Class-conditional images made in memory: a fixed random pattern per class plus noise."""
    return synthetic_splits(
        config.seed, SYNTHETIC_CLASSES, SYNTHETIC_TRAIN, SYNTHETIC_TEST, SYNTHETIC_SIZE
    )


def synthetic_splits(
    seed: int, classes: int, train_per_class: int, test_per_class: int, size: int
) -> DatasetSplits:
    """`classes` random patterns of `size` x `size` pixels plus noise, per class
    `train_per_class` training and `test_per_class` test images (also the benchmarks'
    CIFAR-100-shaped data)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (classes, 3, size, size)
    patterns = torch.rand(shape, generator=generator) * 255.0

    def make(per_class: int) -> InMemoryImages:
        labels = np.repeat(np.arange(classes), per_class)
        noise = torch.randn((len(labels), *shape[1:]), generator=generator) * 40.0
        images = (patterns[torch.as_tensor(labels)] + noise).clamp(0, 255).to(torch.uint8)
        return InMemoryImages(images, labels.astype(np.int64))

    names = [f"pattern {index}" for index in range(classes)]
    return DatasetSplits(make(train_per_class), make(test_per_class), names)


def load_imagefolder_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """`data-root/train/<class>/*` and `data-root/test/<class>/*`, or with a `split-file`
    the images it lists of `data-root/<class>/*`; class names from folders."""
    root = config.data_root  # the config guarantees it for imagefolder
    assert root is not None
    if config.split_file is not None:
        return _split_file_image_folder(config.split_file, root, image_size)
    train_classes = _class_folders(root / "train")
    test_classes = _class_folders(root / "test")
    if train_classes != test_classes:
        missing = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(
            f"data-root {str(root)!r}: train/ and test/ have different class folders ({missing})"
        )
    splits = [
        _list_image_files(root / name, train_classes, image_size) for name in ("train", "test")
    ]
    return DatasetSplits(splits[0], splits[1], train_classes)


def _split_file_image_folder(split_file: Path, root: Path, image_size: int) -> DatasetSplits:
    classes = _class_folders(root)
    chosen = select_split(split_file, root, classes)
    train, test = np.flatnonzero(chosen.is_train), np.flatnonzero(~chosen.is_train)
    return DatasetSplits(
        *[
            ImageFiles([chosen.paths[i] for i in rows], chosen.labels[rows], image_size)
            for rows in (train, test)
        ],
        classes,
        split_digest=chosen.digest,
    )


def _class_folders(split_root: Path) -> list[str]:
    if not split_root.is_dir():
        raise DataError(f"data-root: folder {str(split_root)!r} does not exist")
    names = class_folder_names(split_root)
    if not names:
        raise DataError(f"data-root: folder {str(split_root)!r} has no class folders")
    return names


def _list_image_files(split_root: Path, class_names: list[str], image_size: int) -> ImageFiles:
    folders = [split_root / name for name in class_names]
    return ImageFiles(*list_class_files(folders, "data-root: class folder"), image_size)


def _image_folder(config: ExperimentConfig) -> tuple[Path, list[str]]:
    assert config.data_root is not None
    return config.data_root, _class_folders(config.data_root)


SPLIT_FILE_FOLDERS = {"imagefolder": _image_folder, "imagenet-r": imagenet_r_folder}
"""The folder of class folders a `split-file` lists paths in, and its classes in label order."""

ARCHIVES_REQUIRED = {"imagenet-r": IMAGENET_R, "cub200": CUB200}
ARCHIVES_OPTIONAL = {"tiny-imagenet": TINY_IMAGENET}  # without data-root: the Hub copy


def check_data_present(config: ExperimentConfig) -> None:
    """Fail in one line, before any model is loaded, when an archive data set or an image a
    `split-file` lists is missing."""
    archive = ARCHIVES_REQUIRED.get(config.dataset)
    if archive is None and config.data_root is not None:
        archive = ARCHIVES_OPTIONAL.get(config.dataset)
    if archive is not None:
        archive.locate(config.data_root)
    if config.split_file is not None:  # every listed image, checked before any model loads
        folder, classes = SPLIT_FILE_FOLDERS[config.dataset](config)
        select_split(config.split_file, folder, classes)


CLASS_COUNTS = {  # the data sets whose class count is fixed, known before any file is read
    "digits": len(DIGIT_NAMES),
    "synthetic": SYNTHETIC_CLASSES,
    "cifar100": 100,
    "imagenet-r": 200,
    "tiny-imagenet": 200,
    "cub200": 200,
}


def check_task_count(config: ExperimentConfig) -> None:
    """Refuse a `num-tasks` that cannot split a fixed-size data set's classes, at once."""
    classes = CLASS_COUNTS.get(config.dataset)
    if classes is not None:
        check_divides(classes, config)


SOURCES: dict[str, Source] = {
    "digits": load_digits_splits,
    "synthetic": load_synthetic_splits,
    "imagefolder": load_imagefolder_splits,
    "cifar100": load_cifar100_splits,
    "imagenet-r": load_imagenet_r_splits,
    "tiny-imagenet": load_tiny_imagenet_splits,
    "cub200": load_cub200_splits,
}
