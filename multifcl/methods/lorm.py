"""LoRM (Salami et al., "Closed-form merging of parameter-efficient modules for federated
continual learning", ICLR 2025): per-task LoRA merged by the server in closed form, one
factor per round, following its official code (github.com/aimagelab/fed-mammoth,
`_models/lorm.py`, `_models/regmean.py`, `_models/lora_pre.py`).

Model. The frozen backbone with a rank-`lorm-rank` LoRA (scale 1: the update is B A) on
its `lora_targets` in every block, and a linear head over all classes of the stream.
Task t trains its own factors from A Kaiming-uniform, B zero (a fresh pair every task,
drawn from the run's seed and t); clients train W0 + B_t A_t (the code's "individual"
merge: the earlier tasks' LoRA is not in the local model).

Client, round r of task t. Only one factor trains: B with A frozen in rounds 0, 2, ...,
A with B frozen in rounds 1, 3, ... (`set_train_matrix`), together with the head rows and
biases of the task's classes, by the run's optimizer (the preset: the code's AdamW, 3e-4,
weight decay 0.1) on the cross-entropy over the task's classes only. Then one no-grad pass
over the client's data (no augmentation) sums each wrapped layer's input Gram X^T X over
every token, and the head's input Gram F^T F. The client sends the trained factor, the
Grams divided by its sample count (float64, upper triangle; layers that read the same
tensor, as a ViT's query and value, share one), and its head rows and biases.

Server. With G~ = alpha G + (1 - alpha) diag(G) (`lorm-regmean-alpha`, RegMean's
shrinkage of the off-diagonal), the least-squares (RegMean) merge of each layer:
A = (sum_k A_k G~_k)(sum_k G~_k)^+ when A trained (B is every client's), and
B = (sum_k B_k A G~_k A^T)(A (sum_k G~_k) A^T)^+ when B trained (the Gram of A x).
Head rows: (sum_k R_k H~_k)(sum_k H~_k)^+; biases: sample-weighted mean (FedAvg).
End of task t: the task's Gram (the sum of its last merged round's Grams) joins
S_l = sum_j B_j A_j G~_j and G_l = sum_j G_j, and the evaluated model is
W0 + S_l (G~_l)^+ (`end_task_server`: the tasks' LoRA merged by the same least squares).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multifcl.adapters import LoraAdapters
from multifcl.backbones.host_transfer import to_device
from multifcl.config import ConfigError
from multifcl.data import InMemoryImages, Task
from multifcl.data.augmentation import TrainAugmentation
from multifcl.methods.analytic import gram_problem, pack, unpack
from multifcl.methods.base import SECONDS_PER_STEP, ClientUpdate, Method, State, UpdateLayout
from multifcl.methods.base import batches as image_batches
from multifcl.optim.local_training import LocalTraining, LossSum

FACTOR_A = "lora-A/"  # per wrapped layer l: "lora-A/<l>", the current task's A
FACTOR_B = "lora-B/"
TASK_GRAM = "task-gram/"  # per input group g: the last merged round's X^T X per sample (packed)
TASK_SAMPLES = "task-samples"  # how many samples the task Grams are the mean of, shape (1,)
GRAM_SUM = "gram-sum/"  # per group: the finished tasks' Grams, summed (packed)
WEIGHTED_DELTA = "weighted-delta/"  # per layer: sum over finished tasks of B_j A_j G~_j
HEAD_WEIGHT = "head-weight"
HEAD_BIAS = "head-bias"
HEAD_GRAM = "head-gram"  # the last merged round's F^T F per sample, of the head's input
SCHEDULE = "schedule-position"  # (task, rounds merged in that task)
CLASS_IDS = "class-ids"
HEAD_ROWS = "head-rows"  # upload: the task's rows of the head
BIAS_ROWS = "head-bias-rows"
KAIMING_A = math.sqrt(5)  # LoRA A's init (lora_pre.py `init_matrices`)


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """RegMean's G~ = alpha G + (1 - alpha) diag(G)."""
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean(weights: list[torch.Tensor], grams: list[torch.Tensor]) -> torch.Tensor:
    """(sum_k W_k G_k)(sum_k G_k)^+: the W minimising sum_k ||W X_k - W_k X_k||^2 when
    G_k = X_k X_k^T (pseudo-inverse: any solution where the Grams are singular)."""
    weighted = sum(w @ g for w, g in zip(weights, grams))
    return weighted @ torch.linalg.pinv(sum(grams))


def merge_down(downs: list[torch.Tensor], grams: list[torch.Tensor]) -> torch.Tensor:
    """The merged A when every client shares B: the least squares of B A x over A."""
    return regmean(downs, grams)


def merge_up(ups: list[torch.Tensor], down: torch.Tensor, grams: list[torch.Tensor]):
    """The merged B when every client shares A: least squares on the inputs A x, whose
    Grams are A G_k A^T."""
    return regmean(ups, [down @ g @ down.T for g in grams])


def shared_input_groups(encoder: nn.Module, layers: list[nn.Module], size: int) -> list[int]:
    """For each layer, the first layer that reads the very same input tensor in a forward
    pass (a ViT's query and value read one), found on one blank image."""
    inputs: list[torch.Tensor | None] = [None] * len(layers)

    def keep(index: int, module: nn.Module, args: tuple) -> None:
        inputs[index] = args[0]  # kept alive, so no other tensor can take its identity

    hooks = [layer.register_forward_pre_hook(partial(keep, i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, size, size, device=encoder.device))
    finally:
        for hook in hooks:
            hook.remove()
    return [next(j for j in range(i + 1) if inputs[j] is inputs[i]) for i in range(len(layers))]


def tokens(inputs: torch.Tensor, is_conv: bool) -> torch.Tensor:
    """A layer's input as rows of features: (tokens, in-features), in float64."""
    if is_conv:
        inputs = inputs.movedim(1, -1)
    return inputs.reshape(-1, inputs.shape[-1]).double()


class LoRMMethod(Method):
    name = "lorm"

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.rank, self.alpha = config.lorm_rank, config.lorm_regmean_alpha
        self.lora = LoraAdapters(backbone, self.rank, 1, config.seed)
        self.encoder = self.lora.backbone
        self.encoder.eval()
        self.layers = self.lora.layers
        self.is_conv = [isinstance(layer.base_layer, nn.Conv2d) for layer in self.layers]
        for layer, conv in zip(self.layers, self.is_conv):
            if conv and layer.base_layer.kernel_size != (1, 1):
                raise ConfigError(
                    f"run config key 'backbone': lorm merges linear maps; {backbone.name!r} "
                    f"has LoRA on a {layer.base_layer.kernel_size} convolution"
                )
        self.base_weights = [layer.base_layer.weight.detach().clone() for layer in self.layers]
        self.groups = shared_input_groups(self.encoder, self.layers, backbone.image_size)
        self.group_ids = sorted(set(self.groups))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            head = nn.Linear(backbone.feature_dim, self.num_classes)
        self._initial_head = {
            HEAD_WEIGHT: head.weight.detach().numpy().copy(),
            HEAD_BIAS: head.bias.detach().numpy().copy(),
        }

    # --- state ---------------------------------------------------------------------------
    def _factors(self, layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
        name = self.lora.names[0]
        return layer.lora_A[name].weight, layer.lora_B[name].weight

    def fresh_factors(self, task_index: int) -> State:
        """Task `task_index`'s starting LoRA: A Kaiming-uniform (from the seed and the task),
        B zero."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + task_index)
        arrays = {}
        for index, layer in enumerate(self.layers):
            down, up = self._factors(layer)
            fresh = torch.empty(down.shape)
            nn.init.kaiming_uniform_(fresh, a=KAIMING_A, generator=generator)
            arrays[FACTOR_A + str(index)] = fresh.numpy()
            arrays[FACTOR_B + str(index)] = np.zeros(tuple(up.shape), np.float32)
        return arrays

    def _gram_width(self, group: int) -> int:
        return self._factors(self.layers[group])[0].shape[1]

    def initial_state(self) -> State:
        state = {key: value.copy() for key, value in self._initial_head.items()}
        state.update(self.fresh_factors(0))
        for group in self.group_ids:
            packed = np.zeros(_packed_size(self._gram_width(group)))
            state[TASK_GRAM + str(group)] = packed
            state[GRAM_SUM + str(group)] = packed.copy()
        for index, base in enumerate(self.base_weights):
            shape = (base.shape[0], self._gram_width(self.groups[index]))
            state[WEIGHTED_DELTA + str(index)] = np.zeros(shape)
        state[HEAD_GRAM] = np.zeros(_packed_size(self.backbone.feature_dim))
        state[TASK_SAMPLES] = np.zeros(1)
        state[SCHEDULE] = np.zeros(2, np.int64)
        return state

    def round_in_task(self, state: State, task: Task) -> int:
        """The 0-based round of `task` the state is sent for."""
        trained_task, merged_rounds = (int(v) for v in state[SCHEDULE])
        return merged_rounds if trained_task == task.index else 0

    def trained_factor(self, state: State, task: Task) -> str:
        """B in a task's even rounds (A frozen), A in its odd ones (B frozen)."""
        return FACTOR_B if self.round_in_task(state, task) % 2 == 0 else FACTOR_A

    def merged_deltas(self, state: State) -> list[torch.Tensor]:
        """Per layer, the finished tasks' LoRA merged in closed form: S (G~)^+."""
        deltas = []
        for index, group in enumerate(self.groups):
            gram = shrink(unpack(torch.from_numpy(state[GRAM_SUM + str(group)])), self.alpha)
            weighted = torch.from_numpy(state[WEIGHTED_DELTA + str(index)])
            deltas.append(weighted @ torch.linalg.pinv(gram))
        return deltas

    @torch.no_grad()
    def _load(self, state: State, deltas: list[torch.Tensor] | None = None) -> None:
        """The state's factors, on W0 (+ the merged earlier tasks' deltas when given)."""
        for index, layer in enumerate(self.layers):
            down, up = self._factors(layer)
            down.copy_(torch.from_numpy(state[FACTOR_A + str(index)]))
            up.copy_(torch.from_numpy(state[FACTOR_B + str(index)]))
            base = self.base_weights[index]
            if deltas is not None:
                delta = deltas[index].reshape(base.shape).to(base.device, base.dtype)
                base = base + delta
            layer.base_layer.weight.copy_(base)

    # --- client ----------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        factor = self.trained_factor(state, task)
        self._load(state)
        trained = [self._factors(layer)[0 if factor == FACTOR_A else 1] for layer in self.layers]
        rows, device = task.classes, self.encoder.device
        head = [  # the task's rows of the head and their biases
            nn.Parameter(torch.tensor(state[key][rows.start : rows.stop], device=device))
            for key in (HEAD_WEIGHT, HEAD_BIAS)
        ]
        for value in trained:
            value.requires_grad_(True)
        try:
            losses, seconds = self._train(data, task, head, seed)
        finally:
            for value in trained:
                value.requires_grad_(False)
        arrays = {
            factor + str(index): value.detach().cpu().numpy().copy()
            for index, value in enumerate(trained)
        }
        arrays.update(self._grams(data))
        arrays[CLASS_IDS] = np.arange(rows.start, rows.stop, dtype=np.int64)
        arrays[HEAD_ROWS] = head[0].detach().cpu().numpy().copy()
        arrays[BIAS_ROWS] = head[1].detach().cpu().numpy().copy()
        return ClientUpdate(arrays, len(data), losses, {SECONDS_PER_STEP: seconds})

    def _train(self, data: InMemoryImages, task: Task, head, seed: int) -> tuple[float, float]:
        """The local epochs: cross-entropy over the task's classes (mean loss, s/step)."""
        config, offset = self.config, task.classes.start
        training = LocalTraining(
            config, self.encoder, -(-len(data) // config.batch_size), extra=head
        )
        generator = torch.Generator().manual_seed(seed)
        augment = TrainAugmentation(config.augment, self.backbone.image_size, seed)
        losses = LossSum()

        def loss(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = F.linear(self.encoder(pixels), head[0], head[1])
            return F.cross_entropy(logits, labels - offset)

        for _ in range(config.local_epochs):
            training.start_epoch()
            for images, labels in image_batches(data, config.batch_size, generator):
                pixels = self.backbone.preprocess(augment(images, self.encoder.device))
                labels = to_device(labels, pixels.device)
                losses.add(training.step(loss, pixels, labels), len(labels))
        training.finish()
        return losses.mean(), training.seconds_per_step

    @torch.no_grad()
    def _grams(self, data: InMemoryImages) -> State:
        """The summed input Grams of every wrapped layer (one per input group) and of the
        head, by the trained local model, in float64 (packed upper triangles)."""
        sums: dict[int, torch.Tensor] = {}

        def add(group: int, module: nn.Module, args: tuple) -> None:
            rows = tokens(args[0], self.is_conv[group])
            sums[group] = sums.get(group, 0) + rows.T @ rows

        hooks = [
            self.layers[group].register_forward_pre_hook(partial(add, group))
            for group in self.group_ids
        ]
        head_gram = 0
        try:
            for images, _ in image_batches(data, self.config.batch_size):
                features = self.encoder(self.backbone.preprocess(images)).double()
                head_gram = head_gram + features.T @ features
        finally:
            for hook in hooks:
                hook.remove()
        samples = len(data)
        grams = {TASK_GRAM + str(g): pack(sums[g] / samples).cpu().numpy() for g in self.group_ids}
        grams[HEAD_GRAM] = pack(head_gram / samples).cpu().numpy()
        return grams

    # --- server ----------------------------------------------------------------------------
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """The trained factor of every layer, every Gram whole, the task's head rows."""
        factor = self.trained_factor(state, task)
        dense = {factor + str(index) for index in range(len(self.layers))}
        dense |= {TASK_GRAM + str(group) for group in self.group_ids} | {HEAD_GRAM}
        return UpdateLayout(
            rows={HEAD_ROWS: HEAD_WEIGHT, BIAS_ROWS: HEAD_BIAS}, dense=frozenset(dense)
        )

    def update_value_problem(self, state: State, update: ClientUpdate, task: Task) -> str | None:
        """Every class of the task, in order; Grams that can be Gram matrices."""
        ids = update.arrays[CLASS_IDS]
        if not np.array_equal(ids, np.arange(task.classes.start, task.classes.stop)):
            return f"'{CLASS_IDS}' must list every class of task {task.index + 1}, in order"
        for key in [TASK_GRAM + str(group) for group in self.group_ids] + [HEAD_GRAM]:
            problem = gram_problem(key, unpack(torch.from_numpy(update.arrays[key])))
            if problem is not None:
                return problem
        return None

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        merged = dict(state)
        task, position = (int(v) for v in state[SCHEDULE])
        factor = FACTOR_B if position % 2 == 0 else FACTOR_A
        samples = [u.num_examples for u in updates]
        for key in [TASK_GRAM + str(group) for group in self.group_ids] + [HEAD_GRAM]:
            merged[key] = np.average([u.arrays[key] for u in updates], axis=0, weights=samples)
        merged[TASK_SAMPLES] = np.array([float(sum(samples))])
        grams = {
            group: self._shrunk_grams(updates, TASK_GRAM + str(group)) for group in self.group_ids
        }
        for index, group in enumerate(self.groups):
            key = factor + str(index)
            sent = [torch.from_numpy(u.arrays[key].astype(np.float64)) for u in updates]
            shape = sent[0].shape
            sent = [value.reshape(len(value), -1) for value in sent]
            if factor == FACTOR_A:
                value = merge_down(sent, grams[group])
            else:
                down = torch.from_numpy(state[FACTOR_A + str(index)].astype(np.float64))
                value = merge_up(sent, down.reshape(len(down), -1), grams[group])
            merged[key] = value.reshape(shape).numpy().astype(np.float32)
        merged.update(self._merged_head(state, updates))
        merged[SCHEDULE] = np.array([task, position + 1], np.int64)
        return merged

    def _merged_head(self, state: State, updates: list[ClientUpdate]) -> State:
        """The task's head rows by least squares on the features, their biases by FedAvg."""
        ids = updates[0].arrays[CLASS_IDS]
        head_grams = self._shrunk_grams(updates, HEAD_GRAM)
        rows = [torch.from_numpy(u.arrays[HEAD_ROWS].astype(np.float64)) for u in updates]
        weight, bias = state[HEAD_WEIGHT].copy(), state[HEAD_BIAS].copy()
        weight[ids] = regmean(rows, head_grams).numpy()
        biases = np.stack([u.arrays[BIAS_ROWS].astype(np.float64) for u in updates])
        bias[ids] = np.average(biases, axis=0, weights=[u.num_examples for u in updates])
        return {HEAD_WEIGHT: weight, HEAD_BIAS: bias}

    def _shrunk_grams(self, updates: list[ClientUpdate], key: str) -> list[torch.Tensor]:
        """Each client's Gram of `key` (its samples x the mean it sent), shrunk (G~)."""
        return [
            shrink(u.num_examples * unpack(torch.from_numpy(u.arrays[key])), self.alpha)
            for u in updates
        ]

    def _task_gram(self, state: State, group: int) -> np.ndarray:
        """The task's summed Gram of `group` (packed): samples x the mean Gram."""
        return state[TASK_SAMPLES][0] * state[TASK_GRAM + str(group)]

    def end_task(self, state: State, task: Task) -> State:
        """The task's LoRA joins the merged deltas' sums; the next task starts fresh."""
        merged = dict(state)
        for index, group in enumerate(self.groups):
            gram = shrink(unpack(torch.from_numpy(self._task_gram(state, group))), self.alpha)
            down = torch.from_numpy(state[FACTOR_A + str(index)].astype(np.float64))
            up = torch.from_numpy(state[FACTOR_B + str(index)].astype(np.float64))
            delta = up.reshape(len(up), -1) @ down.reshape(len(down), -1)
            merged[WEIGHTED_DELTA + str(index)] = (
                state[WEIGHTED_DELTA + str(index)] + (delta @ gram).numpy()
            )
        for group in self.group_ids:
            merged[GRAM_SUM + str(group)] = state[GRAM_SUM + str(group)] + self._task_gram(
                state, group
            )
            merged[TASK_GRAM + str(group)] = np.zeros_like(state[TASK_GRAM + str(group)])
        merged[TASK_SAMPLES] = np.zeros(1)
        merged.update(self.fresh_factors(task.index + 1))
        merged[SCHEDULE] = np.array([task.index + 1, 0], np.int64)
        return merged

    # --- the global model ------------------------------------------------------------------
    def classifier(self, state: State) -> nn.Module:
        """W0 + the merged tasks' deltas + the current factors, and the linear head."""
        self._load(state, self.merged_deltas(state))
        head = nn.Linear(self.backbone.feature_dim, self.num_classes).to(self.encoder.device)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(state[HEAD_WEIGHT]))
            head.bias.copy_(torch.from_numpy(state[HEAD_BIAS]))
        return nn.Sequential(self.encoder, head)


def _packed_size(width: int) -> int:
    return width * (width + 1) // 2
