"""Train-time augmentation (`augment`), applied to a batch tensor on the training device.

`"standard"` is the training transform PILOT (LAMDA-PILOT, `utils/data.py`) uses for its
224-pixel benchmarks (CIFAR-100 at 224, ImageNet-R, CUB): a random resized crop to the
backbone's input size with area scale in [0.05, 1.0] and aspect ratio in [3/4, 4/3]
(log-uniform), up to 10 tries before a centred crop, then a horizontal flip with
probability 0.5. Each crop is resampled bilinearly (no antialiasing) by one `grid_sample`
over the batch. The crop and flip draws come from a CPU generator seeded per client round
(so a run is reproducible on any device); the pixels are resampled where the batch lives.
`"none"` returns the batch untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from multifcl.seeding import derive_seed

AUGMENT_STREAM = 7411  # keeps augmentation draws apart from the other uses of a client seed
CROP_SCALE = (0.05, 1.0)  # share of the image's area a crop covers (PILOT)
CROP_RATIO = (3 / 4, 4 / 3)  # crop width / height (PILOT; torchvision's default)
CROP_TRIES = 10  # draws of (scale, ratio) before the centred fallback (as torchvision)
FLIP_PROBABILITY = 0.5


class TrainAugmentation:
    """The run's `augment` for one client round, drawn in turn by its epochs and batches."""

    def __init__(self, kind: str, size: int, seed: int) -> None:
        self.enabled = kind == "standard"
        self.size = size
        self.generator = torch.Generator().manual_seed(derive_seed(AUGMENT_STREAM, seed))

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 (or float 0..255) N x C x H x W -> the same pixel range at `size` x `size`
        on `device`, augmented; untouched (still on its own device) when disabled."""
        if not self.enabled or len(images) == 0:
            return images
        pixels = images.to(device).float()
        theta = self._crop_transforms(len(images), *pixels.shape[-2:]).to(device)
        shape = (len(images), pixels.shape[1], self.size, self.size)
        grid = F.affine_grid(theta, list(shape), align_corners=False)
        return F.grid_sample(
            pixels, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def _crop_transforms(self, n: int, height: int, width: int) -> torch.Tensor:
        """(n, 2, 3) affine maps from each output to its (flipped) crop, in the normalised
        coordinates of `affine_grid` (the image spans [-1, 1] edge to edge)."""
        top, left, crop_h, crop_w = crop_boxes(n, height, width, self.generator)
        flip = torch.rand(n, generator=self.generator) < FLIP_PROBABILITY
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -1.0, 1.0) * crop_w / width
        theta[:, 0, 2] = (2 * left + crop_w) / width - 1
        theta[:, 1, 1] = crop_h / height
        theta[:, 1, 2] = (2 * top + crop_h) / height - 1
        return theta


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator):
    """(top, left, height, width) of n random-resized-crop boxes in whole pixels, as float
    tensors: the first of `CROP_TRIES` (scale, ratio) draws that fits, else a centred crop
    of the whole image (its ratio clamped to `CROP_RATIO`)."""
    area = height * width * torch.empty(n, CROP_TRIES).uniform_(*CROP_SCALE, generator=generator)
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.empty(n, CROP_TRIES).uniform_(log_low, log_high, generator=generator).exp()
    tries_w = (area * ratio).sqrt().round()
    tries_h = (area / ratio).sqrt().round()
    fits = (tries_w >= 1) & (tries_h >= 1) & (tries_w <= width) & (tries_h <= height)
    first = fits.float().argmax(1, keepdim=True)
    fallback_h, fallback_w = _centre_crop_size(height, width)
    found = fits.any(1)
    crop_w = torch.where(found, tries_w.gather(1, first)[:, 0], float(fallback_w))
    crop_h = torch.where(found, tries_h.gather(1, first)[:, 0], float(fallback_h))
    top = (torch.rand(n, generator=generator) * (height - crop_h + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - crop_w + 1)).floor()
    top = torch.where(found, top, ((height - crop_h) // 2))
    left = torch.where(found, left, ((width - crop_w) // 2))
    return top, left, crop_h, crop_w


def _centre_crop_size(height: int, width: int) -> tuple[int, int]:
    """The whole image, cut to the nearest aspect ratio within `CROP_RATIO`."""
    if width / height < CROP_RATIO[0]:
        return round(width / CROP_RATIO[0]), width
    if width / height > CROP_RATIO[1]:
        return height, round(height * CROP_RATIO[1])
    return height, width
