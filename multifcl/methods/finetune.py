"""Fine-tuning: a classifier head and the backbone's last block and final layer, with FedAvg.

Nothing protects old classes, so this is the forgetting lower bound. The trained copy of
the last block lives in the method, so the shared backbone stays untouched. The head is a
linear layer (`head = "default"`) or a fixed simplex ETF (`head = "etf"`, trained towards
with `etf-loss`); the optimizer and schedule are the run's plug-ins.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones import Backbone
from multifcl.backbones.host_transfer import to_device
from multifcl.data import InMemoryImages, Task
from multifcl.data.augmentation import TrainAugmentation
from multifcl.features import FeatureSplit, encoder_fingerprint
from multifcl.heads.etf import ETFHead, ETFObjective, mean_pairwise_class_mean_cosine
from multifcl.methods.base import (
    CLASS_MEAN_COSINE,
    SECONDS_PER_STEP,
    ClientUpdate,
    State,
    batches,
)
from multifcl.methods.fedavg_model import FedAvgModelMethod
from multifcl.optim.local_training import LocalTraining, LossSum


class TrainableTop(nn.Module):
    """The frozen trunk, then trainable copies of the last block and final layer, and a head:
    linear, or a fixed ETF behind the signed map `etf_map` (None: linear)."""

    def __init__(
        self, backbone: Backbone, num_classes: int, seed: int, etf_map: str | None
    ) -> None:
        super().__init__()
        self.trunk = [backbone]  # a list keeps the shared backbone out of this state_dict
        self.block = copy.deepcopy(backbone.blocks[-1]).requires_grad_(True)
        self.final = copy.deepcopy(backbone.final).requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if etf_map is not None:
                self.head = ETFHead(backbone.feature_dim, num_classes, seed, feature_map=etf_map)
            else:
                self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.to(backbone.device)

    def trunk_hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen trunk's output: the input of the trainable last block (no gradient)."""
        backbone = self.trunk[0]
        with torch.no_grad():
            return backbone.hidden_before(pixels, backbone.num_blocks - 1)

    def top_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final feature from the trunk's output, through the trainable block and layer."""
        return self.final(self.trunk[0].run_block(self.block, hidden))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.top_features(self.trunk_hidden(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))

    def block_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The frozen trunk's taps before the last block, then the trained final feature
        (one pass through the trunk: its output is kept on the way)."""
        backbone = self.trunk[0]
        trunk_output = []

        def keep_trunk_output(index: int, hidden: torch.Tensor) -> torch.Tensor:
            if index == backbone.num_blocks - 2:
                trunk_output.append(hidden.float())
            return hidden

        taps = backbone.taps(pixels, range(backbone.num_taps), keep_trunk_output)[:-1]
        hidden = trunk_output[0] if trunk_output else self.trunk_hidden(pixels)
        return taps + [self.top_features(hidden)]


class FinetuneMethod(FedAvgModelMethod):
    name = "finetune"
    runs_asynchronously = True  # FedAvg of one model over every task of the round

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.etf = config.head == "etf"
        self.etf_map = config.etf_map if self.etf else None
        self.etf_objective = ETFObjective.of(config)
        self.model = TrainableTop(backbone, self.num_classes, config.seed, self.etf_map)
        self.model.eval()  # no dropout: runs are reproducible from the seed
        self._keep_initial_state()

    def _loss(self, pixels: torch.Tensor, labels: torch.Tensor, seen: int) -> torch.Tensor:
        return self._features_loss(self.model.features(pixels), labels, seen)

    def _features_loss(self, features: torch.Tensor, labels: torch.Tensor, seen: int):
        """Cross-entropy over the seen classes, or `etf-loss` towards the fixed vertices."""
        if self.etf:
            return self.etf_objective.loss(self.model.head, features, labels, seen)
        return F.cross_entropy(self.model.head(features)[:, :seen], labels)

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._load(state)
        steps = -(-len(data) // self.config.batch_size)
        training = LocalTraining(self.config, self.model, steps)
        generator = torch.Generator().manual_seed(seed)
        augment = TrainAugmentation(self.config.augment, self.backbone.image_size, seed)
        seen = task.seen_classes.stop
        losses = LossSum()
        self.model.head.train()  # an ETF's BatchNorm map uses batch statistics while training
        try:
            for _ in range(self.config.local_epochs):
                training.start_epoch()
                for images, labels in batches(data, self.config.batch_size, generator):
                    pixels = self.backbone.preprocess(augment(images, self.backbone.device))
                    labels = to_device(labels, pixels.device)
                    losses.add(training.step(self._loss, pixels, labels, seen), len(labels))
        finally:
            self.model.head.eval()
        training.finish()  # nothing perturbed leaves the client
        metrics = {SECONDS_PER_STEP: training.seconds_per_step}
        if self.etf:
            metrics[CLASS_MEAN_COSINE] = self._class_mean_cosine(data)
        return ClientUpdate(
            self._current_state(),
            num_examples=len(data),
            train_loss=losses.mean(),
            metrics=metrics,
        )

    @torch.no_grad()
    def _class_mean_cosine(self, data: InMemoryImages) -> float:
        """How close the local class means of the projected features are to a simplex."""
        if len(set(data.labels.tolist())) < 2:
            return float("nan")
        features = torch.cat(
            [
                self.model.head.projected(self.model.features(self.backbone.preprocess(images)))
                for images, _ in batches(data, self.config.batch_size)
            ]
        )
        return mean_pairwise_class_mean_cosine(features.cpu(), torch.as_tensor(data.labels))

    def feature_split(self, state: State) -> FeatureSplit | None:
        """On a CNN, evaluation caches the frozen trunk's output (the input of the trained
        last block) and runs only the trained top on it for each state. A transformer's
        token sequence is not kept (197 x 768 floats an image for ViT-B/16): None."""
        backbone = self.backbone
        if backbone.token_features:
            return None
        description = (backbone.name, backbone.frozen_precision, str(backbone.image_size))
        top_logits = self._top_logits(state)
        return FeatureSplit(
            encoder_fingerprint((*description, "trunk"), {}),
            self._encode_trunk,
            lambda trunk: top_logits(trunk[0]),
        )

    def _top_logits(self, state: State):
        """Trunk output -> the classifier's logits under `state` (`feature_split`)."""
        self._load(state)
        return lambda hidden: self.model.head(self.model.top_features(hidden))

    @torch.no_grad()
    def _encode_trunk(self, images: torch.Tensor) -> list[torch.Tensor]:
        parts = self.extract_batches.map(
            len(images),
            lambda a, b: self.model.trunk_hidden(self.backbone.preprocess(images[a:b])),
        )
        return [torch.cat([hidden for _, _, hidden in parts])]

    def block_features(self, state: State, pixels: torch.Tensor) -> list[torch.Tensor]:
        self._load(state)
        return self.model.block_features(pixels)

    def final_etf_head(self, state: State) -> ETFHead | None:
        self._load(state)
        return self.model.head if self.etf else None
