"""How stale are a finished `fedproto` run's prototypes under its final model?

    python benchmarks/fedproto_drift.py runs/<compare>/runs/fedproto-seed0

Loads the run's last checkpoint and prints, per class, the cosine between its stored global
prototype and its mean feature under the final model (all of its training samples), then
the test accuracy per task three ways: nearest stored prototype (the method's classifier,
so its Last is the run's), nearest recomputed prototype (an oracle: it reads every task's
training data, which a continual learner no longer has), and the final linear head.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multifcl.config import ExperimentConfig
from multifcl.experiment import load_experiment
from multifcl.methods.base import batches
from multifcl.methods.fedproto import PROTOTYPES
from multifcl.methods.pilora import prototype_distances
from multifcl.results.checkpoints import latest_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished fedproto run folder")
    run = parser.parse_args().run
    config = ExperimentConfig.from_saved_run(json.loads((run / "config.json").read_text()))
    experiment = load_experiment(config)
    method, data = experiment.method, experiment.data
    if method.name != "fedproto":
        raise SystemExit(f"{str(run)!r} is a {method.name!r} run, not fedproto")
    state = latest_checkpoint(run).state
    method._load(state)

    @torch.no_grad()
    def features(images) -> torch.Tensor:
        parts = batches(images, config.batch_size)
        return torch.cat([method.model.features(method.backbone.preprocess(x)) for x, _ in parts])

    stored = torch.from_numpy(state[PROTOTYPES]).to(method.backbone.device)
    recomputed = torch.zeros_like(stored)
    for task in data.stream:
        images = data.client_train_set(task, 0, 1)  # every training sample of the task
        found, labels = features(images), torch.as_tensor(images.labels)
        for c in task.classes:
            recomputed[c] = found[labels.to(found.device) == c].mean(0)
    cosine = torch.nn.functional.cosine_similarity(stored, recomputed, dim=1)
    print("cosine(stored, recomputed) per class:", [round(float(x), 3) for x in cosine])
    scorers = {
        "stored prototypes": lambda f: -prototype_distances(f, stored),
        "recomputed (oracle)": lambda f: -prototype_distances(f, recomputed),
        "linear head": method.model.head,
    }
    for name, score in scorers.items():
        per_task = []
        for task in data.stream:
            images = data.held_out_set(task, "test")
            with torch.no_grad():
                predicted = score(features(images)).argmax(1).cpu()
            per_task.append(
                100.0 * float((predicted == torch.as_tensor(images.labels)).float().mean())
            )
        rounded = [round(a, 2) for a in per_task]
        print(f"{name}: accuracy per task {rounded}, Last {np.mean(per_task):.2f}")


if __name__ == "__main__":
    main()
