"""Data sets from the Hugging Face Hub, or a local `DatasetDict.save_to_disk` copy.

`data-root`, when set, is either such a copy (it holds `dataset_dict.json`) or the cache
folder for the download. Decoded images are cached (see `decoded_cache`) in `data-root`,
or beside the split's Arrow files when `data-root` is empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multifcl.data.decoded_cache import (
    CachedImages,
    cache_folder,
    cached_images,
    fingerprint,
)
from multifcl.data.images import DataError, fit_square


def is_saved_copy(folder: Path | None) -> bool:
    """True when `folder` holds a `DatasetDict.save_to_disk` copy."""
    return folder is not None and (folder / "dataset_dict.json").is_file()


def load_hub_dataset(dataset: str, hub_id: str, data_root: Path | None, download: str):
    """The `DatasetDict` of `hub_id`: the saved copy in `data_root`, or downloaded (and cached).

    `download` describes the download for the error message, e.g. "about 150 MB".
    """
    import datasets

    if is_saved_copy(data_root):
        return datasets.load_from_disk(str(data_root))
    try:
        return datasets.load_dataset(hub_id, cache_dir=str(data_root) if data_root else None)
    except Exception as error:  # noqa: BLE001 - surface any download failure as one line
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"dataset {dataset!r}: cannot load {hub_id!r}: {reason} (it downloads {download} "
            "from the Hugging Face Hub; offline, set data-root to a copy saved with "
            "DatasetDict.save_to_disk)"
        ) from None


def hub_split_images(
    split, dataset: str, split_name: str, labels: np.ndarray, size: int, data_root: Path | None
) -> CachedImages:
    """A split's images fitted to size x size, decoded once and cached on disk."""
    image_column = "img" if "img" in split.column_names else "image"
    arrow_files = [Path(entry["filename"]) for entry in split.cache_files]
    # A split without Arrow files lives in memory: nothing to fingerprint, nothing cached.
    folder = cache_folder(data_root or arrow_files[0].parent) if arrow_files else None
    sources = [f"{path.name}:{path.stat().st_size}" for path in arrow_files]
    key = f"{dataset}-{split_name}-{size}px-{fingerprint([str(len(split)), *sources])}"

    def decode_rows(start: int, stop: int) -> list[np.ndarray]:
        return [fit_square(image, size) for image in split[start:stop][image_column]]

    array = cached_images(folder, key, len(split), size, decode_rows)
    return CachedImages(array, np.arange(len(split)), np.asarray(labels, dtype=np.int64))
