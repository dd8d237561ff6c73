"""Representation analysis: CKA, neural collapse, diffused redundancy, the run reader's
errors, and `multifcl analyze` end to end on TINY runs with task checkpoints."""

import csv
import json
import re

import numpy as np
import pytest
import torch

from multifcl.analysis.checkpoint_analysis import DEFAULT_SAMPLES_PER_TASK
from multifcl.analysis.cka import column_subset_cka, linear_cka
from multifcl.analysis.command import analyze_run
from multifcl.analysis.finished_run import AnalysisError, FinishedRun
from multifcl.analysis.neural_collapse import (
    class_means,
    etf_gram_deviation,
    nc1,
    vertex_angles,
)
from multifcl.analysis.redundancy import diffused_redundancy
from multifcl.cli import main
from multifcl.experiment import load_experiment
from multifcl.heads.etf import simplex_etf
from tests.conftest import run_in_process

RNG = np.random.default_rng(0)


def orthogonal(size: int) -> np.ndarray:
    return np.linalg.qr(RNG.standard_normal((size, size)))[0]


@pytest.mark.parametrize(("samples", "width"), [(200, 16), (12, 40)])  # feature and Gram forms
def test_cka_is_one_under_rotation_and_isotropic_scaling(samples, width):
    x = RNG.standard_normal((samples, width))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ orthogonal(width)) == pytest.approx(1.0)
    assert linear_cka(torch.from_numpy(x).float(), x @ orthogonal(width) + 5.0) == pytest.approx(
        1.0, abs=1e-6
    )


def test_cka_is_below_one_for_unrelated_features_and_not_scale_free_per_column():
    x = RNG.standard_normal((300, 16))
    assert linear_cka(x, RNG.standard_normal((300, 16))) < 0.2
    stretched = x * np.linspace(0.1, 3.0, 16)  # anisotropic scaling is a real change
    assert linear_cka(x, stretched) < 0.95
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(x, x[:10])


def test_column_subset_cka_equals_cka_on_the_subset():
    x = RNG.standard_normal((50, 20))
    centred = x - x.mean(axis=0)
    columns = np.array([1, 4, 5, 11, 19])
    expected = linear_cka(x[:, columns], x)
    assert column_subset_cka(centred.T @ centred, columns) == pytest.approx(expected)


def test_nc1_is_near_zero_for_collapsed_features_and_large_for_noise():
    labels = np.repeat(np.arange(4), 25)
    means = RNG.standard_normal((4, 16))
    collapsed = means[labels] + 1e-6 * RNG.standard_normal((100, 16))
    assert nc1(collapsed, labels) < 1e-8
    assert nc1(RNG.standard_normal((100, 16)), labels) > 1.0
    assert nc1(means[labels] + 0.3 * RNG.standard_normal((100, 16)), labels) < 1.0


def nc1_from_the_definition(features: np.ndarray, labels: np.ndarray) -> float:
    """tr(Sigma_W Sigma_B^+) / C written out with d x d covariances (well-conditioned cases)."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    within = features - means[np.searchsorted(classes, labels)]
    between = means - means.mean(axis=0)
    sigma_w = within.T @ within / len(features)
    sigma_b = between.T @ between / len(classes)
    rank = len(classes) - 1  # the centred means span C-1 directions when d >= C-1
    u, s, vt = np.linalg.svd(sigma_b, hermitian=True)
    pinv = (vt[:rank].T / s[:rank]) @ u[:, :rank].T
    return float(np.trace(sigma_w @ pinv) / len(classes))


@pytest.mark.parametrize(("num_classes", "per_class", "width"), [(5, 30, 12), (20, 3, 64)])
def test_nc1_matches_the_definition_and_ignores_a_constant_offset(num_classes, per_class, width):
    labels = np.repeat(np.arange(num_classes), per_class)  # (20, 3): more classes than samples
    means = RNG.standard_normal((num_classes, width))
    features = means[labels] + 0.5 * RNG.standard_normal((len(labels), width))
    value = nc1(features, labels)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(nc1_from_the_definition(features, labels), rel=1e-9)
    offset = 1e3 * RNG.standard_normal(width)  # one constant vector added to every feature
    assert nc1(features + offset, labels) == pytest.approx(value, rel=1e-6)
    assert nc1(torch.from_numpy(features + offset).float(), labels) == pytest.approx(
        value, rel=1e-3
    )


def test_nc1_inverts_only_the_between_class_span():
    labels = np.repeat(np.arange(3), 10)
    features = np.zeros((30, 8))
    features[:, 0] = labels  # class means on one line: the between-class span has rank 1
    noise = RNG.standard_normal((30, 7)).reshape(3, 10, 7)
    features[:, 1:] = (noise - noise.mean(axis=1, keepdims=True)).reshape(30, 7)  # off the line
    assert nc1(features + 50.0, labels) == pytest.approx(nc1(features, labels), rel=1e-6)
    assert nc1(features, labels) < 1e-20  # no within-class spread along that line
    assert np.isnan(nc1(np.ones((30, 8)), labels))  # no between-class span at all
    features[0, 0] = np.inf  # a diverged model: no number rather than a LinAlgError
    assert np.isnan(nc1(features, labels))


def test_etf_deviation_is_zero_for_a_simplex_etf_and_not_for_random_means():
    vertices = simplex_etf(5, 16, seed=3).double().numpy().T  # classes x width
    assert etf_gram_deviation(vertices) == pytest.approx(0.0, abs=1e-6)
    assert etf_gram_deviation(2.5 * vertices @ orthogonal(16) + 1.0) == pytest.approx(
        0.0, abs=1e-6
    )  # rotated, scaled and shifted: still an ETF once centred
    assert etf_gram_deviation(RNG.standard_normal((5, 16))) > 0.1
    labels = np.repeat(np.arange(5), 3)
    classes, means = class_means(vertices[labels], labels)
    assert list(classes) == list(range(5)) and np.allclose(means, vertices)
    assert np.allclose(vertex_angles(2.0 * vertices, vertices), 0.0, atol=1e-4)
    assert np.allclose(vertex_angles(-vertices, vertices), 180.0)


def test_redundantly_coded_classes_survive_small_dimension_subsets():
    labels = np.repeat(np.arange(3), 40)
    signal = np.repeat(np.eye(3), 40, axis=1)  # every class lit on 40 of 120 dimensions
    features = signal[labels] + 0.2 * RNG.standard_normal((120, 120))
    prototypes = class_means(features, labels)[1]
    curve = diffused_redundancy(features, labels, prototypes, (0.1, 0.5, 1.0), draws=3, seed=1)
    assert [p.dims for p in curve] == [12, 60, 120]
    assert curve[-1].accuracy == 100.0 and curve[-1].cka == pytest.approx(1.0)
    assert curve[0].accuracy > 90.0 and curve[0].cka < curve[1].cka < 1.0
    again = diffused_redundancy(features, labels, prototypes, (0.1, 0.5, 1.0), draws=3, seed=1)
    assert again == curve


def test_run_directory_errors_are_one_line(tmp_path):
    for folder, message in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "not a run directory (no config.json)"),
    ]:
        with pytest.raises(AnalysisError, match=re.escape(message)):
            FinishedRun.open(folder)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AnalysisError, match="rerun it with save-task-checkpoints = true"):
        FinishedRun.open(tmp_path)
    (tmp_path / "task-checkpoints").mkdir()
    np.savez(tmp_path / "task-checkpoints" / "task-02.npz", x=np.zeros(1))
    with pytest.raises(AnalysisError, match="expected task-01.npz, found task-02.npz"):
        FinishedRun.open(tmp_path)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["analyze", str(tmp_path), "--group", "rot45"]) == 2
    assert main(["analyze", str(tmp_path), "--probe-size", "1"]) == 2
    assert main(["analyze", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        "multifcl analyze: --group: unknown group 'rot45' (choose from flip, rot90, flip-rot90)"
    )
    assert "--probe-size: CKA needs at least 2 samples" in lines[1]
    assert "not a run directory" in lines[2] and len(lines) == 3


def test_the_last_round_keeps_each_clients_model_and_fedavg_of_them_is_the_final_model(
    tiny_config,
):
    config = tiny_config(save_task_checkpoints=True, rounds_per_task=2, method="finetune")
    experiment = load_experiment(config)
    run_in_process(config)
    snapshots = sorted((config.output_dir / "client-snapshots").glob("*.npz"))
    assert [p.name for p in snapshots] == ["client-1000.npz", "client-1001.npz"]
    clients = [dict(np.load(p)) for p in snapshots]
    final = dict(np.load(config.output_dir / "task-checkpoints" / "task-02.npz"))
    last_task = experiment.data.stream.task(1)
    sizes = [len(experiment.data.client_train_set(last_task, c, 2)) for c in range(2)]
    assert set(clients[0]) == set(final)
    assert not np.array_equal(clients[0]["head.weight"], clients[1]["head.weight"])
    for key, value in final.items():
        mean = (sizes[0] * clients[0][key] + sizes[1] * clients[1][key]) / sum(sizes)
        assert np.allclose(value, mean, atol=1e-6), key


def finished_run(tiny_config, **changes):
    config = tiny_config(**{"save_task_checkpoints": True, "rounds_per_task": 1, **changes})
    run_in_process(config)
    return config.output_dir


def read_csv(path):
    return list(csv.DictReader(path.open()))


def test_analyze_finetune_run_end_to_end(tiny_config, capsys):
    run = finished_run(tiny_config, method="finetune")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["equizero"] = {"last": 12.5}  # as a run with eval-canonicalize = "equizero" writes
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["analyze", str(run), "--probe-size", "24", "--draws", "2", "--robustness"]) == 0
    assert "analysis written to" in capsys.readouterr().out

    report = (run / "analysis.md").read_text()
    assert "with equizero 12.50%" in report
    for heading in ("CKA drift", "Diffused redundancy", "Neural collapse", "Robustness"):
        assert f"## {heading}" in report
    for name in ("cka_drift.png", "redundancy.png", "cka_drift.csv", "robustness.csv"):
        assert (run / "analysis" / name).stat().st_size > 0
    drift = read_csv(run / "analysis" / "cka_drift.csv")
    assert len(drift) == 4 * 2  # vit-tiny: 4 blocks, 2 task checkpoints
    frozen = [float(r["cka"]) for r in drift if r["block"] != "block 4"]
    assert frozen == pytest.approx([1.0] * 6)  # finetune trains only the last block
    clients = read_csv(run / "analysis" / "client_cka.csv")  # the run's own snapshots
    assert {r["client"] for r in clients} == {"client-1000", "client-1001"}
    frozen = [float(r["cka"]) for r in clients if r["block"] != "block 4"]
    trained = [float(r["cka"]) for r in clients if r["block"] == "block 4"]
    assert frozen == pytest.approx([1.0] * 6) and all(0 < c <= 1 + 1e-9 for c in trained)
    redundancy = read_csv(run / "analysis" / "redundancy.csv")
    assert len(redundancy) == 2 * 10 and {r["after_task"] for r in redundancy} == {"1", "2"}
    collapse = read_csv(run / "analysis" / "neural_collapse.csv")
    assert [r["classes"] for r in collapse] == ["5", "10"]
    robustness = read_csv(run / "analysis" / "robustness.csv")
    assert robustness[0]["test_set"] == "upright" and len(robustness) == 6
    # equizero over the whole dihedral group sees the same orbit for every test transform
    assert len({r["equizero"] for r in robustness}) == 1

    with pytest.raises(AnalysisError, match="--probe-size: 100000 probe samples requested"):
        analyze_run(run, probe_size=100_000)


def test_analyze_multifcl_etf_run_keeps_first_task_adapters_fixed(tiny_config):
    run = finished_run(
        tiny_config, method="multifcl", use_text_init=False, head="etf", rounds_per_task=2
    )
    analyze_run(run, draws=1)  # default size: each task's whole test set, fewer than the cap
    data = load_experiment(FinishedRun.open(run).config).data
    held = len(data.test_set(data.stream.task(0)))
    assert held < DEFAULT_SAMPLES_PER_TASK
    assert f"probe set ({held} held-out samples)" in (run / "analysis.md").read_text()
    drift = [float(r["cka"]) for r in read_csv(run / "analysis" / "cka_drift.csv")]
    assert drift == pytest.approx([1.0] * 8)  # adapters are frozen after task 1
    collapse = read_csv(run / "analysis" / "neural_collapse.csv")
    assert all(0.0 <= float(r["vertex_angle_degrees"]) <= 180.0 for r in collapse)
    assert "angle to ETF vertex" in (run / "analysis.md").read_text()


def test_block_features_follow_the_trained_parts(tiny_config):
    from multifcl.experiment import load_experiment

    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    finetune = load_experiment(tiny_config(method="finetune")).method
    state = {k: v + 0.05 for k, v in finetune.initial_state().items()}
    trained = finetune.block_features(state, pixels)
    frozen = finetune.backbone.taps(pixels, range(4))
    assert all(torch.equal(a, b) for a, b in zip(trained[:3], frozen[:3]))
    assert torch.allclose(trained[3], finetune.classifier(state).features(pixels))
    assert not torch.allclose(trained[3], frozen[3])

    multifcl = load_experiment(tiny_config(method="multifcl", use_text_init=False)).method
    state = multifcl.initial_state()
    state = {k: v + 0.05 if k.startswith("adapter/") else v for k, v in state.items()}
    adapted = multifcl.block_features(state, pixels)
    multifcl.classifier(state)  # loads the adapters
    expert_inputs = multifcl.expert_features(pixels)
    assert torch.allclose(adapted[-1], expert_inputs[-1])
    assert not torch.allclose(adapted[0], frozen[0])


def test_a_method_without_analysis_hooks_is_read_through_the_frozen_backbone(tiny_config):
    from multifcl.analysis.inspectable import (
        HasBlockFeatures,
        block_features,
        final_etf_head,
        final_prototypes,
    )
    from multifcl.experiment import load_experiment

    method = load_experiment(tiny_config(method="prototypes")).method
    assert not isinstance(method, HasBlockFeatures)
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    state = method.initial_state()
    frozen = method.backbone.taps(pixels, range(method.backbone.num_taps))
    assert all(torch.equal(a, b) for a, b in zip(block_features(method, state, pixels), frozen))
    assert final_prototypes(method, state) is None and final_etf_head(method, state) is None
