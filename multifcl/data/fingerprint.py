"""A cheap fingerprint of a train split: what a client proves it holds before a run starts.

Two copies of a data set get the same fingerprint exactly when they list the same classes
in the same order, the same number of samples, and the same content digest:
- image files (image folders): each file's class folder, name, size and label (the files
  are listed and stat'ed, never decoded);
- images in memory (`synthetic`, `digits`): the digest of the exact pixels and labels;
- anything else (decoded caches of the Hub and archive sets): the digest of the labels
  (the pixel cache is keyed by the source files' names and sizes already).
A `split-file` adds the digest of the split it chose (every listed path and its split), so
nodes with other split files differ even where the train images agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multifcl.data.decoded_cache import fingerprint
from multifcl.data.images import InMemoryImages, LabelledImages

MAX_NAMES_SHOWN = 4  # class names quoted either side of a difference
SPLIT_RECORD_KEY = "split-digest"


@dataclass(frozen=True)
class DataFingerprint:
    """The class names in label order, the sample count and a content digest of a split,
    and the digest of the `split-file` split ("" without one)."""

    classes: tuple[str, ...]
    samples: int
    digest: str
    split: str = ""

    def as_record(self) -> dict:
        """The flat form sent in a handshake reply (a ConfigRecord's values)."""
        return {
            "classes": list(self.classes),
            "samples": self.samples,
            "digest": self.digest,
            SPLIT_RECORD_KEY: self.split,
        }

    @classmethod
    def from_record(cls, record) -> DataFingerprint:
        split = str(record[SPLIT_RECORD_KEY]) if SPLIT_RECORD_KEY in record else ""
        return cls(tuple(record["classes"]), int(record["samples"]), str(record["digest"]), split)

    def difference(self, reference: DataFingerprint) -> str | None:
        """How this copy differs from `reference`, in a few words; None when it does not."""
        if self.classes != reference.classes:
            at = next(
                (
                    i
                    for i, pair in enumerate(zip(self.classes, reference.classes))
                    if len(set(pair)) > 1
                ),
                min(len(self.classes), len(reference.classes)),
            )
            return (
                f"class folders differ from position {at}: {_names(self.classes, at)} where the "
                f"server has {_names(reference.classes, at)} ({len(self.classes)} vs "
                f"{len(reference.classes)} classes)"
            )
        if self.split != reference.split:
            return (
                f"another split-file split (digest {self.split or 'none'} where the server has "
                f"{reference.split or 'none'})"
            )
        if self.samples != reference.samples:
            return f"{self.samples} training samples where the server has {reference.samples}"
        if self.digest != reference.digest:
            return (
                "same class folders and sample count, but other files or sizes "
                f"(digest {self.digest} where the server has {reference.digest})"
            )
        return None


def split_fingerprint(
    split: LabelledImages, class_names: list[str], split_digest: str = ""
) -> DataFingerprint:
    """The fingerprint of `split` (whose labels index `class_names`), chosen by the
    `split-file` split with digest `split_digest` ("" without one)."""
    paths = getattr(split, "paths", None)
    if paths is not None:
        digest = fingerprint(_file_entries(paths, split.labels))
    elif isinstance(split, InMemoryImages):
        digest = split.fingerprint[:16]
    else:
        digest = fingerprint([np.ascontiguousarray(split.labels, dtype=np.int64).tobytes().hex()])
    return DataFingerprint(tuple(class_names), len(split.labels), digest, split_digest)


def _file_entries(paths: list[Path], labels: np.ndarray):
    for path, label in zip(paths, labels.tolist()):
        yield f"{path.parent.name}/{path.name}:{path.stat().st_size}:{label}"


def _names(classes: tuple[str, ...], at: int) -> str:
    shown = list(classes[at : at + MAX_NAMES_SHOWN])
    more = ", ..." if len(classes) > at + MAX_NAMES_SHOWN else ""
    return "[" + ", ".join(repr(name) for name in shown) + more + "]"
