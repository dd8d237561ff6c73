"""Deployment on loopback: a SuperLink with TLS and SuperNode authentication, two registered
SuperNodes that run a 2-task job, a SuperNode with an unregistered key that is refused, and
runs the server refuses at its handshake: a data copy unlike the server's, and a third
SuperNode with a duplicate partition id.

Certificates and keys come from the `deploy/` scripts, as in the README's deployment section.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clients.client_app import train
from multifcl.local_flower import LocalFlower, free_port
from server.continual_loop import run_continual_learning
from server.in_process_grid import InProcessGrid
from tests.test_data_sources import make_image_folder

APP_DIR = Path(__file__).resolve().parents[1]
DEPLOY = APP_DIR / "deploy"
CONNECTION = "loopback"
MARKER = "MULTIFCL_DEPLOYMENT_TEST"  # in the environment of every process the test starts
TINY_JOB = "dataset='synthetic' backbone='vit-tiny' num-tasks=2 rounds-per-task=1 partition='iid'"
TINY_IMAGE_JOB = TINY_JOB.replace("'synthetic'", "'imagefolder'")


@dataclass
class Deployment:
    """A SuperLink and its SuperNodes on loopback, all started (and ended) by the fixture."""

    root: Path
    cli: LocalFlower  # the `flwr` CLI with a private FLWR_HOME whose default connection is ours
    superlink_address: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    registered_node_ids: set[str] = field(default_factory=set)
    node_ids: dict[str, str] = field(default_factory=dict)  # SuperNode name -> its node id

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start one Flower process in its own session ("machine": own FLWR_HOME and cwd)."""
        machine = self.root / name
        (machine / "home").mkdir(parents=True)
        env = {**self.cli.env, "FLWR_HOME": str(machine / "home"), MARKER: str(self.root)}
        with open(self.root / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=machine,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_supernode(self, name: str, partition_id: int, port: int) -> subprocess.Popen:
        data_root = self.root / name / "data"  # this machine's own copy (unused by 'synthetic')
        node_config = f"partition-id={partition_id} num-partitions=2 data-root='{data_root}'"
        return self.start(
            name,
            [
                "flower-supernode",
                "--superlink",
                self.superlink_address,
                "--root-certificates",
                str(self.root / "certs" / "ca.crt"),
                "--auth-supernode-private-key",
                str(self.root / "keys" / name),
                "--port",
                str(port),
                "--node-config",
                node_config,
            ],
        )

    def register(self, name: str) -> str:
        """Register SuperNode `name`'s public key; its node id."""
        registered = self.cli.flwr(
            "supernode", "register", str(self.root / "keys" / f"{name}.pub"), "--format", "json"
        )
        reply = json.loads(registered.stdout or "{}")
        assert reply.get("success"), (registered.stdout, registered.stderr)
        self.node_ids[name] = str(reply["node-id"])
        return self.node_ids[name]

    def wait_for_log(self, name: str, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(name):
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {text!r} after {timeout} s:\n{self.tail(name)}")
            time.sleep(0.5)

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.log(name)[-chars:]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"port {port} never opened (exit status {process.poll()})")


def _script(*argv: str | Path, status: int = 0) -> subprocess.CompletedProcess:
    """Run a deploy/ script and check its exit status."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert done.returncode == status, (done.stdout, done.stderr)
    return done


def _marked_processes(root: Path) -> list[int]:
    """Ids of live processes started (directly or not) by this deployment: what `ps e` shows."""
    marker = f"{MARKER}={root}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def _end(deployment: Deployment) -> None:
    """SIGTERM every process group the test started, then SIGKILL whatever still carries the
    marker (Flower detaches its SuperExec into a session of its own), by id."""
    for process in deployment.processes.values():
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _marked_processes(deployment.root) and time.monotonic() < deadline:
        time.sleep(0.3)
    for pid in _marked_processes(deployment.root):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in deployment.processes.values():
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.5)
    survivors = _marked_processes(deployment.root)
    assert not survivors, f"Flower processes survived the test: {survivors}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    for tool in ("openssl", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; the deployment test needs it")
    root = tmp_path_factory.mktemp("deployment")
    _script(DEPLOY / "make_certificates.sh", root / "certs")
    _script(DEPLOY / "make_node_keys.sh", root / "keys", "node-0", "node-1", "node-2", "intruder")

    port = free_port()
    address = f"127.0.0.1:{port}"
    (root / "cli").mkdir()
    (root / "cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n'
        f'root-certificates = "{root / "certs" / "ca.crt"}"\n'
    )
    deployment = Deployment(root, LocalFlower(home=root / "cli", workdir=root), address)
    try:
        certs = root / "certs"
        superlink = deployment.start(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile",
                str(certs / "ca.crt"),
                "--ssl-certfile",
                str(certs / "server.crt"),
                "--ssl-keyfile",
                str(certs / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        _wait_for_port(port, superlink)
        for name in ("node-0", "node-1"):
            deployment.registered_node_ids.add(deployment.register(name))
        for partition_id, name in enumerate(("node-0", "node-1")):
            deployment.start_supernode(name, partition_id, free_port())
        for node_id in deployment.registered_node_ids:
            deployment.wait_for_log("superlink", f"Activated node_id={node_id}")
        yield deployment
    finally:
        _end(deployment)


def test_supernode_with_unregistered_key_is_refused(deployment):
    intruder = deployment.start_supernode("intruder", partition_id=0, port=free_port())
    try:
        status = intruder.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the unregistered SuperNode still runs after 90 s:\n{deployment.tail('intruder')}"
        )
    assert status != 0
    assert "Failed to activate SuperNode" in deployment.log("intruder"), deployment.tail("intruder")
    assert "No SuperNode found with the given public key" in deployment.log("superlink")
    listed = json.loads(deployment.cli.flwr("supernode", "list", "--format", "json").stdout)
    assert {node["node-id"] for node in listed["nodes"]} == deployment.registered_node_ids


def test_tls_authenticated_deployment_runs_an_asynchronous_two_task_job(deployment):
    """Each SuperNode its own task order and start (docs/asynchronous.md): 2 tasks x 1
    round, one client a round late, so the 3 global rounds (stages) mix the two tasks."""
    output = deployment.root / "results"
    stream = "client-task-order='per-client' client-start-delay-rounds=1 method='lwf'"
    run = deployment.cli.run(APP_DIR, overrides=f"{TINY_JOB} {stream} output-dir='{output}'")
    assert run.completed, (run.status, run.details, run.logs[-3000:])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["num_stages"] == 3 and metrics["tasks_finished"] == 3
    assert all(a is not None for a in metrics["accuracy_matrix"][-1])
    client_tasks = metrics["stream_schedule"]["client_tasks"]
    assert sorted(row.count(-1) for row in client_tasks) == [1, 1]  # one idle round each
    rows = list(csv.DictReader((output / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("1", "0"), ("2", "0"), ("1", "0")]
    trained = set(re.findall(r"Push replies from node_id=(\d+)", deployment.log("superlink")))
    assert trained == deployment.registered_node_ids  # the refused node never trained


def refused_line(run) -> str:
    """The one line a run that the ServerApp refused at start failed with."""
    assert run.status == "finished:failed", (run.status, run.details, run.logs[-3000:])
    line = run.details.removeprefix("ServerApp failed with exception: ")
    assert "\n" not in line, line
    return line


def test_a_supernode_whose_data_copy_differs_is_refused(deployment):
    """node-1's copy has a class folder renamed: it would train on shifted labels."""
    server_copy = make_image_folder(deployment.root / "server-data")
    make_image_folder(deployment.root / "node-0" / "data")
    renamed = make_image_folder(deployment.root / "node-1" / "data")
    for split in ("train", "test"):
        (renamed / split / "cat").rename(renamed / split / "yak")
    output = deployment.root / "refused-data"
    overrides = f"{TINY_IMAGE_JOB} data-root='{server_copy}' output-dir='{output}'"
    line = refused_line(deployment.cli.run(APP_DIR, overrides=overrides))
    assert line.startswith(
        f"node {deployment.node_ids['node-1']} (partition-id=1): its data differs from the "
        "server's: class folders differ from position 0"
    ), line
    assert not output.exists()


def test_a_third_supernode_with_a_duplicate_partition_id_is_refused(deployment):
    node_id = deployment.register("node-2")
    deployment.start_supernode("node-2", partition_id=0, port=free_port())
    deployment.wait_for_log("superlink", f"Activated node_id={node_id}")
    output = deployment.root / "refused-duplicate"
    line = refused_line(deployment.cli.run(APP_DIR, overrides=f"{TINY_JOB} output-dir='{output}'"))
    named = re.fullmatch(r"node (\d+): partition-id=0 is already held by node (\d+) .*", line)
    assert named, line
    assert set(named.groups()) == {node_id, deployment.node_ids["node-0"]}
    assert not output.exists()


def test_scripts_refuse_bad_input_in_one_line(tmp_path):
    for tool in ("openssl", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed; the deploy scripts need it")
    _script(DEPLOY / "make_certificates.sh", tmp_path / "certs")
    _script(DEPLOY / "make_node_keys.sh", tmp_path / "keys", "node-0")
    refusals = {
        "make_certificates.sh": [tmp_path / "certs"],  # would overwrite the CA
        "make_node_keys.sh": [tmp_path / "keys", "node-0"],  # would overwrite the key
    }
    for script, argv in refusals.items():
        refused = _script(DEPLOY / script, *argv, status=1)
        assert refused.stderr.count("\n") == 1 and "exists" in refused.stderr, refused.stderr
    bad_host = _script(DEPLOY / "make_certificates.sh", tmp_path / "other", "a,b", status=1)
    assert bad_host.stderr.count("\n") == 1 and "host 'a,b'" in bad_host.stderr


def test_supernode_data_root_replaces_the_run_configs(tiny_config, tmp_path):
    """Each client machine reads its own copy: the run config's folder is not on the clients."""
    server_copy = make_image_folder(tmp_path / "server-copy")
    config = tiny_config(dataset="imagefolder", data_root=server_copy, rounds_per_task=1)
    client_run_config = {**config.to_run_config(), "data-root": str(tmp_path / "not-here")}
    grid = InProcessGrid(train, client_run_config, num_nodes=2)
    for node, context in enumerate(grid.contexts.values()):
        context.node_config["data-root"] = str(make_image_folder(tmp_path / f"node-{node}"))
    run_continual_learning(grid, config, base_dir=tmp_path)
    rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
    assert [(r["clients"], r["failures"]) for r in rows] == [("2", "0"), ("2", "0")]
