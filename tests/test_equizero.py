"""Equizero test-time canonicalization: groups, the constructed upright-only classifier,
the evaluation hook and metrics.json."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from multifcl.analysis.robustness import TEST_TRANSFORMS, robustness_table
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.config_names import check_names
from multifcl.data import InMemoryImages
from multifcl.equizero import (
    EquizeroClassifier,
    class_incremental_accuracy,
    group_transforms,
    rotation,
)
from multifcl.evaluation import evaluate_seen_tasks
from multifcl.experiment import load_experiment
from multifcl.metrics import AccuracyHistory
from multifcl.results import RunDirectory
from tests.conftest import run_in_process


class UprightMarkerClassifier(nn.Module):
    """Reads the class from the colour of the top-left 2x2 patch: confident and right on
    upright images only (rotated, the patch is dark and every logit is 0: class 0 wins)."""

    def __init__(self, unseen_logit: float | None = None) -> None:
        super().__init__()
        self.unseen_logit = unseen_logit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = 10.0 * pixels[:, :, :2, :2].mean(dim=(2, 3))
        if self.unseen_logit is not None:  # a 4th class not seen yet, always very "confident"
            unseen = torch.full((len(pixels), 1), self.unseen_logit)
            logits = torch.cat([logits, unseen], dim=1)
        return logits


def marked_images(labels: list[int], size: int = 8) -> InMemoryImages:
    images = torch.zeros(len(labels), 3, size, size, dtype=torch.uint8)
    for index, label in enumerate(labels):
        images[index, label, :2, :2] = 255
    return InMemoryImages(images, np.asarray(labels))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


@pytest.mark.parametrize(("group", "size"), [("flip", 2), ("rot90", 4), ("flip-rot90", 8)])
def test_groups_are_closed_sets_of_distinct_transforms(group, size):
    image = torch.randn(1, 3, 6, 6)
    transforms = list(group_transforms(group).values())
    orbit = [t(image) for t in transforms]
    assert len(orbit) == size
    assert all(not torch.equal(a, b) for i, a in enumerate(orbit) for b in orbit[i + 1 :])
    for outer in transforms:  # composing two elements stays in the group
        for inner in transforms:
            composed = outer(inner(image))
            assert any(torch.equal(composed, member) for member in orbit)


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_equizero_recovers_the_label_of_an_upright_only_classifier(quarter_turns):
    test_set = marked_images([1, 2, 1, 2, 1])
    classifier = UprightMarkerClassifier()
    turned = rotation(quarter_turns)
    upright = class_incremental_accuracy(classifier, to_unit, test_set, 3, 2)
    plain = class_incremental_accuracy(classifier, to_unit, test_set, 3, 2, turned)
    equizero = EquizeroClassifier(classifier, "rot90")
    assert (upright, plain) == (100.0, 0.0)
    assert class_incremental_accuracy(equizero, to_unit, test_set, 3, 2, turned) == 100.0


def test_equizero_confidence_ignores_classes_not_seen_yet():
    test_set = marked_images([1, 2])
    classifier = UprightMarkerClassifier(unseen_logit=50.0)
    flipped = group_transforms("flip")["hflip"]
    unrestricted = EquizeroClassifier(classifier, "flip-rot90")
    seen_only = EquizeroClassifier(classifier, "flip-rot90", num_classes=3)
    assert class_incremental_accuracy(unrestricted, to_unit, test_set, 3, 2, flipped) == 0.0
    assert class_incremental_accuracy(seen_only, to_unit, test_set, 3, 2, flipped) == 100.0


def test_unknown_group_is_one_line_naming_the_key():
    config = ExperimentConfig.from_run_config({"eval-group": "rot45"})
    with pytest.raises(ConfigError) as error:
        check_names(config)
    assert str(error.value).startswith("run config key 'eval-group': unknown group 'rot45'")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="eval-canonicalize"):
        ExperimentConfig.from_run_config({"eval-canonicalize": "learned"})
    with pytest.raises(ConfigError, match="^run config key 'eval-group': unknown group 'rot45'"):
        EquizeroClassifier(nn.Identity(), "rot45")


def test_evaluation_reports_equizero_next_to_plain_accuracy(tiny_config):
    config = tiny_config(eval_canonicalize="equizero", eval_group="flip")
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = method.initial_state()
    task = data.stream.task(0)
    state = method.merge(state, [method.train_client(state, data.test_set(task), task, 0)])
    stage = evaluate_seen_tasks(method, state, data, task)
    assert stage.cil_equizero is not None and len(stage.cil_equizero) == 1
    assert 0.0 <= stage.cil_equizero[0] <= 100.0
    # the same number by hand: the classifier wrapped in equizero over the flip group
    seen = len(task.seen_classes)
    by_hand = class_incremental_accuracy(
        EquizeroClassifier(method.classifier(state), "flip", seen),
        method.backbone.preprocess,
        data.test_set(task),
        seen,
        config.batch_size,
    )
    assert stage.cil_equizero[0] == pytest.approx(by_hand)
    plain = load_experiment(tiny_config())
    assert evaluate_seen_tasks(plain.method, state, plain.data, task).cil_equizero is None


def test_metrics_json_holds_the_equizero_matrix_and_summary(tiny_config, tmp_path):
    config = tiny_config()
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.start(config, {})
    cil = [[80.0], [60.0, 90.0]]
    accuracy = AccuracyHistory(cil, cil, [80.0, 75.0], [[85.0], [70.0, 92.0]])
    metrics = run_dir.write_metrics(accuracy, 2)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["accuracy_matrix_equizero"] == [[85.0, None], [70.0, 92.0]]
    assert saved["equizero"]["last"] == pytest.approx(81.0) and saved["last"] == 75.0
    resumed = run_dir.write_metrics(AccuracyHistory(cil, cil, [80.0, 75.0], [[70.0, 92.0]]), 2)
    assert "equizero" not in resumed  # rows missing (a resumed run): nothing misaligned


def stub_method(classifier: nn.Module) -> SimpleNamespace:
    """What robustness_table uses of a Method: a classifier, preprocessing, a batch size."""
    return SimpleNamespace(
        classifier=lambda state: classifier,
        backbone=SimpleNamespace(preprocess=to_unit),
        config=SimpleNamespace(batch_size=3),
    )


def test_robustness_table_upright_only_classifier():
    test_set = marked_images([1, 2, 1, 2])
    rows = robustness_table(stub_method(UprightMarkerClassifier()), {}, [test_set], 3, "rot90")
    table = {row.test_set: (row.plain, row.equizero) for row in rows}
    assert table["upright"] == (100.0, 100.0)
    for name in ("rotated 90", "rotated 180", "rotated 270", "flipped left-right"):
        assert table[name] == (0.0, 100.0)  # a flipped corner marker is a rotated one too


@pytest.mark.parametrize("group", ["flip", "rot90", "flip-rot90"])
def test_robustness_table_matches_equizero_on_each_transformed_test_set(group):
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)
    test_set = InMemoryImages(images, np.arange(10) % 4)
    rows = robustness_table(stub_method(classifier), {}, [test_set], 4, group)
    canonicalized = EquizeroClassifier(classifier, group, 4)
    for row in rows:
        transform = TEST_TRANSFORMS[row.test_set]
        plain = class_incremental_accuracy(classifier, to_unit, test_set, 4, 3, transform)
        equizero = class_incremental_accuracy(canonicalized, to_unit, test_set, 4, 3, transform)
        assert (row.plain, row.equizero) == (plain, equizero)


def test_a_run_with_equizero_writes_its_matrix_to_metrics_json(tiny_config):

    config = tiny_config(eval_canonicalize="equizero", eval_group="flip", rounds_per_task=1)
    run_in_process(config)
    saved = json.loads((config.output_dir / "metrics.json").read_text())
    matrix = saved["accuracy_matrix_equizero"]
    assert len(matrix) == config.num_tasks and all(v is not None for v in matrix[-1])
    assert saved["equizero"]["last"] == pytest.approx(np.mean(matrix[-1]))
