"""Neural-collapse measures of features with class labels (Papyan et al., PNAS 2020).

NC1 = tr(Sigma_W Sigma_B^+) / C: within-class variability relative to between-class. The
ETF deviation compares the cosine Gram of the centred class means with the simplex ETF's
Gram (1 on the diagonal, -1/(C-1) elsewhere). The global mean is the mean of the class
means, so unequal class sizes do not tilt it.
"""

from __future__ import annotations

import numpy as np

from multifcl.analysis.cka import Features, as_float64

# singular values of the centred class means below this fraction of the largest are treated
# as zero: float32 features cannot resolve between-class directions finer than that
NC1_RTOL = 1e-6


def class_means(features: Features, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes present, their mean feature rows)."""
    features, labels = as_float64(features), np.asarray(labels)
    classes = np.unique(labels)
    return classes, np.stack([features[labels == c].mean(axis=0) for c in classes])


def nc1(features: Features, labels: np.ndarray, rtol: float = NC1_RTOL) -> float:
    """tr(Sigma_W Sigma_B^+) / C; 0 when every sample sits on its class mean.

    Sigma_B^+ is the pseudo-inverse on the between-class span only: at most C-1 directions
    (centring the class means always leaves one null direction, whose rounding-sized
    singular value a plain pseudo-inverse would invert) and only those whose singular value
    is at least `rtol` times the largest. So a constant added to every feature changes
    nothing, and rank-deficient class means give a finite value.
    """
    features, labels = as_float64(features), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"features must be n x d with one label per row, got {features.shape} and "
            f"{len(labels)} labels"
        )
    if len(np.unique(labels)) < 2 or not np.isfinite(features).all():
        return float("nan")
    features = features - features.mean(axis=0)  # shift-free before any class mean
    classes, means = class_means(features, labels)
    within = features - means[np.searchsorted(classes, labels)]  # D: n x d
    between = means - means.mean(axis=0)  # B: C x d, Sigma_B = B^T B / C
    # Sigma_W = D^T D / n and (B^T B)^+ = B^+ B^+^T, so the trace is ||D B^+||^2 C / n, with
    # B^+ = V_k S_k^-1 U_k^T from the SVD truncated to the between-class span (k directions).
    _, singular, right = np.linalg.svd(between, full_matrices=False)
    if singular[0] == 0.0:
        return float("nan")  # every class has the same mean: no between-class span
    kept = min(len(classes) - 1, int(np.sum(singular >= rtol * singular[0])))
    coordinates = within @ right[:kept].T / singular[:kept]  # D V_k S_k^-1 (U_k is orthonormal)
    return float(np.sum(coordinates**2) / len(features))


def simplex_gram(num_classes: int) -> np.ndarray:
    """The cosine Gram of a simplex ETF: 1 on the diagonal, -1/(C-1) elsewhere."""
    off = -1.0 / (num_classes - 1)
    return np.full((num_classes, num_classes), off) + (1.0 - off) * np.eye(num_classes)


def etf_gram_deviation(means: Features) -> float:
    """Mean absolute deviation (off-diagonal) of the centred class means' cosine Gram from
    the simplex ETF's Gram; 0 for an ETF."""
    means = as_float64(means)
    if len(means) < 2:
        return float("nan")
    centred = means - means.mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    deviation = np.abs(unit @ unit.T - simplex_gram(len(means)))
    return float(deviation[~np.eye(len(means), dtype=bool)].mean())


def vertex_angles(means: Features, vertices: Features) -> np.ndarray:
    """Degrees between each class mean (row) and its ETF vertex (row), as the head compares
    them: uncentred, by cosine."""
    means, vertices = as_float64(means), as_float64(vertices)
    cosine = np.sum(means * vertices, axis=1) / np.maximum(
        np.linalg.norm(means, axis=1) * np.linalg.norm(vertices, axis=1), 1e-12
    )
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
