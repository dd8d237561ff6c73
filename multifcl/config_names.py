"""The names a config hands to the registries, checked before any long work starts.

`ExperimentConfig` checks its own values but not `method`, `dataset` and `eval-group`: those
are checked where they are resolved (`method_class`, `data_source`, `group_transforms`), so
the config does not import the library built on it. The entry points (check-config, run,
compare, the ServerApp, `load_experiment`) call `check_names` to refuse a bad name at once.
"""

from __future__ import annotations

from multifcl.config import ExperimentConfig
from multifcl.data.sources import check_task_count, data_source
from multifcl.equizero import group_transforms
from multifcl.methods import method_class


def check_names(config: ExperimentConfig) -> ExperimentConfig:
    """`config` when its method, dataset and eval-group are known (and `num-tasks` splits a
    fixed-size data set's classes); else a one-line ConfigError naming the key."""
    method_class(config.method)
    data_source(config.dataset)
    check_task_count(config)
    group_transforms(config.eval_group)
    return config
