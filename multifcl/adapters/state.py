"""An adapter bank's sets in a method's global state: their keys, loading them, the set a
task trains, and the merged rounds of each set's adapter-only phase (`ADAPTER_ROUNDS`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multifcl.adapters.policy import AdapterPolicy

ADAPTER_PREFIX = "adapter/"
ADAPTER_ROUNDS = "adapter-rounds"  # per adapter set: merged rounds of its adapter-only phase

State = dict[str, np.ndarray]


class AdapterSets:
    """The bank's sets (`policy.num_sets` of them) under state keys `adapter/<set>/...`."""

    def __init__(self, bank, policy: AdapterPolicy) -> None:
        self.bank = bank
        self.policy = policy
        self.num_sets = policy.num_sets
        # the seeded weights, kept: `load` overwrites the parameters the arrays are read from
        self._initial_arrays = self.arrays(range(self.num_sets))

    @property
    def encoder(self):
        """The backbone the sets act in (the bank's own copy for LoRA)."""
        return self.bank.backbone

    @property
    def after_block(self):
        """The backbone hook that applies the sets after each block (None: inside layers)."""
        return self.bank.after_block

    def parameters(self, sets: Iterable[int]) -> dict[str, nn.Parameter]:
        """The parameters of `sets`, by state key."""
        parameters = {}
        for index in sets:
            parameters.update(self.bank.set_parameters(index))
        return {ADAPTER_PREFIX + key: value for key, value in parameters.items()}

    def all_parameters(self) -> dict[str, nn.Parameter]:
        return self.parameters(range(self.num_sets))

    def arrays(self, sets: Iterable[int]) -> State:
        """Copies of the parameters of `sets`, by state key."""
        return {
            key: value.detach().cpu().numpy().copy() for key, value in self.parameters(sets).items()
        }

    def initial_state(self) -> State:
        """No adapter-only round yet, then every set's initial weights (none without sets)."""
        rounds = {ADAPTER_ROUNDS: np.zeros(self.num_sets, np.int64)} if self.num_sets else {}
        return {**rounds, **{key: value.copy() for key, value in self._initial_arrays.items()}}

    def load(self, state: State) -> None:
        with torch.no_grad():
            for key, value in self.all_parameters().items():
                value.copy_(torch.from_numpy(state[key]))

    def trainable_set(self, task_index: int) -> int | None:
        """The set trained during task `task_index`, if any."""
        return self.policy.trainable_set(task_index)

    def trained_set(self, arrays: State) -> int | None:
        """The set an update's `arrays` carry, if any."""
        for index in range(self.num_sets):
            if next(iter(self.parameters([index]))) in arrays:
                return index
        return None

    def adapter_rounds(self, state: State, index: int) -> int:
        """Merged rounds of set `index`'s adapter-only phase."""
        return int(state[ADAPTER_ROUNDS][index])

    def count_adapter_round(self, state: State, index: int) -> np.ndarray:
        """`ADAPTER_ROUNDS` after one more merged adapter-only round of set `index`."""
        rounds = state[ADAPTER_ROUNDS].copy()
        rounds[index] += 1
        return rounds

    def trainable_module(self, index: int | None) -> nn.Module:
        """The module whose layers TempBalance balances while set `index` trains."""
        return nn.Module() if index is None else self.bank.trainable_module(index)

    def export(self, state: State, folder: Path) -> list[Path]:
        """The bank's export of the state's sets."""
        self.load(state)
        return self.bank.export(folder)
