"""MultiFCL (NeurIPS 2025): adapters frozen after their task, multi-modal initialization of
new class prototypes, multi-scale experts with multi-teacher dynamic self-distillation.

Global state: one prototype matrix per expert, the global per-class sample counts, and
every adapter set. A client uploads, per expert, the rows of the classes it holds with their
counts, plus the trainable adapter set (if any); the server merges rows weighted by counts
and adapters by FedAvg. With every `use-*` switch off this is the `prototypes` baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multifcl.adapters import AdapterPolicy, BottleneckAdapters, build_adapters, set_name
from multifcl.aggregation import merge_class_rows, weighted_average
from multifcl.backbones.text_encoders import load_text_encoder
from multifcl.config import ConfigError
from multifcl.data import InMemoryImages, Task
from multifcl.features import (
    FeatureKey,
    FeatureSplit,
    encoder_fingerprint,
    feature_cache_for,
)
from multifcl.heads.etf import ETFHead, etf_loss, mean_pairwise_class_mean_cosine
from multifcl.heads.multi_expert import (
    describe_experts,
    expert_logits,
    expert_taps,
    inference_logits,
)
from multifcl.heads.prototype_initialization import (
    attend_to_old_prototypes,
    halve_towards,
    nearest_old_classes,
    refine_prototype,
)
from multifcl.losses.self_distillation import self_distillation_loss
from multifcl.methods.base import (
    CLASS_MEAN_COSINE,
    PROTOTYPE_MOVEMENT,
    SECONDS_PER_STEP,
    ClientUpdate,
    Method,
    State,
    UpdateLayout,
)
from multifcl.optim.local_training import LocalTraining
from multifcl.optim.tempbalance import TempBalance

ADAPTER_PREFIX = "adapter/"
ADAPTER_ROUNDS = "adapter-rounds"  # per adapter set: merged rounds of its adapter-only phase
COUNTS = "class-counts"
PROJECTION_PREFIX = "etf-projection/expert-"
logger = logging.getLogger(__name__)


def prototype_key(expert: int) -> str:
    return f"expert-{expert}/prototypes"


class MultiFCLMethod(Method):
    name = "multifcl"

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        num_experts = config.num_experts if config.use_experts else 1
        self.taps = expert_taps(backbone.num_taps, num_experts, backbone.name)
        logger.info("multifcl experts on %s: %s", backbone.name, describe_experts(self.taps))
        self.policy = AdapterPolicy(config.adapter_policy, config.num_tasks)
        self.adapters = None
        self.encoder = backbone
        self.feature_cache = feature_cache_for(config, "train")
        if config.use_adapters:
            self.adapters = build_adapters(
                config.adapter, backbone, config.adapter_rank, self.policy.num_sets, config.seed
            )
            self.encoder = self.adapters.backbone
        self.class_text = None
        self.text_encoder = None
        if config.use_text_init and config.head != "etf":  # ETF experts have no prototypes
            _check_class_names(class_names)
            self.text_encoder = load_text_encoder(config.text_encoder, backbone)
            self.class_text = self.text_encoder.encode(class_names)
        self._initial_adapters = self._adapter_arrays(range(self.policy.num_sets))
        if config.lr_schedule == "tempbalance":
            self._check_tempbalance()
        self.etf_heads = None
        if config.head == "etf":  # fixed simplex vertices; a trained projection per expert
            classes, scale = self.num_classes, 1 / config.temperature
            self.etf_heads = nn.ModuleList(
                ETFHead(dim, classes, config.seed + m, scale, "linear", max(dim, classes))
                for m, dim in enumerate(self.tap_dims)
            ).to(backbone.device)
            self._initial_projections = self._projection_arrays()

    def _check_tempbalance(self) -> None:
        """Fail before training when the first adapter set has no layer TempBalance can use."""
        parameters = list(self._adapter_parameters([0]).values())
        for value in parameters:
            value.requires_grad_(True)
        try:
            TempBalance(self._trainable_module(0), self.config.tb_min, self.config.tb_max)
        finally:
            for value in parameters:
                value.requires_grad_(False)

    # --- state ---------------------------------------------------------------------------
    def initial_state(self) -> State:
        if self.etf_heads is not None:
            state = {k: v.copy() for k, v in self._initial_projections.items()}
        else:
            state = {
                prototype_key(m): np.zeros((self.num_classes, self.tap_dims[m]), np.float32)
                for m in range(len(self.taps))
            }
        state[COUNTS] = np.zeros(self.num_classes, np.float32)
        if self.adapters is not None:
            state[ADAPTER_ROUNDS] = np.zeros(self.policy.num_sets, np.int64)
        state.update({k: v.copy() for k, v in self._initial_adapters.items()})
        return state

    def _projection_parameters(self) -> dict[str, nn.Parameter]:
        """ETF heads' trained projections, by state key."""
        return {
            f"{PROJECTION_PREFIX}{m}/{key}": value
            for m, head in enumerate(self.etf_heads)
            for key, value in head.projection.named_parameters()
        }

    def _projection_arrays(self) -> State:
        return {
            k: v.detach().cpu().numpy().copy() for k, v in self._projection_parameters().items()
        }

    def _load_projections(self, state: State) -> None:
        with torch.no_grad():
            for key, value in self._projection_parameters().items():
                value.copy_(torch.from_numpy(state[key]))

    @property
    def tap_dims(self) -> list[int]:
        return [self.backbone.tap_dims[tap] for tap in self.taps]

    def _adapter_parameters(self, sets) -> dict[str, nn.Parameter]:
        if self.adapters is None:
            return {}
        parameters = {}
        for index in sets:
            parameters.update(self.adapters.set_parameters(index))
        return {ADAPTER_PREFIX + key: value for key, value in parameters.items()}

    def _adapter_arrays(self, sets) -> State:
        return {
            key: value.detach().cpu().numpy().copy()
            for key, value in self._adapter_parameters(sets).items()
        }

    def _load_adapters(self, state: State) -> None:
        with torch.no_grad():
            for key, value in self._adapter_parameters(range(self.policy.num_sets)).items():
                value.copy_(torch.from_numpy(state[key]))

    def _trainable_set(self, task: Task) -> int | None:
        return None if self.adapters is None else self.policy.trainable_set(task.index)

    # --- features ------------------------------------------------------------------------
    def _after_block(self):
        return None if self.adapters is None else self.adapters.after_block

    def expert_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The features the experts read (through the active adapters)."""
        return self.encoder.taps(pixels, self.taps, self._after_block())

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        batch = self.config.batch_size
        parts = [
            self.expert_features(self.encoder.preprocess(images[start : start + batch]))
            for start in range(0, len(images), batch)
        ]
        return [torch.cat([part[m] for part in parts]) for m in range(len(self.taps))]

    def _encoder_fingerprint(self, state: State) -> str:
        """Everything upstream of the experts: backbone, precision, taps, adapter weights."""
        backbone = self.backbone
        description = (backbone.name, backbone.precision, str(backbone.image_size))
        description += (str(self.taps), self.config.adapter, str(self.config.adapter_rank))
        adapters = {k: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        return encoder_fingerprint(description, adapters if self.adapters is not None else {})

    def _client_features(self, state: State, data: InMemoryImages, task: Task, trainable_set):
        """The experts' features of `data`; with no adapter set training in this task they
        are computed once per task (`cache-features`) and reused in every round."""
        if trainable_set is not None or not self.config.cache_features:
            return self._encode(data.images)
        key = FeatureKey(data.fingerprint, self._encoder_fingerprint(state), task.index)
        self.feature_cache.keep_only(lambda k: k.task == key.task and k.encoder == key.encoder)
        return self.feature_cache.get_or_compute(
            key, lambda: self._encode(data.images), self.encoder.device
        )

    # --- schedule: Algorithm 1's two phases ------------------------------------------------
    def _adapter_phase(self, state: State, task: Task) -> bool:
        """Whether this round trains the adapters alone (`task1-schedule = "two-phase"`):
        every round of an adapter set's task but the last, which trains the experts on the
        frozen adapters (Algorithm 1: adapters fine-tuned, frozen as w*, then experts)."""
        trainable = self._trainable_set(task)
        if trainable is None or self.config.task1_schedule != "two-phase":
            return False
        return int(state[ADAPTER_ROUNDS][trainable]) < self.config.rounds_per_task - 1

    def _training_set(self, state: State, task: Task) -> int | None:
        """The adapter set this round trains, if any."""
        trainable = self._trainable_set(task)
        if self.config.task1_schedule == "joint" or self._adapter_phase(state, task):
            return trainable
        return None

    def _classes_to_initialise(self, state: State, task: Task, classes, adapter_phase: bool):
        """Local classes whose rows start from the (multi-modal) init this round: all of them
        while the adapters train alone, or without trained prototypes; with two phases, all
        of them again in the experts' first round after the adapters froze (the rows set
        during the adapter phase are stale); otherwise the classes new to the federation."""
        local = [int(c) for c in classes]
        resync = self.config.task1_schedule == "two-phase" and self._trainable_set(task) is not None
        if adapter_phase or resync or not self.config.use_experts:
            return local
        return [c for c in local if state[COUNTS][c] == 0]

    # --- client ----------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._load_adapters(state)
        adapter_phase = self._adapter_phase(state, task)
        training_set = self._training_set(state, task)
        labels = torch.as_tensor(data.labels)
        classes, counts = torch.unique(labels, return_counts=True)
        device = self.encoder.device
        features = self._client_features(state, data, task, training_set)
        if self.etf_heads is not None:
            return self._train_etf_client(
                state, data, labels, task, training_set, features, seed, adapter_phase
            )
        prototypes = [
            torch.tensor(state[prototype_key(m)], device=device) for m in range(len(self.taps))
        ]
        fresh = self._classes_to_initialise(state, task, classes, adapter_phase)
        self._initialise(prototypes, fresh, features, labels, task, use_text=not adapter_phase)

        loss, metrics = None, {}
        trains_prototypes = self.config.use_experts and not adapter_phase
        refined = [int(c) for c in classes] if self.config.prototype_refine == "per-epoch" else []
        if trains_prototypes or training_set is not None:
            loss, step_seconds, movement = self._train(
                prototypes,
                features,
                data,
                labels,
                task,
                training_set,
                seed,
                train_prototypes=trains_prototypes,
                refined=refined if trains_prototypes else [],
            )
            metrics[SECONDS_PER_STEP] = step_seconds
            if movement is not None:
                metrics[PROTOTYPE_MOVEMENT] = movement
        if not trains_prototypes:  # fixed prototypes follow the trained adapters
            if training_set is not None:
                features = self._encode(data.images)
                self._initialise(prototypes, fresh, features, labels, task, not adapter_phase)
            self._refine(prototypes, self._class_means(features, labels, refined))

        arrays = {
            "class-ids": classes.numpy().astype(np.int64),
            COUNTS: counts.numpy().astype(np.float32),
        }
        for m, matrix in enumerate(prototypes):
            rows = self._as_row(matrix[classes.to(device)].detach())
            arrays[prototype_key(m)] = rows.cpu().numpy()
        if training_set is not None:
            arrays.update(self._adapter_arrays([training_set]))
        return ClientUpdate(arrays, num_examples=len(data), train_loss=loss, metrics=metrics)

    def _train_etf_client(
        self, state, data, labels, task, training_set, features, seed, adapter_phase
    ):
        """ETF experts: the vertices are fixed; projections (every task) and adapters train
        (while the adapters train alone, only the final expert's loss)."""
        self._load_projections(state)
        projections = [head.projection for head in self.etf_heads]  # TempBalance: layers
        loss, step_seconds, _ = self._train(
            None,
            features,
            data,
            labels,
            task,
            training_set,
            seed,
            extra=projections,
            final_only=adapter_phase,
        )
        classes, counts = torch.unique(labels, return_counts=True)
        arrays = {
            "class-ids": classes.numpy().astype(np.int64),
            COUNTS: counts.numpy().astype(np.float32),
            **self._projection_arrays(),
        }
        if training_set is not None:
            arrays.update(self._adapter_arrays([training_set]))
        with torch.no_grad():
            final = self._encode(data.images)[-1] if training_set is not None else features[-1]
            projected = self.etf_heads[-1].projected(final)
        metrics = {SECONDS_PER_STEP: step_seconds}
        if len(classes) > 1:
            metrics[CLASS_MEAN_COSINE] = mean_pairwise_class_mean_cosine(projected.cpu(), labels)
        return ClientUpdate(arrays, num_examples=len(data), train_loss=loss, metrics=metrics)

    def _as_row(self, rows: torch.Tensor) -> torch.Tensor:
        """Trained prototypes live on the unit sphere (their step then does not shrink with
        the feature scale); fixed class-mean prototypes keep the features' scale."""
        return F.normalize(rows, dim=-1) if self.config.use_experts else rows

    def _initialise(self, prototypes, classes, features, labels, task, use_text=True) -> None:
        """Set the rows of `classes`: text-guided init (old classes exist) refined by features."""
        use_text = use_text and self.class_text is not None and task.index > 0
        old = range(task.classes.start)
        for c in classes:
            mask = labels == c
            init = [None] * len(prototypes)
            if use_text:
                query = self._query(c, features, mask)
                indices, weights = nearest_old_classes(
                    query,
                    self.class_text[old.start : old.stop],
                    self.config.text_init_topk,
                    self.config.temperature,
                )
                init = [
                    attend_to_old_prototypes(indices, weights, p[: old.stop]) for p in prototypes
                ]
            for m, matrix in enumerate(prototypes):
                local = features[m][mask.to(features[m].device)].to(matrix.dtype)
                if init[m] is not None:  # on the prototypes' scale
                    local = self._as_row(local)
                row = refine_prototype(init[m], local, self.config.prototype_refine)
                matrix[c] = self._as_row(row.detach())

    def _class_means(self, features, labels, classes) -> list[dict[int, torch.Tensor]]:
        """Per expert, the mean local feature of each of `classes` (unit length when the
        prototypes are)."""
        means = []
        for feature in features:
            device_labels = labels.to(feature.device)
            rows = {c: feature[device_labels == c].float().mean(0) for c in classes}
            means.append({c: self._as_row(row) for c, row in rows.items()})
        return means

    @torch.no_grad()
    def _refine(self, prototypes, class_means, epochs: int | None = None) -> None:
        """Per-epoch refinement (Algorithm 1, line 24) of every row in `class_means`, for
        `epochs` epochs (default: the local epochs) when nothing else trains in between."""
        for _ in range(self.config.local_epochs if epochs is None else epochs):
            for matrix, means in zip(prototypes, class_means):
                for c, mean in means.items():
                    matrix[c] = self._as_row(halve_towards(matrix[c], mean.to(matrix.dtype)))

    def _query(self, c: int, features, mask: torch.Tensor) -> torch.Tensor:
        """The image feature of the class's first local sample, in text space when aligned;
        otherwise the text feature of its name."""
        if self.text_encoder.aligned:
            first = features[-1][int(mask.nonzero()[0])].unsqueeze(0)
            return self.text_encoder.project_images(first)[0]
        return self.class_text[c]

    def _train(
        self,
        prototypes,
        features,
        data: InMemoryImages,
        labels: torch.Tensor,
        task: Task,
        training_set: int | None,
        seed: int,
        *,
        extra=(),
        train_prototypes: bool = False,
        refined=(),
        final_only: bool = False,
    ) -> tuple[float, float, float | None]:
        """Local epochs on the experts' losses (`final_only`: the final expert's), the rows of
        `refined` classes halved towards their class means at the start of every epoch.

        Returns (mean loss, seconds per step, mean relative movement of the trained rows of
        the local classes by the optimizer, or None when no prototype trains)."""
        config = self.config
        adapter_parameters = self._adapter_parameters(
            [] if training_set is None else [training_set]
        )
        if self.adapters is not None:
            for value in self._adapter_parameters(range(self.policy.num_sets)).values():
                value.requires_grad_(False)
            for value in adapter_parameters.values():
                value.requires_grad_(True)
        trained_tensors = list(extra) or (prototypes if train_prototypes else [])
        for matrix in trained_tensors:
            matrix.requires_grad_(True)
        steps = -(-len(data) // config.batch_size)
        training = LocalTraining(
            config,
            self._trainable_module(training_set),
            steps,
            extra=trained_tensors,
            extra_lr=config.prototype_lr if train_prototypes else None,
        )
        class_means = self._class_means(features, labels, refined) if refined else []
        local = [int(c) for c in torch.unique(labels)]
        moved = [torch.zeros_like(p) for p in prototypes] if train_prototypes else None
        compute_loss = self._final_expert_loss if final_only else self._loss
        generator = torch.Generator().manual_seed(seed)
        total, count = 0.0, 0
        for _ in range(config.local_epochs):
            training.start_epoch()
            if class_means:
                with training.unperturbed():
                    self._refine(prototypes, class_means, epochs=1)
            before = [p.detach().clone() for p in prototypes] if moved is not None else None
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), config.batch_size):
                index = order[start : start + config.batch_size]
                if training_set is None:  # frozen encoder: reuse the features
                    inputs = [f[index.to(f.device)] for f in features]
                else:
                    inputs = self.encoder.preprocess(data.images[index])
                target = labels[index].to(self.encoder.device)
                loss = training.step(compute_loss, inputs, target, prototypes, task)
                total += loss * len(index)
                count += len(index)
            if moved is not None:
                with training.unperturbed():
                    for m, matrix in enumerate(prototypes):
                        moved[m] += matrix.detach() - before[m]
        training.finish()  # MSAM: nothing perturbed leaves the client
        for value in list(adapter_parameters.values()) + trained_tensors:
            value.requires_grad_(False)
        movement = None
        if moved is not None:
            movement = _relative_movement(moved, prototypes, local)
        return total / max(count, 1), training.seconds_per_step, movement

    def _trainable_module(self, trainable_set: int | None) -> nn.Module:
        """The module whose layers TempBalance balances: the trainable adapter set."""
        if trainable_set is None or self.adapters is None:
            return nn.Module()  # only prototypes train: nothing to balance
        if isinstance(self.adapters, BottleneckAdapters):
            return self.adapters.sets[set_name(trainable_set)]
        return self.adapters.backbone  # LoRA: only the trainable set requires grad

    def all_expert_logits(self, features, prototypes) -> list[torch.Tensor]:
        """Each expert's logits: cosine to its prototypes, or to the fixed ETF vertices."""
        if self.etf_heads is not None:
            return [head(f) for head, f in zip(self.etf_heads, features)]
        return expert_logits(features, prototypes, self.config.temperature)

    def _loss(self, inputs, target, prototypes, task: Task) -> torch.Tensor:
        """Sum of the experts' losses (+ kd-lambda x self-distillation).

        Cross-entropy on prototype logits; with ETF heads, `etf-loss` (dot regression or
        cross-entropy) towards each class's fixed vertex.
        """
        features = inputs if isinstance(inputs, list) else self.expert_features(inputs)
        seen = task.seen_classes.stop
        logits = [z[:, :seen] for z in self.all_expert_logits(features, prototypes)]
        if self.etf_heads is not None:
            kind, balanced = self.config.etf_loss, self.config.etf_dr_balance
            loss = sum(
                etf_loss(head, f, target, kind, seen, balanced)
                for head, f in zip(self.etf_heads, features)
            )
        else:
            loss = sum(F.cross_entropy(z, target) for z in logits)
        if self.config.use_self_kd and len(logits) > 1:
            loss = loss + self.config.kd_lambda * self_distillation_loss(
                logits, self.config.kd_weighting
            )
        return loss

    def _final_expert_loss(self, inputs, target, prototypes, task: Task) -> torch.Tensor:
        """The final expert's loss alone: what trains the adapters in their own phase."""
        features = inputs if isinstance(inputs, list) else self.expert_features(inputs)
        features = features[-1:]
        seen = task.seen_classes.stop
        if self.etf_heads is not None:
            kind, balanced = self.config.etf_loss, self.config.etf_dr_balance
            return etf_loss(self.etf_heads[-1], features[0], target, kind, seen, balanced)
        logits = expert_logits(features, prototypes[-1:], self.config.temperature)[0]
        return F.cross_entropy(logits[:, :seen], target)

    # --- server ----------------------------------------------------------------------------
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """Rows of every per-class array (all but adapters and ETF projections), the
        prototypes among them feature rows; whole ETF projections, and the adapters of the
        task's trainable set."""
        trainable = self._training_set(state, task)
        sent_whole = set(self._adapter_parameters([] if trainable is None else [trainable]))
        shared = set(self._adapter_parameters(range(self.policy.num_sets))) | {ADAPTER_ROUNDS}
        if self.etf_heads is not None:
            sent_whole |= set(self._projection_parameters())
            shared |= set(self._projection_parameters())
        rows = {key: key for key in state if key not in shared}
        features = {prototype_key(m) for m in range(len(self.taps))} & set(rows)
        return UpdateLayout(rows, frozenset(sent_whole), frozenset(features))

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        merged = dict(state)
        ids = [u.arrays["class-ids"] for u in updates]
        counts = [u.arrays[COUNTS] for u in updates]
        if self.etf_heads is not None:
            merged[COUNTS] = _round_counts(state[COUNTS], ids, counts)
        else:
            for m in range(len(self.taps)):
                key = prototype_key(m)
                rows = [u.arrays[key] for u in updates]
                merged[key], merged[COUNTS] = merge_class_rows(
                    state[key], state[COUNTS], ids, rows, counts, self.merge_rule
                )
        trained = self._trained_set(updates[0])
        if trained is not None and self.config.task1_schedule == "two-phase":
            merged[ADAPTER_ROUNDS] = state[ADAPTER_ROUNDS].copy()
            merged[ADAPTER_ROUNDS][trained] += 1
        weights = [u.num_examples for u in updates]
        for prefix in (ADAPTER_PREFIX, PROJECTION_PREFIX):  # FedAvg, sample-weighted
            arrays = [{k: v for k, v in u.arrays.items() if k.startswith(prefix)} for u in updates]
            if arrays[0]:
                merged.update(weighted_average(arrays, weights, self.merge_rule, state))
        return merged

    def _trained_set(self, update: ClientUpdate) -> int | None:
        """The adapter set an update carries, if any."""
        for index in range(self.policy.num_sets if self.adapters is not None else 0):
            if next(iter(self._adapter_parameters([index]))) in update.arrays:
                return index
        return None

    def classifier(self, state: State) -> nn.Module:
        self._load_adapters(state)
        if self.etf_heads is not None:
            self._load_projections(state)
            return ExpertClassifier(self, [None] * len(self.taps))
        device = self.encoder.device
        prototypes = [
            torch.tensor(state[prototype_key(m)], device=device) for m in range(len(self.taps))
        ]
        return ExpertClassifier(self, prototypes)

    def feature_split(self, state: State) -> FeatureSplit:
        """Adapters never train on the server: the experts' features are always cacheable."""
        classifier = self.classifier(state)
        return FeatureSplit(
            self._encoder_fingerprint(state),
            self._encode,
            lambda features: inference_logits(
                self.all_expert_logits(features, classifier.prototypes), self.config.inference
            ),
        )

    def block_features(self, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every tap through the state's adapters."""
        self._load_adapters(state)
        return self.encoder.taps(pixels, range(self.backbone.num_taps), self._after_block())

    def final_prototypes(self, state: State) -> torch.Tensor | None:
        if self.etf_heads is not None:
            return None
        return torch.from_numpy(state[prototype_key(len(self.taps) - 1)])

    def final_etf_head(self, state: State) -> ETFHead | None:
        if self.etf_heads is None:
            return None
        self._load_projections(state)
        return self.etf_heads[-1]

    def export(self, state: State, folder: Path) -> list[Path]:
        if self.adapters is None:
            return []
        self._load_adapters(state)
        return self.adapters.export(folder)


class ExpertClassifier(nn.Module):
    """Pixels -> logits of the final expert, or of the experts' ensemble."""

    def __init__(self, method: MultiFCLMethod, prototypes: list[torch.Tensor]) -> None:
        super().__init__()
        self.method = method
        self.prototypes = prototypes

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        config = self.method.config
        logits = self.method.all_expert_logits(self.method.expert_features(pixels), self.prototypes)
        return inference_logits(logits, config.inference)


def _relative_movement(moved, prototypes, classes) -> float:
    """Mean over experts and `classes` of |optimizer's displacement of a row| / |row|."""
    ratios = [
        float(shift[c].norm() / matrix[c].norm().clamp_min(1e-12))
        for shift, matrix in zip(moved, prototypes)
        for c in classes
    ]
    return sum(ratios) / max(len(ratios), 1)


def _round_counts(counts: np.ndarray, ids: list[np.ndarray], client_counts) -> np.ndarray:
    """Global per-class counts: this round's totals for the classes reported (as the row
    merge keeps them), the previous counts for the others."""
    totals = np.zeros_like(counts)
    for classes, values in zip(ids, client_counts):
        np.add.at(totals, classes, values)
    return np.where(totals > 0, totals, counts)


def _check_class_names(class_names: list[str]) -> None:
    missing = [index for index, name in enumerate(class_names) if not str(name).strip()]
    if missing or len(set(class_names)) != len(class_names):
        raise ConfigError(
            "run config key 'use-text-init': text initialization needs a distinct name for "
            f"every class; the data set's names are {class_names[:10]!r}"
            f"{' ...' if len(class_names) > 10 else ''} (set use-text-init=false)"
        )
