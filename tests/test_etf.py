"""The simplex ETF head: the frame's geometry, determinism, the projection and the losses."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


@pytest.mark.parametrize(
    ("feature_map", "layers", "width"),
    [
        ("batchnorm-linear", (nn.BatchNorm1d, nn.Linear), CLASSES),
        ("linear", (nn.Linear,), CLASSES),
        ("batchnorm", (nn.BatchNorm1d,), DIM),
    ],
)
def test_every_head_maps_features_with_a_trained_signed_map(feature_map, layers, width):
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, feature_map=feature_map)
    modules = list(head.projection) if len(layers) > 1 else [head.projection]
    assert [type(m) for m in modules] == [t for t in layers] or all(
        isinstance(m, t) for m, t in zip(modules, layers, strict=True)
    )
    assert head.vertices.shape == (width, CLASSES)
    assert "vertices" in dict(head.named_buffers())  # fixed: neither trained nor sent
    assert "vertices" not in head.state_dict() and "vertices" not in dict(head.named_parameters())
    assert head.projected(torch.rand(5, DIM)).shape == (5, width)
    same = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, feature_map=feature_map)
    assert all(torch.equal(a, b) for a, b in zip(head.parameters(), same.parameters()))


def test_narrow_features_are_mapped_to_the_classes_by_every_map():
    for feature_map in ("batchnorm-linear", "linear", "batchnorm"):
        narrow = ETFHead(feature_dim=4, num_classes=CLASSES, seed=0, feature_map=feature_map)
        assert narrow.vertices.shape == (CLASSES, CLASSES)
        assert narrow(torch.randn(5, 4)).shape == (5, CLASSES)


def test_an_unknown_map_is_a_one_line_error_naming_etf_map():
    with pytest.raises(ConfigError, match="'etf-map'") as caught:
        ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, feature_map="relu")
    assert "\n" not in str(caught.value)


def non_negative_class_features(per_class: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU features of CLASSES classes sharing a large positive mean, like pooled ReLU6."""
    generator = torch.Generator().manual_seed(0)
    shared = torch.rand(DIM, generator=generator) + 1.0
    centres = shared + 0.5 * torch.randn(CLASSES, DIM, generator=generator)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    noise = 0.1 * torch.randn(len(labels), DIM, generator=generator)
    return (centres[labels] + noise).clamp_min(0.0), labels


def test_non_negative_features_cannot_point_at_the_vertices_without_a_map():
    features, labels = non_negative_class_features()
    vertices = simplex_etf(CLASSES, DIM, seed=0)
    cosines = F.normalize(features, dim=1) @ vertices  # without a map: at most ~0.75
    assert cosines[torch.arange(len(labels)), labels].max() < 0.8


def train_map(feature_map: str, steps: int = 100) -> tuple[float, float]:
    """Train only the head's map on fixed non-negative features with the DR loss; returns
    the mapped class means' mean pairwise cosine and the loss, in eval mode."""
    features, labels = non_negative_class_features()
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, feature_map=feature_map)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        etf_loss(head, features, labels, "dr").backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        cosine = mean_pairwise_class_mean_cosine(head.projected(features), labels)
        return cosine, float(etf_loss(head, features, labels, "dr"))


@pytest.mark.parametrize("feature_map", ["batchnorm-linear", "linear"])
def test_trained_maps_bring_non_negative_class_means_to_the_simplex(feature_map):
    cosine, loss = train_map(feature_map)
    assert cosine == pytest.approx(-1 / (CLASSES - 1), abs=0.01) and loss < 0.01


def test_a_batchnorm_alone_centres_but_cannot_rotate_fixed_features():
    cosine, loss = train_map("batchnorm")
    assert cosine < 0 and loss > 0.1  # Yang et al. train the encoder behind it


def test_a_batchnorm_map_takes_a_single_sample_batch_in_training_mode():
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0).train()
    assert torch.isfinite(head(torch.rand(1, DIM))).all()


def test_logits_are_scaled_cosines_to_the_vertices():
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0, scale=16.0).eval()
    features = torch.rand(6, DIM)
    cosines = F.cosine_similarity(head.projected(features)[:, :, None], head.vertices[None], dim=1)
    torch.testing.assert_close(head(features), 16.0 * cosines)
    head.projection = nn.Identity()  # features already on the vertices, rescaled
    logits = head(head.vertices.T * 3.0)
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


def official_given_ew_loss(features, targets, vertices):
    """Yang et al.'s reg_dot_loss with GivenEw, written out from the paper's code: each class
    column scaled by sqrt(gamma / n_c) of the batch, divided by the feature norm only."""
    classes, counts = torch.unique(targets, return_counts=True)
    gamma = len(targets) / len(classes)
    weights = torch.ones(vertices.shape[1])
    weights[classes] = torch.sqrt(gamma / counts.float())
    target = (weights * vertices)[:, targets].T
    dot = (features * target).sum(dim=1)
    h_length = features.norm(dim=1).clamp(min=1e-8)
    m_length = target.norm(dim=1)
    return 0.5 * torch.mean((dot - m_length * h_length) ** 2 / h_length)


def test_balanced_dot_regression_is_the_official_given_ew_loss():
    vertices = simplex_etf(CLASSES, DIM, seed=1)
    features = F.normalize(torch.randn(9, DIM), dim=1)
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 4])  # a skewed non-IID batch
    balanced = dot_regression_loss(features, targets, vertices, balanced=True)
    official = official_given_ew_loss(features, targets, vertices)
    assert balanced == pytest.approx(float(official), rel=1e-6)
    assert balanced != pytest.approx(float(dot_regression_loss(features, targets, vertices)))
    # every class present counts equally: the mean over classes of the per-class mean loss
    per_sample = 0.5 * ((features * vertices.T[targets]).sum(dim=1) - 1) ** 2
    per_class = [per_sample[targets == c].mean() for c in torch.unique(targets)]
    assert balanced == pytest.approx(float(torch.stack(per_class).mean()), rel=1e-5)


@torch.no_grad()
def test_etf_loss_weights_by_class_frequency_unless_switched_off():
    head = ETFHead(feature_dim=DIM, num_classes=CLASSES, seed=0)
    features, targets = torch.rand(9, DIM), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 4])
    projected = F.normalize(head.projected(features), dim=1)
    losses = {
        balanced: float(dot_regression_loss(projected, targets, head.vertices, balanced))
        for balanced in (True, False)
    }
    assert losses[True] != pytest.approx(losses[False])
    for balanced, expected in losses.items():
        loss = etf_loss(head, features, targets, "dr", balanced=balanced)
        assert float(loss) == pytest.approx(expected)
    assert float(etf_loss(head, features, targets, "dr")) == pytest.approx(losses[True])


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
