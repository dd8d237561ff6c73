"""The simplex ETF head: the frame's geometry, determinism, the projection and the losses."""

import pytest
import torch
import torch.nn.functional as F

from multifcl.config import ConfigError
from multifcl.heads.etf import (
    ETFHead,
    dot_regression_loss,
    etf_loss,
    mean_pairwise_class_mean_cosine,
    simplex_etf,
)

CLASSES, DIM = 10, 32


def test_vertices_are_a_simplex_etf():
    vertices = simplex_etf(CLASSES, DIM, seed=3)
    assert vertices.shape == (DIM, CLASSES) and vertices.dtype == torch.float32
    assert torch.allclose(vertices.norm(dim=0), torch.ones(CLASSES), atol=1e-5)
    cosines = vertices.T @ vertices
    off_diagonal = cosines[~torch.eye(CLASSES, dtype=torch.bool)]
    assert torch.allclose(
        off_diagonal, torch.full_like(off_diagonal, -1 / (CLASSES - 1)), atol=1e-5
    )
    assert torch.allclose(vertices.sum(dim=1), torch.zeros(DIM), atol=1e-5)


def test_vertices_depend_only_on_the_seed():
    assert torch.equal(simplex_etf(CLASSES, DIM, seed=3), simplex_etf(CLASSES, DIM, seed=3))
    assert not torch.allclose(simplex_etf(CLASSES, DIM, seed=3), simplex_etf(CLASSES, DIM, seed=4))


def test_too_narrow_a_frame_is_a_one_line_error_naming_head():
    with pytest.raises(ConfigError) as caught:
        simplex_etf(CLASSES, CLASSES - 1, seed=0)
    message = str(caught.value)
    assert "'head'" in message and "\n" not in message


def test_projection_only_when_features_are_narrower_than_the_classes():
    wide = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0)
    assert wide.projection is None and list(wide.parameters()) == []
    assert "vertices" in wide.state_dict()

    narrow = ETFHead(feature_dim=4, num_classes=CLASSES, seed=0)
    assert narrow.vertices.shape == (CLASSES, CLASSES)
    parameters = list(narrow.parameters())
    assert parameters and all(p is not narrow.vertices for p in parameters)
    assert narrow.projected(torch.randn(5, 4)).shape == (5, CLASSES)
    assert narrow(torch.randn(5, 4)).shape == (5, CLASSES)
    same = ETFHead(feature_dim=4, num_classes=CLASSES, seed=0)
    assert torch.equal(narrow.projection.weight, same.projection.weight)


def test_logits_are_scaled_cosines_to_the_vertices():
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, scale=16.0)
    logits = head(head.vertices.T * 3.0)  # each vertex, rescaled
    assert torch.allclose(logits.diagonal(), torch.full((CLASSES,), 16.0), atol=1e-4)
    assert torch.equal(logits.argmax(dim=1), torch.arange(CLASSES))


def test_dot_regression_is_half_squared_cosine_gap_for_unit_vectors():
    vertices = simplex_etf(CLASSES, DIM, seed=1)
    features = F.normalize(torch.randn(6, DIM), dim=1)
    targets = torch.tensor([0, 1, 2, 3, 4, 9])
    cosines = (features * vertices.T[targets]).sum(dim=1)
    expected = (0.5 * (cosines - 1) ** 2).mean()
    assert torch.allclose(dot_regression_loss(features, targets, vertices), expected, atol=1e-6)
    assert dot_regression_loss(vertices.T[targets], targets, vertices) < 1e-10


def test_etf_losses_train_the_features_towards_their_vertices():
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0)
    features = torch.randn(8, DIM, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for kind in ("dr", "ce"):
        loss = etf_loss(head, features, targets, kind, num_seen=3)
        (gradient,) = torch.autograd.grad(loss, features)
        assert loss.ndim == 0 and gradient.abs().sum() > 0
    with pytest.raises(ValueError):
        etf_loss(head, features, targets, "mse")


def test_class_means_on_the_vertices_have_the_simplex_cosine():
    vertices = simplex_etf(CLASSES, DIM, seed=2)
    labels = torch.arange(CLASSES).repeat(3)
    features = vertices.T[labels]
    cosine = mean_pairwise_class_mean_cosine(features, labels)
    assert cosine == pytest.approx(-1 / (CLASSES - 1), abs=1e-5)
