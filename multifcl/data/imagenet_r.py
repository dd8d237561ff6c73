"""ImageNet-R: 30,000 renditions of 200 ImageNet classes, in the archive's own layout.

`data-root` is the folder `imagenet-r.tar` extracts to (one folder per WordNet id), or its
parent. The archive has no train/test split: a fixed, seeded 80/20 split per class is drawn
on first use and written next to the data (`multifcl-train-test-split.txt`), so every run
and every client sees the same one; later loads read that file. A `split-file` (for
example the published CODA-Prompt split, see `split_file`) replaces it. Images are fitted to the
backbone's input size and cached (see `decoded_cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np

from multifcl.atomic_files import replace_text_atomically
from multifcl.config import ExperimentConfig
from multifcl.data.archives import DatasetArchive
from multifcl.data.decoded_cache import (
    cache_folder,
    cached_file_splits,
)
from multifcl.data.images import DataError, list_class_files
from multifcl.data.split_file import select_split
from multifcl.data.splits import DatasetSplits

IMAGENET_R = DatasetArchive(
    dataset="imagenet-r",
    archive="imagenet-r.tar",
    url="https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
    size="2.1 GB",
    folder="imagenet-r",
    marker="n01443537",
)
CLASS_NAMES_FILE = Path(__file__).with_name("class_names") / "imagenet_r.json"
SPLIT_FILE = "multifcl-train-test-split.txt"
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # part of the data set's definition, not of the experiment

logger = logging.getLogger(__name__)


@cache
def imagenet_r_classes() -> dict[str, str]:
    """The 200 WordNet ids (sorted) and their human-readable names."""
    classes = json.loads(CLASS_NAMES_FILE.read_text())["classes"]
    return {wnid: classes[wnid]["name"] for wnid in sorted(classes)}


def imagenet_r_folder(config: ExperimentConfig) -> tuple[Path, list[str]]:
    """The folder of the 200 WordNet-id folders (all present), and the ids in sorted order."""
    root = IMAGENET_R.locate(config.data_root)
    classes = imagenet_r_classes()
    IMAGENET_R.require(root, classes)
    return root, list(classes)


def load_imagenet_r_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """The 200 classes in WordNet-id order, split 80/20 per class by the hash split file, or
    as the `split-file` says."""
    root, wnids = imagenet_r_folder(config)
    names = list(imagenet_r_classes().values())
    if config.split_file is not None:
        chosen = select_split(config.split_file, root, wnids)
        splits = cached_file_splits(
            "imagenet-r", root, chosen.paths, chosen.labels, chosen.is_train, image_size, names
        )
        return replace(splits, split_digest=chosen.digest)
    paths, labels = list_class_files(
        [root / wnid for wnid in wnids], "dataset 'imagenet-r': folder"
    )
    is_train = _load_or_draw_split(root, paths, labels)
    return cached_file_splits("imagenet-r", root, paths, labels, is_train, image_size, names)


def draw_split(names: list[str], labels: np.ndarray) -> np.ndarray:
    """True for train. Per class, the TEST_FRACTION (at least one) of files whose seeded hash
    of the relative path is smallest are test: the same on every machine and NumPy version."""
    rank = [hashlib.sha256(f"{SPLIT_SEED}:{name}".encode()).hexdigest() for name in names]
    is_train = np.ones(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = sorted(np.flatnonzero(labels == label), key=lambda index: rank[index])
        num_test = max(1, round(len(members) * TEST_FRACTION)) if len(members) > 1 else 0
        is_train[members[:num_test]] = False
    return is_train


def _load_or_draw_split(root: Path, paths: list[Path], labels: np.ndarray) -> np.ndarray:
    """The split file's train flags for `paths`; drawn and written on first use."""
    names = [path.relative_to(root).as_posix() for path in paths]
    for folder in (root, cache_folder(root)):
        split_file = folder / SPLIT_FILE
        if split_file.is_file():
            return _read_split(split_file, names)
    is_train = draw_split(names, labels)
    share = f"{1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%}"
    lines = [
        f"# ImageNet-R train/test split, {share} per class (seed {SPLIT_SEED}), by multifcl.",
        "# Every run reads it; delete it to draw the split again.",
    ]
    lines += [f"{name} {'train' if train else 'test'}" for name, train in zip(names, is_train)]
    _write_atomically(root, cache_folder(root), SPLIT_FILE, "\n".join(lines) + "\n")
    return is_train


def _read_split(split_file: Path, names: list[str]) -> np.ndarray:
    assigned: dict[str, bool] = {}
    for number, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, which = line.rpartition(" ")
        if which not in ("train", "test") or not name:
            raise DataError(
                f"split file {str(split_file)!r} line {number}: expected 'PATH train|test'"
            )
        assigned[name] = which == "train"
    unlisted = [name for name in names if name not in assigned]
    missing = sorted(set(assigned) - set(names))
    if unlisted or missing:
        example = (unlisted or missing)[0]
        raise DataError(
            f"split file {str(split_file)!r} does not match the images under data-root "
            f"({len(unlisted)} images unlisted, {len(missing)} listed images missing, "
            f"e.g. {example!r}); delete it to draw a new split"
        )
    return np.asarray([assigned[name] for name in names], dtype=bool)


def _write_atomically(preferred: Path, fallback: Path, name: str, text: str) -> None:
    """Write `name` in `preferred`, or in `fallback` when `preferred` is read-only."""
    for folder in (preferred, fallback):
        try:
            replace_text_atomically(folder / name, text)
            return
        except OSError:
            continue
    logger.warning(
        "could not write %s in %s or %s; the split is drawn again next run",
        name,
        preferred,
        fallback,
    )
