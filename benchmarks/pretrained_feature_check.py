"""Class-mean prototype accuracy of a frozen backbone on an image folder (train/ and test/).

A quick check of weights, normalisation and input size before a federated run, e.g.

    python benchmarks/pretrained_feature_check.py --backbone efficientnet-lite0 \
        --data-root ../shared/data/cifar10-jpg --image-size 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.backbones import load_backbone
from multifcl.backbones.feature_check import class_mean_prototype_accuracy
from multifcl.config import ConfigError
from multifcl.data import DataError

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=0, help="0: the backbone's own size")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    try:
        backbone = load_backbone(args.backbone, args.device, args.image_size)
        result = class_mean_prototype_accuracy(
            backbone, args.data_root, args.train_per_class, args.test_per_class
        )
    except (ConfigError, DataError) as error:
        sys.exit(str(error))
    print(
        f"{args.backbone} @{backbone.image_size}px: class-mean prototype accuracy "
        f"{result.accuracy:.1%} ({result.train_per_class} train / {result.test_per_class} "
        f"test per class, {result.num_classes} classes)"
    )


if __name__ == "__main__":
    main()
