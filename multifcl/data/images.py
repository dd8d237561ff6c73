"""Labelled image collections: in memory, or as files decoded on demand."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from multifcl.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

logger = logging.getLogger(__name__)


class LabelledImages(Protocol):
    """Images with integer labels; images are uint8 tensors shaped (N, 3, H, W)."""

    labels: np.ndarray

    def take(self, indices: np.ndarray) -> InMemoryImages:
        """The images at `indices`, decoded, with their labels."""
        ...


def class_folder_names(split_root: Path) -> list[str]:
    """The names of the class folders in `split_root`, sorted. Hidden (dot-prefixed) folders
    such as `.ipynb_checkpoints` are not classes: they are skipped with a logged note."""
    folders = sorted(entry.name for entry in split_root.iterdir() if entry.is_dir())
    hidden = [name for name in folders if name.startswith(".")]
    if hidden:
        logger.warning("skipped hidden folders in %s (not classes): %s", split_root, hidden)
    return [name for name in folders if not name.startswith(".")]


def image_files(folder: Path) -> list[Path]:
    """The image files in `folder` in name order; hidden (dot-prefixed) files such as
    macOS's `._*.jpg` are not images and are left out."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def list_class_files(folders: list[Path], what: str) -> tuple[list[Path], np.ndarray]:
    """The image files of each class folder in name order, and their labels (the folder's
    position); a folder without images is a DataError naming `what` and the folder."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = image_files(folder)
        if not files:
            raise DataError(f"{what} {str(folder)!r} has no images")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, np.asarray(labels, dtype=np.int64)


@dataclass
class InMemoryImages:
    """Decoded images (uint8, N x 3 x H x W) and their labels."""

    images: torch.Tensor
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N x 3 x H x W, got {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the exact images and labels (far cheaper than one backbone pass),
        computed once per object: nothing changes images in place."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr(tuple(self.images.shape)).encode())
        digest.update(np.ascontiguousarray(self.labels))
        digest.update(self.images.contiguous().numpy())
        return digest.hexdigest()

    def take(self, indices: np.ndarray) -> InMemoryImages:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return InMemoryImages(self.images[index], self.labels[np.asarray(indices, dtype=np.int64)])


@dataclass
class ImageFiles:
    """Image files with labels; decoded only when taken, so a client reads only its slice."""

    paths: list[Path]
    labels: np.ndarray
    fallback_size: int

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> InMemoryImages:
        indices = np.asarray(indices, dtype=np.int64)
        arrays = [decode_image(self.paths[i]) for i in indices]
        return InMemoryImages(stack_images(arrays, self.fallback_size), self.labels[indices])


def decode_image(path: Path, size: int | None = None) -> np.ndarray:
    """One file as an RGB uint8 array (H x W x 3); with `size`, fitted to size x size (JPEGs
    decoded at a reduced scale first). A file that cannot be read is named."""
    try:
        with Image.open(path) as image:
            if size is None:
                return np.asarray(image.convert("RGB"))
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
            return fit_square(image, size)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"image file {str(path)!r} cannot be read: {error}") from None


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB, the shorter side scaled to `size` (bicubic), centre-cropped to size x size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        scaled = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(scaled, Image.BICUBIC)
        left, top = (scaled[0] - size) // 2, (scaled[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image)


def stack_images(arrays: list[np.ndarray], fallback_size: int) -> torch.Tensor:
    """Stack H x W x 3 arrays into N x 3 x H x W; images of mixed sizes are resized first."""
    if not arrays:
        return torch.zeros((0, 3, fallback_size, fallback_size), dtype=torch.uint8)
    if len({array.shape for array in arrays}) > 1:
        size = (fallback_size, fallback_size)
        arrays = [np.asarray(Image.fromarray(a).resize(size, Image.BILINEAR)) for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
