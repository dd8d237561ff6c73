"""The names a config hands to the registries, checked before any long work starts.

`ExperimentConfig` checks its own values but not `method`, `dataset` and `eval-group`: those
are checked where they are resolved (`method_class`, `data_source`, `group_transforms`), so
the config does not import the library built on it. The entry points (check-config, run,
compare, the ServerApp, `load_experiment`) call `check_names` to refuse a bad name at once.
"""

from __future__ import annotations

from multifcl.client_stream_schedule import is_asynchronous
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.data.sources import check_task_count, data_source
from multifcl.equizero import group_transforms
from multifcl.methods import METHODS, method_class


def check_names(config: ExperimentConfig) -> ExperimentConfig:
    """`config` when its method, dataset and eval-group are known (and `num-tasks` splits a
    fixed-size data set's classes); else a one-line ConfigError naming the key."""
    method_class(config.method)
    data_source(config.dataset)
    check_task_count(config)
    group_transforms(config.eval_group)
    check_asynchronous_method(config)
    return config


def check_asynchronous_method(config: ExperimentConfig) -> None:
    """A one-line ConfigError when the stream is asynchronous and the method cannot run so
    (`Method.runs_asynchronously`; docs/asynchronous.md)."""
    if not is_asynchronous(config) or method_class(config.method).runs_asynchronously:
        return
    key = (
        "client-task-order"
        if config.client_task_order != "shared"
        else ("client-start-delay-rounds")
    )
    able = sorted(name for name, cls in METHODS.items() if cls.runs_asynchronously)
    raise ConfigError(
        f"run config key '{key}': method {config.method!r} cannot run an asynchronous stream "
        f"(its state follows one task at a time); methods that can: {', '.join(able)}"
    )
