"""Accuracy of a global state on the test sets of the tasks seen so far.

Class-incremental (CIL): all seen classes compete. Task-incremental (TIL): logits are
masked to the classes of the sample's own task.

With `cache-features` on and a method whose encoder is frozen under the state
(`Method.feature_split`), each task's test features are computed once per encoder
fingerprint and reused at every later evaluation, so the cost per evaluation grows with
the new task only; a changed encoder (new adapter weights) gets new features.

A long evaluation logs where it is every PROGRESS_INTERVAL_S seconds (from a timer thread,
so a long feature pass or equizero is covered too); the results do not depend on it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch

from multifcl.backbones.host_transfer import to_device
from multifcl.data import FederatedStream, InMemoryImages, Task
from multifcl.data.federation import TEST
from multifcl.equizero import equizero_accuracies
from multifcl.features import FeatureCache, FeatureKey, feature_cache_for
from multifcl.methods import Method, State


@dataclass
class StageAccuracy:
    """Accuracies (percent) after training one task: a row of each accuracy matrix."""

    cil: list[float]
    til: list[float]
    cil_all_seen: float  # sample-weighted over all seen classes (what PyCIL/PILOT print)
    cil_equizero: list[float] | None = None  # with eval-canonicalize = "equizero"


PROGRESS_INTERVAL_S = 30.0
logger = logging.getLogger(__name__)

_CACHES: weakref.WeakKeyDictionary[Method, dict[str, FeatureCache]] = weakref.WeakKeyDictionary()


def evaluation_cache(method: Method, role: str = "evaluation") -> FeatureCache:
    """The held-out-feature cache this process keeps for `method`: the server's evaluation
    of the test sets (`evaluation`) or the validation sets (`validation`), or a client's
    scoring of its own test slice (`client-evaluation`)."""
    caches = _CACHES.setdefault(method, {})
    if role not in caches:
        caches[role] = feature_cache_for(method.config, role)
    return caches[role]


@torch.no_grad()
def evaluate_seen_tasks(
    method: Method,
    state: State,
    data: FederatedStream,
    current: Task,
    cache: FeatureCache | None = None,
    subset: str = TEST,
    title: str | None = None,
) -> StageAccuracy:
    """Evaluate `state` on the `subset` (test, or validation with `val-fraction`) of every
    task up to and including `current`; `title` names it in the progress lines.

    `cache` defaults to this process's evaluation cache for `method` and `subset` (when
    `cache-features`): validation features are cached apart from test features.
    """
    split = method.feature_split(state) if method.config.cache_features else None
    if split is not None:
        role = "evaluation" if subset == TEST else "validation"
        cache = cache if cache is not None else evaluation_cache(method, role)
        cache.keep_only(lambda key: key.encoder == split.encoder)
    num_tasks = data.stream.num_tasks
    with EvaluationProgress(current.index + 1, num_tasks, subset, title) as progress:
        return _evaluate(method, state, data, current, split, cache, progress)


def _evaluate(
    method: Method,
    state: State,
    data: FederatedStream,
    current: Task,
    split,  # Method.feature_split's result, None to score pixels
    cache: FeatureCache | None,
    progress: EvaluationProgress,
) -> StageAccuracy:
    """evaluate_seen_tasks' work, reporting to `progress` as it goes."""
    seen = current.seen_classes.stop
    cil, til, correct_total, count_total = [], [], 0, 0
    for index in range(current.index + 1):
        task = data.stream.task(index)
        test_set = data.held_out_set(task, progress.subset)
        progress.task(index + 1, len(test_set))
        scored = scored_batches(method, state, test_set, task.index, split, cache)
        correct_cil, correct_til = _count_correct(scored, task, seen, progress)
        total = max(len(test_set), 1)
        cil.append(100.0 * correct_cil / total)
        til.append(100.0 * correct_til / total)
        correct_total += correct_cil
        count_total += len(test_set)
    equizero = None
    if method.config.eval_canonicalize == "equizero" and progress.subset == TEST:  # no cache
        progress.in_equizero = True
        test_sets = [data.test_set(data.stream.task(i)) for i in range(current.index + 1)]
        equizero = equizero_accuracies(
            method.classifier(state),
            method.backbone.preprocess,
            test_sets,
            seen,
            method.config.eval_group,
            method.config.batch_size,
        )
    return StageAccuracy(cil, til, 100.0 * correct_total / max(count_total, 1), equizero)


class EvaluationProgress:
    """Logs, every PROGRESS_INTERVAL_S while the block runs, which test set is being scored
    and how many of its samples are done (nothing for an evaluation shorter than that)."""

    def __init__(
        self, after_task: int, num_tasks: int, subset: str = TEST, title: str | None = None
    ) -> None:
        which = "" if subset == TEST else f"{subset} "
        self.after = title or f"{which}evaluation after task {after_task}/{num_tasks}"
        self.subset = subset  # the held-out sets scored: test or validation
        self.seen_tasks = after_task
        self.in_equizero = False  # past the plain scoring, in the transformed passes
        self.current, self.size, self.done = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, daemon=True, name="eval-progress")

    def task(self, number: int, size: int) -> None:
        self.current, self.size, self.done = number, size, 0

    def scored(self, count: int) -> None:
        self.done += count

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _report(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            logger.info("%s: %s", self.after, self.describe())

    def describe(self) -> str:
        seconds = time.monotonic() - self._started
        if self.in_equizero:
            where = f"equizero over the {self.seen_tasks} seen test sets"
        else:
            where = (
                f"{self.subset} set {self.current}/{self.seen_tasks}, "
                f"{self.done}/{self.size} samples scored"
            )
        return f"{where}, {seconds:.0f} s so far"


def scored_batches(
    method: Method,
    state: State,
    test_set: InMemoryImages,
    task_index: int,
    split,  # Method.feature_split(state)'s result (just computed), None to score pixels
    cache: FeatureCache | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) batches of `test_set` (of task `task_index`) under `state`: from
    features stored in `cache` when there is a split, else from pixels."""
    if split is None:
        return _pixel_logits(method, state, test_set)
    key = FeatureKey(test_set.fingerprint, split.encoder, task_index)
    features = cache.get_or_compute(key, lambda images=test_set.images: split.encode(images))
    return _feature_logits(split, features, test_set, method)


@torch.no_grad()
def seen_class_predictions(
    method: Method, state: State, test_set: InMemoryImages, task_index: int, seen: int
) -> np.ndarray:
    """The class (argmax over the first `seen` classes) `state` predicts for each sample of
    `test_set`; a client's scoring of its own slice, with the `client-evaluation` cache."""
    if len(test_set) == 0:
        return np.empty(0, dtype=np.int64)
    split = method.feature_split(state) if method.config.cache_features else None
    cache = None
    if split is not None:
        cache = evaluation_cache(method, "client-evaluation")
        cache.keep_only(lambda key: key.encoder == split.encoder)
    scored = scored_batches(method, state, test_set, task_index, split, cache)
    return torch.cat([logits.float().cpu()[:, :seen].argmax(1) for logits, _ in scored]).numpy()


def _count_correct(
    scored: Iterator[tuple[torch.Tensor, torch.Tensor]],
    task: Task,
    seen: int,
    progress: EvaluationProgress,
) -> tuple[int, int]:
    """(CIL, TIL) correct predictions over the (logits, labels) batches, counted where the
    logits are and read back once (no host synchronization per batch)."""
    hits = None
    for logits, labels in scored:
        logits, labels = logits.float(), to_device(labels, logits.device)
        task_logits = logits[:, task.classes.start : task.classes.stop]
        batch = torch.stack(
            [
                (logits[:, :seen].argmax(1) == labels).sum(),
                (task_logits.argmax(1) + task.classes.start == labels).sum(),
            ]
        )
        hits = batch if hits is None else hits + batch
        progress.scored(len(labels))
    if hits is None:
        return 0, 0
    correct_cil, correct_til = hits.tolist()
    return int(correct_cil), int(correct_til)


def _pixel_logits(
    method: Method, state: State, test_set: InMemoryImages
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) batches from the classifier on pixels (`eval-batch-size`)."""
    classifier = method.classifier(state)
    images, labels = test_set.images, torch.as_tensor(test_set.labels)
    for start, stop, logits in method.eval_batches.map(
        len(labels), lambda a, b: classifier(method.backbone.preprocess(images[a:b]))
    ):
        yield logits, labels[start:stop]


def _feature_logits(
    split, features: list[torch.Tensor], test_set: InMemoryImages, method: Method
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) batches from the head on stored features (`eval-batch-size`)."""
    device = method.backbone.device
    labels = to_device(torch.as_tensor(test_set.labels), device)  # one copy, not per batch
    for start, stop, logits in method.eval_batches.map(
        len(labels), lambda a, b: split.head([to_device(f[a:b], device) for f in features])
    ):
        yield logits, labels[start:stop]
