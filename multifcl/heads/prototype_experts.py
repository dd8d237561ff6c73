"""Prototype experts (MultiFCL 1c): per expert a prototype matrix, logits
cos(feature, prototype_c) / temperature. New classes' rows start from the multi-modal
initialization (`heads.prototype_initialization`); rows are refined towards the local class
means once per local epoch (`prototype-refine = "per-epoch"`, Algorithm 1 line 24).

Trained prototypes (`use-experts`) live on the unit sphere and train at `prototype-lr`;
fixed ones are class means that follow the trained adapters. Clients upload the rows of
their classes; the server merges them weighted by the clients' class counts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from multifcl.aggregation import MergeRule, merge_class_rows, merge_rows_keeping_absent_holders
from multifcl.backbones import Backbone
from multifcl.backbones.host_transfer import to_device
from multifcl.backbones.text_encoders import TextEncoder, check_text_encoder, load_text_encoder
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data import Task
from multifcl.heads.experts import (
    COUNTS,
    HOLDER_COUNTS,
    ClientRound,
    ExpertDiagnostics,
    Experts,
    ExpertTraining,
    State,
)
from multifcl.heads.multi_expert import expert_logits
from multifcl.heads.prototype_initialization import (
    attend_to_old_prototypes,
    halve_towards,
    nearest_old_classes,
    refine_prototype,
)
from multifcl.optim.local_training import LocalTraining

ClassMeans = list[dict[int, torch.Tensor]]  # per expert: class -> mean feature


def prototype_key(expert: int) -> str:
    return f"expert-{expert}/prototypes"


class PrototypeExperts(Experts):
    """The experts' prototype matrices (`self.prototypes`, loaded from a state)."""

    def __init__(
        self,
        config: ExperimentConfig,
        tap_dims: list[int],
        class_names: list[str],
        merge_rule: MergeRule,
        backbone: Backbone,
    ) -> None:
        self.config = config
        self.tap_dims = tap_dims
        self.num_classes = len(class_names)
        self.merge_rule = merge_rule
        self.device = backbone.device
        self.prototypes: list[torch.Tensor] = []
        self.class_names = class_names
        self.backbone = backbone
        self._text: tuple[TextEncoder, torch.Tensor] | None = None
        if config.use_text_init:
            _check_class_names(class_names)
            check_text_encoder(config.text_encoder, backbone)  # a bad one fails now, unloaded

    @property
    def text_encoder(self) -> TextEncoder | None:
        """Loaded on first use: only a client initializing a later task's rows needs it (the
        server never does). Loading leaves the random number generators as they were."""
        if not self.config.use_text_init:
            return None
        if self._text is None:
            with torch.random.fork_rng(devices=[]):
                encoder = load_text_encoder(self.config.text_encoder, self.backbone)
                self._text = encoder, encoder.encode(self.class_names)
        return self._text[0]

    @property
    def class_text(self) -> torch.Tensor | None:
        """Each class name's text feature (None without text init)."""
        return None if self.text_encoder is None else self._text[1]

    @property
    def keys(self) -> list[str]:
        return [prototype_key(m) for m in range(len(self.tap_dims))]

    def initial_state(self) -> State:
        state = {
            key: np.zeros((self.num_classes, dim), np.float32)
            for key, dim in zip(self.keys, self.tap_dims)
        }
        return state | {HOLDER_COUNTS: np.zeros((self.num_classes, 1), np.float32)}

    def load(self, state: State) -> None:
        self.prototypes = [torch.tensor(state[key], device=self.device) for key in self.keys]

    def logits(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return expert_logits(features, self.prototypes, self.config.temperature)

    def loss(self, features, logits, target, seen) -> torch.Tensor:
        """Cross-entropy of every expert's logits."""
        return sum(F.cross_entropy(z, target) for z in logits)

    def final_loss(self, feature: torch.Tensor, target: torch.Tensor, seen: int) -> torch.Tensor:
        logits = expert_logits([feature], self.prototypes[-1:], self.config.temperature)[0]
        return F.cross_entropy(logits[:, :seen], target)

    # --- a client round ----------------------------------------------------------------------
    def start_round(self, client: ClientRound) -> ExpertTraining:
        """Initialise the rows of the classes that need it; the prototypes train unless they
        are fixed (`use-experts = false`) or the adapters train alone."""
        self.load(client.state)
        fresh = self._classes_to_initialise(client)
        use_text = not client.adapter_phase
        self._initialise(fresh, client.features, client.labels, client.task, use_text)
        if client.adapter_phase:  # fixed prototypes; only the final expert trains adapters
            return ExpertTraining(final_only=True)
        if not self.config.use_experts:
            return ExpertTraining()
        refined = self._refined_classes(client)
        means = self.class_means(client.features, client.labels, refined) if refined else []
        return PrototypeTraining(self, means, [int(c) for c in torch.unique(client.labels)])

    def finish_round(self, client: ClientRound, training: ExpertTraining) -> ExpertDiagnostics:
        """Trained prototypes report their movement; fixed ones follow the trained adapters:
        initialised again under them, then refined for the local epochs."""
        if training.trained:
            return ExpertDiagnostics(prototype_movement=training.movement())
        features = client.features
        if client.training_set is not None:
            features = client.trained_features()
            fresh = self._classes_to_initialise(client)
            self._initialise(fresh, features, client.labels, client.task, not client.adapter_phase)
        self.refine(self.class_means(features, client.labels, self._refined_classes(client)))
        return ExpertDiagnostics()

    def _refined_classes(self, client: ClientRound) -> list[int]:
        if self.config.prototype_refine != "per-epoch":
            return []
        return [int(c) for c in torch.unique(client.labels)]

    def _classes_to_initialise(self, client: ClientRound) -> list[int]:
        """Local classes whose rows start from the (multi-modal) init this round: all of them
        when their rows are stale (`client.stale_rows`: the rows set during the adapter phase)
        or without trained prototypes; otherwise the classes new to the federation."""
        local = [int(c) for c in torch.unique(client.labels)]
        if client.stale_rows or not self.config.use_experts:
            return local
        return [c for c in local if client.state[COUNTS][c] == 0]

    def as_row(self, rows: torch.Tensor) -> torch.Tensor:
        """Trained prototypes live on the unit sphere (their step then does not shrink with
        the feature scale); fixed class-mean prototypes keep the features' scale."""
        return F.normalize(rows, dim=-1) if self.config.use_experts else rows

    def _initialise(self, classes, features, labels, task: Task, use_text: bool) -> None:
        """Set the rows of `classes`: text-guided init (old classes exist) refined by features."""
        use_text = use_text and task.index > 0 and self.config.use_text_init
        old = range(task.classes.start)
        for c in classes:
            # the class's sample indices, found on the host (labels live there): indexing
            # the features with them needs no device-to-host read, unlike a boolean mask
            samples = (labels.cpu() == c).nonzero().squeeze(1)
            init = [None] * len(self.prototypes)
            if use_text:
                query = self._query(c, features, samples)
                indices, weights = nearest_old_classes(
                    query,
                    self.class_text[old.start : old.stop],
                    self.config.text_init_topk,
                    self.config.temperature,
                )
                init = [
                    attend_to_old_prototypes(indices, weights, p[: old.stop])
                    for p in self.prototypes
                ]
            for m, matrix in enumerate(self.prototypes):
                local = features[m][to_device(samples, features[m].device)].to(matrix.dtype)
                if init[m] is not None:  # on the prototypes' scale
                    local = self.as_row(local)
                row = refine_prototype(init[m], local, self.config.prototype_refine)
                matrix[c] = self.as_row(row.detach())

    def _query(self, c: int, features, samples: torch.Tensor) -> torch.Tensor:
        """The image feature of the class's first local sample (`samples`: its indices), in
        text space when aligned; otherwise the text feature of its name."""
        if self.text_encoder.aligned:
            first = features[-1][to_device(samples[:1], features[-1].device)]
            return self.text_encoder.project_images(first)[0]
        return self.class_text[c]

    def class_means(self, features, labels, classes) -> ClassMeans:
        """Per expert, the mean local feature of each of `classes` (unit length when the
        prototypes are)."""
        means = []
        for feature in features:
            device_labels = labels.to(feature.device)
            rows = {c: feature[device_labels == c].float().mean(0) for c in classes}
            means.append({c: self.as_row(row) for c, row in rows.items()})
        return means

    @torch.no_grad()
    def refine(self, class_means: ClassMeans, epochs: int | None = None) -> None:
        """Per-epoch refinement (Algorithm 1, line 24) of every row in `class_means`, for
        `epochs` epochs (default: the local epochs) when nothing else trains in between."""
        for _ in range(self.config.local_epochs if epochs is None else epochs):
            for matrix, means in zip(self.prototypes, class_means):
                for c, mean in means.items():
                    matrix[c] = self.as_row(halve_towards(matrix[c], mean.to(matrix.dtype)))

    # --- upload and merge --------------------------------------------------------------------
    def upload(self, classes: torch.Tensor) -> State:
        """Each expert's rows of the local classes."""
        return {
            key: self.as_row(matrix[classes.to(self.device)].detach()).cpu().numpy()
            for key, matrix in zip(self.keys, self.prototypes)
        }

    def merge(
        self,
        state: State,
        updates: list[State],
        weights: list[int],
        senders: list[int | None],
    ) -> State:
        """Each class's rows weighted by the clients' counts of it, its holders absent from
        the round weighing in with its global row (`merge_rows_keeping_absent_holders`), and
        the global counts. Updates without a sender (a client's own model, `eval-local`)
        replace the rows they carry."""
        ids, counts = [u["class-ids"] for u in updates], [u[COUNTS] for u in updates]
        merged = {}
        for key in self.keys:
            rows = [u[key] for u in updates]
            if any(sender is None for sender in senders):
                merged[key], merged[COUNTS] = merge_class_rows(
                    state[key], state[COUNTS], ids, rows, counts, self.merge_rule
                )
                continue
            merged[key], merged[COUNTS], merged[HOLDER_COUNTS] = merge_rows_keeping_absent_holders(
                state[key],
                state[COUNTS],
                state[HOLDER_COUNTS],
                senders,
                ids,
                rows,
                counts,
                self.merge_rule,
            )
        return merged

    def feature_rows(self) -> set[str]:
        return set(self.keys)

    def final_prototypes(self, state: State) -> torch.Tensor:
        return torch.from_numpy(state[self.keys[-1]])


class PrototypeTraining(ExpertTraining):
    """The prototypes train at `prototype-lr`; rows of the refined classes are halved
    towards their class means at the start of every epoch; their movement is measured."""

    def __init__(self, experts: PrototypeExperts, class_means: ClassMeans, local: list[int]):
        super().__init__(experts.prototypes, lr=experts.config.prototype_lr)
        self.experts = experts
        self.class_means = class_means
        self.local = local
        self.moved = [torch.zeros_like(p) for p in experts.prototypes]
        self.before: list[torch.Tensor] = []

    def start_epoch(self, training: LocalTraining) -> None:
        if self.class_means:
            with training.unperturbed():
                self.experts.refine(self.class_means, epochs=1)
        self.before = [p.detach().clone() for p in self.trained]

    def end_epoch(self, training: LocalTraining) -> None:
        with training.unperturbed():
            for moved, matrix, before in zip(self.moved, self.trained, self.before):
                moved += matrix.detach() - before

    def movement(self) -> float:
        """Mean over experts and local classes of |optimizer's displacement of a row| / |row|."""
        ratios = [
            float(shift[c].norm() / matrix[c].norm().clamp_min(1e-12))
            for shift, matrix in zip(self.moved, self.trained)
            for c in self.local
        ]
        return sum(ratios) / max(len(ratios), 1)


def _check_class_names(class_names: list[str]) -> None:
    missing = [index for index, name in enumerate(class_names) if not str(name).strip()]
    if missing or len(set(class_names)) != len(class_names):
        raise ConfigError(
            "run config key 'use-text-init': text initialization needs a distinct name for "
            f"every class; the data set's names are {class_names[:10]!r}"
            f"{' ...' if len(class_names) > 10 else ''} (set use-text-init=false)"
        )
