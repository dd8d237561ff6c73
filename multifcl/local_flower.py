"""Drive the `flwr` command line in simulation on a SuperLink of our own: a private
FLWR_HOME, ports of its own, the runtime dependency install off, the run's status read back
with `flwr list`, and on close the SuperLink and everything it started ended by process id.

Only the `flwr` executable is run (as a subprocess); nothing here imports Flower.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

# Flower's variables for the ports of the SuperLink that `flwr` starts itself
HTTP_PORT_VARIABLE = "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"  # Flower's default: 39091
CONTROL_PORT_VARIABLE = "FLWR_LOCAL_CONTROL_API_PORT"  # Flower's default: 39093
RUN_TIMEOUT_SECONDS = 7 * 24 * 3600.0  # `flwr run --stream` lasts as long as the run
STOP_GRACE_SECONDS = 15.0


class PortInUse(RuntimeError):
    """The SuperLink port asked for already answers: that SuperLink is not ours."""


@dataclass
class FlowerRun:
    run_id: str
    status: str  # e.g. finished:completed, finished:failed
    details: str
    logs: str

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def superlink_answers(port: int) -> bool:
    """True when a SuperLink answers on 127.0.0.1:`port` (`flwr` would reuse it)."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        return True
    except OSError:
        return False


def _port_from(variable: str, environ: dict[str, str]) -> int:
    text = environ.get(variable, "").strip()
    if not text:
        return free_port()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{variable}={text!r} is not a port number")
    return int(text)


class LocalFlower:
    """A local simulation SuperLink owned by this object; use as a context manager.

    Its ports are Flower's port variables when set, else free ones chosen here, so it never
    reuses another user's or job's SuperLink; `close` ends only the processes it started.
    """

    def __init__(self, home: Path | None = None, workdir: Path | None = None) -> None:
        environ = dict(os.environ)
        self.http_port = _port_from(HTTP_PORT_VARIABLE, environ)
        self.control_port = _port_from(CONTROL_PORT_VARIABLE, environ)
        if superlink_answers(self.http_port):
            raise PortInUse(
                f"a SuperLink not started by this command already answers on 127.0.0.1:"
                f"{self.http_port} ({HTTP_PORT_VARIABLE}); unset it to get a free port"
            )
        self._owned_home = None if home else tempfile.TemporaryDirectory(prefix="flwr-home-")
        self.home = Path(home or self._owned_home.name).resolve()
        self.workdir = Path(workdir or self.home).resolve()  # cwd of the ServerApp and clients
        self.env = {
            **environ,
            "FLWR_HOME": str(self.home),
            HTTP_PORT_VARIABLE: str(self.http_port),
            CONTROL_PORT_VARIABLE: str(self.control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}",
        }
        from multifcl.superlink_registry import register  # `multifcl doctor` reads it

        self._record = register(self.home, owned_home=self._owned_home is not None)

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
        echo: bool = False,
    ) -> FlowerRun:
        """`flwr run APP --stream` to the end; the status comes from `flwr list`.

        `overrides`: one run-config string, or several (TOML files or strings, applied in order).
        `echo`: the run's log goes to this process's terminal as it comes (`logs` is then empty).
        """
        args = ["run", str(app), "--stream"]
        if federation:
            args += ["--federation-config", federation]
        for override in [overrides] if isinstance(overrides, str) else overrides:
            if override:
                args += ["-c", override]
        if echo:
            known = self._run_ids()
            started = subprocess.run(["flwr", *args], env=self.env, cwd=self.workdir, check=False)
            new = self._run_ids() - known
            if started.returncode or len(new) != 1:
                raise RuntimeError(f"flwr run started no run (exit status {started.returncode})")
            run_id = new.pop()
        else:
            run_id = self._start_quietly(args, timeout)
        listing = json.loads(self.flwr("list", "--run-id", run_id, "--format", "json").stdout)
        run = listing["runs"][0]
        logs = "" if echo else self.flwr("log", run_id, "--show").stdout
        return FlowerRun(run_id, run["status"], run.get("status-details", ""), logs)

    def _start_quietly(self, args: list[str], timeout: float) -> str:
        """Run `flwr` with JSON output; the run's id."""
        started = self.flwr(*args, "--format", "json", timeout=timeout)
        try:
            reply = json.loads(started.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"flwr run printed no JSON: {started.stderr.strip()[-500:]}"
            ) from None
        if not reply.get("success"):  # `--format json` exits 0 even when it failed
            raise RuntimeError(f"flwr run refused the run: {reply.get('error-message')}")
        return str(reply["run-id"])

    def _run_ids(self) -> set[str]:
        """The ids of the runs this SuperLink knows (none before it has started)."""
        if not superlink_answers(self.http_port):
            return set()
        listing = json.loads(self.flwr("list", "--format", "json").stdout)
        return {str(run["run-id"]) for run in listing.get("runs", [])}

    def close(self) -> None:
        """End the SuperLink this home started and every process under it (the simulation,
        Ray), by process id: SIGTERM, then SIGKILL after a grace period."""
        from multifcl.superlink_registry import unregister

        end_process_trees(superlink_pids(self.home))
        if self._owned_home is not None:
            self._owned_home.cleanup()
        unregister(self._record)


def end_process_trees(roots: list[int]) -> None:
    """End the processes `roots` and all their descendants: SIGTERM, then SIGKILL after a
    grace period."""
    pids = [pid for root in roots for pid in _process_tree(root)]
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    _signal_all([p for p in pids if _alive(p)], signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _parents() -> dict[int, int]:
    """Every live process id with its parent's id, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
    return parents


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found before any is signalled (orphans reparent)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def superlink_pids(flwr_home: Path) -> list[int]:
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
