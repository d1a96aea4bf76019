"""The core stays sans-I/O: importing all of it pulls in no event loop, QUIC or plugin code."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

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


MAX_CORE_MODULE_LINES = 700
"""A core module past this has grown a second concern: split it (see SalonCore's modules)."""


def test_core_modules_stay_small() -> None:
    sizes = {
        path.name: len(path.read_text().splitlines())
        for path in Path(salon.daemon.core.__path__[0]).glob("*.py")
    }
    assert "service.py" in sizes
    assert {name: n for name, n in sizes.items() if n > MAX_CORE_MODULE_LINES} == {}


def test_every_timer_kind_has_one_handler() -> None:
    from salon.daemon.core import SalonCore
    from salon.daemon.core.context import TimerKind

    core = SalonCore()
    assert set(core._ctx._timer_handlers) == set(TimerKind)
