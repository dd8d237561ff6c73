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

`analytic-ridge = "auto"` chooses lambda per task as RanPAC's code does
(`optimise_ridge_parameter`): among 10^-8 ... 10^8, the one whose ridge fit on 80% of the
task's samples has the least squared error on the other 20%. Federated, each client holds
out the last 20% of its task samples in a seeded shuffle and also sends their mean Gram and
mean h y^T; the fit and held-out sums are the task's sums minus and plus those, so the
choice equals the centralized one on the same held-out samples. W is then solved on every
sample, with the lambda chosen at the task's end (`ridge`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import merge_class_rows
from multifcl.config import AUTO_RIDGE
from multifcl.data import InMemoryImages, Task
from multifcl.features import FeatureSplit
from multifcl.methods.base import ClientUpdate, State, UpdateLayout
from multifcl.methods.prototypes import PrototypesMethod

GRAM = "gram"  # sum of h h^T over the finished tasks' samples (packed upper triangle)
TASK_GRAM = "task-gram"  # mean of h h^T over the current task's samples (packed)
TASK_SAMPLES = "task-samples"  # how many samples `task-gram` is the mean of, shape (1,)
CLASS_MEANS = "class-means"  # mean h of each class (rows); times its count: C's column
CLASS_COUNTS = "class-counts"
# With analytic-ridge = "auto": the task's held-out samples, and lambda chosen so far
HELD_GRAM = "task-held-gram"  # mean of h h^T over the held-out samples (packed)
HELD_CROSS = "task-held-cross"  # mean of h y^T over them (width x classes, y one-hot)
HELD_SAMPLES = "task-held-samples"  # how many, shape (1,)
RIDGE = "ridge"  # the lambda chosen at the last task's end, shape (1,)
RIDGE_CANDIDATES = 10.0 ** np.arange(-8, 9)  # RanPAC's list
FIT_SHARE = 0.8  # RanPAC fits on the first 80% of a task's (shuffled) samples
INITIAL_RIDGE = 1.0  # until a task has held-out samples
# A genuine mean Gram meets Cauchy-Schwarz up to float64 rounding of its sums.
GRAM_SLACK = 1e-9
logger = logging.getLogger(__name__)


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
        self.selects_ridge = config.analytic_ridge == AUTO_RIDGE

    def initial_state(self) -> State:
        packed = self.width * (self.width + 1) // 2
        state = {
            GRAM: np.zeros(packed),
            TASK_GRAM: np.zeros(packed),
            TASK_SAMPLES: np.zeros(1),
            CLASS_MEANS: np.zeros((self.num_classes, self.width)),
            CLASS_COUNTS: np.zeros(self.num_classes, np.float32),
        }
        if self.selects_ridge:
            state |= self._cleared_held_out(state)
            state[RIDGE] = np.array([INITIAL_RIDGE])
        return state

    def _cleared_held_out(self, state: State) -> State:
        return {
            HELD_GRAM: np.zeros_like(state[TASK_GRAM]),
            HELD_CROSS: np.zeros((self.width, self.num_classes)),
            HELD_SAMPLES: np.zeros(1),
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
        if self.selects_ridge:
            arrays |= self._held_out_statistics(hidden, labels, seed)
        return ClientUpdate(arrays, num_examples=len(data))

    def _held_out_statistics(self, hidden: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
        """The mean h h^T and h y^T of the samples this client holds out (see above)."""
        held = held_out_samples(len(hidden), seed).to(hidden.device)
        count = len(held)
        targets = torch.nn.functional.one_hot(labels[held], self.num_classes).double()
        gram = hidden[held].T @ hidden[held] / max(count, 1)
        cross = hidden[held].T @ targets / max(count, 1)
        return {
            HELD_GRAM: pack(gram).cpu().numpy(),
            HELD_CROSS: cross.cpu().numpy(),
            HELD_SAMPLES: np.array([float(count)]),
        }

    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        rows = {CLASS_MEANS: CLASS_MEANS, CLASS_COUNTS: CLASS_COUNTS}
        dense = (
            {TASK_GRAM, HELD_GRAM, HELD_CROSS, HELD_SAMPLES} if self.selects_ridge else {TASK_GRAM}
        )
        return UpdateLayout(
            rows=rows, dense=frozenset(dense), feature_rows=frozenset({CLASS_MEANS})
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
        return self._held_out_problem(update, diagonal) if self.selects_ridge else None

    def _held_out_problem(self, update: ClientUpdate, task_diagonal: torch.Tensor) -> str | None:
        """The held-out count `held_out_samples` gives for the client's samples; a genuine
        mean Gram whose sums of squares fit within the task's; a mean h y^T within
        Cauchy-Schwarz of it (|mean h_j y_c| <= sqrt(G_jj))."""
        count, samples = float(update.arrays[HELD_SAMPLES][0]), update.num_examples
        expected = samples - int(samples * FIT_SHARE)  # held_out_samples' rule
        if count != expected:
            return (
                f"key {HELD_SAMPLES!r}: {count} is not a count of this client's samples held "
                f"out ({expected} of {samples})"
            )
        gram = unpack(torch.from_numpy(update.arrays[HELD_GRAM].astype(np.float64)))
        problem = gram_problem(HELD_GRAM, gram)
        if problem is not None:
            return problem
        held_squares = count * gram.diagonal()  # a subset's sums of squares: within the task's
        if (held_squares > samples * task_diagonal * (1 + GRAM_SLACK) + GRAM_SLACK).any():
            return f"key {HELD_GRAM!r}: larger than {TASK_GRAM!r} allows for a subset"
        cross = torch.from_numpy(update.arrays[HELD_CROSS].astype(np.float64)).abs()
        bound = gram.diagonal().sqrt()[:, None] * (1 + GRAM_SLACK) + GRAM_SLACK
        if (cross > bound).any():
            return f"key {HELD_CROSS!r}: an entry larger than {HELD_GRAM!r} allows"
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
        if self.selects_ridge:
            held = np.array([u.arrays[HELD_SAMPLES][0] for u in updates], np.float64)
            for key in (HELD_GRAM, HELD_CROSS):
                sent = np.stack([u.arrays[key].astype(np.float64) for u in updates])
                merged[key] = (
                    self.merge_rule.combine(sent, held, np.median(sent, axis=0))
                    if held.sum() > 0
                    else np.zeros_like(sent[0])
                )
            merged[HELD_SAMPLES] = np.array([held.sum()])
        return {**state, **merged, CLASS_MEANS: means, CLASS_COUNTS: counts}

    def end_task(self, state: State, task: Task) -> State:
        """The task's Gram joins the finished tasks' sum; with "auto", the task's held-out
        samples choose lambda."""
        gram = state[GRAM] + state[TASK_SAMPLES][0] * state[TASK_GRAM]
        cleared = {TASK_GRAM: np.zeros_like(state[TASK_GRAM]), TASK_SAMPLES: np.zeros(1)}
        if self.selects_ridge:
            ridge = self.ridge(state, task)
            cleared |= self._cleared_held_out(state) | {RIDGE: np.array([ridge])}
        return {**state, GRAM: gram, **cleared}

    def ridge(self, state: State, task: Task | None = None) -> float:
        """lambda: `analytic-ridge`, or with "auto" the one the task's held-out samples
        choose (the last choice when `task` is None or nothing was held out)."""
        if not self.selects_ridge:
            return self.config.analytic_ridge
        if task is None or state[HELD_SAMPLES][0] == 0:
            return float(state[RIDGE][0])
        losses = self.held_out_errors(state, task)
        ridge = float(RIDGE_CANDIDATES[int(np.argmin(losses))])
        logger.info(
            "analytic: task %d: lambda %g chosen on %d held-out samples (squared error %.6g)",
            task.index + 1,
            ridge,
            int(state[HELD_SAMPLES][0]),
            losses.min(),
        )
        return ridge

    def held_out_errors(self, state: State, task: Task) -> np.ndarray:
        """RanPAC's validation loss per candidate lambda: the mean squared error, over the
        held-out samples and all classes, of the ridge fit on the task's other samples."""
        held = state[HELD_SAMPLES][0]
        held_gram = held * unpack(torch.from_numpy(state[HELD_GRAM]))
        held_cross = held * torch.from_numpy(state[HELD_CROSS])
        task_gram = state[TASK_SAMPLES][0] * unpack(torch.from_numpy(state[TASK_GRAM]))
        task_cross = torch.zeros_like(held_cross)
        classes = list(task.classes)
        task_cross[:, classes] = class_sums(state)[:, classes]
        fit_gram, fit_cross = task_gram - held_gram, task_cross - held_cross
        identity = torch.eye(self.width, dtype=fit_gram.dtype)
        errors = []
        for ridge in RIDGE_CANDIDATES:
            weights = torch.linalg.solve(fit_gram + ridge * identity, fit_cross)
            # sum over held-out samples of |y - h W|^2, from their sums alone
            squared = (
                held - 2 * (weights * held_cross).sum() + (weights * (held_gram @ weights)).sum()
            )
            errors.append(float(squared) / (held * self.num_classes))
        return np.array(errors)

    def ridge_weights(self, state: State) -> torch.Tensor:
        """W = (G + lambda I)^-1 C (width x classes, float64) from the merged sums."""
        gram = torch.from_numpy(state[GRAM] + state[TASK_SAMPLES][0] * state[TASK_GRAM])
        gram = unpack(gram) + self.ridge(state) * torch.eye(self.width, dtype=gram.dtype)
        return torch.linalg.solve(gram, class_sums(state))

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


def class_sums(state: State) -> torch.Tensor:
    """C = sum h y^T (width x classes, float64) from the merged class means and counts."""
    counts = torch.from_numpy(state[CLASS_COUNTS].astype(np.float64))
    return (torch.from_numpy(state[CLASS_MEANS]) * counts[:, None]).T


def held_out_samples(count: int, seed: int) -> torch.Tensor:
    """The indices a client holds out of its `count` task samples: RanPAC's last 20% after
    a shuffle drawn from `seed`."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[int(count * FIT_SHARE) :]


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
