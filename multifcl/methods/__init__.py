"""Methods by name: adding one means one module here and one line in `METHODS`."""

from __future__ import annotations

from multifcl.backbones import Backbone
from multifcl.config import ExperimentConfig, check_name
from multifcl.methods.analytic import AnalyticMethod
from multifcl.methods.base import ClientUpdate, Method, State
from multifcl.methods.coda_prompt import CodaPromptMethod
from multifcl.methods.fedproto import FedProtoMethod
from multifcl.methods.finetune import FinetuneMethod
from multifcl.methods.l2p import L2PMethod
from multifcl.methods.lorm import LoRMMethod
from multifcl.methods.lwf import LwFMethod
from multifcl.methods.multifcl import MultiFCLMethod
from multifcl.methods.pilora import PiLoRAMethod
from multifcl.methods.prototypes import PrototypesMethod

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        PrototypesMethod,
        FinetuneMethod,
        MultiFCLMethod,
        PiLoRAMethod,
        LwFMethod,
        FedProtoMethod,
        AnalyticMethod,
        L2PMethod,
        CodaPromptMethod,
        LoRMMethod,
    )
}


def method_class(name: str) -> type[Method]:
    """The method called `name`; a one-line ConfigError naming the key otherwise."""
    check_name("run config key 'method'", "method", name, METHODS)
    return METHODS[name]


def build_method(config: ExperimentConfig, backbone: Backbone, class_names: list[str]) -> Method:
    """The configured method over `backbone`, for a stream with `class_names` (stream order)."""
    return method_class(config.method)(config, backbone, class_names)


__all__ = ["METHODS", "ClientUpdate", "Method", "State", "build_method", "method_class"]
