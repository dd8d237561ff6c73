"""Frozen backbone + class-mean prototypes + cosine classifier (the paper's ViT/CLIP rows).

Each client uploads the mean feature and the sample count of every class it holds; the
server folds each class's row from every client that holds it into a count-weighted mean,
which gives the exact global class mean. A client's class means do not change between its
rounds (the encoder is frozen), so `class-holders` records who has been folded in: a row
sent again is not counted twice, and a holder sampled, or training the task, in an earlier
round than the others still counts (client sampling, asynchronous streams).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from multifcl.aggregation import fold_in_new_holders, merge_class_rows
from multifcl.data import InMemoryImages, Task
from multifcl.features import (
    FeatureKey,
    FeatureSplit,
    encoder_fingerprint,
    feature_cache_for,
)
from multifcl.heads import CosinePrototypeHead
from multifcl.methods.base import ClientUpdate, Method, State, UpdateLayout

HOLDERS = "class-holders"


class PrototypesMethod(Method):
    name = "prototypes"
    runs_asynchronously = True  # per-class rows: each class from its holders, tasks do not mix
    growing_state_keys = frozenset({HOLDERS})  # one column per partition id seen

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.feature_cache = feature_cache_for(config, "train")
        backbone_description = (backbone.name, backbone.frozen_precision, str(backbone.image_size))
        self.encoder_fingerprint = encoder_fingerprint(backbone_description, {})

    def initial_state(self) -> State:
        return {
            "prototypes": np.zeros((self.num_classes, self.backbone.feature_dim), np.float32),
            "class-counts": np.zeros(self.num_classes, np.float32),
            # [c, p] = 1 once client p's mean of class c is in the row; widened as ids come
            HOLDERS: np.zeros((self.num_classes, 1), np.float32),
        }

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        features = self._final_features(data, task).double().cpu()
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

    def _final_features(self, data: InMemoryImages, task: Task) -> torch.Tensor:
        """The backbone's final features of `data`, computed once per task (`cache-features`)."""
        if not self.config.cache_features:
            return self._encode(data.images)[0]
        key = FeatureKey(data.fingerprint, self.encoder_fingerprint, task.index)
        self.feature_cache.keep_only(lambda k: k.task == key.task)
        return self.feature_cache.get_or_compute(key, lambda: self._encode(data.images))[0]

    def _encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.backbone.encode(images, self.extract_batches)]

    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        rows = {"class-means": "prototypes", "class-counts": "class-counts"}
        return UpdateLayout(rows=rows, feature_rows=frozenset({"class-means"}))

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        """Each class's row over all its holders so far (`fold_in_new_holders`). Updates
        without a sender (a client's own model, `eval-local`) replace the rows they carry,
        as if theirs were the only data."""
        rows = (
            [u.arrays["class-ids"] for u in updates],
            [u.arrays["class-means"] for u in updates],
            [u.arrays["class-counts"] for u in updates],
        )
        if any(u.sender is None for u in updates):
            prototypes, counts = merge_class_rows(
                state["prototypes"], state["class-counts"], *rows, self.merge_rule
            )
            return {**state, "prototypes": prototypes, "class-counts": counts}
        prototypes, counts, holders = fold_in_new_holders(
            state["prototypes"],
            state["class-counts"],
            state[HOLDERS],
            [u.sender for u in updates],
            *rows,
            self.merge_rule,
        )
        return {"prototypes": prototypes, "class-counts": counts, HOLDERS: holders}

    def classifier(self, state: State) -> nn.Module:
        head = CosinePrototypeHead(torch.from_numpy(state["prototypes"]).to(self.backbone.device))
        return nn.Sequential(self.backbone, head)

    def feature_split(self, state: State) -> FeatureSplit:
        """The backbone is frozen: test features hold for the whole stream."""
        head = CosinePrototypeHead(torch.from_numpy(state["prototypes"]).to(self.backbone.device))
        return FeatureSplit(self.encoder_fingerprint, self._encode, lambda f: head(f[0]))
