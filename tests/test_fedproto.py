"""FedProto: its loss, its merge (FedAvg of weights, count-weighted prototypes), its
prototype classifier, and a short in-process run."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multifcl.experiment import load_experiment
from multifcl.methods.base import ClientUpdate
from multifcl.methods.fedproto import CLASS_COUNTS, PROTOTYPES
from tests.conftest import run_in_process, sent_states


def test_loss_pulls_features_to_the_global_prototypes_of_classes_that_have_one(tiny_config):
    method = load_experiment(tiny_config(method="fedproto", fedproto_lambda=0.5)).method
    torch.manual_seed(0)
    pixels = method.backbone.preprocess(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    labels = torch.tensor([0, 1, 0, 2])
    targets = torch.randn(method.num_classes, method.backbone.feature_dim)
    method._targets = targets
    method._has_target = torch.tensor([True, False, True] + [False] * (method.num_classes - 3))
    with torch.no_grad():
        loss = method._loss(pixels, labels, 5)
        features = method.model.features(pixels)
        cross_entropy = F.cross_entropy(method.model.head(features)[:, :5], labels)
        pulled = [0, 2, 3]  # classes 0 and 2 have a prototype; class 1 adds zero
        squared = sum(((features[i] - targets[labels[i]]) ** 2).sum() for i in pulled)
        by_hand = cross_entropy + 0.5 * squared / features.numel()  # nn.MSELoss's mean
        method._has_target[:] = False
        without_prototypes = method._loss(pixels, labels, 5)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert without_prototypes.item() == pytest.approx(cross_entropy.item(), rel=1e-6)


def test_merge_averages_weights_and_weights_prototypes_by_count(tiny_config):
    method = load_experiment(tiny_config(method="fedproto")).method
    state = method.initial_state()
    dim = method.backbone.feature_dim
    models = [
        {k: np.full_like(v, value) for k, v in state.items() if k not in (PROTOTYPES, CLASS_COUNTS)}
        for value in (1.0, 4.0)
    ]
    uploads = [  # client 1: classes 0 and 1; client 2: class 1 only
        (np.array([0, 1]), np.stack([np.full(dim, 2.0), np.full(dim, 1.0)]), [3.0, 1.0]),
        (np.array([1]), np.full((1, dim), 5.0), [3.0]),
    ]
    updates = [
        ClientUpdate(
            {
                **model,
                "class-ids": ids,
                "class-means": rows.astype(np.float32),
                "class-counts": np.array(counts, np.float32),
            },
            num_examples=int(sum(counts)),
        )
        for model, (ids, rows, counts) in zip(models, uploads)
    ]
    merged = method.merge(state, updates)
    assert np.allclose(merged["head.weight"], (4 * 1.0 + 3 * 4.0) / 7)  # FedAvg by samples
    assert np.allclose(merged[PROTOTYPES][0], 2.0) and np.allclose(merged[PROTOTYPES][1], 4.0)
    assert not merged[PROTOTYPES][2:].any()
    assert merged[CLASS_COUNTS].tolist()[:3] == [3.0, 4.0, 0.0]


def test_classifier_picks_the_nearest_global_prototype(tiny_config):
    method = load_experiment(tiny_config(method="fedproto")).method
    state = method.initial_state()
    pixels = method.backbone.preprocess(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8))
    with torch.no_grad():
        features = method.model.features(pixels)
    state[PROTOTYPES][:3] = features.numpy() + 0.01  # each image's own class, slightly off
    state[PROTOTYPES][3:] = 10.0
    with torch.no_grad():
        logits = method.classifier(state)(pixels)
    assert logits.argmax(1).tolist() == [0, 1, 2]


def test_fedproto_runs_in_process_and_sends_the_merged_prototypes(tiny_config):
    config = tiny_config(method="fedproto")
    metrics, grid = run_in_process(config)
    assert [sum(a is not None for a in row) for row in metrics["accuracy_matrix"]] == [1, 2]
    first = min(grid.contexts)
    counts = [
        state[CLASS_COUNTS] for m, state in sent_states(grid) if m.metadata.dst_node_id == first
    ]
    assert [int((c > 0).sum()) for c in counts] == [0, 5, 5, 10]  # round 2 pulls towards round 1
