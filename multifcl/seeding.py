"""Seeds derived from the config seed, so every random choice is reproducible."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (e.g. config seed, task, round, client)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)
