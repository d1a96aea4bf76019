"""A throw-away PostgreSQL cluster for the tests: initdb in a temporary directory, a free loopback
port and a Unix socket in that directory, started and stopped by the tests themselves.

PostgreSQL refuses to run as root. Run as root (as CI is), the cluster belongs to the ``postgres``
system user that Debian's ``postgresql`` package creates, and every server command runs as that
user (``runuser``); otherwise it belongs to whoever runs the tests. No system service is used.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "salon_test"


def binaries() -> Path | None:
    """The directory of initdb, pg_ctl, pg_dump... (Debian keeps them out of PATH), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One running PostgreSQL server; :meth:`database` hands out fresh databases."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="salon-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.port = free_port()
        self._names = itertools.count(1)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("mkdir", "-p", str(self.socket_dir))

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run(
            [*prefix, *command], check=check, capture_output=True, text=True, timeout=60
        )

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)

    def init(self) -> None:
        self._run(
            self.tool("initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self, durable: bool = False) -> None:
        """Start the server; ``durable``: with fsync (as in production, for benchmarks),
        else without (tests: faster, and a crash of the test machine loses nothing of value)."""
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.socket_dir}"
            " -c max_connections=60 -c shared_buffers=16MB"
        )
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        done = self._run(
            self.tool("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
            check=False,
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser; its output (raises on failure)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=10) as db:
            cursor = db.execute(statement.encode())
            return repr(cursor.fetchall()) if cursor.description else ""

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"salon_{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(durable: bool = False) -> Iterator[Cluster | None]:
    """A started cluster, removed afterwards; None when PostgreSQL is not installed."""
    bin_dir = binaries()
    if bin_dir is None:
        yield None
        return
    cluster = Cluster(bin_dir)
    try:
        cluster.init()
        cluster.start(durable)
        yield cluster
    finally:
        cluster.remove()
