"""benchmarks/reproducibility.py: REPRODUCIBILITY.md's rows come from run folders."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from benchmarks.reproducibility import PAPER_DIR, RecordError, write_record

PRESET = "cifar100-10tasks-beta0.5-multifcl"


def fake_run(out: Path, label: str, seed: int, config: dict, last: float) -> None:
    """A finished run folder with just what the record reads."""
    run = out / "runs" / f"{label}-seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**config, "seed": seed}))
    metrics = {"tasks_finished": 10, "num_tasks": 10, "last": last, "avg": last + 5}
    metrics |= {"forgetting": 12.0, "forgetting_first_task": 16.0 + seed}
    (run / "metrics.json").write_text(json.dumps(metrics))


def row_of(record: Path, key: str) -> list[str]:
    line = next(line for line in record.read_text().splitlines() if line.startswith(f"| `{key}`"))
    return [cell.strip() for cell in line[1:-1].split("|")]


def test_a_presets_row_is_filled_from_its_runs_and_kept_on_the_next_call(tmp_path):
    preset = tomllib.loads((PAPER_DIR / f"{PRESET}.toml").read_text())
    out = tmp_path / "runs" / "paper"
    fake_run(out, PRESET, 0, preset, 70.0)
    fake_run(out, PRESET, 1, preset, 71.0)
    record = write_record([out], tmp_path / "REPRODUCIBILITY.md", hardware="1 test GPU")

    cells = row_of(record, PRESET)
    assert cells[1] == "70.7 / 76.1 / 16.4"  # the paper's, from the preset's header
    assert f"configs/paper/{PRESET}.toml" in cells[2] and "num-supernodes=10" in cells[2]
    assert cells[3:6] == ["70.50 ± 0.71 / 75.50 ± 0.71 / 16.50 ± 0.71", "0 1", "1 test GPU"]
    assert row_of(record, "cifar100-10tasks-beta0.5-pilora")[3:] == ["", "", "", ""]
    assert len(list(PAPER_DIR.glob("*.toml"))) == sum(
        line.startswith(("| `cifar100", "| `imagenet-r"))
        for line in record.read_text().splitlines()
    )
    assert row_of(record, "compare-5methods/multifcl")[1:] == ["", "", "", ""]

    write_record([], record)  # no folders: the measured rows stay as they were
    assert row_of(record, PRESET)[3:6] == cells[3:6]


def test_runs_of_another_config_are_refused_in_one_line(tmp_path):
    preset = tomllib.loads((PAPER_DIR / f"{PRESET}.toml").read_text())
    out = tmp_path / "paper"
    fake_run(out, PRESET, 0, {**preset, "beta": 0.1}, 70.0)
    with pytest.raises(RecordError, match=r"beta=0.1, but row .* needs beta=0.5"):
        write_record([out], tmp_path / "REPRODUCIBILITY.md")


def test_the_repository_record_is_the_generators_output(tmp_path):
    """REPRODUCIBILITY.md's text is what the generator writes from its own rows."""
    text = (Path(__file__).resolve().parents[1] / "REPRODUCIBILITY.md").read_text()
    copy = tmp_path / "REPRODUCIBILITY.md"
    copy.write_text(text)
    write_record([], copy, hardware="unused: no rows are measured now")
    assert copy.read_text() == text
