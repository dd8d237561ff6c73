"""The run directory and the printed summary."""

import csv
import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from multifcl.config import ConfigError, ExperimentConfig
from multifcl.metrics import AccuracyHistory, RoundRecord
from multifcl.reporting.report_figures import data_and_backbone, run_title
from multifcl.results import RunDirectory, print_summary
from multifcl.results.checkpoints import save_task_state

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_metrics_json_marks_undefined_cells_and_keeps_formulas(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start(ExperimentConfig(num_tasks=3), {"num-clients": 2})
    metrics = run.write_metrics(
        AccuracyHistory([[80.0], [60.0, 70.0]], [[90.0], [85.0, 88.0]], [80.0, 65.0]), 3
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["accuracy_matrix"] == [[80.0, None, None], [60.0, 70.0, None], [None, None, None]]
    assert saved["tasks_finished"] == 2 and saved["last"] == pytest.approx(65.0)
    assert "forgetting" in saved["formulas"] and metrics["bwt"] == pytest.approx(-20.0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num-clients"] == 2
    assert (tmp_path / "run" / "accuracy.png").stat().st_size > 0
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_result_files_get_the_mode_the_umask_gives_new_files(tmp_path, umask):
    previous = os.umask(umask)
    try:
        run = RunDirectory(tmp_path / "run")
        run.start(ExperimentConfig(num_tasks=2), {})
        run.write_metrics(AccuracyHistory([[80.0]], [[90.0]], [80.0]), 2)
        checkpoint = save_task_state(run.path, 0, {"w": np.zeros(3, dtype=np.float32)})
    finally:
        os.umask(previous)
    files = [run.path / n for n in ("config.json", "metrics.json", "accuracy.png", "rounds.csv")]
    for file in [*files, checkpoint]:
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file.name


def test_accuracy_plot_title_names_method_data_set_and_backbone(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start(ExperimentConfig(method="finetune", dataset="synthetic"), {})
    assert run.title == "finetune on synthetic, vit-tiny"
    folder = ExperimentConfig(dataset="imagefolder", data_root=tmp_path).to_run_config()
    assert run_title(folder) == f"prototypes on imagefolder {tmp_path.name}, vit-tiny"
    digits = {"dataset": "digits", "backbone": "vit-tiny"}
    assert data_and_backbone([folder, digits, digits]) == (
        f"imagefolder {tmp_path.name} / digits, vit-tiny"
    )


def test_summary_prints_the_matrix_and_metrics(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.start(ExperimentConfig(num_tasks=2), {})
    metrics = run.write_metrics(
        AccuracyHistory([[80.0], [60.0, 70.0]], [[90.0], [85.0, 88.0]], [80.0, 65.0]), 2
    )
    console = Console(record=True, width=120)
    print_summary(metrics, "prototypes on digits", console=console)
    text = console.export_text()
    assert "a[t][j]" in text and "60.0" in text and "70.0" in text and "65.0" in text


@pytest.mark.parametrize(
    "left", ["metrics.json", "config.json", "rounds.csv", "checkpoints/checkpoint-000000.npz"]
)
def test_output_dir_holding_a_run_is_refused(left, tmp_path):
    (tmp_path / left).parent.mkdir(exist_ok=True)
    (tmp_path / left).write_text("{}")
    with pytest.raises(
        ConfigError, match=r"^run config key 'output-dir': .* already holds a run \("
    ):
        RunDirectory(tmp_path)
    assert RunDirectory(tmp_path, resume=True).path == tmp_path.resolve()


def test_a_new_run_gets_an_id_in_its_config_json(tmp_path):
    first, second = RunDirectory(tmp_path / "a"), RunDirectory(tmp_path / "b")
    assert len(first.run_id) == 32 and first.run_id != second.run_id
    first.start(ExperimentConfig(), {})
    assert json.loads((tmp_path / "a" / "config.json").read_text())["run-id"] == first.run_id


def test_a_resumed_run_keeps_its_rows_under_the_current_header(tmp_path):
    old_header = "task,round,clients,bytes_up,bytes_down,seconds,train_loss,attempt,merged\n"
    rows = "1,1,2,10,20,0.5,1.25,1,True\n1,2,2,10,20,0.4,1.0,1,True\n"
    (tmp_path / "rounds.csv").write_text(old_header + rows)
    RunDirectory(tmp_path, resume=True).reopen(ExperimentConfig(), rounds_kept=1)
    kept = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert list(kept[0]) == RoundRecord.columns() and len(kept) == 1
    assert (kept[0]["seconds"], kept[0]["train_loss"], kept[0]["client_seconds"]) == (
        "0.5",
        "1.25",
        "",
    )


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_presets_use_known_keys_and_valid_values(preset, tmp_path):
    values = tomllib.loads(preset.read_text())
    if "data-root" in values:  # a preset's data path is the user's to set
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "train").mkdir()
        values["data-root"] = str(tmp_path / "data")
    ExperimentConfig.from_run_config(values)
