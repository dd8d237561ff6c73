"""A data set as the rest of the library sees it: train and test images and class names."""

from __future__ import annotations

from dataclasses import dataclass

from multifcl.data.images import LabelledImages


@dataclass
class DatasetSplits:
    """A data set's train and test splits, its human-readable class names and, when a
    `split-file` chose the splits, that split's digest (part of the data's fingerprint)."""

    train: LabelledImages
    test: LabelledImages
    class_names: list[str]
    split_digest: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
