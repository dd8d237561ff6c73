"""`logger = "wandb"`: one offline W&B run per run, grouped by compare's row and seed.

The runs are read back from W&B's own offline files (`run-<id>.wandb`: W&B's LevelDB-style
log of protobuf records), with no network and no account.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("wandb")  # the test extra installs it
from wandb.proto import wandb_internal_pb2

from multifcl.compare import plan_comparison, run_comparison
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.results import RunDirectory, run_loggers
from tests.test_compare import TINY, in_process

BLOCK, HEADER = 32768, 7  # the log's block size and its record (and file) header length


def offline_records(file: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a `.wandb` file, chunks joined (full = 1, first 2, middle 3, last 4)."""
    data = file.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, position = [], b"", HEADER
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if left_in_block < HEADER or (kind == 0 and length == 0):
            position += left_in_block  # padding up to the next block
            continue
        chunks += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


def read_offline_run(folder: Path) -> dict:
    """The run record's identity, its config, and every history row's values."""
    (file,) = folder.glob("run-*.wandb")
    run, config, history = None, {}, []
    for record in offline_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config = {item.key: json.loads(item.value_json) for item in run.config.update}
        elif kind == "history":
            history.append(
                {  # a key is `key` or, in newer versions, `nested_key` ("a", "b" for a/b)
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return {"run": run, "config": config, "history": history}


def test_a_compare_of_two_methods_and_two_seeds_writes_four_offline_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "tracker"))
    monkeypatch.setenv("WANDB_PROJECT", "multifcl-test")
    out = tmp_path / "out"
    overrides = f"{TINY} logger='tensorboard,wandb'"
    plan = plan_comparison(["finetune", "prototypes"], [0, 1], out, overrides)
    run_comparison(plan, in_process([]), echo=lambda line: None)

    offline = sorted((tmp_path / "tracker" / "wandb").glob("offline-run-*"))
    runs = {read["run"].display_name: read for read in map(read_offline_run, offline)}
    assert sorted(runs) == [
        "finetune-seed0",
        "finetune-seed1",
        "prototypes-seed0",
        "prototypes-seed1",
    ]
    for name, read in runs.items():
        label, seed = name.rsplit("-seed", 1)
        folder = out / "runs" / name
        saved = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        run = read["run"]
        assert (run.run_group, run.job_type, run.project) == (
            label,
            f"seed-{seed}",
            "multifcl-test",
        )
        assert run.run_id == saved["run-id"] and read["config"]["method"] == label
        task_rows = [row for row in read["history"] if "tasks_trained" in row]
        assert [row["tasks_trained"] for row in task_rows] == [1, 2]
        assert [row["task/A_t"] for row in task_rows] == pytest.approx(metrics["stage_accuracy"])
        assert task_rows[-1]["summary/last"] == pytest.approx(metrics["last"])
        assert task_rows[-1]["cil_per_task/task_1"] == pytest.approx(
            metrics["accuracy_matrix"][1][0]
        )
        round_rows = [row for row in read["history"] if "global_round" in row]
        assert [row["global_round"] for row in round_rows] == [1, 2]
        assert {row["round/clients"] for row in round_rows} == {2}
        final = read["history"][-1]
        assert final["accuracy_matrix/_type"] == "table-file"
        assert final["accuracy_matrix/nrows"] == 2 and final["accuracy_matrix/ncols"] == 4
        assert final["accuracy_plot/_type"] == "image-file"
        assert any((folder / "tensorboard").glob("events.out.tfevents.*"))  # the other sink


@pytest.mark.parametrize("missing", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_is_one_line_before_the_run(missing, tmp_path, monkeypatch):
    found = run_loggers.importlib.util.find_spec
    monkeypatch.setattr(
        run_loggers.importlib.util,
        "find_spec",
        lambda name: None if name == missing else found(name),
    )
    with pytest.raises(ConfigError) as error:
        RunDirectory(tmp_path / "run", logger="tensorboard,wandb")
    message = str(error.value)
    assert message.startswith("run config key 'logger'") and "\n" not in message
    assert f'pip install -e ".[{missing}]"' in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["none,wandb", "wandb,wandb", "wandb,mlflow"])
def test_a_bad_logger_list_is_refused(value):
    with pytest.raises(ConfigError, match="run config key 'logger'"):
        ExperimentConfig.from_run_config({"logger": value})


def test_logger_lists_name_their_loggers():
    assert ExperimentConfig(logger="tensorboard, wandb").logger == "tensorboard, wandb"
    from multifcl.config import logger_names

    assert logger_names("tensorboard,wandb") == ("tensorboard", "wandb")
    assert logger_names("none") == ()
