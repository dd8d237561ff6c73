"""Data sets distributed as archives: where to get one, and checks of the extracted layout.

Every check fails with one line: a missing data set names what to download and where to
put it; a wrong layout names the first missing folder or file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from multifcl.data.images import DataError


@dataclass(frozen=True)
class DatasetArchive:
    """A downloadable archive and the folder it extracts to."""

    dataset: str  # the run-config name
    archive: str  # file name of the download
    url: str
    size: str  # download size, for the message
    folder: str  # the folder the archive extracts to
    marker: str  # a path inside `folder` that every copy has
    alternative: str = ""  # another way to get the data, for the message

    def locate(self, data_root: Path | None) -> Path:
        """The extracted folder: `data-root` itself or its `folder` child; else one clear line."""
        how = f"download {self.archive} ({self.size}) from {self.url}"
        also = f"; {self.alternative}" if self.alternative else ""
        if data_root is None:
            raise DataError(
                f"run config key 'data-root': dataset {self.dataset!r} needs the extracted "
                f"{self.folder!r} folder: {how} and set data-root to it{also}"
            )
        nested = data_root / self.folder
        if not (data_root / self.marker).exists() and (nested / self.marker).exists():
            return nested
        if not data_root.is_dir():
            target = data_root if data_root.name == self.folder else nested
            raise DataError(
                f"dataset {self.dataset!r}: data-root {str(data_root)!r} does not exist: {how} "
                f"and extract it so that {str(target / self.marker)!r} exists{also}"
            )
        return data_root

    def require(self, root: Path, relative_paths: Iterable[str]) -> None:
        """Raise naming the first of `relative_paths` that is missing under `root`."""
        for relative in relative_paths:
            if not (root / relative).exists():
                raise DataError(
                    f"dataset {self.dataset!r}: data-root {str(root)!r} has the wrong layout: "
                    f"{str(root / relative)!r} is missing (expected the layout of {self.archive})"
                )
