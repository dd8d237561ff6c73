"""The presets in configs/paper/ (the MultiFCL paper's settings) and configs/protocols/ (other
papers' federations, augmented paper presets): every one parses and validates as flwr reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from multifcl.client_sampling import ClientSampler
from multifcl.client_schedule import ClientSchedule
from multifcl.config import ExperimentConfig
from multifcl.data import DataError, load_splits
from tests.test_config import one_line_error

APP_DIR = Path(__file__).resolve().parents[1]
PRESETS = sorted((APP_DIR / "configs" / "paper").glob("*.toml"))
NAME = re.compile(r"(cifar100|imagenet-r)-(\d+)tasks-(beta|alpha)([\d.]+)-(multifcl|pilora)\.toml")
SETTINGS = {
    ("cifar100", 10, "beta"): {0.5, 0.1, 0.05},
    ("cifar100", 10, "alpha"): {6, 4, 2},
    ("cifar100", 5, "beta"): {0.5, 0.1, 0.05},
    ("imagenet-r", 10, "beta"): {0.5, 0.1, 0.05},
}


def preset_config(path: Path) -> ExperimentConfig:
    """The config `flwr run . -c PATH` gives the app: the file fused over pyproject's defaults."""
    return ExperimentConfig.from_run_config(
        get_fused_config_from_dir(APP_DIR, parse_config_args([str(path)]))
    )


def test_every_paper_setting_has_a_multifcl_and_a_pilora_preset():
    found = {NAME.fullmatch(path.name).groups() for path in PRESETS if NAME.fullmatch(path.name)}
    expected = {
        (dataset, str(tasks), kind, f"{value:g}", method)
        for (dataset, tasks, kind), values in SETTINGS.items()
        for value in values
        for method in ("multifcl", "pilora")
    }
    assert found == expected and len(PRESETS) == len(expected)


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.stem)
def test_preset_validates_with_the_paper_protocol(path):
    dataset, tasks, kind, value, method = NAME.fullmatch(path.name).groups()
    config = preset_config(path)
    assert (config.method, config.dataset, config.num_tasks) == (method, dataset, int(tasks))
    assert config.backbone == "openai/clip-vit-base-patch16" and config.class_order_seed == 1993
    assert (config.rounds_per_task, config.local_epochs) == (5, 5)
    if method == "pilora":  # the official code's Adam rates (LoRA at the paper's 1e-5)
        assert (config.pilora_lora_lr, config.pilora_prototype_lr) == (1e-5, 2e-3)
        assert (config.pilora_weight_decay, config.batch_size) == (1e-5, 64)
    else:  # the paper's rate; the prototypes at an Adam rate that moves them
        assert (config.lr, config.prototype_lr, config.optimizer) == (1e-5, 2e-3, "adamw")
    if kind == "beta":
        assert (config.partition, config.beta) == ("dirichlet", float(value))
    else:
        assert (config.partition, config.alpha) == ("quality", int(value))
    header = path.read_text().split("\nmethod = ")[0]
    assert "num-supernodes=10" in header and "Paper's numbers" in header


def test_preset_whose_data_is_missing_names_what_to_download_and_where(tmp_path):
    preset = APP_DIR / "configs" / "paper" / "imagenet-r-10tasks-beta0.5-multifcl.toml"
    config = preset_config(preset)
    assert config.data_root == Path("~/data/imagenet-r").expanduser().resolve()
    elsewhere = ExperimentConfig(**{**vars(config), "data_root": tmp_path / "imagenet-r"})
    message = one_line_error(DataError, lambda: load_splits(elsewhere, 224))
    assert "imagenet-r.tar (2.1 GB)" in message and "hendrycks/imagenet-r.tar" in message
    assert str(tmp_path / "imagenet-r" / "n01443537") in message


PROTOCOLS = sorted((APP_DIR / "configs" / "protocols").glob("*.toml"))
AUGMENTED = re.compile(r"(.+)-augment\.toml")


def sampled_per_round(config: ExperimentConfig) -> list[list[int]]:
    """The partition ids each round of the preset samples, task after task."""
    clients = {node: node for node in range(config.expected_clients)}
    schedule = ClientSchedule.parse(config.clients_per_task, config.num_tasks)
    sampler = ClientSampler(clients, config.fraction_train, config.min_train_clients, 0, schedule)
    rounds = range(1, config.rounds_per_task + 1)
    return [sampler.partition_ids(t, r) for t in range(config.num_tasks) for r in rounds]


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda path: path.stem)
def test_protocol_preset_validates_and_fits_its_federation(path):
    config = preset_config(path)
    header = path.read_text().split("\nmethod = ")[0]
    assert f"configs/protocols/{path.name}" in header  # its own run command
    assert f"num-supernodes={config.expected_clients}" in header and config.expected_clients
    schedule = ClientSchedule.parse(config.clients_per_task, config.num_tasks)
    schedule.check_federation(config.expected_clients)  # raises when it asks for more
    assert all(sampled_per_round(config))


def test_pilora_official_preset_samples_10_of_30_clients_a_round():
    config = preset_config(
        APP_DIR / "configs" / "protocols" / "pilora-official-cifar100-beta0.5.toml"
    )
    assert (config.method, config.dataset, config.num_tasks) == ("pilora", "cifar100", 10)
    assert (config.rounds_per_task, config.local_epochs, config.batch_size) == (30, 10, 64)
    assert (config.partition, config.beta, config.expected_clients) == ("dirichlet", 0.5, 30)
    assert config.backbone == "timm:vit_base_patch16_224.dino"
    draws = sampled_per_round(config)
    assert {len(draw) for draw in draws} == {10} and len({tuple(d) for d in draws}) > 1


@pytest.mark.parametrize("method", ["multifcl", "pilora"])
def test_glfc_preset_grows_by_10_clients_a_task_and_trains_10_a_round(method):
    path = APP_DIR / "configs" / "protocols" / f"glfc-growing-cifar100-{method}.toml"
    config = preset_config(path)
    schedule = ClientSchedule.parse(config.clients_per_task, config.num_tasks)
    assert schedule.counts == tuple(range(30, 121, 10)) and config.expected_clients == 120
    assert (config.rounds_per_task, config.partition, config.alpha) == (10, "quality", 6)
    for index, draw in enumerate(sampled_per_round(config)):
        assert len(draw) == 10 and max(draw) < schedule.counts[index // 10]


@pytest.mark.parametrize(
    "path", [p for p in PROTOCOLS if AUGMENTED.fullmatch(p.name)], ids=lambda p: p.stem
)
def test_augmented_preset_is_its_paper_preset_with_standard_augmentation(path):
    paper = preset_config(
        APP_DIR / "configs" / "paper" / f"{AUGMENTED.fullmatch(path.name)[1]}.toml"
    )
    expected = {**paper.to_run_config(), "augment": "standard"}
    assert paper.augment == "none" and preset_config(path).to_run_config() == expected
