"""Files replaced atomically: written to a temporary file in the same folder, then renamed
over the target, so a reader (or a run killed mid-write) never sees half a file. The file
gets the mode `open()` would give a new file (0o666 less the umask), not the temporary
file's private 0o600."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def replace_atomically(
    path: Path, write: Callable[[BinaryIO], None], durable: bool = False
) -> None:
    """Replace `path` with what `write(stream)` writes; with `durable`, the data and the rename
    are flushed to disk first (checkpoints). The temporary file never outlives a failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def replace_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8)."""
    replace_atomically(path, lambda stream: stream.write(text.encode()))


def _umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it, the
    fallback, would briefly change what other threads' new files get)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: setting it per write would race other threads' files


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
