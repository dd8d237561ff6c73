"""The ServerApp: `flwr run .` starts here."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from multifcl.config import ExperimentConfig
from server.continual_loop import run_continual_learning
from server.ray_actor_pool import replace_dead_actors

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = ExperimentConfig.from_run_config(context.run_config)
    replace_dead_actors()  # in simulation the ServerApp shares its process with the actor pool
    run_continual_learning(grid, config, base_dir=Path.cwd())
