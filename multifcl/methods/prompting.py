"""What the prompt methods (`l2p`, `coda-prompt`) share.

A frozen token backbone (ViT/CLIP), trainable prompts that enter its token sequence, and a
linear head over all classes of the stream. The query that picks or weighs the prompts is
the frozen backbone's own final (CLS) feature of the image, from a pass without prompts;
with `augment = "none"` it is computed once per sample per task (the feature cache). A
client trains the prompts and the head with the cross-entropy over the current task's
logits only (L2P's `train_mask`, CODA-Prompt's masking of the old logits) plus the
prompts' own loss term; the server averages every trained array (FedAvg, weighted by the
clients' sample counts). Evaluation takes the logits of every seen class.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.backbones import Backbone
from multifcl.backbones.host_transfer import to_device
from multifcl.config import FORCE_CACHE, prompts_need_tokens
from multifcl.data import InMemoryImages, Task
from multifcl.data.augmentation import TrainAugmentation
from multifcl.features import FeatureKey, encoder_fingerprint, feature_cache_for
from multifcl.methods.base import SECONDS_PER_STEP, ClientUpdate, State, batch_indices
from multifcl.methods.fedavg_model import FedAvgModelMethod
from multifcl.optim.local_training import LocalTraining, LossSum


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside: torch's CPU generator seeded with `seed`; restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class PromptModule(nn.Module, ABC):
    """Trainable prompts over a frozen token backbone. `training_task` is the task a client
    is training (None at evaluation)."""

    training_task: Task | None = None

    @abstractmethod
    def features(
        self, backbone: Backbone, pixels: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N x d features for the head, the scalar loss term the prompts add)."""


class PromptedClassifier(nn.Module):
    """Pixels -> frozen query -> prompted backbone features -> linear head (all classes)."""

    def __init__(
        self, backbone: Backbone, prompts: PromptModule, num_classes: int, seed: int
    ) -> None:
        super().__init__()
        self.backbone = [backbone]  # a list keeps the shared backbone out of this state_dict
        self.prompts = prompts
        with seeded(seed):
            self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.to(backbone.device)

    @torch.no_grad()
    def query(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's final feature, without prompts."""
        return self.backbone[0](pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features, _ = self.prompts.features(self.backbone[0], pixels, self.query(pixels))
        return self.head(features)


class PromptMethod(FedAvgModelMethod):
    """A prompt module (`build_prompts`) and a linear head, trained locally and FedAvg'd."""

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        if not backbone.token_features:
            raise prompts_need_tokens(self.name, backbone.name)
        self.model = PromptedClassifier(
            backbone, self.build_prompts(), self.num_classes, config.seed
        )
        self.model.eval()  # no dropout: runs are reproducible from the seed
        self.feature_cache = feature_cache_for(config, "train")
        description = (backbone.name, backbone.frozen_precision, str(backbone.image_size))
        self.query_fingerprint = encoder_fingerprint(description, {})
        self._classes = range(0)  # the current task's classes, while a client trains
        self._keep_initial_state()

    @abstractmethod
    def build_prompts(self) -> PromptModule:
        """This method's prompts, initialized from the run's seed."""

    # --- client --------------------------------------------------------------------------
    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._load(state)
        augment = TrainAugmentation(self.config.augment, self.backbone.image_size, seed)
        queries = self._cached_queries(data, task, augment)
        generator = torch.Generator().manual_seed(seed)
        training = LocalTraining(self.config, self.model, -(-len(data) // self.config.batch_size))
        labels = torch.as_tensor(data.labels)
        losses = LossSum()
        self._classes = task.classes
        self.model.prompts.training_task = task
        try:
            for _ in range(self.config.local_epochs):
                training.start_epoch()
                for index in batch_indices(len(data), self.config.batch_size, generator):
                    pixels = self.backbone.preprocess(
                        augment(data.images[index], self.backbone.device)
                    )
                    query = (
                        self.model.query(pixels)
                        if queries is None
                        else to_device(queries[index], pixels.device)
                    )
                    batch_labels = to_device(labels[index], pixels.device)
                    loss = training.step(self._loss, pixels, query, batch_labels)
                    losses.add(loss, len(index))
        finally:
            self.model.prompts.training_task = None
        training.finish()
        return ClientUpdate(
            self._current_state(),
            num_examples=len(data),
            train_loss=losses.mean(),
            metrics={SECONDS_PER_STEP: training.seconds_per_step},
        )

    def _cached_queries(
        self, data: InMemoryImages, task: Task, augment: TrainAugmentation
    ) -> torch.Tensor | None:
        """The frozen queries of `data`, once per task; None when augmentation changes them
        at every step (`cache-features = "force"` keeps the unaugmented ones)."""
        reuse = not augment.enabled or self.config.cache_features == FORCE_CACHE
        if not (self.config.cache_features and reuse):
            return None
        key = FeatureKey(data.fingerprint, self.query_fingerprint, task.index)
        self.feature_cache.keep_only(lambda k: k.task == key.task)
        encode = lambda: [self.backbone.encode(data.images, self.extract_batches)]
        return self.feature_cache.get_or_compute(key, encode)[0]

    def _loss(self, pixels: torch.Tensor, query: torch.Tensor, labels: torch.Tensor):
        """Cross-entropy over the current task's logits, plus the prompts' own term."""
        features, prompt_loss = self.model.prompts.features(self.backbone, pixels, query)
        start, stop = self._classes.start, self._classes.stop
        logits = self.model.head(features)[:, start:stop]
        return F.cross_entropy(logits, labels - start) + prompt_loss
