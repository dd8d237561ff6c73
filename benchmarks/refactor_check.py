"""Fingerprints of four short runs' results, to show a refactoring changed no number.

Runs the quickstart (prototypes on digits) and one multifcl, one pilora and one lwf run on
the same stream, in-process (the real server loop and ClientApp through `InProcessGrid`),
and prints, per run, the accuracy matrix and a SHA-256 of it and of the final global state.
Run it before and after a change and compare the lines:

    python benchmarks/refactor_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.client_app import train
from multifcl.config import ExperimentConfig
from multifcl.results.checkpoints import latest_checkpoint
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid

NUM_CLIENTS = 2
RUNS = {  # the quickstart's stream (digits, vit-tiny, 5 tasks x 2 rounds) for every method
    "quickstart": {"method": "prototypes"},
    "multifcl": {"method": "multifcl"},
    "pilora": {"method": "pilora"},
    "lwf": {"method": "lwf"},
}


def fingerprint(run_dir: Path) -> tuple[list, str, str]:
    """(accuracy matrix, its SHA-256, the final state's SHA-256)."""
    matrix = json.loads((run_dir / "metrics.json").read_text())["accuracy_matrix"]
    state = latest_checkpoint(run_dir).state
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(state[key]).tobytes())
    matrix_digest = hashlib.sha256(json.dumps(matrix).encode()).hexdigest()
    return matrix, matrix_digest[:16], digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="refactor-check-"))
    for name, changes in RUNS.items():
        config = ExperimentConfig(output_dir=out / name, **changes)
        grid = InProcessGrid(train, config.to_run_config(), num_nodes=NUM_CLIENTS)
        run_continual_learning(grid, config, base_dir=out)
        matrix, matrix_digest, state_digest = fingerprint(out / name)
        print(f"{name}: matrix {matrix_digest} state {state_digest} last row {matrix[-1]}")


if __name__ == "__main__":
    main()
