"""FedProto (Tan et al., AAAI 2022) on a class-incremental stream.

Clients train what `finetune` trains (the backbone's last block and final layer, and a
head) with the cross-entropy plus `fedproto-lambda` x the mean squared distance between
each sample's feature and the global prototype of its class (the official code's
`nn.MSELoss`, over the batch and the feature dimensions; a sample whose class has no global
prototype yet adds zero, as there). After training, each client sends the mean feature of
each class it holds (its local prototypes, by the trained model, without augmentation) with
its count, and the trained weights. The server merges each class's prototype weighted by
the clients' counts (the paper's rule; the code takes the plain mean) and FedAvgs the
weights (the paper keeps one model per client: our clients keep nothing between rounds).
Inference is the nearest global prototype by Euclidean distance (the code's MSE, whose
order it shares).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multifcl.aggregation import merge_class_rows
from multifcl.data import InMemoryImages, Task
from multifcl.methods.base import ClientUpdate, State, UpdateLayout, batches
from multifcl.methods.finetune import FinetuneMethod, TrainableTop
from multifcl.methods.pilora import DistanceClassifier, prototype_distances

PROTOTYPES = "prototypes"
CLASS_COUNTS = "class-counts"
CLASS_MEANS = "class-means"  # the upload: local prototypes, one row per class held
CLASS_IDS = "class-ids"


class TrainedFeatures(nn.Module):
    """Pixels -> the trained model's final feature (the prototypes' space)."""

    def __init__(self, model: TrainableTop) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.features(pixels)


class FedProtoMethod(FinetuneMethod):
    name = "fedproto"
    runs_asynchronously = False  # not checked asynchronously yet (docs/asynchronous.md)

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self._targets = torch.zeros(0)  # the global prototypes for the client's training
        self._has_target = torch.zeros(0, dtype=torch.bool)

    # --- state ---------------------------------------------------------------------------
    def initial_state(self) -> State:
        return {
            **super().initial_state(),
            PROTOTYPES: np.zeros((self.num_classes, self.backbone.feature_dim), np.float32),
            CLASS_COUNTS: np.zeros(self.num_classes, np.float32),
        }

    def _load(self, state: State) -> None:
        super()._load(_model_part(state))

    # --- client --------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        device = self.backbone.device
        self._targets = torch.from_numpy(state[PROTOTYPES]).to(device)
        self._has_target = torch.from_numpy(state[CLASS_COUNTS] > 0).to(device)
        update = super().train_client(state, data, task, seed)
        update.arrays.update(self._local_prototypes(data))
        return update

    def _loss(self, pixels: torch.Tensor, labels: torch.Tensor, seen: int) -> torch.Tensor:
        features = self.model.features(pixels)
        loss = self._features_loss(features, labels, seen)
        if not self.config.fedproto_lambda or not self._has_target[labels].any():
            return loss
        has_target = self._has_target[labels][:, None]
        targets = torch.where(has_target, self._targets[labels], features.detach())
        return loss + self.config.fedproto_lambda * F.mse_loss(features, targets)

    @torch.no_grad()
    def _local_prototypes(self, data: InMemoryImages) -> State:
        """The trained model's mean feature of each class the client holds, with counts."""
        features = torch.cat(
            [
                self.model.features(self.backbone.preprocess(images)).double().cpu()
                for images, _ in batches(data, self.config.batch_size)
            ]
        )
        labels = torch.as_tensor(data.labels)
        classes = torch.unique(labels)
        return {
            CLASS_IDS: classes.numpy().astype(np.int64),
            CLASS_MEANS: torch.stack([features[labels == c].mean(0) for c in classes])
            .numpy()
            .astype(np.float32),
            CLASS_COUNTS: np.array([(labels == c).sum() for c in classes], np.float32),
        }

    # --- server --------------------------------------------------------------------------
    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """The trained weights whole, and the local prototypes as rows of their classes."""
        return UpdateLayout(
            rows={CLASS_MEANS: PROTOTYPES, CLASS_COUNTS: CLASS_COUNTS},
            dense=super().update_layout(state, task).dense,
            feature_rows=frozenset({CLASS_MEANS}),
        )

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """FedAvg of the weights; count-weighted prototypes of the classes reported."""
        weights = [ClientUpdate(_model_part(u.arrays), u.num_examples) for u in updates]
        prototypes, counts = merge_class_rows(
            state[PROTOTYPES],
            state[CLASS_COUNTS],
            [u.arrays[CLASS_IDS] for u in updates],
            [u.arrays[CLASS_MEANS] for u in updates],
            [u.arrays[CLASS_COUNTS] for u in updates],
            self.merge_rule,
        )
        model = super().merge(_model_part(state), weights)
        return {**model, PROTOTYPES: prototypes, CLASS_COUNTS: counts}

    def classifier(self, state: State) -> nn.Module:
        """Logits: minus the distance of the trained feature to each global prototype."""
        self._load(state)
        prototypes = torch.from_numpy(state[PROTOTYPES]).to(self.backbone.device)
        return DistanceClassifier(TrainedFeatures(self.model), prototypes)

    def _top_logits(self, state: State):
        """Trunk output -> minus the distances of its trained feature to the prototypes."""
        self._load(state)
        prototypes = torch.from_numpy(state[PROTOTYPES]).to(self.backbone.device)
        return lambda hidden: -prototype_distances(self.model.top_features(hidden), prototypes)

    def final_prototypes(self, state: State) -> torch.Tensor:
        return torch.from_numpy(state[PROTOTYPES])


def _model_part(arrays: State) -> State:
    """The trained weights: everything but the prototypes and the per-class uploads."""
    extra = {PROTOTYPES, CLASS_COUNTS, CLASS_MEANS, CLASS_IDS}
    return {key: value for key, value in arrays.items() if key not in extra}
