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
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.config import ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.heads.cosine_prototypes import cosine_logits
from multifcl.heads.prototype_experts import prototype_key
from multifcl.results.checkpoints import latest_checkpoint


@torch.no_grad()
def final_features(method, state, images: torch.Tensor) -> torch.Tensor:
    """The final expert's features of `images` under the state's adapters."""
    method.adapters.load(state)
    return method._encode(images)[-1].float().cpu()


@torch.no_grad()
def diagnose(run: Path, num_clients: int) -> dict[str, float]:
    payload = json.loads((run / "config.json").read_text())
    config = ExperimentConfig.from_saved_run(payload)
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    state = latest_checkpoint(run).state
    stream = data.stream
    last_task = stream.task(stream.num_tasks - 1)
    seen = last_task.seen_classes.stop
    test = [data.test_set(stream.task(t)) for t in range(stream.num_tasks)]
    features = torch.cat([final_features(method, state, s.images) for s in test])
    labels = torch.cat([torch.as_tensor(s.labels) for s in test])
    train_features, train_labels = [], []
    for t in range(stream.num_tasks):
        task = stream.task(t)
        for client in range(num_clients):
            part = data.client_train_set(task, client, num_clients)
            train_features.append(final_features(method, state, part.images))
            train_labels.append(torch.as_tensor(part.labels))
    train = torch.cat(train_features)
    train_labels = torch.cat(train_labels)
    means = torch.stack([train[train_labels == c].mean(0) for c in range(seen)])
    prototypes = torch.from_numpy(state[prototype_key(len(method.taps) - 1)])[:seen].float()
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
    parser.add_argument("--clients", type=int, default=2, help="the runs' number of clients")
    args = parser.parse_args()
    for run in args.runs:
        values = diagnose(run, args.clients)
        print(f"{run.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
