"""Worker processes on one machine: ``[cluster] workers = N`` (or ``salond --workers N``).

One salond is one Python process on one core. With N workers, ``salond`` becomes a small
supervisor that starts N salond processes ("workers"), each a cluster node of its own in Redis,
all bound to the same UDP port with ``SO_REUSEPORT``. The kernel picks the socket for each
datagram by a hash of its source and destination address and port, so every packet of one QUIC
connection reaches the worker that accepted it (docs/cluster.md, "Worker processes").

What the supervisor does:

- prepares what the workers share before any starts: the TLS certificate (one fingerprint for
  the port, whichever worker answers) and the port itself (a concrete one when 0 was asked);
- starts worker ``n`` (1..N) as ``salond ... --worker n``, which reads the same configuration
  and changes only what must differ (:func:`worker_overrides`): its node id (``<id>-w<n>``), its
  state directory (``state_dir/workers/<n>``: database, sockets), its admin socket (worker 1
  keeps the usual one, so ``salonctl`` and the console find a node there; each worker's own is
  in its state directory), its metrics port (``metrics.port + n - 1``), and the HTTP endpoint,
  stream mode and demo, which worker 1 alone runs;
- relays the workers' log lines to its own standard error, prefixed ``[w<n>]`` (JSON lines
  get a ``worker`` key instead), and says ``listening on`` once every worker listens;
- stops the whole server when a worker exits before it ever listened (a configuration, store or
  port problem that a restart would repeat), and otherwise restarts a worker that exits, after
  a pause that doubles while it keeps dying young (1 s up to 30 s); a worker that dies young
  five times in a row stops the whole server too;
- on SIGTERM or SIGINT, passes the signal to every worker and waits for them (a worker still
  running after the bound is killed), so the whole server stops within salond's usual bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from salon.daemon.config import Config, ConfigError

log = logging.getLogger("salond.workers")

RESTART_INITIAL = 1.0
RESTART_MAXIMUM = 30.0
YOUNG = 10.0
"""A worker that exits within this many seconds of its start died young."""
YOUNG_DEATHS_TO_GIVE_UP = 5
STOP_GRACE = 4.0
"""Seconds beyond a worker's own drain and task bounds before the supervisor kills it."""
LISTENING = re.compile(r"listening on \S+:\d+")


def worker_node_id(config: Config, index: int) -> str:
    """``<node_id>-w<n>``; without a node id, the host name (only the characters node ids allow)."""
    base = config.cluster.node_id or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
    suffix = f"-w{index}"
    return base[: 64 - len(suffix)] + suffix


def worker_overrides(config: Config, index: int) -> dict[str, Any]:
    """The dotted-key overrides that make worker ``index`` of ``config`` (resolved paths)."""
    from salon.daemon.tls import ensure_certificate

    if config.tls.certificate is not None and config.tls.private_key is not None:
        certificate, private_key = config.tls.certificate, config.tls.private_key
    else:
        # The supervisor generated it before starting any worker: this only reads it.
        material = ensure_certificate(config.tls_dir, config.server.public_name)
        certificate, private_key = material.certificate, material.private_key
    overrides: dict[str, Any] = {
        "cluster.workers": 1,
        "cluster.node_id": worker_node_id(config, index),
        "server.state_dir": str(config.server.state_dir / "workers" / str(index)),
        "tls.certificate": str(certificate),
        "tls.private_key": str(private_key),
    }
    if index == 1:
        overrides["admin.socket"] = str(config.admin_socket)
    else:
        overrides["http.enabled"] = False
        overrides["stream.enabled"] = False
        overrides["demo.enabled"] = False
    if config.metrics.enabled and config.metrics.port:
        overrides["metrics.port"] = config.metrics.port + index - 1
    return overrides


def shared_port(config: Config) -> int:
    """The UDP port every worker binds: the configured one, or a free one when 0."""
    if config.server.port:
        return config.server.port
    family = socket.AF_INET6 if ":" in config.server.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((config.server.host, 0))
        return int(probe.getsockname()[1])


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    young_deaths: int = 0
    listening: asyncio.Event = field(default_factory=asyncio.Event)
    relay: asyncio.Task[None] | None = None


class Supervisor:
    """Runs ``config.cluster.workers`` salond workers until SIGTERM/SIGINT; see the module doc."""

    def __init__(self, config: Config, argv: list[str]) -> None:
        if not config.cluster.redis_url:
            raise ConfigError("cluster.workers: more than 1 needs cluster.redis_url")
        self.config = config
        self.argv = argv
        """salond's own command-line arguments, passed on to every worker."""
        self.port = 0
        self.fingerprint = ""
        self.workers = [Worker(index) for index in range(1, config.cluster.workers + 1)]
        self.stopping = asyncio.Event()
        self.failed = ""

    def prepare(self) -> None:
        """What the workers share: the state directory, the certificate and the port."""
        from salon.daemon.cluster.node import read_secret
        from salon.daemon.tls import ensure_certificate, load_material

        config = self.config
        # Refused here, once and at once, rather than by every worker and its restarts.
        read_secret(config.cluster)
        config.server.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if config.tls.certificate is not None and config.tls.private_key is not None:
            material = load_material(config.tls.certificate, config.tls.private_key)
        else:
            material = ensure_certificate(config.tls_dir, config.server.public_name)
        self.fingerprint = material.fingerprint
        self.port = shared_port(config)

    def command(self, worker: Worker) -> list[str]:
        return [
            sys.executable,
            "-m",
            "salon.daemon.app",
            *self.argv,
            "--port",
            str(self.port),
            "--worker",
            str(worker.index),
        ]

    async def run(self) -> int:
        self.prepare()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        keepers = [asyncio.ensure_future(self._keep(worker)) for worker in self.workers]
        ready = asyncio.ensure_future(self._announce())
        await self.stopping.wait()
        ready.cancel()
        log.info("stopping: %d workers", len(self.workers))
        await self._stop_all()
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        log.info("stopped")
        if self.failed:
            print(f"salond: {self.failed}", file=sys.stderr, flush=True)
            return 1
        return 0

    async def _announce(self) -> None:
        await asyncio.gather(*(worker.listening.wait() for worker in self.workers))
        host = self.config.server.host
        log.info(
            "salond listening on %s:%d (udp, ALPN salon/1, %d workers)",
            host,
            self.port,
            len(self.workers),
        )
        log.info("certificate fingerprint %s", self.fingerprint)

    async def _keep(self, worker: Worker) -> None:
        """Start ``worker``, and again each time it exits, until the server stops."""
        delay = RESTART_INITIAL
        while not self.stopping.is_set():
            await self._start(worker)
            process = worker.process
            assert process is not None
            code = await process.wait()
            if self.stopping.is_set():
                return
            if worker.restarts == 0 and not worker.listening.is_set():
                # Never served: a configuration, store or port problem that a restart repeats.
                self.failed = (
                    f"worker {worker.index} exited with {code} before it listened"
                    " (its error is in the lines above): stopping"
                )
                log.error("%s", self.failed)
                self.stopping.set()
                return
            lived = time.monotonic() - worker.started_at
            worker.young_deaths = worker.young_deaths + 1 if lived < YOUNG else 0
            if worker.young_deaths >= YOUNG_DEATHS_TO_GIVE_UP:
                self.failed = (
                    f"worker {worker.index} exited {worker.young_deaths} times in a row within "
                    f"{YOUNG:.0f} s of starting (last exit {code}): stopping"
                )
                log.error("%s", self.failed)
                self.stopping.set()
                return
            delay = delay * 2 if worker.young_deaths else RESTART_INITIAL
            delay = min(delay, RESTART_MAXIMUM)
            log.warning(
                "worker %d (pid %d) exited with %s; restarting in %.0f s",
                worker.index,
                process.pid,
                code,
                delay,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            worker.restarts += 1

    async def _start(self, worker: Worker) -> None:
        worker.process = await asyncio.create_subprocess_exec(
            *self.command(worker),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
        worker.relay = asyncio.ensure_future(self._relay(worker, worker.process))

    async def _relay(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        """The worker's log lines on our standard error, each prefixed with the worker."""
        assert process.stderr is not None
        prefix = f"[w{worker.index}] ".encode()
        while line := await process.stderr.readline():
            sys.stderr.buffer.write(self._labelled(worker, line, prefix))
            sys.stderr.buffer.flush()
            if not worker.listening.is_set() and LISTENING.search(line.decode(errors="replace")):
                worker.listening.set()

    def _labelled(self, worker: Worker, line: bytes, prefix: bytes) -> bytes:
        """A worker's log line naming the worker: prefixed, or with a ``worker`` key when the
        logs are JSON lines (``[logging] json``), so they stay JSON for log collectors."""
        if self.config.logging.json:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entry["worker"] = worker.index
                    return json.dumps(entry, ensure_ascii=False).encode() + b"\n"
        return prefix + line

    async def _stop_all(self) -> None:
        running = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        bound = self.config.server.drain_timeout + STOP_GRACE + 3.0
        waits = [asyncio.ensure_future(process.wait()) for process in running]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=bound)
        if pending:
            for process in running:
                if process.returncode is None:
                    log.warning("worker pid %d did not stop in %.0f s: killed", process.pid, bound)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
            await asyncio.gather(*pending, return_exceptions=True)


def run_workers(config: Config, argv: list[str]) -> int:
    """Supervise the workers until SIGTERM or SIGINT; the exit status of ``salond``."""
    os.umask(0o077)
    return asyncio.run(Supervisor(config, argv).run())
