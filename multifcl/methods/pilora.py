"""PiLoRA (Guo et al., "PILoRA: Prototype Guided Incremental LoRA for Federated
Class-Incremental Learning", ECCV 2024), following its official code (github.com/Ghy0501/PILoRA,
folder PILoRA-cifar; file:line references below are to that folder).

Model. Rank-`pilora-rank` LoRA (scale 1) on the attention query and value projections of the
first block only (VLT.py:15-57, federated_main.py:83-87: r=4, lora_layer=[0]), one set per
task, A Kaiming-uniform and B zero (VLT.py:121-128). Hugging Face ViT/CLIP: block 0's query
and value projections; timm ViTs: block 0's fused qkv projection (the official code adds
LoRA to the q and v slices only; peft wraps the whole layer, so k is adapted too);
EfficientNet-Lite0: the 1x1 convolutions of its first MBConv block (its project conv: that
block has no expand conv). One learnable prototype per class, 0.1 x randn at the start
(VLT.py:78-79), compared with the final feature (the pre-logits feature) by the distance
d(f, c) = sqrt(||f - c||^2 / dim) (VLT.py:242-252); the logits are -d (CPN.py:26-36).

Client, task t (update.py:37-100). Only the current task's data; the local model is
W + B_t A_t (set t alone is active: VITLORA.py:133, VLT.py:47-57). Trained: set t and the
prototypes of the task's classes (VLT.py:145-151); every other prototype takes part in the
cross-entropy over all classes but stays fixed. Loss = cross-entropy on -d over all classes
+ `pilora-pull-lambda` (0.001) x the mean distance to the own class's prototype (CPN.py:10-16,
35) + `pilora-l1-lambda` (0.01) x ||A_t||_1 summed over the wrapped layers (update.py:65-76)
+ from task 2 on `pilora-ortho-lambda` (0.5) x sum over earlier tasks j of the absolute
entries of A_j A_t^T (update.py:77-85). Adam (L2 weight decay `pilora-weight-decay`, 1e-5)
with two rates, `pilora-prototype-lr` (2e-3) and `pilora-lora-lr` (1e-5) (update.py:40-53,
train_q.sh), a fresh optimizer every round; the rates follow a cosine over the task's rounds,
constant within a round, restarted every task, and round 2 repeats round 1's rate
(VITLORA.py:151-204: the rate is recomputed after each round from its 0-based index).
The client also uploads, per task class, the mean of its training features of that class
(all local epochs, update.py:90-99).

Server (utils.py:126-224). Set t: sample-weighted FedAvg (A and B separately). Prototypes of
the task's classes: every client sends all of them (each trained them, if only as negatives);
class c's prototype is the sum of the clients' prototypes weighted by a softmax over clients
(temperature 0.2) of the min-max normalised inverse of the summed Euclidean distance from the
client's prototype to the mean features of c of the clients that hold c (uniform when none
does). With `pilora-reweight = false` the weights are the clients' counts of c.
The evaluated (global) model is W + (B_0 + B_t)(A_0 + A_t) after task t >= 1 and
W + B_0 A_0 after task 0 (utils.py:178-224), with the merged prototypes.

Where this still differs from the official code:
- The official global_server writes (B_0 + B_t)(A_0 + A_t) only when a parameter name of
  the one-set global model contains `linear_a_q_<t>`; it holds only `..._0`, so for t >= 1
  that branch never runs and the released code evaluates W + B_0 A_0 (task 0's LoRA) with
  the new prototypes. We implement the written rule, (B_0 + B_t)(A_0 + A_t).
- The released code is a ViT-B/16 DINO (timm) on CIFAR-100 with 30 clients, 10 sampled per
  round, 30 rounds per task, 10 local epochs, batch 64, augmentation (random flip, colour
  jitter), and early stopping after 10 rounds without gain from task 2 on. Here the run's
  backbone, federation, `rounds-per-task`, `local-epochs`, `batch-size` and data pipeline
  apply; no augmentation, no early stopping.
- The min-max normalisation divides by zero when all clients' inverse distances are equal
  (one client); here the weights are then uniform. d is computed from a clamped (>= 1e-12)
  squared distance, so its gradient stays finite.
- The official cross-entropy runs over all 100 classes, so unseen classes' random prototypes
  take part; the same here (all classes of the stream).
- Not kept from our earlier paper-only reading: cosine logits, entropy-based re-weighting,
  all task sets summed in every forward pass, the ETF head (refused at config time).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multifcl.adapters import LoraAdapters, set_name
from multifcl.aggregation import merge_class_rows, weighted_average
from multifcl.backbones.host_transfer import to_device
from multifcl.data import InMemoryImages, Task
from multifcl.data.augmentation import TrainAugmentation
from multifcl.features import FeatureSplit, encoder_fingerprint
from multifcl.losses.orthogonality import orthogonality_loss
from multifcl.methods.base import SECONDS_PER_STEP, ClientUpdate, Method, State, UpdateLayout
from multifcl.optim.local_training import LossSum

LORA_BLOCKS = (0,)  # LoRA in the first block only (federated_main.py:87)
PROTOTYPE_INIT_SCALE = 0.1  # prototypes start at 0.1 x randn (VLT.py:79)
REWEIGHT_TEMPERATURE = 0.2  # softmax temperature of the server's re-weighting (utils.py:142)
MIN_SQUARED_DISTANCE = 1e-12  # keeps the square root's gradient finite
ORTHOGONALITY_POWER = 1  # absolute entries of A_j A_t^T (update.py:81)

ADAPTER_PREFIX = "adapter/"
CLASS_IDS = "class-ids"
COUNTS = "class-counts"
PROTOTYPES = "class-prototypes"
FEATURE_MEANS = "class-feature-means"  # per class: the clients' mean training feature
SCHEDULE = "schedule-position"  # (task, rounds merged in that task)


def prototype_distances(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(n x classes) d(f, c) = sqrt(||f - c||^2 / dim) for features (n x dim) and prototypes
    (classes x dim); the logits are -d."""
    squared = (
        features.pow(2).sum(1, keepdim=True)
        + prototypes.pow(2).sum(1)
        - 2 * features @ prototypes.T
    )
    return (squared / features.shape[1]).clamp_min(MIN_SQUARED_DISTANCE).sqrt()


def reweighting_weights(
    prototypes: np.ndarray, holder_means: np.ndarray, temperature: float = REWEIGHT_TEMPERATURE
) -> np.ndarray:
    """(k,) weights of k clients' prototypes (k x dim) of one class: softmax over clients of
    the min-max normalised inverse of each prototype's summed Euclidean distance to the mean
    features (m x dim) of the m clients that hold the class; uniform when m = 0 or when
    every client's inverse distance is the same."""
    k = len(prototypes)
    if len(holder_means) == 0:
        return np.full(k, 1.0 / k)
    differences = prototypes[:, None, :].astype(np.float64) - holder_means[None].astype(np.float64)
    summed = np.sqrt((differences**2).sum(-1)).sum(1)
    inverse = 1.0 / np.maximum(summed, np.finfo(np.float64).tiny)
    spread = inverse.max() - inverse.min()
    normalised = (inverse - inverse.min()) / spread if spread > 0 else np.zeros(k)
    scores = normalised / temperature
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


def cosine_round_factor(round_in_task: int, rounds_per_task: int) -> float:
    """The rates' factor in round `round_in_task` (0-based) of a task: 1 in rounds 0 and 1,
    then (1 + cos(pi (r - 1) / R)) / 2, as the official code recomputes it after each round."""
    return 0.5 * (1.0 + math.cos(math.pi * max(round_in_task - 1, 0) / rounds_per_task))


class PiLoRAMethod(Method):
    name = "pilora"

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.num_tasks = config.num_tasks
        self.global_set = config.num_tasks  # the evaluated model's LoRA, built from sets 0, t
        self.lora = LoraAdapters(
            backbone, config.pilora_rank, config.num_tasks + 1, config.seed, blocks=LORA_BLOCKS
        )
        self.encoder = self.lora.backbone
        self._initial_sets = self._set_arrays(range(self.num_tasks))

    # --- state ---------------------------------------------------------------------------
    def _set_parameters(self, sets) -> dict[str, nn.Parameter]:
        """The LoRA parameters of the task sets `sets`, by state key."""
        return {
            ADAPTER_PREFIX + key: value
            for index in sets
            for key, value in self.lora.set_parameters(index).items()
        }

    def _set_arrays(self, sets) -> State:
        return {
            key: value.detach().cpu().numpy().copy()
            for key, value in self._set_parameters(sets).items()
        }

    def _load_sets(self, state: State) -> None:
        with torch.no_grad():
            for key, value in self._set_parameters(range(self.num_tasks)).items():
                value.copy_(torch.from_numpy(state[key]))

    def initial_state(self) -> State:
        generator = torch.Generator().manual_seed(self.config.seed)
        shape = (self.num_classes, self.backbone.feature_dim)
        prototypes = PROTOTYPE_INIT_SCALE * torch.randn(shape, generator=generator)
        state = {
            PROTOTYPES: prototypes.numpy().astype(np.float32),
            FEATURE_MEANS: np.zeros(shape, np.float32),
            COUNTS: np.zeros(self.num_classes, np.float32),
            SCHEDULE: np.zeros(2, np.int64),
        }
        state.update({key: value.copy() for key, value in self._initial_sets.items()})
        return state

    def _round_in_task(self, state: State, task: Task) -> int:
        """The 0-based round of `task` the state is sent for."""
        trained_task, merged_rounds = (int(v) for v in state[SCHEDULE])
        return merged_rounds if trained_task == task.index else 0

    def _load_global_model(self, state: State) -> None:
        """W + (B_0 + B_t)(A_0 + A_t), t the state's latest task (W + B_0 A_0 after task 0)."""
        self._load_sets(state)
        task = int(state[SCHEDULE][0])
        self.lora.load_factor_sums(self.global_set, [0] if task == 0 else [0, task])
        self.lora.activate([self.global_set])

    # --- client ----------------------------------------------------------------------------
    def local_optimizer(
        self, lora: list[nn.Parameter], prototype_rows: nn.Parameter, round_in_task: int
    ) -> torch.optim.Adam:
        """Adam with the LoRA and prototype rates, scaled by the round's cosine factor."""
        config = self.config
        factor = cosine_round_factor(round_in_task, config.rounds_per_task)
        groups = [
            {"params": lora, "lr": config.pilora_lora_lr * factor, "name": "lora"},
            {
                "params": [prototype_rows],
                "lr": config.pilora_prototype_lr * factor,
                "name": "prototypes",
            },
        ]
        return torch.optim.Adam(groups, weight_decay=config.pilora_weight_decay)

    def loss(
        self,
        features: torch.Tensor,
        target: torch.Tensor,
        prototypes: torch.Tensor,
        task: Task,
    ) -> torch.Tensor:
        """Cross-entropy on -d over all classes + pull + L1 of A_t + orthogonality."""
        config = self.config
        distances = prototype_distances(features, prototypes)
        loss = F.cross_entropy(-distances, target)
        own = distances.gather(1, target[:, None])
        loss = loss + config.pilora_pull_lambda * own.mean()
        current = self.lora.down_projections(task.index)
        if config.pilora_l1_lambda:
            loss = loss + config.pilora_l1_lambda * sum(a.abs().sum() for a in current)
        if task.index and config.pilora_ortho_lambda:
            earlier = [self.lora.down_projections(j) for j in range(task.index)]
            ortho = orthogonality_loss(current, earlier, ORTHOGONALITY_POWER)
            loss = loss + config.pilora_ortho_lambda * ortho
        return loss

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        config, device, rows = self.config, self.encoder.device, task.classes
        round_in_task = self._round_in_task(state, task)
        self._load_sets(state)
        self.lora.activate([task.index])  # the local model: W + B_t A_t
        lora = list(self.lora.set_parameters(task.index).values())
        for value in lora:
            value.requires_grad_(True)
        prototypes = torch.tensor(state[PROTOTYPES], device=device)
        trained_rows = nn.Parameter(prototypes[rows.start : rows.stop].clone())
        optimizer = self.local_optimizer(lora, trained_rows, round_in_task)

        labels = torch.as_tensor(data.labels)
        feature_sums = torch.zeros(len(rows), prototypes.shape[1], device=device)
        feature_counts = torch.zeros(len(rows), device=device)
        generator = torch.Generator().manual_seed(seed)
        augment = TrainAugmentation(config.augment, self.encoder.image_size, seed)
        losses, seconds, steps = LossSum(), 0.0, 0
        device_labels = to_device(labels, device)  # one copy per round
        for _ in range(config.local_epochs):
            order = torch.randperm(len(data), generator=generator)
            on_device = to_device(order, device)  # one copy per epoch
            for start in range(0, len(data), config.batch_size):
                index = order[start : start + config.batch_size]
                target = device_labels[on_device[start : start + config.batch_size]]
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                images = augment(data.images[index], device)
                features = self.encoder(self.encoder.preprocess(images))
                every_row = torch.cat(
                    [prototypes[: rows.start], trained_rows, prototypes[rows.stop :]]
                )
                loss = self.loss(features, target, every_row, task)
                loss.backward()
                optimizer.step()
                seconds, steps = seconds + time.perf_counter() - started, steps + 1
                losses.add(loss, len(index))
                local = target - rows.start
                feature_sums.index_add_(0, local, features.detach())
                feature_counts.index_add_(0, local, torch.ones_like(local, dtype=torch.float32))
        for value in lora:
            value.requires_grad_(False)

        class_counts = np.bincount(np.asarray(data.labels) - rows.start, minlength=len(rows))
        means = feature_sums / feature_counts.clamp_min(1)[:, None]
        arrays = {
            CLASS_IDS: np.arange(rows.start, rows.stop, dtype=np.int64),
            COUNTS: class_counts.astype(np.float32),
            PROTOTYPES: trained_rows.detach().cpu().numpy().astype(np.float32),
            FEATURE_MEANS: means.cpu().numpy().astype(np.float32),
            SCHEDULE: np.array([task.index, round_in_task], np.int64),
            **self._set_arrays([task.index]),
        }
        metrics = {SECONDS_PER_STEP: seconds / max(steps, 1)}
        return ClientUpdate(arrays, len(data), losses.mean(), metrics)

    # --- server ----------------------------------------------------------------------------
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """Rows of every class of the task (counts, prototypes, feature means), the task's
        LoRA set whole, and the schedule position the client trained at."""
        rows = {COUNTS: COUNTS, PROTOTYPES: PROTOTYPES, FEATURE_MEANS: FEATURE_MEANS}
        dense = frozenset(self._set_parameters([task.index])) | {SCHEDULE}
        return UpdateLayout(rows, dense, frozenset({PROTOTYPES}))

    def update_value_problem(self, state: State, update: ClientUpdate, task: Task) -> str | None:
        """A client sends every class of the task, in order, and trains at the round the
        server sent it."""
        ids = update.arrays[CLASS_IDS]
        if not np.array_equal(ids, np.arange(task.classes.start, task.classes.stop)):
            return f"'{CLASS_IDS}' must list every class of task {task.index + 1}, in order"
        reported = [int(v) for v in update.arrays[SCHEDULE]]
        expected = [task.index, self._round_in_task(state, task)]
        if reported != expected:
            return f"'{SCHEDULE}' is {reported}, but this round is (task, round) {expected}"
        return None

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        merged, rule = dict(state), self.merge_rule
        ids = [u.arrays[CLASS_IDS] for u in updates]
        counts = [u.arrays[COUNTS].astype(np.float64) for u in updates]
        held = [c > 0 for c in counts]  # a client's mean feature of a class it lacks is empty
        merged[FEATURE_MEANS], merged[COUNTS] = merge_class_rows(
            state[FEATURE_MEANS],
            state[COUNTS],
            [i[h] for i, h in zip(ids, held)],
            [u.arrays[FEATURE_MEANS][h] for u, h in zip(updates, held)],
            [c[h] for c, h in zip(counts, held)],
            rule,
        )
        weights = self.prototype_weights(updates) if self.config.pilora_reweight else counts
        rows = [u.arrays[PROTOTYPES] for u in updates]
        merged[PROTOTYPES], _ = merge_class_rows(
            state[PROTOTYPES], state[COUNTS], ids, rows, weights, rule
        )
        sets = [
            {k: v for k, v in u.arrays.items() if k.startswith(ADAPTER_PREFIX)} for u in updates
        ]
        merged.update(weighted_average(sets, [u.num_examples for u in updates], rule, state))
        task, last_round = (int(v) for v in updates[0].arrays[SCHEDULE])
        merged[SCHEDULE] = np.array([task, last_round + 1], np.int64)
        return merged

    @staticmethod
    def prototype_weights(updates: list[ClientUpdate]) -> list[np.ndarray]:
        """Per client, the (k,) re-weighting weights of its k prototype rows (every client
        sends the task's classes in the same order)."""
        prototypes = np.stack([u.arrays[PROTOTYPES] for u in updates])
        means = np.stack([u.arrays[FEATURE_MEANS] for u in updates])
        counts = np.stack([u.arrays[COUNTS] for u in updates])
        weights = np.empty(counts.shape)
        for c in range(counts.shape[1]):
            holders = counts[:, c] > 0
            weights[:, c] = reweighting_weights(prototypes[:, c], means[holders, c])
        return list(weights)

    # --- the global model ------------------------------------------------------------------
    def classifier(self, state: State) -> nn.Module:
        self._load_global_model(state)
        prototypes = torch.tensor(state[PROTOTYPES], device=self.encoder.device)
        return DistanceClassifier(self.encoder, prototypes)

    def feature_split(self, state: State) -> FeatureSplit:
        """The global model's LoRA never trains on the server: its final features cache."""
        classifier = self.classifier(state)
        backbone, task = self.backbone, int(state[SCHEDULE][0])
        description = (backbone.name, backbone.frozen_precision, str(backbone.image_size))
        description += ("pilora", str(self.config.pilora_rank), str(task))
        sets = {k: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        return FeatureSplit(
            encoder_fingerprint(description, sets),
            lambda images: [self.encoder.encode(images, self.extract_batches)],
            lambda features: -prototype_distances(features[-1], classifier.prototypes),
        )

    def block_features(self, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every tap of the global model."""
        self._load_global_model(state)
        return self.encoder.taps(pixels, range(self.backbone.num_taps))

    def final_prototypes(self, state: State) -> torch.Tensor:
        """The learnable prototypes (the classifier compares them by Euclidean distance)."""
        return torch.from_numpy(state[PROTOTYPES])

    def export(self, state: State, folder: Path) -> list[Path]:
        """Every task's LoRA set (`lora-set-<t>`) and the global model's (`lora-global`)."""
        self._load_global_model(state)
        folders = {index: f"lora-{set_name(index)}" for index in range(self.num_tasks)}
        return self.lora.export(folder, {**folders, self.global_set: "lora-global"})


class DistanceClassifier(nn.Module):
    """Pixels -> -d(final feature, prototype) for every class."""

    def __init__(self, encoder: nn.Module, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.prototypes = prototypes

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return -prototype_distances(self.encoder(pixels), self.prototypes)
