"""Orthogonality between a task's LoRA and the earlier tasks' LoRA (O-LoRA; PiLoRA).

Each wrapped layer's LoRA down-projection A (rank x in-features; a conv's kernel is flattened
into in-features) spans the input directions that LoRA reads. The current task's A_t is
pushed away from every earlier A_j of the same layer by the entries of A_t A_j^T
(rank x rank), which are all zero exactly when their row spaces are orthogonal. `power` 2
sums their squares (O-LoRA's squared Frobenius norm: the gradient shrinks near
orthogonality, so large weights or learning rates do not make A_t oscillate around it);
`power` 1 sums their absolute values (PiLoRA's official code, update.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def orthogonality_loss(
    current: Sequence[torch.Tensor], earlier: Sequence[Sequence[torch.Tensor]], power: int = 2
) -> torch.Tensor:
    """Sum over earlier tasks j and layers l of the entries of A_t[l] A_j[l]^T, each raised
    to `power` in absolute value (2: ||A_t A_j^T||_F^2; 1: the entries' absolute sum).

    `current[l]` is the current task's down-projection of layer l; `earlier[j][l]` the one of
    earlier task j (detached). Zero when there is no earlier task.
    """
    terms = []
    for old in earlier:
        if len(old) != len(current):
            raise ValueError(f"{len(current)} current LoRA layers but {len(old)} earlier ones")
        for new_factor, old_factor in zip(current, old):
            product = new_factor.flatten(1) @ old_factor.detach().flatten(1).T
            terms.append(product.abs().pow(power).sum())
    return torch.stack(terms).sum() if terms else current[0].new_zeros(())
