"""Methods by name: adding one means one module here and one line in `METHODS`."""

from __future__ import annotations

from multifcl.backbones import Backbone
from multifcl.config import ConfigError, ExperimentConfig
from multifcl.methods.base import ClientUpdate, Method, State
from multifcl.methods.finetune import FinetuneMethod
from multifcl.methods.lwf import LwFMethod
from multifcl.methods.multifcl import MultiFCLMethod
from multifcl.methods.pilora import PiLoRAMethod
from multifcl.methods.prototypes import PrototypesMethod

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (PrototypesMethod, FinetuneMethod, MultiFCLMethod, PiLoRAMethod, LwFMethod)
}


def build_method(config: ExperimentConfig, backbone: Backbone, class_names: list[str]) -> Method:
    """The configured method over `backbone`, for a stream with `class_names` (stream order)."""
    if config.method not in METHODS:
        raise ConfigError(f"run config key 'method': unknown method {config.method!r}")
    return METHODS[config.method](config, backbone, class_names)


__all__ = ["METHODS", "ClientUpdate", "Method", "State", "build_method"]
