"""The core stays sans-I/O: importing all of it pulls in no event loop, QUIC or plugin code."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import salon.daemon.core

NEVER = ("asyncio", "aioquic", "pluggy")
"""Must not be loaded at all after importing the core."""
NOT_BY_US = ("socket", "threading", "selectors", "ssl")
"""May be loaded by the interpreter's start-up, but never because of the core."""


def test_core_imports_no_io_modules() -> None:
    modules = sorted(
        info.name
        for info in pkgutil.walk_packages(salon.daemon.core.__path__, "salon.daemon.core.")
    )
    assert "salon.daemon.core.service" in modules and "salon.daemon.core.forwarder" in modules
    script = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "added = set(sys.modules) - before\n"
        f"print(json.dumps([sorted(m for m in {NEVER!r} if m in sys.modules),\n"
        f"                  sorted(m for m in {NOT_BY_US!r} if m in added)]))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == [[], []]
