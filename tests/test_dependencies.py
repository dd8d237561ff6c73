"""Every dependency pyproject.toml declares (extras excepted) is imported by the shipped code."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalized(distribution: str) -> str:
    """A distribution name as PEP 503 compares them: flwr[simulation]>=1 -> flwr."""
    name = re.match(r"[A-Za-z0-9._-]+", distribution).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(folders: list[Path]) -> set[str]:
    """The top-level modules that `import` statements of the folders' .py files name,
    imports inside functions included."""
    modules = set()
    for file in (file for folder in folders for file in folder.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_declared_dependency_is_imported():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {_normalized(entry) for entry in pyproject["project"]["dependencies"]}
    shipped = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    modules = imported_modules([ROOT / package for package in shipped])
    providers = packages_distributions()  # module -> the installed distributions giving it
    used = {_normalized(dist) for module in modules for dist in providers.get(module, [])}
    assert declared - used == set(), "declared in pyproject.toml but never imported"


def test_an_unused_dependency_would_be_found(tmp_path):
    (tmp_path / "module.py").write_text("import numpy\ndef f():\n    from PIL import Image\n")
    assert imported_modules([tmp_path]) == {"numpy", "PIL"}
    assert _normalized("flwr[simulation]>=1.42,<1.43") == "flwr"
    assert _normalized("Sentence_Transformers>=3") == "sentence-transformers"
