"""Tiny ImageNet: 200 classes of 64x64 images, 500 train and 50 validation images each.

Two sources, with the same classes in the same order (sorted WordNet ids):
- the original archive (`tiny-imagenet-200.zip`): `data-root` is the extracted folder or its
  parent; the validation split is the test split, names come from the archive's `words.txt`;
- Hugging Face `zh-plus/tiny-imagenet` when `data-root` is empty (or a `save_to_disk` copy of
  it); its labels are WordNet ids, named from the shipped `class_names/tiny_imagenet.json`
  (the same `words.txt` entries).
A class's name is the first lemma of its `words.txt` entry ("goldfish, Carassius auratus"
-> "goldfish").
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from multifcl.config import ExperimentConfig
from multifcl.data.archives import DatasetArchive
from multifcl.data.decoded_cache import (
    cached_file_splits,
)
from multifcl.data.hub_datasets import hub_split_images, is_saved_copy, load_hub_dataset
from multifcl.data.images import DataError, list_class_files
from multifcl.data.splits import DatasetSplits

TINY_IMAGENET_HUB_ID = "zh-plus/tiny-imagenet"
TINY_IMAGENET = DatasetArchive(
    dataset="tiny-imagenet",
    archive="tiny-imagenet-200.zip",
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    size="237 MB",
    folder="tiny-imagenet-200",
    marker="wnids.txt",
    alternative=f"or leave data-root empty to download {TINY_IMAGENET_HUB_ID} from the Hub",
)
TINY_IMAGENET_DOWNLOAD = "about 200 MB"
TINY_IMAGENET_IMAGE_SIZE = 64  # kept at its own size; the backbone resizes at batch time
CLASS_NAMES_FILE = Path(__file__).with_name("class_names") / "tiny_imagenet.json"
HUB_TEST_SPLITS = ("valid", "validation", "test")


@cache
def tiny_imagenet_words() -> dict[str, str]:
    """The 200 WordNet ids (sorted) and their `words.txt` entries."""
    classes = json.loads(CLASS_NAMES_FILE.read_text())["classes"]
    return {wnid: classes[wnid] for wnid in sorted(classes)}


def first_lemma(words: str) -> str:
    """The class name in a `words.txt` entry: its first comma-separated lemma."""
    return words.split(",")[0].strip()


def load_tiny_imagenet_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """Tiny ImageNet from the archive's folder in `data-root`, or from the Hub."""
    if config.data_root is None or is_saved_copy(config.data_root):
        return _load_from_hub(config.data_root)
    return _load_from_folder(TINY_IMAGENET.locate(config.data_root))


def _load_from_folder(root: Path) -> DatasetSplits:
    TINY_IMAGENET.require(
        root, ["wnids.txt", "words.txt", "train", "val/val_annotations.txt", "val/images"]
    )
    wnids = sorted(set((root / "wnids.txt").read_text().split()))
    words = _read_words(root / "words.txt")
    unnamed = [wnid for wnid in wnids if wnid not in words]
    if unnamed:
        raise DataError(f"{str(root / 'words.txt')!r} has no entry for {unnamed[0]!r}")
    TINY_IMAGENET.require(root, [f"train/{wnid}/images" for wnid in wnids])
    folders = [root / "train" / wnid / "images" for wnid in wnids]
    train_paths, train_labels = list_class_files(folders, "dataset 'tiny-imagenet': folder")
    test_paths, test_labels = _read_val_annotations(root, {w: i for i, w in enumerate(wnids)})
    labels = np.concatenate([train_labels, np.asarray(test_labels, dtype=np.int64)])
    is_train = np.arange(len(labels)) < len(train_paths)
    names = [first_lemma(words[wnid]) for wnid in wnids]
    size = TINY_IMAGENET_IMAGE_SIZE
    paths = train_paths + test_paths
    return cached_file_splits("tiny-imagenet", root, paths, labels, is_train, size, names)


def _read_words(path: Path) -> dict[str, str]:
    words = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        wnid, _, entry = line.partition("\t")
        if entry:
            words[wnid.strip()] = entry.strip()
    return words


def _read_val_annotations(root: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    annotations = root / "val" / "val_annotations.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise DataError(
                f"{str(annotations)!r} line {number}: expected 'FILE<TAB>WNID...' with a "
                f"WordNet id from wnids.txt, got {line[:60]!r}"
            )
        paths.append(root / "val" / "images" / fields[0])
        labels.append(label_of[fields[1]])
    return paths, labels


def _load_from_hub(data_root: Path | None) -> DatasetSplits:
    dataset = load_hub_dataset(
        "tiny-imagenet", TINY_IMAGENET_HUB_ID, data_root, TINY_IMAGENET_DOWNLOAD
    )
    test_name = next((name for name in HUB_TEST_SPLITS if name in dataset), None)
    if "train" not in dataset or test_name is None:
        raise DataError(
            f"dataset 'tiny-imagenet': {TINY_IMAGENET_HUB_ID!r} has splits {list(dataset)}, "
            f"expected 'train' and one of {list(HUB_TEST_SPLITS)}"
        )
    hub_wnids = list(dataset["train"].features["label"].names)
    words = tiny_imagenet_words()
    unknown = [wnid for wnid in hub_wnids if wnid not in words]
    if unknown:
        raise DataError(
            f"dataset 'tiny-imagenet': label {unknown[0]!r} of {TINY_IMAGENET_HUB_ID!r} is not "
            "one of Tiny ImageNet's 200 WordNet ids"
        )
    wnids = sorted(hub_wnids)
    to_sorted = np.asarray([wnids.index(wnid) for wnid in hub_wnids], dtype=np.int64)
    images = {
        name: hub_split_images(
            dataset[name],
            "tiny-imagenet",
            name,
            to_sorted[np.asarray(dataset[name]["label"], dtype=np.int64)],
            TINY_IMAGENET_IMAGE_SIZE,
            data_root,
        )
        for name in ("train", test_name)
    }
    return DatasetSplits(
        images["train"], images[test_name], [first_lemma(words[wnid]) for wnid in wnids]
    )
