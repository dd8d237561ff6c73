"""Decoded images cached on disk, so a data set is decoded once, not on every run.

Every image is fitted to S x S (shorter side scaled to S, bicubic, then centre-cropped) and
stored in one uint8 array (N x 3 x S x S) in `<key>.npy`. The key names the data set, the
size and a fingerprint of the sources (file paths and sizes, or the Arrow files). The file
is written under a temporary name and renamed, so no reader ever sees half of it; later
loads memory-map it, so a client reads only the rows it takes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multifcl.data.images import DataError, InMemoryImages, decode_image
from multifcl.data.splits import DatasetSplits

CACHE_FOLDER_NAME = ".multifcl-cache"
DECODE_CHUNK = 1024  # images decoded (and held in memory) at a time
DECODE_THREADS = 8  # Pillow releases the GIL while it decodes and resizes

logger = logging.getLogger(__name__)

RowDecoder = Callable[[int, int], list[np.ndarray]]
"""Decodes rows `start:stop` of a data set to S x S x 3 uint8 arrays."""


@dataclass
class CachedImages:
    """Rows of a decoded-image array (uint8, N x 3 x S x S) with their labels."""

    array: np.ndarray
    rows: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> InMemoryImages:
        indices = np.asarray(indices, dtype=np.int64)
        pixels = np.ascontiguousarray(self.array[self.rows[indices]])
        return InMemoryImages(torch.from_numpy(pixels), self.labels[indices])


def fingerprint(parts: Iterable[str]) -> str:
    """A short hash of `parts`, in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def files_fingerprint(root: Path, paths: Sequence[Path]) -> str:
    """A fingerprint of a file list (paths relative to `root`, and sizes); names a missing file."""

    def entries() -> Iterable[str]:
        for path in paths:
            try:
                size = path.stat().st_size
            except OSError:
                raise DataError(f"image file {str(path)!r} is missing or unreadable") from None
            yield f"{path.relative_to(root).as_posix()}:{size}"

    return fingerprint(entries())


def cache_folder(data_folder: Path) -> Path:
    """`<data_folder>/.multifcl-cache`, or `~/.cache/multifcl/<name>-<hash>` if that is read-only."""
    preferred = data_folder / CACHE_FOLDER_NAME
    digest = fingerprint([str(data_folder)])
    fallback = Path.home() / ".cache" / "multifcl" / f"{data_folder.name}-{digest}"
    for folder in (preferred, fallback):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise DataError(
        f"cannot write the decoded-image cache to {str(preferred)!r} or {str(fallback)!r}"
    )


def cached_images(
    folder: Path | None, key: str, count: int, size: int, decode_rows: RowDecoder
) -> np.ndarray:
    """The decoded array for `key`: memory-mapped from `folder`, or decoded and written there.

    `folder` None decodes into memory without caching.
    """
    shape = (count, 3, size, size)
    if folder is None or count == 0:
        array = np.empty(shape, dtype=np.uint8)
        _decode_into(array, decode_rows)
        return array
    path = folder / f"{key}.npy"
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # damaged or foreign: decode again
            array = None
        if array is not None and array.shape == shape and array.dtype == np.uint8:
            return array
    logger.info("decoding %d images into %s (once; later runs read the cache)", count, path)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        _decode_into(array, decode_rows)
        array.flush()
        del array
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def cached_file_splits(
    dataset: str,
    root: Path,
    paths: Sequence[Path],
    labels: np.ndarray,
    is_train: np.ndarray,
    size: int,
    class_names: list[str],
) -> DatasetSplits:
    """The image files `paths` decoded once into `root`'s cache (keyed by the data set, the
    size and the files' fingerprint), split into train and test rows by `is_train`."""
    key = f"{dataset}-{size}px-{files_fingerprint(root, paths)}"
    array = cached_images(cache_folder(root), key, len(paths), size, files_decoder(paths, size))
    train_rows, test_rows = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    return DatasetSplits(
        CachedImages(array, train_rows, labels[train_rows]),
        CachedImages(array, test_rows, labels[test_rows]),
        class_names,
    )


def files_decoder(paths: Sequence[Path], size: int) -> RowDecoder:
    """Decode image files `paths[start:stop]` in threads, each fitted to size x size."""

    def decode_rows(start: int, stop: int) -> list[np.ndarray]:
        with ThreadPoolExecutor(min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda path: decode_image(path, size), paths[start:stop]))

    return decode_rows


def _decode_into(array: np.ndarray, decode_rows: RowDecoder) -> None:
    for start in range(0, len(array), DECODE_CHUNK):
        stop = min(start + DECODE_CHUNK, len(array))
        decoded = decode_rows(start, stop)
        array[start:stop] = np.stack(decoded).transpose(0, 3, 1, 2)
