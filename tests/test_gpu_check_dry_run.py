"""benchmarks/gpu_check's dry run on the CPU (tiny ViT, a few images): every stage of the
GPU check and the paper preset through the server loop still run, so the script a GPU
machine gets cannot rot unnoticed; and the MFU arithmetic by device name."""

import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import main
from benchmarks.model_flops import counted_flops, peak_tflops, utilization
from multifcl.backbones import load_backbone

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_dry_run_prints_every_stage_with_mfu(capsys):
    results = main(["--dry-run", "--rounds", "2"])
    printed = capsys.readouterr().out
    rates = results["images-per-second"]
    stages = {"extract-bf16", "extract-fp32", "train-fp32", "train-bf16"}
    assert stages <= set(rates) and all(rates[s] > 0 for s in stages)
    assert printed.count("MFU: unknown peak") == 4  # a CPU has no peak in the table
    assert results["flops-per-image"]["train"] > results["flops-per-image"]["extract"] > 0
    federated = results["federated"]
    assert len(federated["task1-round-seconds"]) == len(federated["task2-round-seconds"]) == 2


def test_paper_dry_run_runs_the_preset_through_the_server_loop(capsys):
    results = main(["--dry-run", "--paper"])["paper"]
    printed = capsys.readouterr().out
    assert sorted(results["round-seconds"]) == list(range(1, 11))  # the preset's 10 tasks
    assert all(len(rounds) == 2 for rounds in results["round-seconds"].values())
    assert "cifar100-10tasks-alpha2-multifcl.toml" in printed
    assert "(paper 228 s)" in printed and "(paper 150 s)" in printed


def test_the_shell_wrapper_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_counted_forward_flops_match_the_vit_formula():
    backbone = load_backbone("vit-tiny")  # 32 px, 8 px patches, 4 blocks, d 64, MLP 128
    images = backbone.preprocess(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    tokens, d, mlp, blocks, patches = 17, 64, 128, 4, 16
    per_block = 4 * tokens * d * d + 2 * tokens * d * mlp + 2 * tokens * tokens * d
    expected = 2 * (patches * 3 * 8 * 8 * d + blocks * per_block)  # multiply-adds x 2
    assert counted_flops(lambda: len(backbone(images))) == expected


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_peaks_by_device_name(name, bf16):
    peaks = peak_tflops(name)
    assert (peaks and peaks["bf16"]) == bf16


def test_utilization_is_achieved_over_peak():
    text = utilization(7000.0, 35.1e9, "bf16", peak_tflops("NVIDIA H200"))
    assert "245.7 TFLOP/s" in text and "MFU  24.8% of 989.4 bf16" in text
