"""The local SuperLinks this tool started, so a stale one can be found and ended safely.

Every `LocalFlower` (`multifcl run`, `multifcl compare`) writes a record while it lives:
its process (id and start time, so a reused id is not mistaken for it) and the private
FLWR_HOME its SuperLink was started with. The record is removed when the LocalFlower closes.
A record whose owner is gone while a SuperLink with that FLWR_HOME still runs is a stale
SuperLink (its owner was killed before it could end it): `multifcl doctor --stop-stale` ends
exactly those process trees. A SuperLink is matched by the log path under its FLWR_HOME in
its command line, so one this tool did not start (Flower's own, under ~/.flwr, or another
user's) never matches a record and is never signalled.

Records live in `$XDG_STATE_HOME/multifcl/superlinks/` (default `~/.local/state/...`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from multifcl.local_flower import end_process_trees, superlink_pids


def registry_folder() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "multifcl" / "superlinks"


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22);
    None when no such process runs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if fields[0] != "Z" else None


def register(home: Path, owned_home: bool) -> Path:
    """Record that this process starts SuperLinks under `home`; the record's path."""
    folder = registry_folder()
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    owner = {"pid": os.getpid(), "start": process_start_time(os.getpid())}
    record.write_text(json.dumps({"owner": owner, "home": str(home), "owned_home": owned_home}))
    return record


def unregister(record: Path) -> None:
    record.unlink(missing_ok=True)


@dataclass(frozen=True)
class StartedSuperLink:
    """A record: whose it is, and the SuperLink processes running under its FLWR_HOME."""

    record: Path
    home: Path
    owner_pid: int
    owner_alive: bool
    owned_home: bool  # the FLWR_HOME is a temporary folder the owner created
    pids: list[int]

    @property
    def stale(self) -> bool:
        return not self.owner_alive and bool(self.pids)


def started_superlinks() -> list[StartedSuperLink]:
    """Every record, with its SuperLink processes (records that cannot be read are skipped)."""
    found = []
    for record in sorted(registry_folder().glob("*.json")):
        try:
            saved = json.loads(record.read_text())
            owner, home = saved["owner"], Path(saved["home"])
            alive = (
                owner["start"] is not None and process_start_time(owner["pid"]) == owner["start"]
            )
            found.append(
                StartedSuperLink(
                    record, home, owner["pid"], alive, saved["owned_home"], superlink_pids(home)
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def stop_stale() -> list[StartedSuperLink]:
    """End every stale SuperLink (and what it started), remove the records whose owner is
    gone and their temporary FLWR_HOME; those stopped. A live owner's SuperLink is kept."""
    stopped = []
    for started in started_superlinks():
        if started.owner_alive:
            continue
        if started.pids:
            end_process_trees(started.pids)
            stopped.append(started)
        if started.owned_home:
            shutil.rmtree(started.home, ignore_errors=True)
        unregister(started.record)
    return stopped
