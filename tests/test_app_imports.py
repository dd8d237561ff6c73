"""The library is imported in one go by both apps (`multifcl.app_imports`), so Flower's
simulation, which loads the ClientApp and the ServerApp's task loop in two threads of one
process, never has two threads importing the library's modules at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import sys
import multifcl.app_imports
before = {m for m in sys.modules if m.startswith("multifcl")}
import clients.client_app, server.server_app, server.continual_loop, server.ray_actor_pool
after = {m for m in sys.modules if m.startswith("multifcl")}
print(sorted(after - before))
"""


def test_the_apps_import_no_library_module_that_app_imports_has_not():
    found = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]", f"add to multifcl/app_imports.py: {found.stdout}"


def test_both_apps_import_it_before_the_rest_of_the_library():
    client = (ROOT / "clients" / "client_app.py").read_text()
    assert client.index("import multifcl.app_imports") < client.index("from multifcl.")
    server = (ROOT / "server" / "server_app.py").read_text()
    main = server[server.index("def main(") :]
    assert main.index("import multifcl.app_imports") < main.index("from server.continual_loop")
