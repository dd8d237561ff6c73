"""A hyper-parameter grid for `multifcl compare --grid`: its text, its points, the choice of
one point per row by validation Avg, and the table that shows it.

    --grid "lr=1e-4,1e-3,1e-2 local-epochs=1,5"

is `key=value,value,...` words; the values are TOML values as in `--overrides` (strings in
quotes, no commas or spaces inside one). The points are the Cartesian product in the order
written (the first key varies slowest). A row's chosen point is the one whose tuning run
has the highest validation Avg (`metrics.json`'s `val.avg`: the held-out training samples of
`val-fraction`, never the test set); a tie goes to the first point in grid order.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from multifcl.cli import CommandError

GridValue = bool | int | float | str
RESERVED = {  # keys a grid may not vary, and why
    "seed": "the tuning runs use --tuning-seed, the final runs --seeds",
    "output-dir": "the runner sets each run's folder",
    "resume-from": "a comparison reruns its unfinished runs itself",
    "method": "each --methods row is tuned on its own",
    "val-fraction": "the tuning runs hold out --val-fraction; the final runs train on all",
}
DEFAULT_TUNING_SEED = 100  # a seed of its own, apart from the reported runs' usual 0, 1, 2
DEFAULT_VAL_FRACTION = 0.1
_WORD = re.compile(r"([^=\s]+)=(\S+)")


@dataclass(frozen=True)
class HyperGrid:
    """The parsed `--grid`: each key with its values, in the order written."""

    text: str
    axes: dict[str, list[GridValue]]

    @classmethod
    def parse(cls, text: str) -> HyperGrid:
        """The grid of `text`; one CommandError line naming the word or key at fault."""
        axes: dict[str, list[GridValue]] = {}
        for word in text.split():
            match = _WORD.fullmatch(word)
            if match is None:
                raise CommandError(f"--grid: {word!r} is not key=value,value,...")
            key, values = match.groups()
            if key in axes:
                raise CommandError(f"--grid: key {key!r} appears twice")
            if key in RESERVED:
                raise CommandError(f"--grid: key {key!r} cannot be tuned ({RESERVED[key]})")
            axes[key] = [_value(key, value) for value in values.split(",")]
            if len(set(map(repr, axes[key]))) != len(axes[key]):
                raise CommandError(f"--grid: key {key!r} lists a value twice: {values}")
        if not axes:
            raise CommandError("--grid: give at least one key=value,value,...")
        return cls(text, axes)

    @property
    def points(self) -> list[dict[str, GridValue]]:
        """Every combination of the values, first key slowest."""
        keys = list(self.axes)
        return [dict(zip(keys, values)) for values in itertools.product(*self.axes.values())]


def _value(key: str, text: str) -> GridValue:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        raise CommandError(
            f"--grid: {key}={text!r} is not a TOML value (strings in quotes, e.g. "
            "optimizer='sgd','adamw')"
        ) from None


def point_text(point: Mapping[str, GridValue]) -> str:
    """`lr=0.001 local-epochs=5`: a point as the run-config pairs it sets."""
    return " ".join(
        f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
        for key, value in point.items()
    )


def point_folder(point: Mapping[str, GridValue]) -> str:
    """`lr0.001-local-epochs5`: a point as a piece of a folder name."""
    return "-".join(
        re.sub(r"[^A-Za-z0-9.+-]", "_", f"{key}{value}") for key, value in point.items()
    )


def choose(scores: Sequence[float]) -> int:
    """The index of the highest score; the first of equal ones."""
    best = 0
    for index, score in enumerate(scores):
        if score > scores[best]:
            best = index
    return best


def grid_table(
    grid: HyperGrid, scores: Mapping[str, list[tuple[float, float]]], chosen: Mapping[str, int]
) -> str:
    """A markdown table: one line per row and point, its validation Avg and Last, and
    which point was chosen (`scores[label][i]`: the (Avg, Last) of point i)."""
    keys = list(grid.axes)
    lines = [
        f"| row | {' | '.join(keys)} | val Avg | val Last | chosen |",
        f"|---|{'---|' * len(keys)}---:|---:|:---:|",
    ]
    for label, row_scores in scores.items():
        for index, (point, (avg, last)) in enumerate(zip(grid.points, row_scores)):
            values = " | ".join(str(value) for value in point.values())
            mark = "**yes**" if chosen[label] == index else ""
            lines.append(f"| {label} | {values} | {avg:.2f} | {last:.2f} | {mark} |")
    return "\n".join(lines) + "\n"
