"""One owner per run folder: an exclusive lock on `<run>/.lock`, held for the run's life.

The lock is the operating system's (`flock`), so it is released on any exit of the
process that holds it, `kill -9` included: a lock is never left stale, and a run that
finds one held knows another live process writes into the folder. The lock file names
its holder (run id, pid, host) for the refusal message and is removed on release; after a
`kill -9` it stays behind, naming a dead process, and the next run simply takes it over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

from multifcl.config import ConfigError

LOCK_FILE = ".lock"


class RunLock:
    """Exclusive ownership of a run folder while the `with` block (or `acquire` to
    `release`) lasts; a folder owned by another process is a one-line ConfigError that
    starts with `where` and names the folder and its holder."""

    def __init__(
        self, folder: Path, run_id: str | None, where: str = "run config key 'output-dir'"
    ) -> None:
        self.folder = folder
        self.run_id = run_id
        self.where = where
        self._descriptor: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> Self:
        """Take the lock, creating the folder (and its missing parents) if needed."""
        self._created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self._descriptor = self._open_locked()
            holder = {"run-id": self.run_id, "pid": os.getpid(), "host": socket.gethostname()}
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as error:  # an unwritable folder, or a file system without locks
            self.release()
            raise ConfigError(
                f"{self.where}: cannot lock {str(self.path)!r}: {error.strerror or error}"
            ) from None
        return self

    def _open_locked(self) -> int:
        """A descriptor of the lock file, locked; ConfigError when another process has it."""
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a refused run removed the folder it had created
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                raise ConfigError(self._in_use_message(holder)) from None
            except OSError:
                os.close(descriptor)
                raise
            if _same_file(descriptor, self.path):
                return descriptor
            os.close(descriptor)  # its holder removed the file as we opened it: take the new one

    def release(self) -> None:
        """Give the folder up: the lock file goes, and so do the folders `acquire` created
        if nothing was written into them."""
        if self._descriptor is not None:
            self.path.unlink(missing_ok=True)  # while still locked: a later opener retries
            os.close(self._descriptor)
            self._descriptor = None
        self._remove_created_folders()

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _remove_created_folders(self) -> None:
        for folder in self._created:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote results) or already gone
                return

    def _in_use_message(self, holder: dict) -> str:
        where = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            where += ", which has exited; a process it started still holds the lock: end it first"
        return (
            f"{self.where}: {str(self.folder)!r} is in use by run "
            f"{holder.get('run-id') or '(id not yet written)'} ({where})"
        )


def _read_holder(descriptor: int) -> dict:
    """The holder named in the lock file; empty when it has not written itself in yet."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: do not claim it exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
