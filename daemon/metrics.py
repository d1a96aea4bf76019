"""Optional Prometheus metrics endpoint (``[metrics] enabled``), bound to localhost by default.

Values are read from the daemon when Prometheus scrapes, in the event loop's thread (the HTTP
endpoint is a small asyncio server, not prometheus-client's thread), so the hot path pays
nothing for them. Plugin latencies are measured around the two places plugins run for a
client: the request policy (every request) and the authenticator (every hello).

Exported families (all prefixed ``salon_``): ``sessions`` (open now), ``connections_total``,
``rooms{state}``, ``members{place}``, ``udp_packets_total{direction}``,
``udp_bytes_total{direction}``, ``media_packets_total{direction}``,
``control_messages_total{direction}``, ``drops_total{reason}``, ``errors_total{code}``,
``plugin_errors_total{hook}``, ``plugin_seconds{stage}`` (histogram),
``abuse_refusals_total{limit}``, ``admin_clients``, ``store_available``, ``store_outages_total``,
``store_reconnects_total``, ``store_queued``; with stream mode, per room:
``stream_listeners{room,mode}``, ``stream_segments_served_total{room}``,
``stream_playlists_served_total{room}``, ``stream_bytes_served_total{room}``,
``stream_refused_total{room}``, ``stream_cpu_seconds_total{room}``; as a cluster node:
``cluster_node{node_id}`` (1, naming this node), ``cluster_nodes``,
``cluster_node_sessions{node_id}`` and ``cluster_node_rooms{node_id}`` for every live node,
``cluster_redirects_total``, ``cluster_heartbeat_failures_total``, and this node's own
``cluster_<counter>_total`` (daemon/cluster/node.py ``COUNTERS``) and
``cluster_bus_refused_total{reason}``.

``GET /healthz`` on the same listener answers 200 with ``{"status": "serving", ...}`` while
salond serves, and 503 (``starting``, ``stopping``) otherwise, for load balancers and systemd
watchdogs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salon.daemon.cluster.registry import ClusterSnapshot
    from salon.daemon.config import MetricsConfig
    from salon.daemon.net.server import SalonServer
    from salon.daemon.pipeline import RequestPipeline
    from salon.daemon.store.base import Store
    from salon.daemon.stream import StreamService

log = logging.getLogger("salon.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_REQUEST_HEAD = 16 * 1024


class _TimedPolicy:
    """The server's request policy, timed (observation only)."""

    def __init__(self, inner: Any, histogram: Any) -> None:
        self.inner = inner
        self._observe = histogram.labels(stage="review").observe

    async def review(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.review(*args, **kwargs)
        finally:
            self._observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _TimedAuthenticator:
    """The server's authenticator, timed (observation only)."""

    def __init__(self, inner: Any, histogram: Any) -> None:
        self.inner = inner
        self._observe = histogram.labels(stage="authenticate").observe

    async def authenticate(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.authenticate(*args, **kwargs)
        finally:
            self._observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SalonCollector:
    """Reads the daemon's counters at scrape time."""

    def __init__(
        self,
        server: SalonServer,
        store: Store | None,
        admin_clients: Callable[[], int] | None,
        streams: StreamService | None = None,
        cluster: Callable[[], ClusterSnapshot | None] | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.streams = streams
        self.cluster = cluster
        self.admin_clients = admin_clients
        """How many admin API connections are open (None: the admin API is disabled)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        server = self.server
        core = server.core
        counters = server.stats.snapshot(core.forwarder)

        def counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> Any:
            family = CounterMetricFamily(f"salon_{name}", doc, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], value)
            return family

        yield GaugeMetricFamily(
            "salon_sessions", "Client connections open now.", len(server.sessions)
        )
        yield CounterMetricFamily(
            "salon_connections",
            "Connections that completed the handshake since start.",
            counters["connections_total"],
        )
        rooms = GaugeMetricFamily("salon_rooms", "Rooms by state.", labels=["state"])
        members = GaugeMetricFamily(
            "salon_members", "Members of live rooms, on stage or in the audience.", labels=["place"]
        )
        live = [r for r in core.rooms.values() if r.state == "live"]
        stage = sum(r.stage_count() for r in live)
        total = sum(len(r.members) for r in live)
        rooms.add_metric(["live"], len(live))
        rooms.add_metric(
            ["scheduled"], sum(1 for r in core.rooms.values() if r.state == "scheduled")
        )
        members.add_metric(["stage"], stage)
        members.add_metric(["audience"], total - stage)
        yield rooms
        yield members
        traffic = server.traffic
        yield counter(
            "udp_packets",
            "UDP packets of the QUIC socket.",
            "direction",
            {"in": traffic.packets_in, "out": traffic.packets_out},
        )
        yield counter(
            "udp_bytes",
            "UDP bytes of the QUIC socket.",
            "direction",
            {"in": traffic.bytes_in, "out": traffic.bytes_out},
        )
        yield counter(
            "media_packets",
            "Media datagrams received from speakers and forwarded copies.",
            "direction",
            {"received": counters["media_received"], "forwarded": counters["media_forwarded"]},
        )
        yield counter(
            "control_messages",
            "Control messages received and sent.",
            "direction",
            {"in": counters["messages_in"], "out": counters["messages_out"]},
        )
        yield counter(
            "drops", "Packets or messages dropped, by reason.", "reason", counters["drops"]
        )
        yield counter(
            "errors", "Error replies sent to clients, by code.", "code", counters["errors"]
        )
        yield counter(
            "plugin_errors",
            "Plugin failures (exceptions, time-outs), by hook.",
            "hook",
            counters["plugin_errors"],
        )
        yield counter(
            "abuse_refusals",
            "Requests refused by the per-address guest limits, by limit.",
            "limit",
            counters["abuse"],
        )
        clients = self.admin_clients() if self.admin_clients is not None else 0
        yield GaugeMetricFamily("salon_admin_clients", "Admin API connections open now.", clients)
        yield from store_metrics(self.store)
        yield from stream_metrics(self.streams)
        if self.cluster is not None:
            yield from cluster_metrics(self.cluster())


def cluster_metrics(snapshot: ClusterSnapshot | None) -> Iterator[Any]:
    """This node's name, and every live node's load as the registry lists it (one scrape of any
    node shows the whole cluster; each node's own counters come from its own endpoint)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if snapshot is None:
        return
    info = GaugeMetricFamily(
        "salon_cluster_node",
        "1, labelled with the cluster node serving this endpoint.",
        labels=["node_id"],
    )
    info.add_metric([snapshot.node_id], 1)
    yield info
    yield GaugeMetricFamily(
        "salon_cluster_nodes", "Live nodes in the node registry.", len(snapshot.nodes)
    )
    sessions = GaugeMetricFamily(
        "salon_cluster_node_sessions", "Client sessions per live node.", labels=["node_id"]
    )
    rooms = GaugeMetricFamily(
        "salon_cluster_node_rooms", "Rooms held per live node.", labels=["node_id"]
    )
    for node in snapshot.nodes:
        sessions.add_metric([node.node_id], node.sessions)
        rooms.add_metric([node.node_id], node.rooms)
    yield sessions
    yield rooms
    yield CounterMetricFamily(
        "salon_cluster_redirects", "Clients redirected to another node.", snapshot.redirects
    )
    yield CounterMetricFamily(
        "salon_cluster_heartbeat_failures",
        "Heartbeats to Redis that failed.",
        snapshot.heartbeat_failures,
    )
    from salon.daemon.cluster.node import COUNTERS

    # This node's own counters: each node's endpoint shows its own.
    for name, text in COUNTERS.items():
        yield CounterMetricFamily(f"salon_cluster_{name}", text, snapshot.counters.get(name, 0))
    refused = CounterMetricFamily(
        "salon_cluster_bus_refused",
        "Bus messages refused by the authenticated codec, by reason (bad_mac: tampered or "
        "foreign; replayed; stale; malformed; own).",
        labels=["reason"],
    )
    for key, count in sorted(snapshot.counters.items()):
        if key.startswith("bus_refused."):
            refused.add_metric([key.removeprefix("bus_refused.")], count)
    yield refused


def store_metrics(store: Store | None) -> Iterator[Any]:
    """The store's health: 1/0 available, outages and reconnections, changes waiting."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    stats = getattr(store, "stats", None)  # a store without counters exports none
    if stats is None:
        return
    values = stats()
    yield GaugeMetricFamily(
        "salon_store_available",
        "1 while the store accepts writes, 0 while its database is unavailable.",
        1 if values.get("available", True) else 0,
    )
    yield CounterMetricFamily(
        "salon_store_outages", "Times the database became unavailable.", values.get("outages", 0)
    )
    yield CounterMetricFamily(
        "salon_store_reconnects",
        "Reconnections to the database after an outage.",
        values.get("reconnects", 0),
    )
    yield GaugeMetricFamily(
        "salon_store_queued", "Changes waiting to be written to the store.", values.get("queued", 0)
    )


def stream_metrics(service: StreamService | None) -> Iterator[Any]:
    """Stream mode per room: listeners by mode, what the HLS origin served, the mix's CPU."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if service is None:
        return
    listeners = GaugeMetricFamily(
        "salon_stream_listeners",
        "Audience members by how they receive (real-time media or the HLS stream), per room.",
        labels=["room", "mode"],
    )
    segments = CounterMetricFamily(
        "salon_stream_segments_served",
        "Segment and init responses of the HLS origin (cache misses), per room.",
        labels=["room"],
    )
    playlists = CounterMetricFamily(
        "salon_stream_playlists_served", "Playlist responses, per room.", labels=["room"]
    )
    sent = CounterMetricFamily(
        "salon_stream_bytes_served", "Bytes the HLS origin sent, per room.", labels=["room"]
    )
    refused = CounterMetricFamily(
        "salon_stream_refused", "Stream requests refused with 403, per room.", labels=["room"]
    )
    cpu = CounterMetricFamily(
        "salon_stream_cpu_seconds",
        "CPU time of mixing and segmenting, per room (the running mix).",
        labels=["room"],
    )
    for stats in service.stats():
        room = stats.room
        listeners.add_metric([room, "realtime"], stats.realtime_listeners)
        listeners.add_metric([room, "stream"], stats.stream_listeners)
        segments.add_metric([room], stats.segments_served)
        playlists.add_metric([room], stats.playlists_served)
        sent.add_metric([room], stats.bytes_served)
        refused.add_metric([room], stats.refused)
        cpu.add_metric([room], stats.cpu_seconds)
    yield from (listeners, segments, playlists, sent, refused, cpu)


class MetricsEndpoint:
    """The ``/metrics`` HTTP endpoint (a component of salond)."""

    def __init__(
        self,
        config: MetricsConfig,
        pipeline: RequestPipeline,
        server: SalonServer,
        store: Store | None = None,
        admin_clients: Callable[[], int] | None = None,
        streams: StreamService | None = None,
        cluster: Callable[[], ClusterSnapshot | None] | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.config = config
        self.pipeline = pipeline
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SalonCollector(server, store, admin_clients, streams, cluster))
        self.plugin_seconds = Histogram(
            "salon_plugin_seconds",
            "Time spent in plugin decisions: request review and authentication.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        self._instrument()
        config = self.config
        self._server = await asyncio.start_server(self._serve, config.host, config.port)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        log.info("metrics on http://%s:%d/metrics", *self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _instrument(self) -> None:
        """Time the policy and authenticator now in place (again if a plugin replaced them)."""
        pipeline = self.pipeline
        if not isinstance(pipeline.policy, _TimedPolicy):
            pipeline.policy = _TimedPolicy(pipeline.policy, self.plugin_seconds)
        if not isinstance(pipeline.authenticator, _TimedAuthenticator):
            pipeline.authenticator = _TimedAuthenticator(
                pipeline.authenticator, self.plugin_seconds
            )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        self._instrument()
        return bytes(generate_latest(self.registry))

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``serving`` while the QUIC socket is bound and salond is not stopping
        (HTTP 200), else ``starting`` or ``stopping`` (HTTP 503)."""
        server = self.server
        if server.shutting_down:
            state = "stopping"
        elif server.address[1] == 0:
            state = "starting"
        else:
            state = "serving"
        return {
            "status": state,
            "sessions": len(server.sessions),
            "rooms": sum(1 for r in server.core.rooms.values() if r.state == "live"),
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            writer.close()
            return
        except ConnectionError:
            return
        if len(head) > MAX_REQUEST_HEAD:
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        method = parts[0] if parts else b""
        target = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            status, body, kind = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
        elif target in (b"/metrics", b"/"):
            from prometheus_client import CONTENT_TYPE_LATEST

            status, body, kind = b"200 OK", self.render(), CONTENT_TYPE_LATEST.encode()
        elif target == b"/healthz":
            health = self.health()
            status = b"200 OK" if health["status"] == "serving" else b"503 Service Unavailable"
            body, kind = json.dumps(health, sort_keys=True).encode() + b"\n", b"application/json"
        else:
            status, body, kind = b"404 Not Found", b"see /metrics or /healthz\n", b"text/plain"
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + kind
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + (body if method != b"HEAD" else b"")
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
