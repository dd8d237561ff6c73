"""CIFAR-100 from the Hugging Face Hub (`uoft-cs/cifar100`): fine labels, official names."""

from __future__ import annotations

import numpy as np

from multifcl.config import ExperimentConfig
from multifcl.data.hub_datasets import hub_split_images, load_hub_dataset
from multifcl.data.splits import DatasetSplits

CIFAR100_HUB_ID = "uoft-cs/cifar100"
CIFAR100_DOWNLOAD = "about 150 MB"
CIFAR100_IMAGE_SIZE = 32  # kept at its own size; the backbone resizes at batch time


def load_cifar100_splits(config: ExperimentConfig, image_size: int) -> DatasetSplits:
    """50,000 train and 10,000 test images of 100 classes; names as the Hub lists them.

    `data-root`, when set, is either a copy saved with `DatasetDict.save_to_disk` or the
    cache folder for the download.
    """
    dataset = load_hub_dataset("cifar100", CIFAR100_HUB_ID, config.data_root, CIFAR100_DOWNLOAD)
    splits = [
        hub_split_images(
            dataset[name],
            "cifar100",
            name,
            np.asarray(dataset[name]["fine_label"], dtype=np.int64),
            CIFAR100_IMAGE_SIZE,
            config.data_root,
        )
        for name in ("train", "test")
    ]
    names = list(dataset["train"].features["fine_label"].names)
    return DatasetSplits(splits[0], splits[1], names)
