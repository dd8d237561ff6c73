"""The library's modules that the ServerApp and the ClientApp use, imported in one go.

Flower's simulation loads the ClientApp in its engine's thread while the ServerApp's thread
imports the task loop, in one process (flwr's `start_vce` test-loads the ClientApp). Two
threads importing one package's modules at once can fail in Python's import system ("deadlock
detected by _ModuleLock('multifcl.backbones.host_transfer')", seen once in a `flwr run`).
Both apps import this module before the library's other modules, so one thread imports them
all while the other waits on this module's lock; the library imports no Flower and none of
the apps' packages, so that wait cannot close a cycle.
"""

from importlib import import_module

MODULES = (
    "multifcl.client_evaluation",
    "multifcl.client_sampling",
    "multifcl.client_schedule",
    "multifcl.client_stream_schedule",
    "multifcl.config_names",
    "multifcl.data.federation",
    "multifcl.data.fingerprint",
    "multifcl.evaluation",
    "multifcl.experiment",
    "multifcl.features.shared_store",
    "multifcl.methods",
    "multifcl.metrics.client_accuracy",
    "multifcl.metrics.resources",
    "multifcl.periodic",
    "multifcl.results.checkpoints",
    "multifcl.results.resume",
    "multifcl.results.run_directory",
    "multifcl.results.run_lock",
    "multifcl.seeding",
    "multifcl.stage_evaluation",
    "multifcl.update_validation",
)

for name in MODULES:
    import_module(name)
