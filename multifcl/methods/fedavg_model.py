"""A method whose global state is one module's weights, every array averaged by FedAvg."""

from __future__ import annotations

import torch
from torch import nn

from multifcl.aggregation import weighted_average
from multifcl.data import Task
from multifcl.methods.base import ClientUpdate, Method, State, UpdateLayout


class FedAvgModelMethod(Method):
    """The state is `self.model`'s state_dict; a subclass builds `self.model` and then calls
    `_keep_initial_state()`. Clients upload every array whole; the server averages them
    weighted by sample counts (or by `robust-merge`)."""

    model: nn.Module

    def _keep_initial_state(self) -> None:
        self._initial_state = self._current_state()

    def initial_state(self) -> State:
        return {key: value.copy() for key, value in self._initial_state.items()}

    def _current_state(self) -> State:
        """Trained weights only (an ETF head's fixed vertices are not in its state_dict)."""
        return {
            key: value.detach().cpu().numpy().copy()
            for key, value in self.model.state_dict().items()
        }

    def _load(self, state: State) -> None:
        device = self.backbone.device
        weights = {k: torch.from_numpy(v).to(device) for k, v in state.items()}
        self.model.load_state_dict(weights, strict=False)

    def update_layout(self, state: State, task: Task) -> UpdateLayout:
        """Every trained weight, whole (FedAvg)."""
        return UpdateLayout(dense=frozenset(self._initial_state))

    def merge(self, state: State, updates: list[ClientUpdate]) -> State:
        weights = [u.num_examples for u in updates]
        return weighted_average([u.arrays for u in updates], weights, self.merge_rule, state)

    def classifier(self, state: State) -> nn.Module:
        self._load(state)
        return self.model
