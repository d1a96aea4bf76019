"""Which package may import which, and who may touch aioquic's and asyncio's internals.

- The daemon (and the bundled plugins) import nothing from the client package: the media code
  both need is :mod:`salon.media`, and the demo bot is composed through an entry point.
- The wire format (:mod:`salon.daemon.wire`) and the media library load none of the daemon's
  runtime, so clients, the console and plugins can use them alone.
- Only :mod:`salon.quic` reads or replaces private names of aioquic or asyncio, or imports
  aioquic's internal modules; everything else goes through it (see tests/test_quic_seam.py).
- The console imports only the admin client, the admin protocol and the wire messages.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import aioquic

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("daemon", "client", "media", "plugins", "tui")
"""Every installed package of Salon except the seam (``quic``)."""

PUBLIC_AIOQUIC = {
    "aioquic",
    "aioquic.asyncio",
    "aioquic.asyncio.client",
    "aioquic.asyncio.server",
    "aioquic.asyncio.protocol",
    "aioquic.quic.configuration",
    "aioquic.quic.connection",
    "aioquic.quic.events",
    "aioquic.h3",
    "aioquic.h3.connection",
    "aioquic.h3.events",
}
"""aioquic's documented API (connect, serve, the protocol class, configuration, events, the
sans-I/O connection, and the HTTP/3 layer WebTransport sessions use)."""


def python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((REPO / folder).rglob("*.py"))


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every import statement, relative ones left out."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


# ------------------------------------------------------------------------- the client package


def client_imports(folders: tuple[str, ...]) -> list[str]:
    found = []
    for path in python_files(*folders):
        tree = parse(path)
        for line, module, names in imported_modules(tree):
            wanted = [module] + [f"{module}.{name}" for name in names]
            if any(m == "salon.client" or m.startswith("salon.client.") for m in wanted):
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
        for node in ast.walk(tree):
            # importlib.import_module("salon.client...") and the like.
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("salon.client")
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} names {node.value!r}")
    return found


def test_daemon_and_plugins_import_nothing_from_the_client() -> None:
    assert client_imports(("daemon", "plugins", "media", "quic")) == []


def test_the_scan_sees_a_client_import() -> None:
    assert client_imports(("client",)), "the client imports itself: the scan must see it"


def loaded_after_import(modules: list[str]) -> list[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(output))


def package_modules(folder: str, package: str) -> list[str]:
    names = []
    for path in python_files(folder):
        parts = path.relative_to(REPO / folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((package, *parts)))
    return names


def test_salond_loads_no_client_module() -> None:
    loaded = loaded_after_import(["salon.daemon.app", *package_modules("daemon", "salon.daemon")])
    assert [m for m in loaded if m.startswith("salon.client")] == []


DAEMON_RUNTIME = tuple(
    f"salon.daemon.{name}" for name in ("core", "net", "store", "hooks", "admin", "recording")
)


def test_wire_and_media_load_no_daemon_runtime_and_no_quic() -> None:
    modules = package_modules("daemon/wire", "salon.daemon.wire") + package_modules(
        "media", "salon.media"
    )
    assert "salon.daemon.wire.messages" in modules and "salon.media.jitter" in modules
    loaded = loaded_after_import(modules)
    unwanted = [
        m
        for m in loaded
        if m.startswith((*DAEMON_RUNTIME, "salon.client", "salon.quic", "aioquic"))
        or m in ("salon.daemon.config", "salon.daemon.app")
    ]
    assert unwanted == []


# --------------------------------------------------------------- aioquic and asyncio internals


@cache
def private_names() -> frozenset[str]:
    """Every ``_name`` (not dunder) that aioquic or asyncio defines as an attribute or method.

    Read from their installed sources, so that a name added by an upgrade is covered too.
    """
    names: set[str] = set()
    roots = [Path(aioquic.__file__).parent, Path(asyncio.__file__).parent]
    for root in roots:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.Attribute):
                    name = node.attr
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = node.name
                else:
                    continue
                if name.startswith("_") and not name.startswith("__"):
                    names.add(name)
    return frozenset(names)


def own_attributes(tree: ast.AST) -> set[str]:
    """``self._x`` names a module assigns, and methods it defines: its own private state."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own.add(node.name)
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                own.add(target.attr)
    return own


def internal_uses(path: Path, where: str = "") -> list[str]:
    """Where ``path`` touches aioquic's or asyncio's private names or internal modules."""
    tree = parse(path)
    where = where or str(path.relative_to(REPO))
    private = private_names()
    own = own_attributes(tree)
    found = []
    for line, module, names in imported_modules(tree):
        top = module.split(".")[0]
        public = module in PUBLIC_AIOQUIC or (
            bool(names) and all(f"{module}.{name}" in PUBLIC_AIOQUIC for name in names)
        )
        if top == "aioquic" and not public:
            found.append(f"{where}:{line} imports aioquic internal module {module}")
        if top == "asyncio" and module != "asyncio":
            found.append(f"{where}:{line} imports asyncio internal module {module}")
        if top in ("aioquic", "asyncio"):
            found += [f"{where}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            mine = isinstance(node.value, ast.Name) and node.value.id == "self"
            if not (mine and node.attr in own):
                found.append(f"{where}:{node.lineno} reads or replaces .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
            and not (
                isinstance(node.args[0], ast.Name)
                and node.args[0].id == "self"
                and node.args[1].value in own
            )
        ):
            found.append(f"{where}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_only_the_quic_seam_touches_aioquic_and_asyncio_internals() -> None:
    found = [use for path in python_files(*PRODUCT) for use in internal_uses(path)]
    assert found == [], "use salon.quic for these:\n" + "\n".join(found)


def test_the_scan_sees_the_seams_own_internal_uses() -> None:
    """The seam itself is full of them: a scan that found none there would be blind."""
    found = [use for path in python_files("quic") for use in internal_uses(path)]
    text = "\n".join(found)
    for expected in (
        "._datagrams_pending",
        "._serialize_transport_parameters",
        "._spaces",
        "._handle_timer",
        "getattr(..., '_sock')",
        "imports aioquic internal module aioquic.quic.packet_builder",
    ):
        assert expected in text, expected


def test_the_scan_flags_an_internal_read_outside_the_seam(tmp_path: Path) -> None:
    """A session that read aioquic's datagram queue itself, or a super() timer, is caught."""
    path = REPO / "daemon" / "net" / "session.py"
    source = path.read_text() + (
        "\n\ndef peek(protocol):\n"
        "    return protocol.quic._datagrams_pending, super()._handle_timer()\n"
        "\n\nfrom asyncio.selector_events import _SelectorDatagramTransport\n"
    )
    probe = tmp_path / "session.py"
    probe.write_text(source)
    found = "\n".join(internal_uses(probe, "daemon/net/session.py"))
    assert "._datagrams_pending" in found
    assert "._handle_timer" in found
    assert "asyncio internal module asyncio.selector_events" in found


# ------------------------------------------------------------------------------- the console

CONSOLE_MAY_IMPORT = ("salon.daemon.admin.client", "salon.daemon.admin.protocol")
"""Besides its own modules and the wire package (the protocol's messages and its text rules,
pure functions that load no daemon runtime: see the wire test above)."""


def test_console_imports_only_the_admin_client_and_protocol() -> None:
    found = []
    for path in python_files("tui"):
        for line, module, names in imported_modules(parse(path)):
            if not module.startswith("salon"):
                continue
            full = {module, *(f"{module}.{name}" for name in names)}
            allowed = (
                module.startswith("salon.tui")
                or module in CONSOLE_MAY_IMPORT
                or module == "salon.daemon.wire"
                or module.startswith("salon.daemon.wire.")
                or bool(full & set(CONSOLE_MAY_IMPORT))  # from salon.daemon.admin import client
            )
            if not allowed:
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert found == []
