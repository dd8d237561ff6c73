"""Fine-tuning: a linear head and the backbone's last block and final layer, with FedAvg.

Nothing protects old classes, so this is the forgetting lower bound. The trained copy of
the last block lives in the method, so the shared backbone stays untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from multifcl.aggregation import weighted_average
from multifcl.backbones import Backbone
from multifcl.data import InMemoryImages, Task
from multifcl.methods.base import ClientUpdate, Method, State, batches

MOMENTUM = 0.9


class TrainableTop(nn.Module):
    """The frozen trunk, then trainable copies of the last block and final layer, and a head."""

    def __init__(self, backbone: Backbone, num_classes: int, seed: int) -> None:
        super().__init__()
        self.trunk = [backbone]  # a list keeps the shared backbone out of this state_dict
        self.block = copy.deepcopy(backbone.blocks[-1]).requires_grad_(True)
        self.final = copy.deepcopy(backbone.final).requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.to(backbone.device)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        backbone = self.trunk[0]
        with torch.no_grad():
            hidden = backbone.hidden_before(pixels, backbone.num_blocks - 1)
        return self.head(self.final(backbone.run_block(self.block, hidden)))


class FinetuneMethod(Method):
    name = "finetune"

    def __init__(self, config, backbone, class_names) -> None:
        super().__init__(config, backbone, class_names)
        self.model = TrainableTop(backbone, self.num_classes, config.seed)
        self.model.eval()  # no dropout: runs are reproducible from the seed
        self._initial_state = self._current_state()

    def initial_state(self) -> State:
        return {key: value.copy() for key, value in self._initial_state.items()}

    def _current_state(self) -> State:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def _load(self, state: State) -> None:
        device = self.backbone.device
        self.model.load_state_dict({k: torch.from_numpy(v).to(device) for k, v in state.items()})

    def train_client(
        self, state: State, data: InMemoryImages, task: Task, seed: int
    ) -> ClientUpdate:
        self._load(state)
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr, momentum=MOMENTUM)
        generator = torch.Generator().manual_seed(seed)
        seen = task.seen_classes.stop
        total_loss, total_seen = 0.0, 0
        for _ in range(self.config.local_epochs):
            for images, labels in batches(data, self.config.batch_size, generator):
                logits = self.model(self.backbone.preprocess(images))[:, :seen]
                loss = F.cross_entropy(logits, labels.to(logits.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(labels)
                total_seen += len(labels)
        return ClientUpdate(
            self._current_state(),
            num_examples=len(data),
            train_loss=total_loss / max(total_seen, 1),
        )

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        return weighted_average([u.arrays for u in updates], [u.num_examples for u in updates])

    def classifier(self, state: State) -> nn.Module:
        self._load(state)
        return self.model
