"""The ServerApp: `flwr run .` starts here.

The run config is parsed before the task loop and its heavy imports; a bad value ends the
run `failed` with one line naming the key (`flwr list` shows it as the run's details).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from multifcl.config import ExperimentConfig
from multifcl.errors import ConfigError, DataError, FederationRefused
from server.library_logs import route_library_logs_to_flower
from server.one_line_errors import log_without_traceback

app = ServerApp()
log_without_traceback(ConfigError, DataError, FederationRefused)
route_library_logs_to_flower()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = ExperimentConfig.from_run_config(context.run_config)
    import multifcl.app_imports  # noqa: F401  the library in one import (see its docstring)
    from multifcl.config_names import check_names  # imports the registries

    check_names(config)
    from server.continual_loop import run_continual_learning
    from server.ray_actor_pool import replace_dead_actors

    replace_dead_actors()  # in simulation the ServerApp shares its process with the actor pool
    try:
        run_continual_learning(grid, config, base_dir=Path.cwd())
    finally:  # the clients' shared features on this machine (simulation: all of them)
        from multifcl.features.shared_store import remove_run_stores

        remove_run_stores(context.run_id)
