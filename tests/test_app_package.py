"""What `flwr run` ships: the app's package (FAB) keeps every module of the app's packages.

Flower leaves out files matching its built-in patterns (e.g. `**/test_*.py`), so a module
named like a test would vanish from the Ray workers and SuperNodes (ModuleNotFoundError at
run time only, never in-process).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from flwr.cli.build import get_filtered_fab_paths

REPO = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("multifcl", "server", "strategies", "clients", "protocol")


def test_every_module_of_the_app_goes_into_its_flower_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules = {
        path.relative_to(REPO).as_posix(): path
        for package in APP_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    shipped = set(get_filtered_fab_paths(dict(modules), config))
    assert sorted(set(modules) - shipped) == []
