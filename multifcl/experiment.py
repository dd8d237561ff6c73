"""Everything a process needs to take part in a run, built once per process and reused:
the data stream, the frozen backbone and the method."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from multifcl.backbones import Backbone, load_backbone
from multifcl.backbones.loading import compile_backbone
from multifcl.backbones.precision import use_tf32
from multifcl.compute_threads import use_threads
from multifcl.config import ExperimentConfig
from multifcl.config_names import check_names
from multifcl.data import FederatedStream, load_splits
from multifcl.data.sources import check_data_present
from multifcl.methods import Method, build_method


@dataclass
class Experiment:
    config: ExperimentConfig
    backbone: Backbone
    data: FederatedStream
    method: Method


@lru_cache(maxsize=2)
def load_experiment(config: ExperimentConfig) -> Experiment:
    """Build (or reuse, within this process) the experiment for `config`."""
    check_names(config)  # a bad method, dataset or eval-group is named before any loading
    use_threads(config.torch_threads)
    check_data_present(config)  # a missing data set is named before a large model loads
    backbone = load_backbone(config.backbone, config.device, config.image_size, config.precision)
    use_tf32(config.tf32, backbone.device)  # process-wide; CUDA only
    if config.compile:
        compile_backbone(backbone)
    data = FederatedStream(load_splits(config, backbone.image_size), config)
    method = build_method(config, backbone, data.stream.class_names)
    return Experiment(config, backbone, data, method)
