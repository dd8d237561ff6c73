"""Diffused redundancy (Nanda et al., 2023): how much of a representation's usefulness
survives in random subsets of its dimensions.

For each fraction of the feature width, several random subsets of dimensions are drawn; on
each, the cosine prototype classifier is evaluated with features and prototypes restricted to
the subset, and the subset's CKA to the full representation is measured. A flat curve means
the information is spread over many dimensions, so prototype messages could be shortened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multifcl.analysis.cka import Features, as_float64, centred, column_subset_cka

DEFAULT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


@dataclass
class RedundancyPoint:
    """One fraction of the width: mean and spread over the draws."""

    fraction: float
    dims: int
    accuracy: float  # percent, cosine prototype classifier on the subset
    accuracy_std: float
    cka: float  # linear CKA between the subset and the full representation
    cka_std: float


def subset_accuracy(
    features: np.ndarray, labels: np.ndarray, prototypes: np.ndarray, dims: np.ndarray
) -> float:
    """Accuracy (percent) of cos(feature[dims], prototype[dims]) with rows of `prototypes`
    indexed by label."""
    x, p = features[:, dims], prototypes[:, dims]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return 100.0 * float(np.mean((x @ p.T).argmax(axis=1) == labels))


def diffused_redundancy(
    features: Features,
    labels: np.ndarray,
    prototypes: Features,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    draws: int = 5,
    seed: int = 0,
) -> list[RedundancyPoint]:
    """The redundancy curve of `features` (n x d) with class `prototypes` (classes x d)."""
    features, prototypes = as_float64(features), as_float64(prototypes)
    labels = np.asarray(labels)
    width = features.shape[1]
    x = centred(features)
    covariance = x.T @ x
    generator = np.random.default_rng(seed)
    curve = []
    for fraction in fractions:
        size = max(1, round(fraction * width))
        accuracies, alignments = [], []
        for _ in range(draws):
            dims = np.sort(generator.choice(width, size=size, replace=False))
            accuracies.append(subset_accuracy(features, labels, prototypes, dims))
            alignments.append(column_subset_cka(covariance, dims))
        curve.append(
            RedundancyPoint(
                fraction,
                size,
                float(np.mean(accuracies)),
                float(np.std(accuracies)),
                float(np.mean(alignments)),
                float(np.std(alignments)),
            )
        )
    return curve
