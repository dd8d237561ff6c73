"""Why a MultiFCL row gains or loses: the final state of finished runs read back and scored.

For each run folder (a `multifcl` run of any ablation row), on the test sets of all tasks:
- `last`: CIL accuracy of the final state (as in its metrics.json);
- `class-mean last`: the same encoder (adapters) with the final expert's prototypes replaced
  by the class means of the training features under it, computed on the whole training
  set (what the count-weighted merge of class means gives): isolates the prototypes;
- `into newest`: the share of earlier tasks' test samples predicted as one of the last
  task's classes (recency bias), for the run's prototypes and for the class means;
- `cos to mean`: mean cosine between each class's final prototype and its class mean.

    python benchmarks/prototype_diagnostics.py runs/ablation-5x5/runs/3-init-seed0 \\
        runs/ablation-5x5/runs/5-full-seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.config import ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.heads.cosine_prototypes import cosine_logits
from multifcl.results.checkpoints import latest_checkpoint
from multifcl.results.folder_layout import CONFIG_FILE, PARTITION_FILE, read_json


@torch.no_grad()
def diagnose(run: Path) -> dict[str, float]:
    config = ExperimentConfig.from_saved_run(read_json(run, CONFIG_FILE))
    num_clients = read_json(run, PARTITION_FILE)["num_clients"]
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = latest_checkpoint(run).state
    split = method.feature_split(state)  # the encoder under the state's adapters

    def final_features(images: torch.Tensor) -> torch.Tensor:
        return split.encode(images)[-1].float().cpu()

    stream = data.stream
    last_task = stream.task(stream.num_tasks - 1)
    seen = last_task.seen_classes.stop
    test = [data.test_set(stream.task(t)) for t in range(stream.num_tasks)]
    features = torch.cat([final_features(s.images) for s in test])
    labels = torch.cat([torch.as_tensor(s.labels) for s in test])
    train_features, train_labels = [], []
    for t in range(stream.num_tasks):
        task = stream.task(t)
        for client in range(data.schedule.active(t, num_clients)):  # `clients-per-task`
            part = data.client_train_set(task, client, num_clients)
            train_features.append(final_features(part.images))
            train_labels.append(torch.as_tensor(part.labels))
    train = torch.cat(train_features)
    train_labels = torch.cat(train_labels)
    means = torch.stack([train[train_labels == c].mean(0) for c in range(seen)])
    prototypes = method.final_prototypes(state)[:seen].float()
    result = {"last": _accuracy(features, labels, prototypes, config.temperature)}
    result["class-mean last"] = _accuracy(features, labels, means, config.temperature)
    old = labels < last_task.classes.start
    for name, rows in (("into newest", prototypes), ("class-mean into newest", means)):
        predicted = cosine_logits(features[old], rows, config.temperature).argmax(1)
        result[name] = 100.0 * float((predicted >= last_task.classes.start).float().mean())
    result["cos to mean"] = float(F.cosine_similarity(prototypes, means, dim=1).mean())
    return result


def _accuracy(features, labels, rows, temperature) -> float:
    predicted = cosine_logits(features, rows, temperature).argmax(1)
    return 100.0 * float((predicted == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        values = diagnose(run)
        print(f"{run.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
