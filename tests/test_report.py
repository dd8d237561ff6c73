"""The report: every figure from finished tiny runs, partition.json and its rebuild."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from matplotlib.image import imread

from multifcl.cli import main
from multifcl.config import ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.reporting import RunResults
from multifcl.reporting.report_command import group_runs, partition_of, render_report
from multifcl.reporting.report_figures import method_colour, series_styles
from tests.conftest import TINY, run_in_process

NUM_CLIENTS = 3


def tiny_config(folder, seed: int) -> ExperimentConfig:
    values = {**TINY, "method": "prototypes", "partition": "dirichlet", "beta": 0.5}
    values.update(rounds_per_task=1, seed=seed, output_dir=folder)
    return ExperimentConfig(**values)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two seeds of one tiny prototypes run over three clients (made once for this module)."""
    base = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        config = tiny_config(base / f"prototypes-seed{seed}", seed)
        run_in_process(config, NUM_CLIENTS, base_dir=base)
    return [base / "prototypes-seed0", base / "prototypes-seed1"]


def test_partition_json_holds_each_clients_class_counts(finished_runs):
    saved = json.loads((finished_runs[1] / "partition.json").read_text())
    data = load_experiment(tiny_config(finished_runs[1], seed=1)).data
    assert saved["num_clients"] == NUM_CLIENTS and saved["class_names"] == data.stream.class_names
    for task, entry in zip(data.stream, saved["tasks"], strict=True):
        assert entry["classes"] == list(task.classes)
        parts = data.client_parts(task, NUM_CLIENTS)
        expected = [
            np.bincount(data.stream.train_labels[p] - task.classes.start, minlength=5).tolist()
            for p in parts
        ]
        assert entry["counts"] == expected
        assert sum(map(sum, entry["counts"])) == len(data.stream.train_indices(task))


def test_report_renders_every_figure(finished_runs, tmp_path):
    runs = [RunResults.load(path) for path in finished_runs]
    messages: list[str] = []
    written = render_report(runs, tmp_path / "report", echo=messages.append)
    assert sorted(path.name for path in written) == [
        "accuracy_curves.png",
        "accuracy_matrix-prototypes-seed0.png",
        "accuracy_matrix-prototypes-seed1.png",
        "bytes_per_round.png",
        "partition-prototypes-seed0.png",
        "partition-prototypes-seed1.png",
    ]
    for path in written:
        height, width, _ = imread(path).shape
        assert height >= 400 and width >= 500, path.name
    assert messages == []  # the seeds' partitions differ: both are drawn, none is rebuilt


def copy_run(source, folder, **changes):
    """A copy of a finished run whose config.json says `changes` (flwr keys)."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return RunResults.load(folder)


def test_runs_are_labelled_by_method_and_seed_and_never_averaged_across_configs(
    finished_runs, tmp_path
):
    seeds = [RunResults.load(path) for path in finished_runs]
    other_beta = copy_run(finished_runs[0], tmp_path / "prototypes-seed0", beta=0.1)
    finetune = copy_run(finished_runs[1], tmp_path / "x", method="finetune")
    messages: list[str] = []
    assert [(g.label, len(g.runs)) for g in group_runs(seeds, messages.append)] == [
        ("prototypes (seeds 0, 1)", 2)
    ]
    assert [g.label for g in group_runs([*seeds, finetune], messages.append)] == [
        "prototypes (seeds 0, 1)",
        "finetune (seed 1)",
    ]
    assert messages == []  # differing only by method and seed is what a comparison is
    older = copy_run(finished_runs[1], tmp_path / "older")
    config = json.loads((older.path / "config.json").read_text())
    del config["eval-group"]  # a key this version added, at its default
    config["run-id"] = "another run"  # what the server stores beside the run config
    older.config = config
    assert [g.label for g in group_runs([seeds[0], older], messages.append)] == [
        "prototypes (seeds 0, 1)"
    ]
    assert messages == []

    groups = group_runs([*seeds, other_beta], messages.append)
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("prototypes (beta=0.5; seeds 0, 1)", 2),
        ("prototypes (beta=0.1; seed 0)", 1),
    ]
    warning = (
        "warning: these runs differ in more than method and seed: beta (0.5 / 0.1); "
        "runs of one config are averaged, never across configs"
    )
    assert messages == [warning]


def test_a_method_has_one_colour_in_every_figure_and_repeats_change_the_line_style():
    assert method_colour("prototypes") == "C0" and method_colour("finetune") == "C1"
    assert method_colour("1-base") == method_colour("1-base")  # not a method: by its name
    assert method_colour("1-base") not in {method_colour(m) for m in ("prototypes", "lwf")}
    compare = series_styles(["finetune", "1-base", "2-adapter"], {"1-base": "multifcl"})
    report = series_styles(
        ["multifcl (seed 0)", "finetune (seed 0)"],
        {"multifcl (seed 0)": "multifcl", "finetune (seed 0)": "finetune"},
    )
    assert compare["finetune"] == report["finetune (seed 0)"] == ("C1", "-")
    assert compare["1-base"] == report["multifcl (seed 0)"] == ("C2", "-")
    two = series_styles(["a", "b"], {"a": "multifcl", "b": "multifcl"})
    assert two == {"a": ("C2", "-"), "b": ("C2", "--")}


def test_without_partition_json_the_report_rebuilds_it_and_draws_it_once(finished_runs, tmp_path):
    copy = tmp_path / "older-run"
    shutil.copytree(finished_runs[0], copy)
    (copy / "partition.json").unlink()
    original, older = RunResults.load(finished_runs[0]), RunResults.load(copy)
    assert partition_of(older) == original.partition()

    messages: list[str] = []
    written = render_report([original, older], tmp_path / "report", echo=messages.append)
    assert [p.name for p in written if p.name.startswith("partition")] == [
        "partition-prototypes-seed0.png"
    ]
    assert messages == [
        "partition of older-run is the same as that of prototypes-seed0: drawn once"
    ]


def test_the_command_writes_into_the_first_run_by_default(finished_runs, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_runs[0], copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "report" / "accuracy_curves.png").is_file()
    assert str(copy / "report" / "bytes_per_round.png") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "does not exist"),
        (lambda folder: folder.mkdir(), "config.json' is missing: not a run folder"),
    ],
)
def test_a_folder_that_is_not_a_run_is_refused_in_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("multifcl report: ") and message in err and "\n" not in err


def test_the_partition_heatmap_labels_rows_by_the_partitions_held(tmp_path, monkeypatch):
    """With allow-missing-partitions, partition.json holds rows only for the partitions held;
    the figure names each row by its partition id, not by its position."""
    from multifcl.reporting import report_figures

    labels = []
    monkeypatch.setattr(
        "matplotlib.axes.Axes.set_yticks",
        lambda self, ticks, names=None, **kw: labels.append(list(names)),
    )
    counts = {
        "num_clients": 2,
        "partition_ids": [1],
        "class_names": ["a", "b"],
        "tasks": [{"task": 1, "classes": [0, 1], "counts": [[5, 7]]}],
    }
    report_figures.partition(counts, "held", tmp_path / "partition.png")
    assert labels == [["1"]]
