"""The per-checkpoint measurements of a finished run: CKA drift of every block on a fixed
probe set, diffused redundancy of the final feature and neural-collapse measures.

Samples: a fixed random subset (seeded) of up to `samples_per_task` test samples of every
task (by default up to DEFAULT_SAMPLES_PER_TASK: all of a task's when it holds fewer); task
1's subset is the probe set. Checkpoint t is measured on the tasks seen so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from multifcl.analysis.cka import linear_cka
from multifcl.analysis.finished_run import AnalysisError, FinishedRun, load_state
from multifcl.analysis.inspectable import final_etf_head, final_prototypes
from multifcl.analysis.neural_collapse import (
    class_means,
    etf_gram_deviation,
    nc1,
    vertex_angles,
)
from multifcl.analysis.redundancy import RedundancyPoint, diffused_redundancy
from multifcl.analysis.representations import block_representations, sample_indices
from multifcl.data import InMemoryImages, Task
from multifcl.experiment import Experiment
from multifcl.methods import State

METHOD_PROTOTYPES = "the final expert's prototypes"
TRAIN_CLASS_MEANS = "class means of the final feature on up to {n} training samples per task"
DEFAULT_SAMPLES_PER_TASK = 256  # the cap when no size is asked for


@dataclass
class CollapseMeasures:
    """Neural-collapse measures of one checkpoint, on the seen tasks' sample subsets."""

    task: int  # 1-based: after training this task
    classes: int
    nc1: float
    etf_gram_deviation: float
    vertex_angle: float | None = None  # mean degrees to the ETF vertices (ETF-head runs)


@dataclass
class CheckpointAnalysis:
    block_labels: list[str]
    cka_drift: np.ndarray  # blocks x tasks: CKA(after task 1, after task t) on the probe set
    redundancy: list[list[RedundancyPoint]]  # per task checkpoint
    collapse: list[CollapseMeasures]
    prototype_source: str
    samples_per_task: int  # the most test samples drawn from one task
    probe_size: int  # task 1's: the probe set
    collapse_space: str
    client_cka: dict[str, list[float]] = field(default_factory=dict)  # client -> per block


def evaluation_subsets(
    experiment: Experiment, samples_per_task: int | None, seed: int
) -> list[InMemoryImages]:
    """The fixed test-sample subset of every task; the first is the probe set. None: up to
    DEFAULT_SAMPLES_PER_TASK of each task; a size asked for must fit task 1's test set."""
    data = experiment.data
    first = data.test_set(data.stream.task(0))
    if samples_per_task is None:
        samples_per_task = DEFAULT_SAMPLES_PER_TASK
    elif samples_per_task > len(first):
        raise AnalysisError(
            f"--probe-size: {samples_per_task} probe samples requested, but task 1 has only "
            f"{len(first)} held-out test samples"
        )
    subsets = []
    for task in data.stream:
        test_set = data.test_set(task)
        subsets.append(test_set.take(sample_indices(len(test_set), samples_per_task, seed)))
    return subsets


def analyze_checkpoints(
    run: FinishedRun,
    experiment: Experiment,
    samples_per_task: int | None = None,
    draws: int = 5,
    seed: int = 0,
) -> CheckpointAnalysis:
    """Measure every task checkpoint of `run` (built as `experiment`); `samples_per_task` as
    in evaluation_subsets."""
    method, stream = experiment.method, experiment.data.stream
    if run.num_tasks > stream.num_tasks:
        raise AnalysisError(
            f"{str(run.path)!r} has {run.num_tasks} task checkpoints for a "
            f"{stream.num_tasks}-task stream"
        )
    subsets = evaluation_subsets(experiment, samples_per_task, seed)
    samples_per_task = max(len(subset) for subset in subsets)
    expected = method.initial_state()
    batch_size = experiment.config.batch_size
    reference: list[np.ndarray] = []
    drift, redundancy, collapse = [], [], []
    prototype_source = METHOD_PROTOTYPES
    probe: list[np.ndarray] = []
    for index, path in enumerate(run.task_checkpoints):
        state = load_state(path, expected, method.growing_state_keys)
        task = stream.task(index)
        shown = subsets[: index + 1]  # the tasks seen so far
        blocks = [block_representations(method, state, s, batch_size) for s in shown]
        probe = blocks[0]
        reference = reference or probe
        drift.append([linear_cka(a, b) for a, b in zip(reference, probe)])
        final = np.concatenate([per_block[-1] for per_block in blocks])
        labels = np.concatenate([s.labels for s in shown])
        prototypes = final_prototypes(method, state)
        if prototypes is None:
            prototype_source = TRAIN_CLASS_MEANS.format(n=samples_per_task)
            prototypes = _train_class_means(experiment, state, task, samples_per_task, seed)
        classes = task.seen_classes.stop
        redundancy.append(
            diffused_redundancy(final, labels, prototypes[:classes], draws=draws, seed=seed)
        )
        collapse.append(_collapse(final_etf_head(method, state), final, labels, index + 1))
    client_cka = {
        snapshot.stem: _client_drift(
            experiment, load_state(snapshot, expected, method.growing_state_keys), probe, subsets[0]
        )
        for snapshot in run.client_snapshots
    }
    has_etf = collapse[-1].vertex_angle is not None
    return CheckpointAnalysis(
        block_labels=[f"block {b + 1}" for b in experiment.backbone.tap_blocks],
        cka_drift=np.asarray(drift).T,
        redundancy=redundancy,
        collapse=collapse,
        prototype_source=prototype_source,
        samples_per_task=samples_per_task,
        probe_size=len(subsets[0]),
        collapse_space="the ETF head's projected feature" if has_etf else "the final feature",
        client_cka=client_cka,
    )


def _collapse(head, final: np.ndarray, labels: np.ndarray, task: int) -> CollapseMeasures:
    """NC1 and the ETF deviation in the space the classifier compares; angles for ETF heads."""
    space = final
    if head is not None:
        with torch.no_grad():
            features = torch.from_numpy(final).to(head.vertices)
            space = head.projected(features).double().cpu().numpy()
    classes, means = class_means(space, labels)
    measures = CollapseMeasures(task, len(classes), nc1(space, labels), etf_gram_deviation(means))
    if head is not None:
        vertices = head.vertices.double().cpu().numpy().T[classes]
        measures.vertex_angle = float(vertex_angles(means, vertices).mean())
    return measures


def _client_drift(
    experiment: Experiment, client_state: State, global_probe: list[np.ndarray], probe_set
) -> list[float]:
    """Per block CKA between a client's model and the final global model on the probe set."""
    client_probe = block_representations(
        experiment.method, client_state, probe_set, experiment.config.batch_size
    )
    return [linear_cka(a, b) for a, b in zip(global_probe, client_probe)]


def _train_class_means(
    experiment: Experiment, state: State, task: Task, samples_per_task: int, seed: int
) -> np.ndarray:
    """(seen classes x d) class means of the final feature on training samples of the tasks
    seen so far (up to `samples_per_task` per task), for methods without prototypes."""
    stream = experiment.data.stream
    pool = np.concatenate([stream.train_indices(stream.task(t)) for t in range(task.index + 1)])
    labels = stream.train_labels[pool]
    per_class = max(1, samples_per_task // len(task.classes))
    chosen = []
    for c in range(task.seen_classes.stop):
        members = pool[labels == c]
        chosen.append(members[sample_indices(len(members), per_class, seed)])
    indices = np.concatenate(chosen)
    images = InMemoryImages(
        experiment.data.splits.train.take(indices).images, stream.train_labels[indices]
    )
    features = block_representations(
        experiment.method, state, images, experiment.config.batch_size
    )[-1]
    present, means = class_means(features, images.labels)
    prototypes = np.zeros((task.seen_classes.stop, features.shape[1]))
    prototypes[present] = means
    return prototypes
