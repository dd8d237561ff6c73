"""The shape of the code: no function in the project's packages runs past 60 lines."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("multifcl", "server", "strategies", "protocol", "clients")
MAX_FUNCTION_LINES = 60


def function_lengths() -> dict[str, int]:
    """Every function and method's length in lines (decorators not counted), by
    'path::name'."""
    lengths = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{path.relative_to(REPO)}:{node.lineno}::{node.name}"
                    lengths[name] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_60_lines():
    lengths = function_lengths()
    assert len(lengths) > 100  # the walk found the packages
    too_long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert too_long == {}, f"split these (lines > {MAX_FUNCTION_LINES}): {too_long}"
