"""`multifcl compare --grid`: tuning runs on a validation split, the choice per row, the final
runs with the chosen values, the grid table, resuming, and bad grids refused up front.

Runs go through the real ServerApp loop and ClientApp handler in-process, as in
tests/test_compare.py."""

from __future__ import annotations

import json

import pytest

from multifcl.cli import CommandError
from multifcl.compare import plan_comparison, run_comparison, select_points
from multifcl.tuning_grid import HyperGrid, choose
from tests.test_compare import TINY, in_process


def saved(run) -> tuple[dict, dict]:
    folder = run.run_dir
    return (
        json.loads((folder / "config.json").read_text()),
        json.loads((folder / "metrics.json").read_text()),
    )


def test_the_best_validation_avg_is_run_over_the_seeds_and_a_rerun_skips_everything(tmp_path):
    out = tmp_path / "out"
    plan = plan_comparison(["finetune"], [0], out, TINY, grid="lr=0.001,0.05", tuning_seed=7)
    launched: list[str] = []
    lines: list[str] = []
    run_comparison(plan, in_process(launched), echo=lines.append)

    tuning = plan.tuning.runs["finetune"]
    assert launched == ["finetune-lr0.001-seed7", "finetune-lr0.05-seed7", "finetune-seed0"]
    scores = []
    for run, lr in zip(tuning, (0.001, 0.05)):
        config, metrics = saved(run)
        assert (config["lr"], config["seed"], config["val-fraction"]) == (lr, 7, 0.1)
        scores.append(metrics["val"]["avg"])
    best = choose(scores)
    final_config, _ = saved(plan.tuning.finals["finetune"][best][0])
    assert final_config["lr"] == (0.001, 0.05)[best]
    assert (final_config["seed"], final_config["val-fraction"]) == (0, 0.0)
    assert f"finetune: chose lr={(0.001, 0.05)[best]}" in "\n".join(lines)

    table = (out / "comparison.md").read_text()
    assert "Grid: `lr=0.001,0.05` (2 points per row)" in table and "tuning seed 7" in table
    for index, (lr, score) in enumerate(zip((0.001, 0.05), scores)):
        line = next(row for row in table.splitlines() if row.startswith(f"| finetune | {lr} |"))
        assert f"| {score:.2f} |" in line and ("**yes**" in line) == (index == best)

    launched.clear()
    lines.clear()
    run_comparison(plan, in_process(launched), echo=lines.append)
    assert launched == [] and sum("finished before, skipped" in line for line in lines) == 3

    # the choice is recomputed from the tuning runs' validation scores alone
    other = 1 - best
    _, metrics = saved(tuning[other])
    metrics["val"]["avg"] = 101.0
    (tuning[other].run_dir / "metrics.json").write_text(json.dumps(metrics))
    chosen = select_points(plan)
    assert chosen.tuning.chosen == {"finetune": other}
    assert [run.config.lr for run in chosen.runs] == [(0.001, 0.05)[other]]


def test_points_follow_the_grid_order_and_ties_go_to_the_first():
    grid = HyperGrid.parse("lr=1e-4,1e-3 local-epochs=1,5 optimizer='sgd'")
    assert grid.points[:3] == [
        {"lr": 1e-4, "local-epochs": 1, "optimizer": "sgd"},
        {"lr": 1e-4, "local-epochs": 5, "optimizer": "sgd"},
        {"lr": 1e-3, "local-epochs": 1, "optimizer": "sgd"},
    ]
    assert len(grid.points) == 4
    assert choose([50.0, 61.0, 61.0, 12.0]) == 1 and choose([3.0, 3.0]) == 0


@pytest.mark.parametrize(
    ("grid", "overrides", "options", "message"),
    [
        ("colour=1,2", "", {}, "--grid: finetune with colour=1: run config key 'colour': unknown"),
        ("lr=0.01,-1.0", "", {}, "--grid: finetune with lr=-1.0: run config key 'lr': must be > 0"),
        ("lr=0.1 lr=0.2", "", {}, "--grid: key 'lr' appears twice"),
        ("seed=1,2", "", {}, "--grid: key 'seed' cannot be tuned"),
        ("output-dir='a','b'", "", {}, "--grid: key 'output-dir' cannot be tuned"),
        ("lr", "", {}, "--grid: 'lr' is not key=value,value,..."),
        ("lr=0.1,abc", "", {}, "--grid: lr='abc' is not a TOML value"),
        ("lr=0.1,0.1", "", {}, "--grid: key 'lr' lists a value twice"),
        ("lr=0.1", "lr=0.2", {}, "--grid: key 'lr' is also set by --overrides"),
        ("lr=0.1", "val-fraction=0.2", {}, "--overrides: sets 'val-fraction'"),
        ("lr=0.1", "", {"val_fraction": 0.0}, "--val-fraction: the tuning runs need a share"),
        ("", "", {"tuning_seed": 3}, "--tuning-seed: applies to a comparison with --grid only"),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, grid, overrides, options, message):
    def plan_and_run():
        plan = plan_comparison(
            ["finetune"], [0], tmp_path / "out", TINY + " " + overrides, grid=grid, **options
        )
        run_comparison(plan, in_process([]), echo=lambda line: None)

    with pytest.raises(CommandError, match=message) as error:
        plan_and_run()
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
