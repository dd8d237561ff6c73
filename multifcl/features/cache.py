"""Features computed once and reused while nothing upstream of them changes.

A client whose encoder is frozen for the whole task (the `prototypes` baseline; MultiFCL
with `first-task` adapters from task 2 on) runs the backbone once per sample per task and
trains its heads from the stored multi-scale features in every round and epoch; the server
encodes each task's test set once per frozen encoder. An entry is named by a `FeatureKey`:
a fingerprint of the exact images and labels, a fingerprint of everything upstream that
could change the features (backbone, precision, taps, adapter weights), and the task.
Entries live on the CPU within a memory budget; the least recently used beyond it are
written to a spill folder and read back when needed. A client's cache may have a second
level, the run's `SharedFeatureStore` on this machine, which every process of the run
reads and writes (`share_features_on_this_machine`). The folder goes with the cache (and
with its process, at exit); what a killed process left is removed when its run starts or
resumes (`remove_spilled_features`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from multifcl.backbones.host_transfer import to_device
from multifcl.config import ExperimentConfig

if TYPE_CHECKING:
    from multifcl.features.shared_store import SharedFeatureStore

Features = list[torch.Tensor]
SPILL_FOLDER = "feature-cache"  # under a run's output folder
CACHE_HITS = "feature-cache-hits"  # a client's lookups answered from a cache, in its reply
CACHE_MISSES = "feature-cache-misses"  # a client's lookups that ran the encoder
_CACHE_NUMBERS = itertools.count()  # one spill folder per cache, even within one process


@dataclass(frozen=True)
class FeatureKey:
    """What a stored feature list depends on."""

    data: str  # the images' and labels' fingerprint (`InMemoryImages.fingerprint`)
    encoder: str  # fingerprint of everything upstream of the features
    task: int


def encoder_fingerprint(description: Iterable[str], arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of the encoder's description (name, precision, taps) and its variable weights."""
    digest = hashlib.blake2b(digest_size=16)
    for part in description:
        digest.update(part.encode() + b"\0")
    for key in sorted(arrays):
        digest.update(key.encode() + b"\0")
        digest.update(np.ascontiguousarray(arrays[key]))
    return digest.hexdigest()


class FeatureCache:
    """Feature lists by `FeatureKey`: in memory up to `memory_bytes`, beyond that on disk.

    Parameters
    ----------
    memory_bytes : int
        Bytes of features kept in memory; the least recently used entries beyond are spilled.
    spill_dir : Path, optional
        Where spilled entries go; a temporary folder (removed with the cache) when omitted.
    """

    def __init__(self, memory_bytes: int, spill_dir: Path | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.spill_dir = spill_dir
        if spill_dir is not None:  # removed with the cache, or when the process exits
            weakref.finalize(self, shutil.rmtree, spill_dir, ignore_errors=True)
        self._temporary: tempfile.TemporaryDirectory | None = None
        self._memory: OrderedDict[FeatureKey, Features] = OrderedDict()
        self._spilled: dict[FeatureKey, Path] = {}
        self.shared_store: SharedFeatureStore | None = None  # the machine's level below this one
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    @property
    def bytes_in_memory(self) -> int:
        return sum(_nbytes(features) for features in self._memory.values())

    def get_or_compute(
        self, key: FeatureKey, compute: Callable[[], Features], device: torch.device | None = None
    ) -> Features:
        """The features of `key`, computed by `compute()` only the first time; on `device`."""
        features = self._memory.get(key)
        if features is not None:
            self._memory.move_to_end(key)
            self.hits += 1
        elif key in self._spilled:
            path = self._spilled.pop(key)
            features = torch.load(path, weights_only=True)
            path.unlink()
            self.hits += 1
            self._store(key, features)
        else:
            features = self.shared_store.get(key) if self.shared_store is not None else None
            if features is not None:
                self.hits += 1
            else:
                self.misses += 1
                features = [tensor.detach().cpu() for tensor in compute()]
                if self.shared_store is not None:
                    self.shared_store.put(key, features)
            self._store(key, features)
        return [to_device(t, device) for t in features] if device is not None else features

    def keep_only(self, keep: Callable[[FeatureKey], bool]) -> None:
        """Drop every entry whose key `keep` rejects (stale encoders, finished tasks)."""
        for key in [key for key in self._memory if not keep(key)]:
            del self._memory[key]
        for key in [key for key in self._spilled if not keep(key)]:
            self._spilled.pop(key).unlink(missing_ok=True)
        if self.shared_store is not None:
            self.shared_store.keep_only(keep)

    def _store(self, key: FeatureKey, features: Features) -> None:
        self._memory[key] = features
        used = self.bytes_in_memory
        while used > self.memory_bytes and len(self._memory) > 1:
            oldest, spilled = self._memory.popitem(last=False)
            used -= _nbytes(spilled)
            if self.shared_store is not None and self.shared_store.holds(oldest):
                continue  # the machine's store has it: no second copy on disk
            path = self._folder() / f"{oldest.data}-{oldest.encoder}-{oldest.task}.pt"
            torch.save(spilled, path)
            self._spilled[oldest] = path

    def _folder(self) -> Path:
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            return self.spill_dir
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="multifcl-feature-cache-")
        return Path(self._temporary.name)


def _nbytes(features: Features) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in features)


def feature_cache_for(config: ExperimentConfig, role: str) -> FeatureCache:
    """The cache a process keeps for `role` (`train` or `evaluation`) under the run's budget.

    Spilled entries go to `<output-dir>/feature-cache/<role>-<process id>-<n>/` when the run
    has an output folder, else to a temporary folder; entries are removed as they go stale,
    the folder with the cache.
    """
    spill = None
    if config.output_dir is not None:
        folder = f"{role}-{os.getpid()}-{next(_CACHE_NUMBERS)}"
        spill = config.output_dir / SPILL_FOLDER / folder
    return FeatureCache(config.feature_cache_mb * 2**20, spill)


@contextmanager
def counting_lookups(cache: FeatureCache | None) -> Iterator[dict[str, int]]:
    """The lookups `cache` answers inside the block, as reply metrics (`CACHE_HITS`,
    `CACHE_MISSES`); empty when there is no cache (a method that caches nothing)."""
    counts: dict[str, int] = {}
    hits, misses = (cache.hits, cache.misses) if cache is not None else (0, 0)
    yield counts
    if cache is not None:
        counts.update({CACHE_HITS: cache.hits - hits, CACHE_MISSES: cache.misses - misses})


def remove_spilled_features(output_dir: Path) -> None:
    """Remove the spill folders that processes of an earlier, killed attempt left in a run
    folder (call before this attempt's processes start caching)."""
    shutil.rmtree(output_dir / SPILL_FOLDER, ignore_errors=True)
