"""Byte counts in human units (B, kB, MB, GB; powers of 1000)."""

from __future__ import annotations

BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))


def byte_unit(value: float) -> tuple[float, str]:
    """The largest unit not above `value`, as (bytes per unit, name); B for values below 1."""
    return next(((scale, unit) for scale, unit in BYTE_UNITS if value >= scale), (1.0, "B"))


def format_bytes(value: float) -> str:
    """For example `1.24 MB`, `512 kB`, `300 B`."""
    scale, unit = byte_unit(value)
    return f"{value:.0f} B" if unit == "B" else f"{value / scale:.3g} {unit}"
