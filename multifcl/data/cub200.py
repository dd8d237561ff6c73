"""CUB-200-2011: 11,788 bird photos of 200 species, with the official train/test split.

`data-root` is the `CUB_200_2011` folder the archive extracts to, or its parent. Classes,
files, labels and the split come from the data set's own `classes.txt`, `images.txt`,
`image_class_labels.txt` and `train_test_split.txt` (5,994 train, 5,794 test images). A
class's name is its `classes.txt` entry without the number ("001.Black_footed_Albatross"
-> "Black_footed_Albatross"). Images are fitted to the backbone's input size and cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multifcl.config import ExperimentConfig
from multifcl.data.archives import DatasetArchive
from multifcl.data.decoded_cache import (
    cached_file_splits,
)
from multifcl.data.images import DataError
from multifcl.data.splits import DatasetSplits

CUB200 = DatasetArchive(
    dataset="cub200",
    archive="CUB_200_2011.tgz",
    url="https://data.caltech.edu/records/65de6-vp158",
    size="1.1 GB",
    folder="CUB_200_2011",
    marker="images.txt",
)
LAYOUT = ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt", "images")


def load_cub200_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """The 200 species in `classes.txt` order, split by `train_test_split.txt`."""
    root = CUB200.locate(config.data_root)
    CUB200.require(root, LAYOUT)
    classes = _read_table(root / "classes.txt")
    files = _read_table(root / "images.txt")
    class_of = _read_table(root / "image_class_labels.txt")
    is_train = _read_table(root / "train_test_split.txt")
    class_ids = sorted(classes, key=int)
    label_of = {class_id: label for label, class_id in enumerate(class_ids)}
    image_ids = sorted(files, key=int)
    for table, name in ((class_of, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
        missing = [image_id for image_id in image_ids if image_id not in table]
        if missing:
            raise DataError(f"{str(root / name)!r} has no line for image id {missing[0]}")
    unknown = [image_id for image_id in image_ids if class_of[image_id] not in label_of]
    if unknown:
        raise DataError(
            f"{str(root / 'image_class_labels.txt')!r}: image id {unknown[0]} has class "
            f"{class_of[unknown[0]]}, which classes.txt does not list"
        )
    paths = [root / "images" / files[image_id] for image_id in image_ids]
    labels = np.asarray([label_of[class_of[image_id]] for image_id in image_ids], dtype=np.int64)
    train = np.asarray([is_train[image_id] == "1" for image_id in image_ids])
    names = [classes[class_id].split(".", 1)[-1] for class_id in class_ids]
    return cached_file_splits("cub200", root, paths, labels, train, image_size, names)


def _read_table(path: Path) -> dict[str, str]:
    """`<id> <value>` lines as a dict; a malformed line is named."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise DataError(f"{str(path)!r} line {number}: expected '<id> <value>', got {line!r}")
        table[key] = value
    return table
