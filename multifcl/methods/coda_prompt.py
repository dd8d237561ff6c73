"""Fed-CODA-Prompt (Smith et al., CVPR 2023) with FedAvg of components, keys, attention
vectors and head.

Each of the first `coda-prompt-layers` blocks has `coda-pool-size` prompt components
(`coda-prompt-length` x d), each with a key and an attention vector (query-wide). For a
query q (the frozen CLS feature), component k's weight is the cosine between q * A_k
(elementwise) and K_k; the layer's prompt is the weighted sum of its components. Its first
half are extra attention keys, its second half extra values of that block (prefix-tuning).
The head reads the prompted CLS feature.

Task t owns components [t x per_task, (t+1) x per_task), per_task = pool // num-tasks.
While a client trains task t it uses the components up to its own, those of earlier tasks
detached (their gradient is zero) and restored after training (no optimizer may move them).
Components of later tasks are zero until their task starts, so evaluation may sum over the
whole pool: a zero key and attention vector weigh nothing. Each task's components are set
when the task starts (the server, at the previous task's end), to random orthonormal rows
orthogonal to the earlier tasks' rows (the official code's Gram-Schmidt re-initialization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones import Backbone
from multifcl.data import InMemoryImages, Task
from multifcl.errors import ConfigError
from multifcl.methods.base import ClientUpdate, State
from multifcl.methods.prompting import PromptMethod, PromptModule

COMPONENT_ARRAYS = ("keys", "attention", "components")  # every array with a pool axis (1)


class ComponentPool(PromptModule):
    """Per layer: `pool_size` components (`length` x `dim`), keys and attention vectors."""

    def __init__(
        self, layers: int, pool_size: int, per_task: int, length: int, dim: int, key_dim: int
    ) -> None:
        super().__init__()
        self.per_task = per_task
        self.keys = nn.Parameter(torch.zeros(layers, pool_size, key_dim))
        self.attention = nn.Parameter(torch.zeros(layers, pool_size, key_dim))
        self.components = nn.Parameter(torch.zeros(layers, pool_size, length, dim))

    def task_rows(self, task_index: int) -> tuple[int, int]:
        """(first, end) of the components task `task_index` owns."""
        return task_index * self.per_task, (task_index + 1) * self.per_task

    def compose(self, query: torch.Tensor) -> torch.Tensor:
        """N x layers x length x dim: each layer's prompt for each query."""
        if self.training_task is None:
            frozen, end = 0, self.keys.shape[1]
        else:
            frozen, end = self.task_rows(self.training_task.index)
        keys, attention, components = (
            torch.cat([array[:, :frozen].detach(), array[:, frozen:end]], dim=1)
            for array in (self.keys, self.attention, self.components)
        )
        attended = F.normalize(query[:, None, None, :] * attention[None], dim=-1)
        weights = torch.einsum("nlkd,lkd->nlk", attended, F.normalize(keys, dim=-1))
        return torch.einsum("nlk,lkpd->nlpd", weights, components)

    def features(
        self, backbone: Backbone, pixels: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = self.compose(query)
        half = prompts.shape[2] // 2
        prefixes = {
            layer: (prompts[:, layer, :half], prompts[:, layer, half:])
            for layer in range(prompts.shape[1])
        }
        with backbone.attention_prefixes(prefixes):
            features = backbone(pixels)
        return features, features.new_zeros(())

    @torch.no_grad()
    def start_task(self, task_index: int, seed: int) -> None:
        """Set the components of task `task_index` to random orthonormal rows, orthogonal
        to the earlier tasks' rows while the row width leaves room."""
        first, end = self.task_rows(task_index)
        generator = torch.Generator().manual_seed(seed)
        for array in (self.keys, self.attention, self.components):
            for layer in array:
                rows = layer.flatten(1)
                fresh = orthonormal_rows(rows[:first].double().cpu(), end - first, generator)
                rows[first:end] = fresh.to(rows)


def orthonormal_rows(earlier: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random orthonormal rows of `earlier`'s width, orthogonal to `earlier`'s rows
    when count + len(earlier) fit in that width (else orthonormal among themselves)."""
    width = earlier.shape[1]
    fresh = torch.randn(count, width, generator=generator, dtype=torch.float64)
    if len(earlier) and len(earlier) + count <= width:
        basis, _ = torch.linalg.qr(earlier.T)  # width x len(earlier), orthonormal columns
        fresh = fresh - (fresh @ basis) @ basis.T
    if count > width:
        return F.normalize(fresh, dim=1)
    orthonormal, _ = torch.linalg.qr(fresh.T)
    return orthonormal.T


class CodaPromptMethod(PromptMethod):
    name = "coda-prompt"

    def build_prompts(self) -> ComponentPool:
        config, backbone = self.config, self.backbone
        if not backbone.supports_attention_prefixes:
            raise ConfigError(
                f"run config keys 'method' and 'backbone': method {self.name!r} prefixes "
                f"attention keys and values, which backbone {backbone.name!r} does not take "
                "(use a Hugging Face ViT or CLIP backbone)"
            )
        pool = ComponentPool(
            min(config.coda_prompt_layers, backbone.num_blocks),
            config.coda_pool_size,
            config.coda_pool_size // config.num_tasks,
            config.coda_prompt_length,
            backbone.block_dims[0],
            backbone.feature_dim,
        )
        pool.start_task(0, self._task_seed(0))
        return pool

    def _task_seed(self, task_index: int) -> int:
        return self.config.seed * 1_000_003 + task_index

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        """The trained rows are the task's own; every other row leaves as it came."""
        update = super().train_client(state, data, task, seed)
        first, end = self.model.prompts.task_rows(task.index)
        for name in COMPONENT_ARRAYS:
            key = f"prompts.{name}"
            trained = update.arrays[key]
            update.arrays[key] = state[key].copy()
            update.arrays[key][:, first:end] = trained[:, first:end]
        return update

    def end_task(self, state: State, task: Task) -> State:
        """The next task's components start orthogonal to the finished tasks' ones."""
        if task.index + 1 >= self.config.num_tasks:
            return state
        self._load(state)
        self.model.prompts.start_task(task.index + 1, self._task_seed(task.index + 1))
        return {**state, **self._current_state()}
