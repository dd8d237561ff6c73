"""Multi-modal initialization of new class prototypes (MultiFCL 1b).

A new class's query (its first local image feature projected into text space when image
and text are aligned, else the text feature of its name) is compared by cosine with the
text features of the old class names. The `topk` nearest old classes are the keys of a
cross-attention whose values are their prototypes; with topk = 1 (the paper) the result is
the nearest old class's prototype. Projections are the identity (the paper gives none) and
the attention temperature is the experts' temperature. The init is then refined with the
class's local features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_old_classes(
    query: torch.Tensor, old_text: torch.Tensor, topk: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the `topk` most similar old classes, their attention weights)."""
    similarity = F.normalize(old_text, dim=1) @ F.normalize(query, dim=0)
    scores, indices = similarity.topk(min(topk, len(old_text)))
    return indices, torch.softmax(scores / temperature, dim=0)


def attend_to_old_prototypes(
    indices: torch.Tensor, weights: torch.Tensor, old_prototypes: torch.Tensor
) -> torch.Tensor:
    """Attention output: the weighted sum of the chosen old prototypes (values)."""
    return weights.to(old_prototypes.dtype) @ old_prototypes[indices]


def refine_prototype(init: torch.Tensor | None, features: torch.Tensor, rule: str) -> torch.Tensor:
    """The prototype a class starts local training from: its init refined once with the
    class's features (in local order); without an init, the class mean.

    `per-epoch`: the init itself (the refinement runs in every local epoch, see
    `halve_towards`). `running-mean`: the mean of the init (as one pseudo-sample) and the
    features. `halving`: p_j = (p_{j-1} + f_j) / 2 over the samples, once.
    """
    if init is None:
        return features.mean(0)
    if rule == "per-epoch":
        return init
    if rule == "running-mean":
        return (init + features.sum(0)) / (len(features) + 1)
    prototype = init
    for feature in features:
        prototype = (prototype + feature) / 2
    return prototype


def halve_towards(prototype: torch.Tensor, class_mean: torch.Tensor) -> torch.Tensor:
    """One per-epoch refinement (Algorithm 1, line 24): p(j) = (p(j-1) + f'(x_j)) / 2, with
    the epoch's class feature f'(x_j) read as the class's mean local feature."""
    return (prototype + class_mean) / 2
