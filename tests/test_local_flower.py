"""The local SuperLink is ours alone: ports of its own, and on close every process it
started ends, found by process id (no Flower process is started here)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from multifcl.local_flower import (
    CONTROL_PORT_VARIABLE,
    HTTP_PORT_VARIABLE,
    LocalFlower,
    PortInUse,
    _alive,
)
from tests.conftest import fake_superlink


@pytest.fixture
def no_port_variables(monkeypatch):
    monkeypatch.delenv(HTTP_PORT_VARIABLE, raising=False)
    monkeypatch.delenv(CONTROL_PORT_VARIABLE, raising=False)


def test_each_local_flower_gets_free_ports_of_its_own(no_port_variables, tmp_path):
    with LocalFlower(home=tmp_path / "a") as first, LocalFlower(home=tmp_path / "b") as second:
        ports = {first.http_port, first.control_port, second.http_port, second.control_port}
        assert len(ports) == 4 and 39091 not in ports
        assert first.env[HTTP_PORT_VARIABLE] == str(first.http_port)
        assert first.env[CONTROL_PORT_VARIABLE] == str(first.control_port)


def test_flowers_port_variables_are_honoured(monkeypatch, tmp_path):
    monkeypatch.setenv(HTTP_PORT_VARIABLE, "45123")
    monkeypatch.setenv(CONTROL_PORT_VARIABLE, "45124")
    with LocalFlower(home=tmp_path) as flower:
        assert (flower.http_port, flower.control_port) == (45123, 45124)


def test_a_port_where_another_superlink_answers_is_refused(monkeypatch, tmp_path):
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(HTTP_PORT_VARIABLE, str(server.server_port))
        with pytest.raises(PortInUse, match=f"127.0.0.1:{server.server_port}"):
            LocalFlower(home=tmp_path)
    finally:
        server.shutdown()


def test_close_ends_the_superlink_and_everything_under_it(no_port_variables, tmp_path):
    home = tmp_path / "home"
    superlink, child = fake_superlink(tmp_path, home)  # a child of its own, like Flower's
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        LocalFlower(home=home).close()
        superlink.wait(timeout=20)
        deadline = time.monotonic() + 20
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
        assert other.poll() is None  # a process it did not start is left alone
    finally:
        other.kill()
        superlink.kill()
        if Path(f"/proc/{child}").exists():
            subprocess.run(["kill", "-9", str(child)], check=False)
