"""Frozen backbone + class-mean prototypes + cosine classifier (the paper's ViT/CLIP rows).

Each client uploads the mean feature and the sample count of every class it holds; the
server merges each class's row weighted by the clients' counts, which gives the exact
global class mean.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import merge_class_rows
from multifcl.data import InMemoryImages, Task
from multifcl.heads import CosinePrototypeHead
from multifcl.methods.base import ClientUpdate, Method, State


class PrototypesMethod(Method):
    name = "prototypes"

    def initial_state(self) -> State:
        return {
            "prototypes": np.zeros((self.num_classes, self.backbone.feature_dim), np.float32),
            "class-counts": np.zeros(self.num_classes, np.float32),
        }

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        features = self.backbone.encode(data.images, self.config.batch_size).double().cpu()
        labels = torch.as_tensor(data.labels)
        classes = torch.unique(labels)
        means = torch.stack([features[labels == c].mean(0) for c in classes])
        counts = torch.stack([(labels == c).sum() for c in classes])
        arrays = {
            "class-ids": classes.numpy().astype(np.int64),
            "class-means": means.numpy().astype(np.float32),
            "class-counts": counts.numpy().astype(np.float32),
        }
        return ClientUpdate(arrays, num_examples=len(data))

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        prototypes, counts = merge_class_rows(
            state["prototypes"],
            state["class-counts"],
            [u.arrays["class-ids"] for u in updates],
            [u.arrays["class-means"] for u in updates],
            [u.arrays["class-counts"] for u in updates],
        )
        return {"prototypes": prototypes, "class-counts": counts}

    def classifier(self, state: State) -> nn.Module:
        head = CosinePrototypeHead(torch.from_numpy(state["prototypes"]).to(self.backbone.device))
        return nn.Sequential(self.backbone, head)
