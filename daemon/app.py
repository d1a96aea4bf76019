"""salond's composition root: config -> TLS -> core -> net (-> plugins, store, admin).

Run ``salond --help``. With no configuration file it runs on the embedded defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from salon.daemon import __version__
from salon.daemon.auth import BuiltinAuthenticator
from salon.daemon.config import Config, ConfigError, load_config, resolve_paths
from salon.daemon.core import Limits, SalonCore
from salon.daemon.pipeline import RequestPipeline
from salon.daemon.store import DATABASE_NAME, Persistence, StoreError, open_store, redact_url
from salon.daemon.tls import (
    TlsError,
    WebCertificate,
    ensure_certificate,
    ensure_web_certificate,
    load_material,
)
from salon.daemon.tuning import install_event_loop_policy, tune_garbage_collector

if TYPE_CHECKING:
    from salon.daemon.admin.server import AdminServer
    from salon.daemon.cluster.node import ClusterNode
    from salon.daemon.cluster.redirect import Redirector
    from salon.daemon.cluster.registry import ClusterSnapshot
    from salon.daemon.http import HttpEndpoint

log = logging.getLogger("salon")

WEB_CERTIFICATE_CHECK = 3600.0
"""Seconds between checks whether the web certificate is due for rotation."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="salond", description="Salon: a self-hosted server for live audio rooms."
    )
    parser.add_argument("-c", "--config", type=Path, help="configuration file (TOML)")
    parser.add_argument("--host", help="address to listen on (server.host)")
    parser.add_argument("--port", type=int, help="UDP port to listen on (server.port)")
    parser.add_argument("--state-dir", help="directory for certificates, database, sockets")
    parser.add_argument("--cert", help="TLS certificate file (tls.certificate)")
    parser.add_argument("--key", help="TLS private key file (tls.private_key)")
    parser.add_argument("--demo", action="store_true", help="open a 'lobby' room with a bot")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--workers",
        type=int,
        help="salond processes sharing the UDP port, each a cluster node (cluster.workers)",
    )
    # Internal: how the supervisor of --workers starts worker N (daemon/cluster/workers.py).
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    parser.add_argument("--version", action="version", version=f"salond {__version__}")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "server.host": args.host,
        "server.port": args.port,
        "server.state_dir": args.state_dir,
        "tls.certificate": args.cert,
        "tls.private_key": args.key,
        "logging.level": args.log_level,
        "cluster.workers": args.workers,
        "demo.enabled": True if args.demo else None,
        # The demo is meant to be opened in a browser too.
        "http.enabled": True if args.demo else None,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def core_limits(config: Config) -> Limits:
    limits = config.limits
    return Limits(
        knock_ttl=limits.knock_ttl,
        owner_grace=limits.owner_grace,
        outlet_queue=limits.outlet_queue,
        max_rooms_per_user=limits.max_rooms_per_user,
        max_speakers_cap=limits.max_speakers_cap,
        max_datagram_size=config.server.max_datagram_size,
        snapshot_listeners=limits.snapshot_listeners,
        audience_events_above=limits.audience_events_above,
        counts_interval=limits.counts_interval,
    )


class Component(Protocol):
    """A part of the daemon with a lifetime: plugins, store, admin API, metrics."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


TASK_STOP_TIMEOUT = 3.0
"""Seconds salond waits for its own background tasks to end when it stops."""


class Daemon:
    """A running salond: everything the composition root built, and how to stop it."""

    def __init__(self, config: Config) -> None:
        from salon.daemon.hooks import PluginHost
        from salon.daemon.net.server import SalonServer

        self.config = config
        config.server.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_private(config.server.state_dir)
        if config.tls.certificate is not None and config.tls.private_key is not None:
            self.tls = load_material(config.tls.certificate, config.tls.private_key)
        else:
            self.tls = ensure_certificate(config.tls_dir, config.server.public_name)
        self.core = SalonCore(core_limits(config))
        # Every request -- a client's, an operator's, a plugin's -- goes through this one
        # pipeline: policy review, core, event pump, commit barrier (daemon/pipeline.py).
        self.pipeline = RequestPipeline(
            self.core, BuiltinAuthenticator(config.auth.tokens, config.auth.allow_guests)
        )
        self.server = SalonServer(
            config, self.pipeline, str(self.tls.certificate), str(self.tls.private_key)
        )
        # The store is opened and restored into the core before the socket is bound, and
        # closed last. Acknowledgements wait for its commits (commit-before-ack).
        self.store = open_store(config.store.url, config.server.state_dir)
        self.persistence = Persistence(self.store)
        self.pipeline.observers.append(self.persistence.observe)
        self.pipeline.commit_barriers.append(self.store.commit)
        self.pipeline.store_available = lambda: self.store.available
        self.pipeline.store_changes = lambda: self.persistence.recorded
        # Plugins authenticate clients and review every request before the core sees it
        # (docs/plugin_hooks.md); the built-in guest/token authentication is one of them.
        self.plugins = PluginHost(config, self.pipeline, self.server.stats)
        self.pipeline.authenticator = self.plugins.authenticator
        self.pipeline.policy = self.plugins.policy
        self.pipeline.observers.append(self.plugins.observe)
        # Recorders run on their own thread, fed with copies of the consenting speakers'
        # datagrams (daemon/recording); the index of recordings lives in the store.
        from salon.daemon.recording import RecordingService, StoreRecordingIndex

        self.recordings = RecordingService(
            config.server.state_dir / "recordings",
            StoreRecordingIndex(self.store),
            on_failure=self._recording_failed,
            max_duration=config.limits.recording_max_duration,
            disk_limit=int(config.limits.recording_disk_mib * 2**20),
            on_limit=self._recording_limited,
        )
        self.pipeline.observers.append(self.recordings.on_core_event)
        self.stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        # Started in order after the QUIC socket is bound, stopped in reverse after it closes.
        self.components: list[Component] = [self.plugins, self.recordings]
        # Stream mode (docs/stream_mode.md) and the web client share one HTTP endpoint.
        self.web_certificate: WebCertificate | None = None
        self.http: HttpEndpoint | None = None
        self.streams = None
        if config.stream.enabled and not config.http.enabled:
            raise ConfigError("[stream] enabled = true needs [http] enabled = true")
        if config.http.enabled:
            self._start_http()
        if config.stream.enabled and self.http is not None:
            from salon.daemon.stream import StreamService
            from salon.daemon.stream.http import add_stream_routes

            self.streams = StreamService(
                config.stream,
                self.core,
                self.server.deliver,
                config.server.state_dir / "stream",
                base_url=self._stream_base_url,
            )
            self.pipeline.observers.append(self.streams.on_core_event)
            self.server.stream_mode = self.streams
            add_stream_routes(self.http, self.streams)
            self.components.append(self.streams)
        if self.http is not None:
            self.components.append(self.http)
        # A cluster node (docs/cluster.md) only with [cluster] redis_url: without it nothing of
        # the cluster is imported and salond is one process.
        self.cluster: ClusterNode | None = None
        self.cluster_snapshot: Callable[[], ClusterSnapshot | None] | None = None
        self.redirector: Redirector | None = None
        if config.cluster.redis_url:
            self._join_cluster()
        self.admin: AdminServer | None = None
        if config.admin.enabled:
            from salon.daemon.admin.server import AdminServer

            self.admin = AdminServer(
                config.admin_socket,
                self.pipeline,
                self.server,
                self.store,
                self.recordings.index,
                self.tls.fingerprint,
                streams=self.streams,
                cluster=self.cluster_snapshot,
            )
            self.components.append(self.admin)
        if config.metrics.enabled:
            from salon.daemon.metrics import MetricsEndpoint

            admin = self.admin
            self.components.append(
                MetricsEndpoint(
                    config.metrics,
                    self.pipeline,
                    self.server,
                    self.store,
                    admin_clients=(lambda: admin.client_count) if admin is not None else None,
                    streams=self.streams,
                    cluster=self.cluster_snapshot,
                )
            )

    def _join_cluster(self) -> None:
        """This salond as a cluster node (docs/cluster.md): registered with its load and how
        clients reach it; redirects joins when ``cluster.redirect_margin`` is set."""
        from salon.daemon.cluster.node import ClusterNode
        from salon.daemon.cluster.redirect import Redirector, alternatives
        from salon.daemon.cluster.registry import NodeContact, NodeLoad
        from salon.daemon.wire.messages import MAX_NODE_ADDRESSES

        def load() -> NodeLoad:
            rooms = self.core.rooms.values()
            carried = {room.id for room in rooms if room.members}
            if node.rooms is not None:
                carried.update(node.rooms.carried())  # rooms homed elsewhere, members here
            return NodeLoad(len(self.server.sessions), len(self.core.rooms), tuple(sorted(carried)))

        node = ClusterNode(
            self.config.cluster,
            lambda: "{}:{}".format(*self.server.address),
            load,
            contact=lambda: NodeContact(self.public_address(), self.tls.fingerprint),
            server=self.server,
            load_room=self.persistence.load_room,
        )
        self.cluster = node
        self.components.append(node)
        if not self.config.store.url:
            # Nodes share rooms, so they share their durable state: one SQLite file cannot.
            raise ConfigError(
                "store.url: a cluster node ([cluster] redis_url is set) needs the "
                "PostgreSQL store all nodes share (a postgresql:// URL), not SQLite"
            )
        # A node that lost a room to another writes nothing of it any more (docs/cluster.md).
        self.persistence.may_write = node.may_write
        redirector = Redirector(
            lambda: node.node_id,
            lambda: node.registry.view if node.registry is not None else [],
            lambda: len(self.server.sessions),
            margin=self.config.cluster.redirect_margin,
            # Any node serves any room once nodes run rooms across the cluster (a home and its
            # edges, docs/cluster.md); until then only the nodes that hold the room do.
            any_node_serves_room=lambda: getattr(node, "rooms", None) is not None,
        )
        # The room directory plugs in here (redirector.carriers).
        self.redirector = redirector
        if redirector.margin:
            self.server.redirect = redirector.decide
        # Where a client goes when it loses this node (PROTOCOL.md 17): the hello's ``nodes``.
        self.server.alternatives = lambda: alternatives(
            node.node_id,
            self.public_address(),
            node.registry.view if node.registry is not None else [],
            MAX_NODE_ADDRESSES,
        )
        self.cluster_snapshot = lambda: (
            node.registry.snapshot(
                redirector.sent, node.counters(fenced_writes=self.persistence.fenced)
            )
            if node.registry is not None
            else None
        )

    def public_address(self) -> str:
        """``host:port`` clients reach this salond at (the public name for a wildcard bind)."""
        host, port = self.server.address
        host = self.config.server.public_name if host in ("0.0.0.0", "::") else host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _start_http(self) -> None:
        """The HTTP endpoint with the web client on it (started in order as a component)."""
        from salon.daemon.http import HttpEndpoint
        from salon.daemon.http.web_client import add_web_client

        if self.tls.generated or self.config.tls.certificate is None:
            self._renew_web_certificate()
        self.http = HttpEndpoint(self.config.http)
        add_web_client(
            self.http,
            quic_port=lambda: self.server.address[1],
            certificate_hashes=lambda: (
                [self.web_certificate.sha256] if self.web_certificate is not None else []
            ),
        )

    def _renew_web_certificate(self) -> None:
        """Generate or rotate the short-lived certificate browsers pin (daemon/tls.py)."""
        current = ensure_web_certificate(self.config.tls_dir, self.config.server.public_name)
        if self.web_certificate is None or current.sha256 != self.web_certificate.sha256:
            self.server.set_web_certificate(
                str(current.material.certificate), str(current.material.private_key)
            )
            self.web_certificate = current

    async def _rotate_web_certificate(self) -> None:
        while True:
            await asyncio.sleep(WEB_CERTIFICATE_CHECK)
            try:
                self._renew_web_certificate()
            except TlsError as exc:
                log.error("cannot renew the web certificate: %s", exc)

    async def start(self) -> None:
        await self._open_store()
        try:
            host, port = await self.server.start()
        except BaseException:
            await self.store.stop()
            raise
        self.pipeline.pump()  # arm the timers the restore set (bans, reminders)
        for component in self.components:
            await component.start()
        log.info("salond %s listening on %s:%d (udp, ALPN salon/1)", __version__, host, port)
        log.info("certificate fingerprint %s", self.tls.fingerprint)
        if self.http is not None:
            log.info("web client: %s", self.web_url(self.config.demo.room))
            if self.web_certificate is not None:
                self._tasks.append(asyncio.ensure_future(self._rotate_web_certificate()))
        if self.config.demo.enabled:
            for companion in demo_companions():
                self._tasks.append(asyncio.ensure_future(companion(self)))

    async def _open_store(self) -> None:
        """Open the database and restore rooms and bans into the core; StoreError if unusable."""
        await self.store.start()
        try:
            restored = await self.persistence.restore(
                self.core, time.time(), shared=bool(self.config.cluster.redis_url)
            )
        except BaseException:
            await self.store.stop()
            raise
        log.info(
            "store %s: restored %d rooms and %d server bans",
            self.store.location,
            len(restored.rooms),
            restored.server_bans,
        )

    def _recording_failed(self, room: str, recording: str) -> None:
        """A recorder gave up (e.g. the disk is full): end the recording and tell the room."""
        if self.core.stop_recording(room, recording, "failed", time.time()):
            self.pipeline.pump()

    def _recording_limited(self, room: str, recording: str, why: str) -> None:
        """A recording reached a bound (``limits.recording_*``): end it and tell the room."""
        if self.core.stop_recording(room, recording, "limit", time.time(), why=why):
            self.pipeline.pump()

    def _stream_base_url(self) -> str:
        if self.config.stream.public_url:
            return self.config.stream.public_url
        assert self.http is not None
        host, port = self.http.address
        host = self.config.server.public_name if host in ("0.0.0.0", "::") else host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def web_url(self, room: str) -> str:
        """The link that opens ``room`` in a browser (the web client on the HTTP endpoint)."""
        assert self.http is not None
        host, port = self.http.address
        if host in ("0.0.0.0", "::"):
            host = self.config.server.public_name
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/r/{quote(room, safe='')}"

    def join_command(self, room: str) -> str:
        host, port = self.server.address
        host = self.config.server.public_name if host in ("0.0.0.0", "::") else host
        return f"salon join {room} --server {host}:{port} --fingerprint {self.tls.fingerprint}"

    async def stop(self, reason: str = "server shutting down") -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # A companion task (the demo bot: a client in this very process) may take its time
            # to leave or may swallow the cancellation; it must never keep salond from stopping.
            _, pending = await asyncio.wait(self._tasks, timeout=TASK_STOP_TIMEOUT)
            for task in pending:
                log.warning(
                    "stopping: %s did not end in %.0f s; left behind", task, TASK_STOP_TIMEOUT
                )
        # Closing every connection is not anyone's decision: what it changes (owners leaving,
        # rooms handed over) is not stored, so rooms come back as they were.
        self.persistence.freeze()
        await self.server.shutdown(reason)
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        try:
            await self.store.stop()
        except Exception:
            log.exception("closing the store failed")
        self.stopped.set()


DEMO_ENTRY_POINT_GROUP = "salon.demo"
"""Where ``--demo`` finds what speaks in the demo room: coroutines taking the started daemon.

The demo bot is a client (``salon.client.bot``), and the daemon never imports the client: the
package metadata composes them, as it does for plugins, so neither depends on the other."""


def demo_companions() -> list[Callable[[Any], Awaitable[None]]]:
    """The demo's companions that are installed (Salon's own bot); none is only a warning."""
    found = [ep.load() for ep in metadata.entry_points(group=DEMO_ENTRY_POINT_GROUP)]
    if not found:
        log.warning("demo: nothing installed in entry point group %s", DEMO_ENTRY_POINT_GROUP)
    return found


async def serve_forever(config: Config, reuse_port: bool = False) -> None:
    daemon = Daemon(config)
    daemon.server.reuse_port = reuse_port  # a worker: daemon/cluster/workers.py
    # Handlers first: a SIGTERM arriving while salond starts still stops it cleanly.
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await daemon.start()
    tune_garbage_collector(config.tuning)  # shorter GC pauses (BENCHMARKS.md)
    await stop_requested.wait()
    log.info("stopping: telling clients and closing rooms")
    await daemon.stop()
    log.info("stopped")


PRIVATE_UMASK = 0o077
"""What salond creates is readable by its own user only (invite tokens, recordings, keys)."""


PRIVATE_TREES = ("tls", "recordings", "plugins")
"""Directories of ``state_dir`` salond owns, made private with everything in them."""


def make_private(state_dir: Path) -> list[str]:
    """Take group and other permissions off ``state_dir``, the database files and the trees
    salond owns in it (0700 directories, 0600 files), logging each path tightened; returns
    them. Anything else in ``state_dir`` and symbolic links (whose targets may be shared
    files, such as a certificate) are left alone."""
    tightened: list[str] = []

    def tighten(path: Path) -> None:
        try:
            mode = path.lstat().st_mode
        except OSError:
            return
        if stat.S_ISLNK(mode) or not mode & 0o077:
            return
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~0o077)
        except OSError as exc:
            log.warning("cannot make %s private: %s", path, exc)
            return
        tightened.append(str(path))
        log.info("made %s private (was %o)", path, stat.S_IMODE(mode))

    tighten(state_dir)
    for suffix in ("", "-wal", "-shm"):
        tighten(state_dir / f"{DATABASE_NAME}{suffix}")
    for tree in PRIVATE_TREES:
        top = state_dir / tree
        if top.is_symlink() or not top.is_dir():
            continue
        tighten(top)
        for root, directories, files in os.walk(top):
            for name in directories + files:
                tighten(Path(root) / name)
    return tightened


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (``[logging] json = true``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonLogFormatter.converter = time.gmtime


def setup_logging(level: str, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("quic").setLevel(logging.WARNING)


def check_plugins(config: Config) -> None:
    """Load and configure the enabled plugins as salond would, without binding anything, so
    that ``--check-config`` catches an unknown plugin or a bad plugin setting (ConfigError)."""
    from salon.daemon.hooks import PluginHost
    from salon.daemon.stats import ServerStats

    pipeline = RequestPipeline(SalonCore(core_limits(config)), BuiltinAuthenticator({}, True))
    PluginHost(config, pipeline, ServerStats())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolve_paths(load_config(args.config, overrides_from(args)))
        if args.worker:
            from salon.daemon.cluster.workers import worker_overrides

            overrides = {**overrides_from(args), **worker_overrides(config, args.worker)}
            config = resolve_paths(load_config(args.config, overrides))
    except ConfigError as exc:
        print(f"salond: configuration error: {exc}", file=sys.stderr)
        return 2
    except TlsError as exc:
        print(f"salond: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        try:
            check_plugins(config)
        except ConfigError as exc:
            print(f"salond: {exc}", file=sys.stderr)
            return 1
        store = redact_url(config.store.url) if config.store.url else "SQLite in state_dir"
        print(f"salond: configuration OK ({args.config or 'embedded defaults'}; store: {store})")
        return 0
    os.umask(PRIVATE_UMASK)
    setup_logging(config.logging.level, config.logging.json)
    if config.cluster.workers > 1:
        from salon.daemon.cluster.workers import run_workers

        try:
            return run_workers(config, sys.argv[1:] if argv is None else argv)
        except (OSError, TlsError, ConfigError) as exc:
            print(f"salond: {exc}", file=sys.stderr)
            return 1
    try:
        install_event_loop_policy(config.tuning)  # uvloop when installed (BENCHMARKS.md)
    except ConfigError as exc:
        print(f"salond: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve_forever(config, reuse_port=bool(args.worker)))
    except KeyboardInterrupt:
        pass
    except (OSError, TlsError, StoreError, ConfigError) as exc:
        print(f"salond: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
