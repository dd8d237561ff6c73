"""Published train/test splits: a `split-file` chooses which images of a folder of class
folders are train and which are test, instead of the source's own split.

Two forms; paths are relative to the folder holding the class folders, `/`-separated, and
their first part names the class folder (no spaces in paths):
- a file of `PATH train|test` lines;
- a folder holding `train.txt` and `test.txt` of `PATH LABEL` lines, LABEL being the
  position of PATH's class folder in sorted order from 0 (torchvision's ImageFolder order;
  a LABEL that disagrees with the folder is an error).
Blank lines and `#` comments are skipped. Only the listed images are used. Every error is
one line naming the key and `file:line`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from multifcl.data.decoded_cache import fingerprint
from multifcl.errors import DataError

KEY = "run config key 'split-file'"
SPLIT_WORDS = ("train", "test")


@dataclass(frozen=True)
class SplitLine:
    """One listed image: its relative path, its split, its label if given, where it was."""

    path: str
    is_train: bool
    label: int | None
    where: str  # file:line


@dataclass(frozen=True)
class SplitSelection:
    """The listed images in class-folder, then path order, and a digest of the split."""

    paths: list[Path]
    labels: np.ndarray
    is_train: np.ndarray
    digest: str


def read_split_lines(location: Path) -> list[SplitLine]:
    """The lines of the split file (or of the folder's train.txt and test.txt)."""
    if location.is_dir():
        lines = [
            line
            for word in SPLIT_WORDS
            for line in _parse(location / f"{word}.txt", word == "train")
        ]
    elif location.is_file():
        lines = _parse(location, None)
    else:
        raise DataError(f"{KEY}: {str(location)!r} is neither a file nor a folder")
    seen: dict[str, str] = {}
    for line in lines:  # in both files, or twice in one: an image must be on one side
        if line.path in seen:
            raise DataError(
                f"{KEY}: {line.where}: {line.path!r} is listed again (first at {seen[line.path]})"
            )
        seen[line.path] = line.where
    return lines


def select_split(location: Path, root: Path, class_names: list[str]) -> SplitSelection:
    """The images `location` lists under `root`, labelled by their class folder's position
    in `class_names`; a missing image, unknown class folder or disagreeing label is named
    with its file:line."""
    lines = read_split_lines(location)
    if not any(line.is_train for line in lines) or all(line.is_train for line in lines):
        raise DataError(f"{KEY}: {str(location)!r} must list both train and test images")
    classes = {name: index for index, name in enumerate(class_names)}
    labelled = sorted(((_class_of(line, root, classes), line) for line in lines), key=_order)
    return SplitSelection(
        paths=[root / line.path for _, line in labelled],
        labels=np.asarray([label for label, _ in labelled], dtype=np.int64),
        is_train=np.asarray([line.is_train for _, line in labelled], dtype=bool),
        digest=fingerprint(
            f"{line.path}:{'train' if line.is_train else 'test'}" for _, line in labelled
        ),
    )


def _order(pair: tuple[int, SplitLine]) -> tuple[int, str]:
    return pair[0], pair[1].path


def _parse(split_file: Path, is_train: bool | None) -> list[SplitLine]:
    """The lines of one file; `is_train` None: `PATH train|test` lines, else `PATH LABEL`."""
    try:
        text = split_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{KEY}: cannot read {str(split_file)!r}: {error}") from None
    lines: list[SplitLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if fields and not fields[0].startswith("#"):
            lines.append(_parse_line(fields, is_train, f"{split_file}:{number}"))
    return lines


def _parse_line(fields: list[str], is_train: bool | None, where: str) -> SplitLine:
    expected = "PATH train|test" if is_train is None else "PATH LABEL"
    if len(fields) != 2:
        raise DataError(f"{KEY}: {where}: expected '{expected}', got {len(fields)} fields")
    path, value = fields
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or len(parts) < 2:
        raise DataError(f"{KEY}: {where}: {path!r} must be a relative path CLASS_FOLDER/.../FILE")
    if is_train is None:
        if value not in SPLIT_WORDS:
            raise DataError(f"{KEY}: {where}: unknown split {value!r} (expected train or test)")
        return SplitLine(path, value == "train", None, where)
    if not value.isdigit():
        raise DataError(f"{KEY}: {where}: label {value!r} is not a class number (0, 1, ...)")
    return SplitLine(path, is_train, int(value), where)


def _class_of(line: SplitLine, root: Path, classes: dict[str, int]) -> int:
    folder = PurePosixPath(line.path).parts[0]
    if folder not in classes:
        raise DataError(f"{KEY}: {line.where}: {folder!r} is not a class folder of {str(root)!r}")
    label = classes[folder]
    if line.label is not None and line.label != label:
        raise DataError(
            f"{KEY}: {line.where}: label {line.label}, but class folder {folder!r} is class "
            f"{label} (labels are class folders' positions in sorted order, from 0)"
        )
    if not (root / line.path).is_file():
        raise DataError(f"{KEY}: {line.where}: image {line.path!r} not found under {str(root)!r}")
    return label
