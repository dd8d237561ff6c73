"""MultiFCL (NeurIPS 2025): adapters frozen after their task, multi-modal initialization of
new class prototypes, multi-scale experts with multi-teacher dynamic self-distillation.

Composed of an adapter bank (`adapters.state.AdapterSets`; `NoAdapters` when `use-adapters`
is off) and an expert head (`heads.prototype_experts` or, with `head = "etf"`,
`heads.etf_experts`). Global state: the experts' keys, the global per-class sample counts,
and every adapter set. A client uploads the experts' arrays of the classes it holds with
their counts, plus the trainable adapter set (if any); the server merges the experts' arrays
(rows weighted by counts) and adapters by FedAvg. With every `use-*` switch off this is the
`prototypes` baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multifcl.adapters import NO_ADAPTERS, AdapterPolicy, build_adapters
from multifcl.adapters.state import ADAPTER_PREFIX, ADAPTER_ROUNDS, AdapterSets
from multifcl.aggregation import weighted_average
from multifcl.backbones import Backbone
from multifcl.backbones.host_transfer import to_device
from multifcl.config import FORCE_CACHE, ExperimentConfig
from multifcl.data import InMemoryImages, Task
from multifcl.data.augmentation import TrainAugmentation
from multifcl.features import (
    FeatureKey,
    FeatureSplit,
    encoder_fingerprint,
    feature_cache_for,
)
from multifcl.heads.etf import ETFHead
from multifcl.heads.etf_experts import ETFExperts
from multifcl.heads.experts import (
    COUNTS,
    HOLDER_COUNTS,
    ClientRound,
    ExpertDiagnostics,
    Experts,
    ExpertTraining,
)
from multifcl.heads.multi_expert import describe_experts, expert_taps, inference_logits
from multifcl.heads.prototype_experts import PrototypeExperts
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
from multifcl.optim.local_training import LocalTraining, LossSum
from multifcl.optim.tempbalance import TempBalance

__all__ = ["ADAPTER_PREFIX", "ADAPTER_ROUNDS", "COUNTS", "MultiFCLMethod"]
logger = logging.getLogger(__name__)


class MultiFCLMethod(Method):
    name = "multifcl"
    growing_state_keys = frozenset({HOLDER_COUNTS})  # one column per partition id seen
    # asynchronously: adapter sets are keyed by global task, trained by its clients
    runs_asynchronously = True

    def __init__(
        self, config: ExperimentConfig, backbone: Backbone, class_names: list[str]
    ) -> None:
        super().__init__(config, backbone, class_names)
        num_experts = config.num_experts if config.use_experts else 1
        self.taps = expert_taps(backbone.num_taps, num_experts, backbone.name)
        logger.info("multifcl experts on %s: %s", backbone.name, describe_experts(self.taps))
        self.adapters = _adapter_sets(config, backbone)
        self.encoder = self.adapters.encoder
        self.feature_cache = feature_cache_for(config, "train")
        if config.lr_schedule == "tempbalance":
            self._check_tempbalance()
        self.experts = self._build_experts()

    def _build_experts(self) -> Experts:
        if self.config.head == "etf":  # fixed simplex vertices; a trained projection per expert
            return ETFExperts(
                self.config, self.tap_dims, self.num_classes, self.merge_rule, self.backbone.device
            )
        return PrototypeExperts(
            self.config, self.tap_dims, self.class_names, self.merge_rule, self.backbone
        )

    def _check_tempbalance(self) -> None:
        """Fail before training when the first adapter set has no layer TempBalance can use."""
        parameters = list(self.adapters.parameters([0]).values())
        for value in parameters:
            value.requires_grad_(True)
        try:
            TempBalance(
                self.adapters.bank.trainable_module(0), self.config.tb_min, self.config.tb_max
            )
        finally:
            for value in parameters:
                value.requires_grad_(False)

    @property
    def tap_dims(self) -> list[int]:
        return [self.backbone.tap_dims[tap] for tap in self.taps]

    def initial_state(self) -> State:
        state = self.experts.initial_state()
        state[COUNTS] = np.zeros(self.num_classes, np.float32)
        state.update(self.adapters.initial_state())
        return state

    # --- features ------------------------------------------------------------------------
    def expert_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The features the experts read (through the active adapters)."""
        return self.encoder.taps(pixels, self.taps, self.adapters.after_block)

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        parts = [
            features
            for _, _, features in self.extract_batches.map(
                len(images), lambda a, b: self.expert_features(self.encoder.preprocess(images[a:b]))
            )
        ]
        return [torch.cat([part[m] for part in parts]) for m in range(len(self.taps))]

    def _encoder_fingerprint(self, state: State) -> str:
        """Everything upstream of the experts: backbone, precision, taps, adapter weights."""
        backbone = self.backbone
        description = (backbone.name, backbone.frozen_precision, str(backbone.image_size))
        description += (str(self.taps), self.config.adapter, str(self.config.adapter_rank))
        adapters = {k: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
        return encoder_fingerprint(description, adapters)

    def _client_features(
        self, state: State, data: InMemoryImages, task: Task, training_set: int | None
    ) -> list[torch.Tensor]:
        """The experts' features of `data`; with no adapter set training in this task they
        are computed once per task (`cache-features`) and reused in every round."""
        if training_set is not None or not self.config.cache_features:
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
        trainable = self.adapters.trainable_set(task.index)
        if trainable is None or self.config.task1_schedule != "two-phase":
            return False
        return self.adapters.adapter_rounds(state, trainable) < self.config.rounds_per_task - 1

    def _training_set(self, state: State, task: Task) -> int | None:
        """The adapter set this round trains, if any."""
        trainable = self.adapters.trainable_set(task.index)
        if self.config.task1_schedule == "joint" or self._adapter_phase(state, task):
            return trainable
        return None

    def _stale_rows(self, task: Task) -> bool:
        """With two phases, the rows set in an adapter set's task predate its final adapters
        (set during the adapter phase, or before the adapters froze)."""
        trainable = self.adapters.trainable_set(task.index)
        return self.config.task1_schedule == "two-phase" and trainable is not None

    # --- client ----------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self.adapters.load(state)
        training_set = self._training_set(state, task)
        client = ClientRound(
            state=state,
            data=data,
            labels=torch.as_tensor(data.labels),
            task=task,
            features=self._client_features(state, data, task, training_set),
            training_set=training_set,
            adapter_phase=self._adapter_phase(state, task),
            stale_rows=self._stale_rows(task),
            seed=seed,
            encode=self._encode,
        )
        expert_training = self.experts.start_round(client)
        loss, metrics = None, {}
        if expert_training.trained or training_set is not None:
            loss, metrics[SECONDS_PER_STEP] = self._train(client, expert_training)
        metrics.update(_named(self.experts.finish_round(client, expert_training)))
        classes, counts = torch.unique(client.labels, return_counts=True)
        arrays = {
            "class-ids": classes.numpy().astype(np.int64),
            COUNTS: counts.numpy().astype(np.float32),
            **self.experts.upload(classes),
        }
        if training_set is not None:
            arrays.update(self.adapters.arrays([training_set]))
        return ClientUpdate(arrays, num_examples=len(data), train_loss=loss, metrics=metrics)

    def _train(self, client: ClientRound, experts: ExpertTraining) -> tuple[float, float]:
        """Local epochs on the experts' losses (`experts.final_only`: the final expert's);
        trains the round's adapter set and what `experts` names. Returns (mean loss,
        seconds per step)."""
        config, data = self.config, client.data
        training_sets = [] if client.training_set is None else [client.training_set]
        adapter_parameters = list(self.adapters.parameters(training_sets).values())
        for value in self.adapters.all_parameters().values():
            value.requires_grad_(False)
        for value in adapter_parameters + experts.trained:
            value.requires_grad_(True)
        steps = -(-len(data) // config.batch_size)
        module = self.adapters.trainable_module(client.training_set)
        training = LocalTraining(config, module, steps, extra=experts.trained, extra_lr=experts.lr)
        generator = torch.Generator().manual_seed(client.seed)
        augment = TrainAugmentation(config.augment, self.encoder.image_size, client.seed)
        seen = client.task.seen_classes.stop
        losses = LossSum()
        labels = to_device(client.labels, self.encoder.device)  # one copy per round
        for _ in range(config.local_epochs):
            training.start_epoch()
            experts.start_epoch(training)
            order = torch.randperm(len(data), generator=generator)
            on_device = to_device(order, self.encoder.device)  # one copy per epoch
            for start in range(0, len(data), config.batch_size):
                index = order[start : start + config.batch_size]
                device_index = on_device[start : start + config.batch_size]
                inputs = self._batch_inputs(client, index, device_index, augment)
                loss = training.step(
                    self._loss, inputs, labels[device_index], seen, experts.final_only
                )
                losses.add(loss, len(index))
            experts.end_epoch(training)
        training.finish()  # MSAM: nothing perturbed leaves the client
        for value in adapter_parameters + experts.trained:
            value.requires_grad_(False)
        return losses.mean(), training.seconds_per_step

    def _batch_inputs(
        self,
        client: ClientRound,
        index: torch.Tensor,
        device_index: torch.Tensor,
        augment: TrainAugmentation,
    ):
        """What one step reads (samples `index`, the same on the device: `device_index`):
        pixels when an adapter set trains; with the encoder frozen, the round's features,
        or (under `augment`, unless `cache-features = "force"`) the features of this
        epoch's augmented pixels."""
        reuse = not augment.enabled or self.config.cache_features == FORCE_CACHE
        if client.training_set is None and reuse:
            return [
                f[device_index if f.device == device_index.device else index]
                for f in client.features
            ]
        images = augment(client.data.images[index], self.encoder.device)
        pixels = self.encoder.preprocess(images)
        if client.training_set is not None:
            return pixels
        with torch.no_grad():
            return self.expert_features(pixels)

    def _loss(
        self, inputs, target: torch.Tensor, seen: int, final_only: bool = False
    ) -> torch.Tensor:
        """The experts' losses on the first `seen` classes (+ kd-lambda x self-distillation),
        or the final expert's alone (what trains the adapters in their own phase)."""
        features = inputs if isinstance(inputs, list) else self.expert_features(inputs)
        if final_only:
            return self.experts.final_loss(features[-1], target, seen)
        logits = [z[:, :seen] for z in self.experts.logits(features)]
        loss = self.experts.loss(features, logits, target, seen)
        if self.config.use_self_kd and len(logits) > 1:
            loss = loss + self.config.kd_lambda * self_distillation_loss(
                logits, self.config.kd_weighting
            )
        return loss

    # --- server ----------------------------------------------------------------------------
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """Rows of every per-class array (all but adapters and whole expert arrays, e.g. ETF
        projections), the prototypes among them feature rows; the experts' whole arrays, and
        the adapters of the round's trained set."""
        trainable = self._training_set(state, task)
        sent_whole = set(self.adapters.parameters([] if trainable is None else [trainable]))
        shared = set(self.adapters.all_parameters()) | {ADAPTER_ROUNDS, HOLDER_COUNTS}
        sent_whole |= self.experts.sent_whole()
        shared |= self.experts.sent_whole()
        rows = {key: key for key in state if key not in shared}
        features = self.experts.feature_rows() & set(rows)
        return UpdateLayout(rows, frozenset(sent_whole), frozenset(features))

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """The experts' rows and arrays (`experts.merge`); each adapter set by FedAvg over
        the updates that carry it (an asynchronous round may mix clients of its task with
        clients of others), counting one adapter round for it."""
        merged = dict(state)
        weights = [u.num_examples for u in updates]
        senders = [u.sender for u in updates]
        merged.update(self.experts.merge(state, [u.arrays for u in updates], weights, senders))
        by_set: dict[int, list[ClientUpdate]] = {}
        for update in updates:
            trained = self.adapters.trained_set(update.arrays)
            if trained is not None:
                by_set.setdefault(trained, []).append(update)
        for trained, carrying in sorted(by_set.items()):
            if self.config.task1_schedule == "two-phase":
                merged[ADAPTER_ROUNDS] = self.adapters.count_adapter_round(merged, trained)
            arrays = [
                {k: v for k, v in u.arrays.items() if k.startswith(ADAPTER_PREFIX)}
                for u in carrying
            ]
            sizes = [u.num_examples for u in carrying]  # FedAvg, sample-weighted
            merged.update(weighted_average(arrays, sizes, self.merge_rule, state))
        return merged

    def classifier(self, state: State) -> nn.Module:
        self.adapters.load(state)
        self.experts.load(state)
        return ExpertClassifier(self)

    def feature_split(self, state: State) -> FeatureSplit:
        """Adapters never train on the server: the experts' features are always cacheable."""
        self.classifier(state)
        return FeatureSplit(
            self._encoder_fingerprint(state),
            self._encode,
            lambda features: inference_logits(self.experts.logits(features), self.config.inference),
        )

    def block_features(self, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Every tap through the state's adapters."""
        self.adapters.load(state)
        taps = range(self.backbone.num_taps)
        return self.encoder.taps(pixels, taps, self.adapters.after_block)

    def final_prototypes(self, state: State) -> torch.Tensor | None:
        return self.experts.final_prototypes(state)

    def final_etf_head(self, state: State) -> ETFHead | None:
        return self.experts.final_etf_head(state)

    def export(self, state: State, folder: Path) -> list[Path]:
        return self.adapters.export(state, folder)


class ExpertClassifier(nn.Module):
    """Pixels -> logits of the final expert, or of the experts' ensemble (the experts'
    and adapters' weights loaded by `MultiFCLMethod.classifier`)."""

    def __init__(self, method: MultiFCLMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        method = self.method
        logits = method.experts.logits(method.expert_features(pixels))
        return inference_logits(logits, method.config.inference)


def _adapter_sets(config: ExperimentConfig, backbone: Backbone) -> AdapterSets:
    """The configured adapter bank and policy (`NoAdapters` when `use-adapters` is off)."""
    kind = config.adapter if config.use_adapters else NO_ADAPTERS
    policy_name = config.adapter_policy if config.use_adapters else NO_ADAPTERS
    policy = AdapterPolicy(policy_name, config.num_tasks)
    bank = build_adapters(kind, backbone, config.adapter_rank, policy.num_sets, config.seed)
    return AdapterSets(bank, policy)


def _named(diagnostics: ExpertDiagnostics) -> dict[str, float]:
    """The round's expert diagnostics under their metric names."""
    named = {
        PROTOTYPE_MOVEMENT: diagnostics.prototype_movement,
        CLASS_MEAN_COSINE: diagnostics.class_mean_cosine,
    }
    return {name: value for name, value in named.items() if value is not None}
