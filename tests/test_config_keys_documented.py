"""Every run-config key has a default in pyproject.toml and a row in docs/configuration.md.

Flower refuses a `-c` key that `[tool.flwr.app.config]` lacks, so a field without a default
there could not be set through `flwr run`. `tests/test_config.py` checks the other way round
(every default there is a field, with the field's value).
"""

import re
import tomllib
from pathlib import Path

from multifcl.config import FIELD_TYPES

ROOT = Path(__file__).resolve().parent.parent
KEYS = [name.replace("_", "-") for name in FIELD_TYPES]


def test_every_config_field_has_a_pyproject_default() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    assert [key for key in KEYS if key not in defaults] == []


def test_every_config_field_has_a_row_in_the_keys_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    # the first cell of a table row names the key (or keys: `tb-min`, `tb-max`)
    first_cells = re.findall(r"^\|([^|\n]*)\|", reference, flags=re.MULTILINE)
    documented = {key for cell in first_cells for key in re.findall(r"`([^`]+)`", cell)}
    assert [key for key in KEYS if key not in documented] == []
