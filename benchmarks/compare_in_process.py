"""`multifcl compare` without `flwr run`: the same plan, table and plots, each run in-process.

Each run goes through `server.in_process_grid.InProcessGrid` (the real ClientApp's train
function, called in this process, one node per client) instead of a local SuperLink, so it
needs no network port and cannot collide with another SuperLink on the machine. The results
match `flwr run`'s for the same config; the wall time has no Flower process overhead.

    python benchmarks/compare_in_process.py --methods configs/plugins/1-sgd.toml ... \\
        --seeds 0 --out runs/plugins --overrides "dataset='imagefolder' ..."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.client_app import train
from multifcl.compare import PlannedRun, add_arguments, plan_from_arguments, run_comparison
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from server.library_logs import route_library_logs_to_flower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    plan = plan_from_arguments(args)
    route_library_logs_to_flower()  # the evaluation's progress lines, as under flwr run

    def launch(run: PlannedRun) -> None:
        grid = InProcessGrid(train, run.config.to_run_config(), num_nodes=plan.num_clients)
        run_continual_learning(grid, run.config, base_dir=run.run_dir.parent)

    written = run_comparison(plan, launch)
    print((plan.out / "comparison.md").read_text())
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
