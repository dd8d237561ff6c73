"""Linear centred kernel alignment (Kornblith et al., ICML 2019).

CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred features of the same
n samples. It is 1 when Y is an orthogonal transform or an isotropic scaling of X, and it
does not depend on the feature widths matching.
"""

from __future__ import annotations

import numpy as np
import torch

Features = np.ndarray | torch.Tensor


def as_float64(features: Features) -> np.ndarray:
    """A tensor or array as a float64 numpy array (on the CPU)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)


def centred(features: Features) -> np.ndarray:
    """The features as float64 (n x d) with every column's mean removed."""
    array = as_float64(features)
    if array.ndim != 2:
        raise ValueError(f"features must be n x d, got shape {array.shape}")
    return array - array.mean(axis=0, keepdims=True)


def linear_cka(x: Features, y: Features) -> float:
    """Linear CKA between two representations of the same samples (rows); NaN if one is
    constant."""
    x, y = centred(x), centred(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples: {x.shape[0]} rows against {y.shape[0]}")
    if x.shape[1] + y.shape[1] > 2 * x.shape[0]:  # wide features: n x n Gram matrices
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = float(np.sum(gram_x * gram_y))
        norms = np.linalg.norm(gram_x) * np.linalg.norm(gram_y)
    else:
        cross = float(np.linalg.norm(y.T @ x) ** 2)
        norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return cross / norms if norms > 0 else float("nan")


def column_subset_cka(covariance: np.ndarray, columns: np.ndarray) -> float:
    """CKA between centred X and X[:, columns], from covariance = X^T X (of centred X).

    ||X_S^T X|| and ||X_S^T X_S|| are slices of X^T X, so many subsets cost one product.
    """
    cross = float(np.linalg.norm(covariance[columns]) ** 2)
    norms = np.linalg.norm(covariance[np.ix_(columns, columns)]) * np.linalg.norm(covariance)
    return cross / norms if norms > 0 else float("nan")
