"""Model-FLOPs utilization (MFU): FLOPs a step needs, over the GPU's dense peak.

FLOPs are counted, not assumed: `torch.utils.flop_counter` records the matmuls,
convolutions and attention of one call of the step (forward, and backward where the step
trains) on a couple of images, with attention on PyTorch's math kernels so that it is
counted on every device (ViT-B/16 at 224 px: 35.1 GFLOP per image forward). MFU is
images/s x FLOPs per image / the peak of the math the step runs on (bf16, TF32 or plain
fp32 tensor-core-less FLOPs), from NVIDIA's datasheets for the GPUs listed in PEAKS.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

TERA = 1e12

# dense (no 2:4 sparsity) peaks in TFLOP/s by math mode, from NVIDIA's H100/H200 datasheets
H100_SXM = {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}
H100_PCIE = {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", H100_PCIE),
    ("H100", H100_SXM),  # "NVIDIA H100 80GB HBM3": the SXM part
    ("H200", H100_SXM),  # same compute as the H100 SXM, more and faster memory
)


def peak_tflops(device_name: str) -> dict[str, float] | None:
    """The dense peaks of `device_name` by math mode; None when unknown (NVL parts too,
    whose clocks differ)."""
    if "NVL" in device_name:
        return None
    for part, peaks in PEAKS:
        if part in device_name:
            return peaks
    return None


def counted_flops(step: Callable[[], int]) -> float:
    """FLOPs per image of `step` (returns the images it processed), counted on one call."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        images = step()
    return counter.get_total_flops() / images


def utilization(
    images_per_second: float, flops_per_image: float, math: str, peaks: dict | None
) -> str:
    """'MFU 41.2% of 989 TFLOP/s bf16', or 'unknown peak' for a GPU not in PEAKS."""
    achieved = images_per_second * flops_per_image / TERA
    if peaks is None:
        return f"{achieved:7.1f} TFLOP/s, MFU: unknown peak"
    return f"{achieved:7.1f} TFLOP/s, MFU {100 * achieved / peaks[math]:5.1f}% of {peaks[math]:g} {math}"
