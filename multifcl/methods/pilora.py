"""PiLoRA (Guo et al., "PILoRA: Prototype Guided Incremental LoRA for Federated
Class-Incremental Learning", ECCV 2024), written from the paper's description.

What it is here, on MultiFCL's machinery (peft LoRA sets, per-class prototype rows, the run's
optimizer plug-ins), configured as: LoRA (`pilora-rank`) on the backbone's `lora_targets`,
one set per task, all sets active and summed (W = W0 + sum_j B_j A_j), the set of task t
trained in task t only and frozen afterwards; one prototype per class, learnable, compared
with the final feature; no text initialization, one expert, no self-distillation.
Local loss: cross-entropy on the prototype logits over the seen classes
+ `pilora-pull-lambda` x the pull of each feature to its class prototype
+ `pilora-ortho-lambda` x orthogonality of the current LoRA to every earlier task's LoRA.
Server: sample-weighted FedAvg of the current task's LoRA; each class's prototype is the
mean of the clients' rows weighted by count x confidence (`pilora-reweight`).

Where this departs from the paper or reads it (the official code, Ghy0501/PILoRA, was not
consulted: no network here):
- Distance. The paper classifies by the (squared Euclidean) distance between feature and
  learnable prototypes. Here both are L2-normalised first: ||f^ - p^||^2 = 2 - 2 cos(f, p),
  so the logits are the cosine similarity / `temperature` (the shared prototype-classifier
  temperature, default 1/16) and one temperature fits backbones of any feature scale.
  The pull term is the mean of ||f^ - p^_y||^2.
- Orthogonality. Sum over earlier tasks j and wrapped layers of ||A_t A_j^T||_F^2 (A: the
  rank x in-features down-projection; O-LoRA's sum of squared entries); the paper writes a
  norm of A_j^T A_t without fixing which. The default weight 0.5 is O-LoRA's, not PiLoRA's.
- Prototype re-weighting (an interpretation). After local training each client computes, for
  each of its classes, the mean entropy H of its own prediction (its LoRA, its prototypes)
  on its samples of that class and uploads it as a (k, 1) row `prototype-entropy`; the
  server weighs client k's prototype of class c by n_k^c x exp(-H_k^c). With
  `pilora-reweight = false` the weights are the counts alone.
- Prototype start. A class first seen by a client starts at its local class mean; later
  rounds start from the global rows. Old classes' rows take part in the cross-entropy
  but are neither uploaded nor changed on the server after their task.
- Targets. Hugging Face ViT/CLIP: the attention query and value projections (as the paper);
  timm ViTs: the fused qkv projection; EfficientNet-Lite0: the 1x1 expand and project convs
  (a conv's LoRA A is read as rank x (in-channels x kernel)). LoRA alpha = rank (scale 1),
  peft's initialization (A Kaiming-uniform, B zero), so untrained sets are the identity.
- Optimisation: the run's `optimizer`, `lr`, `lr-schedule` and epochs, like every method here;
  A and B are averaged separately (plain FedAvg of parameters).
- `head = "etf"` (not in the paper): the learnable prototypes are replaced by MultiFCL's
  fixed simplex ETF with a trained projection; there is no pull term and no re-weighting.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

from multifcl.adapters import set_name
from multifcl.aggregation import merge_class_rows
from multifcl.config import ExperimentConfig
from multifcl.data import InMemoryImages, Task
from multifcl.heads.cosine_prototypes import cosine_logits
from multifcl.losses.orthogonality import orthogonality_loss
from multifcl.losses.softmax_measures import prediction_entropy
from multifcl.methods.base import ClientUpdate, State
from multifcl.methods.multifcl import COUNTS, MultiFCLMethod, prototype_key

ENTROPY = "prototype-entropy"  # per class: the clients' mean prediction entropy, (classes, 1)
PROTOTYPES = prototype_key(0)


def multifcl_form(config: ExperimentConfig) -> ExperimentConfig:
    """The MultiFCL configuration PiLoRA builds on: per-task LoRA, one trained prototype
    classifier on the final feature, nothing else."""
    return dataclasses.replace(
        config,
        adapter="lora",
        adapter_rank=config.pilora_rank,
        adapter_policy="per-task",
        use_adapters=True,
        use_text_init=False,
        use_experts=True,
        num_experts=1,
        use_self_kd=False,
        task1_schedule="joint",
        prototype_refine="running-mean",
    )


class PiLoRAMethod(MultiFCLMethod):
    name = "pilora"

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(multifcl_form(config), backbone, class_names)
        self.reweight = config.pilora_reweight and self.etf_heads is None
        self._lora_layers = [
            layer for layer in self.adapters.backbone.modules() if isinstance(layer, LoraLayer)
        ]

    def down_projections(self, task_index: int) -> list[torch.Tensor]:
        """The LoRA A matrix of task `task_index`'s set in every wrapped layer, in one order."""
        name = set_name(task_index)
        return [layer.lora_A[name].weight for layer in self._lora_layers]

    def initial_state(self) -> State:
        state = super().initial_state()
        if self.reweight:
            state[ENTROPY] = np.zeros((self.num_classes, 1), np.float32)
        return state

    # --- client ----------------------------------------------------------------------------
    def _loss(self, inputs, target, prototypes, task: Task) -> torch.Tensor:
        """Cross-entropy (or `etf-loss`) + pull to the class prototype + LoRA orthogonality."""
        features = self.expert_features(inputs)  # LoRA trains in every task: inputs are pixels
        loss = super()._loss(features, target, prototypes, task)
        if prototypes is not None and self.config.pilora_pull_lambda:
            final = F.normalize(features[-1], dim=1)
            own = F.normalize(prototypes[-1][target], dim=1)
            loss = loss + self.config.pilora_pull_lambda * (final - own).pow(2).sum(1).mean()
        if task.index and self.config.pilora_ortho_lambda:
            earlier = [self.down_projections(j) for j in range(task.index)]
            ortho = orthogonality_loss(self.down_projections(task.index), earlier)
            loss = loss + self.config.pilora_ortho_lambda * ortho
        return loss

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        update = super().train_client(state, data, task, seed)
        if self.reweight:
            update.arrays[ENTROPY] = self._class_entropy(state, update.arrays, data, task)
        return update

    @torch.no_grad()
    def _class_entropy(self, state: State, arrays: State, data: InMemoryImages, task: Task):
        """(k, 1): per uploaded class, the mean entropy of this client's prediction over the
        seen classes on its samples of the class (trained LoRA, uploaded prototype rows)."""
        classes = torch.from_numpy(arrays["class-ids"])
        prototypes = torch.tensor(state[PROTOTYPES])
        prototypes[classes] = torch.from_numpy(arrays[PROTOTYPES])
        features = self._encode(data.images)[-1].float().cpu()
        seen = task.seen_classes.stop
        logits = cosine_logits(features, prototypes[:seen], self.config.temperature)
        entropy = prediction_entropy(logits)
        labels = torch.as_tensor(data.labels)
        rows = [entropy[labels == c].mean() for c in classes.tolist()]
        return torch.stack(rows).unsqueeze(1).numpy().astype(np.float32)

    # --- server ----------------------------------------------------------------------------
    def update_value_problem(self, state: State, update: ClientUpdate, task: Task) -> str | None:
        """An entropy over the seen classes lies in [0, ln(seen)]; anything else would skew
        (or, negative, overflow) the re-weighting."""
        if ENTROPY not in update.arrays:
            return None
        entropy = update.arrays[ENTROPY].astype(np.float64)
        bound = np.log(task.seen_classes.stop) + 1e-3
        if entropy.size and (entropy.min() < 0 or entropy.max() > bound):
            return (
                f"'{ENTROPY}' must lie in [0, ln {task.seen_classes.stop}], "
                f"got {entropy.min():.3g}..{entropy.max():.3g}"
            )
        return None

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        merged = super().merge(state, updates)  # counts, FedAvg of the current LoRA, rows
        if not self.reweight:
            return merged
        ids = [u.arrays["class-ids"] for u in updates]
        counts = [u.arrays[COUNTS] for u in updates]
        entropies = [u.arrays[ENTROPY] for u in updates]
        confidence = [n * np.exp(-h[:, 0].astype(np.float64)) for n, h in zip(counts, entropies)]
        rows = [u.arrays[PROTOTYPES] for u in updates]
        rule = self.merge_rule
        merged[PROTOTYPES], _ = merge_class_rows(
            state[PROTOTYPES], state[COUNTS], ids, rows, confidence, rule
        )
        merged[ENTROPY], _ = merge_class_rows(
            state[ENTROPY], state[COUNTS], ids, entropies, counts, rule
        )
        return merged
