"""Drive the `flwr` command line in simulation: a private FLWR_HOME, the runtime dependency
install off, the run's status read back with `flwr list`, and the SuperLink ended by its id.

Only the `flwr` executable is run (as a subprocess); nothing here imports Flower.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

LOCAL_SUPERLINK_PORT = 39091  # the port `flwr` uses for the SuperLink it starts itself
RUN_TIMEOUT_SECONDS = 7 * 24 * 3600.0  # `flwr run --stream` lasts as long as the run


@dataclass
class FlowerRun:
    run_id: str
    status: str  # e.g. finished:completed, finished:failed
    details: str
    logs: str

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def superlink_is_running() -> bool:
    """True when some SuperLink already answers on the local port (it would be reused)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{LOCAL_SUPERLINK_PORT}/health", timeout=1)
        return True
    except OSError:
        return False


class LocalFlower:
    """A local simulation SuperLink owned by this object; use as a context manager."""

    def __init__(self, home: Path | None = None, workdir: Path | None = None) -> None:
        self._owned_home = None if home else tempfile.TemporaryDirectory(prefix="flwr-home-")
        self.home = Path(home or self._owned_home.name).resolve()
        self.workdir = Path(workdir or self.home).resolve()  # cwd of the ServerApp and clients
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def flwr(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["flwr", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(
        self,
        app: Path,
        overrides: str | list[str] = "",
        federation: str = "",
        timeout: float = RUN_TIMEOUT_SECONDS,
    ) -> FlowerRun:
        """`flwr run APP --stream` to the end; the status comes from `flwr list`.

        `overrides`: one run-config string, or several (TOML files or strings, applied in order).
        """
        args = ["run", str(app), "--format", "json", "--stream"]
        if federation:
            args += ["--federation-config", federation]
        for override in [overrides] if isinstance(overrides, str) else overrides:
            if override:
                args += ["-c", override]
        started = self.flwr(*args, timeout=timeout)
        try:
            reply = json.loads(started.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"flwr run printed no JSON: {started.stderr.strip()[-500:]}"
            ) from None
        if not reply.get("success"):  # `--format json` exits 0 even when it failed
            raise RuntimeError(f"flwr run refused the run: {reply.get('error-message')}")
        run_id = str(reply["run-id"])
        listing = json.loads(self.flwr("list", "--run-id", run_id, "--format", "json").stdout)
        run = listing["runs"][0]
        logs = self.flwr("log", run_id, "--show").stdout
        return FlowerRun(run_id, run["status"], run.get("status-details", ""), logs)

    def close(self) -> None:
        """End the SuperLink this home started (and its children), by process id."""
        pids = _superlink_pids(self.home)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        for pid in pids:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        if self._owned_home is not None:
            self._owned_home.cleanup()


def _superlink_pids(flwr_home: Path) -> list[int]:
    """Ids of the SuperLink processes started for this FLWR_HOME (found by their log path)."""
    marker = f"{flwr_home}/local-superlink/superlink.log"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in argv and any(arg.endswith("flower-superlink") for arg in argv):
            pids.append(int(entry.name))
    return pids
