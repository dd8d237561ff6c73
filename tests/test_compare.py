"""The comparison runner: plan, table (mean ± std over seeds), plots and resuming.

Runs go through the real ServerApp loop and ClientApp handler in-process (no Ray); the one
real `flwr run` path is covered by tests/test_flwr_run.py.
"""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from flwr.common.config import parse_config_args

from multifcl.cli import CommandError, main
from multifcl.compare import parse_key_values, plan_comparison, run_comparison
from tests.conftest import run_in_process

TINY = "dataset='synthetic' num-tasks=2 rounds-per-task=1 partition='iid' batch-size=16"


def in_process(launched: list[str], num_nodes: int = 2):
    """A launcher that runs a planned run in this process and records its name."""

    def launch(run) -> None:
        launched.append(run.name)
        run_in_process(run.config, num_nodes, base_dir=run.run_dir.parent)

    return launch


def test_two_rows_two_seeds_give_mean_and_std_and_a_second_call_reruns_nothing(tmp_path):
    preset = tmp_path / "capped-prototypes.toml"
    preset.write_text('method = "prototypes"\nmax-train-per-class = 24\n')
    out = tmp_path / "out"
    plan = plan_comparison(["finetune", str(preset)], [0, 1], out, TINY)
    launched: list[str] = []
    lines: list[str] = []
    written = run_comparison(plan, in_process(launched), echo=lines.append)

    names = [
        "finetune-seed0",
        "finetune-seed1",
        "capped-prototypes-seed0",
        "capped-prototypes-seed1",
    ]
    assert launched == names
    assert [line.split(":")[0] for line in lines if "running" in line] == [
        "[1/4] finetune seed 0",
        "[2/4] finetune seed 1",
        "[3/4] capped-prototypes seed 0",
        "[4/4] capped-prototypes seed 1",
    ]
    saved = {n: json.loads((out / "runs" / n / "config.json").read_text()) for n in names}
    assert saved["capped-prototypes-seed1"]["max-train-per-class"] == 24
    assert saved["capped-prototypes-seed1"]["seed"] == 1
    assert saved["finetune-seed0"]["method"] == "finetune"

    lasts = [json.loads((out / "runs" / n / "metrics.json").read_text())["last"] for n in names[:2]]
    table = (out / "comparison.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| finetune |"))
    assert f"| {statistics.mean(lasts):.2f} ± {statistics.stdev(lasts):.2f} |" in row
    rows = {r["label"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert set(rows) == {"finetune", "capped-prototypes"} and rows["finetune"]["runs"] == "2"
    assert float(rows["finetune"]["last_std"]) == pytest.approx(statistics.stdev(lasts), abs=1e-3)
    rounds = list(csv.DictReader((out / "runs" / "finetune-seed0" / "rounds.csv").open()))
    up = statistics.mean(float(r["bytes_up"]) for r in rounds)
    assert float(rows["finetune"]["bytes_up_per_round"]) == pytest.approx(up)
    assert float(rows["finetune"]["seconds_per_round"]) > 0
    for name in ("accuracy_curves.png", "last_accuracy.png", "bytes_per_round.png"):
        assert (out / name) in written and (out / name).stat().st_size > 10_000

    # a run left unfinished (here: its metrics say one task of two) is moved aside and rerun
    metrics_file = out / "runs" / "finetune-seed1" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "tasks_finished": 1}))
    launched.clear()
    lines.clear()
    run_comparison(plan, in_process(launched), echo=lines.append)
    assert launched == ["finetune-seed1"]
    assert sum("finished before, skipped" in line for line in lines) == 3
    assert [p.name.startswith("finetune-seed1-") for p in (out / "unfinished").iterdir()] == [True]

    launched.clear()
    run_comparison(plan, in_process(launched), echo=lines.append)
    assert launched == []


def test_a_run_another_process_finished_meanwhile_is_kept_not_moved_aside_and_rerun(tmp_path):
    """Two compares on one folder: the second finishes a run the first planned as pending."""
    out = tmp_path / "out"
    plan = plan_comparison(["prototypes"], [0, 1], out, TINY)
    launched: list[str] = []
    other = in_process([])

    def launch_and_finish_the_next(run) -> None:  # the other process runs seed 1 meanwhile
        in_process(launched)(run)
        other(plan.runs[1])

    lines: list[str] = []
    run_comparison(plan, launch_and_finish_the_next, echo=lines.append)
    assert launched == ["prototypes-seed0"]
    assert "[2/2] prototypes seed 1: finished meanwhile by another process, skipped" in lines
    assert not (out / "unfinished").exists()


def test_one_seed_writes_na_for_the_std_and_a_changed_config_is_refused(tmp_path):
    out = tmp_path / "out"
    plan = plan_comparison(["prototypes"], [3], out, TINY)
    run_comparison(plan, in_process([]), echo=lambda line: None)
    row = next(
        line for line in (out / "comparison.md").read_text().splitlines() if "| prot" in line
    )
    assert row.count("± n/a") == 5
    assert next(csv.DictReader((out / "comparison.csv").open()))["last_std"] == ""

    changed = plan_comparison(["prototypes"], [3], out, TINY + " lr=0.5")
    with pytest.raises(CommandError, match=r"finished with lr=0.01 .* asks for lr=0.5"):
        run_comparison(changed, in_process([]), echo=lambda line: None)
    more_clients = plan_comparison(["prototypes"], [3], out, TINY, "num-supernodes=3")
    with pytest.raises(CommandError, match="num-clients=2"):
        run_comparison(more_clients, in_process([]), echo=lambda line: None)


def test_overrides_reach_flwr_exactly(tmp_path):
    data = tmp_path / "data with 'quote"
    (data / "train" / "a").mkdir(parents=True)
    plan = plan_comparison(
        ["multifcl"],
        [0],
        tmp_path / "out",
        f"dataset='imagefolder' data-root=\"{data}\" lr=1e-05 use-experts=false "
        "use-self-kd=false num-tasks=5",
    )
    run = plan.runs[0]
    assert parse_config_args([run.overrides_text()]) == run.overrides
    assert run.overrides["data-root"] == str(data) and run.overrides["lr"] == 1e-05
    assert run.overrides["output-dir"] == str(tmp_path / "out" / "runs" / "multifcl-seed0")


@pytest.mark.parametrize(
    ("rows", "seeds", "overrides", "federation", "message"),
    [
        (["nope"], [0], "", "", "'nope' is neither a method"),
        (["missing.toml"], [0], "", "", "preset file 'missing.toml' cannot be read"),
        (["prototypes"], [0, 0], "", "", "--seeds: expected distinct integers >= 0"),
        (["prototypes"], [0], "seed=3", "", "sets 'seed', which the runner sets per run"),
        (["prototypes"], [0], "lr", "", "--overrides: 'lr' is not key=value"),
        (["prototypes"], [0], "lr=abc", "", "--overrides: 'lr=abc' is not key=value pairs"),
        (["prototypes"], [0], "beta=-1.0", "", "prototypes: run config key 'beta': must be > 0"),
        (["prototypes"], [0], "colour=1", "", "run config key 'colour': unknown key"),
        (["lwf"], [0], "dataset='cifar10'", "", "lwf: run config key 'dataset': unknown dataset"),
        (["lwf"], [0], "eval-group='d4'", "", "lwf: run config key 'eval-group': unknown group"),
        (["prototypes"], [0], "", "num-supernodes=0", "num-supernodes must be an integer >= 1"),
        (["prototypes", "prototypes"], [0], "", "", "two rows have the same label"),
        (
            ["prototypes"],
            [0],
            "expected-clients=10",
            "",
            "'expected-clients': the config expects 10 clients, --federation gives 2",
        ),
    ],
)
def test_bad_input_is_one_line_before_anything_runs(
    tmp_path, rows, seeds, overrides, federation, message
):
    with pytest.raises(CommandError, match=message) as error:
        plan_comparison(rows, seeds, tmp_path / "out", overrides, federation)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_the_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    status = main(["compare", "--methods", "nope", "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("multifcl compare: --methods: 'nope'") and "\n" not in err


def test_key_values_follow_flwr_syntax():
    text = "a='x y' b=1 c=0.5 d=true e=\"it's\""
    assert parse_key_values(text, "--overrides") == parse_config_args([text])
