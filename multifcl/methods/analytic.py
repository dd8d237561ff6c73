"""Analytic classifier: ridge regression on random ReLU features of the frozen backbone.

RanPAC's head (McDonnell et al., NeurIPS 2023) trained in one pass, as in the analytic
federated (continual) learning line (AFL, Zhuang et al., 2024): a frozen feature f (the
backbone's) goes through a fixed random projection, h = ReLU(f R) with R ~ N(0, 1) of
shape (feature dim, `analytic-projection-dim`) drawn from the run's seed (0: h = f, no
projection). Each client sends, for the current task, the mean of h h^T over its samples
(upper triangle only: the matrix is symmetric) and the mean h of each class with its count.
The server keeps the sums in float64: G = sum h h^T and C = sum h y^T over every sample
merged so far, and classifies by argmax h W with W = (G + `analytic-ridge` I)^-1 C.
Sums do not depend on who holds which sample, so the classifier equals centralized ridge
regression on the union of the data, whatever the partition.

Within a task each round's statistics replace the previous round's (`task-gram`,
`task-samples`, the task's class rows), so more rounds never count a sample twice; at the
end of a task its Gram is added to `gram`. With every client in every round each round gives
the same statistics; with client sampling the task's are those of its last round's clients.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import merge_class_rows
from multifcl.data import InMemoryImages, Task
from multifcl.features import FeatureSplit
from multifcl.methods.base import ClientUpdate, State, UpdateLayout
from multifcl.methods.prototypes import PrototypesMethod

GRAM = "gram"  # sum of h h^T over the finished tasks' samples (packed upper triangle)
TASK_GRAM = "task-gram"  # mean of h h^T over the current task's samples (packed)
TASK_SAMPLES = "task-samples"  # how many samples `task-gram` is the mean of, shape (1,)
CLASS_MEANS = "class-means"  # mean h of each class (rows); times its count: C's column
CLASS_COUNTS = "class-counts"
# A genuine mean Gram meets Cauchy-Schwarz up to float64 rounding of its sums.
GRAM_SLACK = 1e-9


class AnalyticHead(nn.Module):
    """Logits = ReLU(features R) W (or features W without a projection), in float64."""

    def __init__(self, projection: torch.Tensor | None, weights: torch.Tensor) -> None:
        super().__init__()
        self.projection = projection
        self.register_buffer("weights", weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (project(features, self.projection) @ self.weights).float()


class AnalyticMethod(PrototypesMethod):
    name = "analytic"
    runs_asynchronously = False  # not checked asynchronously yet (docs/asynchronous.md)

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        width = config.analytic_projection_dim
        self.projection = random_projection(backbone.feature_dim, width, config.seed)
        self.width = width or backbone.feature_dim

    def initial_state(self) -> State:
        packed = self.width * (self.width + 1) // 2
        return {
            GRAM: np.zeros(packed),
            TASK_GRAM: np.zeros(packed),
            TASK_SAMPLES: np.zeros(1),
            CLASS_MEANS: np.zeros((self.num_classes, self.width)),
            CLASS_COUNTS: np.zeros(self.num_classes, np.float32),
        }

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        features = self._final_features(data, task)
        hidden = project(features.to(self.backbone.device), self._projection_on_device())
        labels = torch.as_tensor(data.labels, device=hidden.device)
        classes = torch.unique(labels)
        means = torch.stack([hidden[labels == c].mean(0) for c in classes])
        counts = torch.stack([(labels == c).sum() for c in classes])
        arrays = {
            TASK_GRAM: pack(hidden.T @ hidden / len(hidden)).cpu().numpy(),
            "class-ids": classes.cpu().numpy().astype(np.int64),
            CLASS_MEANS: means.cpu().numpy(),
            CLASS_COUNTS: counts.cpu().numpy().astype(np.float32),
        }
        return ClientUpdate(arrays, num_examples=len(data))

    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        rows = {CLASS_MEANS: CLASS_MEANS, CLASS_COUNTS: CLASS_COUNTS}
        return UpdateLayout(
            rows=rows, dense=frozenset({TASK_GRAM}), feature_rows=frozenset({CLASS_MEANS})
        )

    def update_value_problem(self, state: State, update: ClientUpdate, task: Task) -> str | None:
        """A mean Gram meets Cauchy-Schwarz (|G_ij| <= sqrt(G_ii G_jj)), and no class's mean
        can exceed what the diagonal allows: count_c x mean_cj^2 <= n x G_jj."""
        gram = unpack(torch.from_numpy(update.arrays[TASK_GRAM].astype(np.float64)))
        problem = gram_problem(TASK_GRAM, gram)
        if problem is not None:
            return problem
        diagonal = gram.diagonal()
        means = torch.from_numpy(update.arrays[CLASS_MEANS].astype(np.float64))
        counts = torch.from_numpy(update.arrays[CLASS_COUNTS].astype(np.float64))
        sums_of_squares = counts[:, None] * means**2
        if (sums_of_squares > update.num_examples * diagonal * (1 + GRAM_SLACK) + GRAM_SLACK).any():
            return f"key {CLASS_MEANS!r}: a class mean larger than {TASK_GRAM!r} allows"
        return None

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """The round's statistics replace the previous round's of this task (robust-merge
        applies to the clients' mean Grams as to the rows)."""
        means, counts = merge_class_rows(
            state[CLASS_MEANS],
            state[CLASS_COUNTS],
            [u.arrays["class-ids"] for u in updates],
            [u.arrays[CLASS_MEANS] for u in updates],
            [u.arrays[CLASS_COUNTS] for u in updates],
            self.merge_rule,
        )
        grams = np.stack([u.arrays[TASK_GRAM].astype(np.float64) for u in updates])
        samples = np.array([u.num_examples for u in updates], np.float64)
        task_gram = self.merge_rule.combine(grams, samples, np.median(grams, axis=0))
        merged = {TASK_GRAM: task_gram, TASK_SAMPLES: np.array([samples.sum()])}
        return {**state, **merged, CLASS_MEANS: means, CLASS_COUNTS: counts}

    def end_task(self, state: State, task: Task) -> State:
        """The task's Gram joins the finished tasks' sum."""
        gram = state[GRAM] + state[TASK_SAMPLES][0] * state[TASK_GRAM]
        cleared = {TASK_GRAM: np.zeros_like(state[TASK_GRAM]), TASK_SAMPLES: np.zeros(1)}
        return {**state, GRAM: gram, **cleared}

    def ridge_weights(self, state: State) -> torch.Tensor:
        """W = (G + lambda I)^-1 C (width x classes, float64) from the merged sums."""
        gram = torch.from_numpy(state[GRAM] + state[TASK_SAMPLES][0] * state[TASK_GRAM])
        gram = unpack(gram) + self.config.analytic_ridge * torch.eye(self.width, dtype=gram.dtype)
        counts = torch.from_numpy(state[CLASS_COUNTS].astype(np.float64))
        class_sums = (torch.from_numpy(state[CLASS_MEANS]) * counts[:, None]).T
        return torch.linalg.solve(gram, class_sums)

    def _head(self, state: State) -> AnalyticHead:
        weights = self.ridge_weights(state).to(self.backbone.device)
        return AnalyticHead(self._projection_on_device(), weights)

    def _projection_on_device(self) -> torch.Tensor | None:
        if self.projection is None:
            return None
        return self.projection.to(self.backbone.device)

    def classifier(self, state: State) -> nn.Module:
        return nn.Sequential(self.backbone, self._head(state))

    def feature_split(self, state: State) -> FeatureSplit:
        """The backbone and the projection are fixed: test features hold for the stream."""
        head = self._head(state)
        return FeatureSplit(self.encoder_fingerprint, self._encode, lambda f: head(f[0]))


def gram_problem(key: str, gram: torch.Tensor) -> str | None:
    """Why `gram` (a mean or sum of outer products x x^T) cannot be one: a negative
    diagonal entry, or an entry breaking Cauchy-Schwarz (|G_ij| <= sqrt(G_ii G_jj)) beyond
    float64 rounding; None for a genuine one."""
    diagonal = gram.diagonal()
    if (diagonal < 0).any():
        return f"key {key!r}: a negative diagonal entry (it holds squares)"
    bound = diagonal.sqrt()
    if (gram.abs() > torch.outer(bound, bound) * (1 + GRAM_SLACK) + GRAM_SLACK).any():
        return f"key {key!r}: not a Gram matrix (an entry breaks Cauchy-Schwarz)"
    return None


def random_projection(feature_dim: int, width: int, seed: int) -> torch.Tensor | None:
    """RanPAC's R ~ N(0, 1) (feature_dim x width, float64) from `seed`; None for width 0."""
    if width == 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(feature_dim, width, generator=generator, dtype=torch.float64)


def project(features: torch.Tensor, projection: torch.Tensor | None) -> torch.Tensor:
    """h = ReLU(f R) in float64, or f itself without a projection."""
    features = features.double()
    return features if projection is None else torch.relu(features @ projection)


def pack(matrix: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric matrix, row by row."""
    rows, columns = torch.triu_indices(*matrix.shape, device=matrix.device)
    return matrix[rows, columns]


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle `pack` gave."""
    width = int((np.sqrt(8 * len(packed) + 1) - 1) / 2)
    rows, columns = torch.triu_indices(width, width, device=packed.device)
    matrix = torch.zeros(width, width, dtype=packed.dtype, device=packed.device)
    matrix[rows, columns] = packed
    matrix[columns, rows] = packed
    return matrix
