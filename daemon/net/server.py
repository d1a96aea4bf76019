"""The QUIC server: accepts connections, runs the control protocol, forwards media.

Glue in the aioquic style: network input goes into the sans-I/O core with ``now``, the core's
outputs are pulled and written to connections, and every connection touched in one event-loop
tick is transmitted once at the end of the tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from salon.daemon import __version__
from salon.daemon.abuse import AddressGuard
from salon.daemon.auth import MAX_DISPLAY_NAME, AuthError
from salon.daemon.config import Config
from salon.daemon.core import CoreError, Identity, Outlet, SalonCore
from salon.daemon.core.events import BanChanged, CoreEvent, ModerationTaken, RoomClosed
from salon.daemon.net.session import CloseCode, SessionProtocol
from salon.daemon.net.webtransport import H3_ALPN
from salon.daemon.pipeline import Actor, RequestPipeline, StoreRefused
from salon.daemon.stats import ServerStats
from salon.daemon.store.base import StoreUnavailable
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import MAX_DATAGRAM_SIZE
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import frame_message
from salon.daemon.wire.text import TextError, check_text
from salon.quic.congestion import MEDIA_CONGESTION_CONTROL
from salon.quic.fastpath import supported as fastpath_supported
from salon.quic.h3 import can_swap_to, present_certificate_for_alpn
from salon.quic.medialink import flush_links
from salon.quic.sendbatch import BatchingTransport
from salon.quic.timers import connection_timers
from salon.quic.traffic import UdpTraffic, enlarge_socket_buffers, server_transport

log = logging.getLogger("salon.net")

ALPN = "salon/1"
# A refused handshake (``limits.max_sessions`` reached) is logged at most once per this many
# seconds, with the count since the last line: a flood must not flood the log too.
REFUSAL_LOG_INTERVAL = 10.0
# A session that keeps exceeding its message rate this many times in a row is disconnected.
RATE_STRIKES_TO_CLOSE = 5
# Seconds between refusing a hello under the per-address limits and closing the connection.
REFUSED_CLOSE_DELAY = 0.5


class StreamMode(Protocol):
    """Who gets the room's stream instead of real-time media (daemon/stream)."""

    def set_stream(self, session: int, on: bool) -> dict[str, Any]: ...


class Peer(Protocol):
    """What the request path needs of a session: a QUIC connection, or (in a cluster) a member
    whose client is on another node and whose transport is the cluster's control bus."""

    session_id: int
    identity: Identity | None
    closed: bool
    address: str

    def send_control(self, framed: bytes) -> None: ...

    def transmit(self) -> None: ...


class ClusterGlue(Protocol):
    """What a cluster node does with this server's sessions (daemon/cluster/rooms.py)."""

    async def route(self, peer: Peer, request: Any, payload: bytes) -> bool:
        """True when the request went to the room's home on another node."""
        ...

    def uplink(self, session: int, data: bytes) -> bool:
        """True when the datagram went to the room's home on another node."""
        ...

    def closed(self, session: int) -> None: ...


def load_pem_pair(certificate: str, private_key: str) -> tuple[x509.Certificate, Any]:
    """The leaf certificate and the private key of two PEM files."""
    with open(certificate, "rb") as file:
        cert = x509.load_pem_x509_certificates(file.read())[0]
    with open(private_key, "rb") as file:
        key = serialization.load_pem_private_key(file.read(), password=None)
    return cert, key


class SalonServer:
    """Owns every client session: QUIC connections in, requests into the pipeline, events and
    media out. The composition root wires plugins and stores to the pipeline."""

    def __init__(
        self,
        config: Config,
        pipeline: RequestPipeline,
        certificate: str,
        private_key: str,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.core: SalonCore = pipeline.core
        pipeline.deliver = self.deliver
        self.stats = ServerStats()
        self.fast_path = config.tuning.fast_path and fastpath_supported()
        """Whether new sessions send media by the datagram fast path (``tuning.fast_path``)."""
        self.ack_fast_path = config.tuning.ack_fast_path and fastpath_supported()
        """Whether new sessions apply ACK-only packets by the ACK fast path."""
        self.traffic = UdpTraffic()
        """UDP packets and bytes of the QUIC socket (read by the admin API and metrics)."""
        self.sessions: dict[int, SessionProtocol] = {}
        self.remote: dict[int, Peer] = {}
        """Members whose client is connected to another cluster node (this node is their
        room's home); their requests and events travel over the control bus."""
        self.cluster: ClusterGlue | None = None
        """Routes requests and media of rooms whose home is another node (None: no cluster)."""
        self._quiet: dict[int, tuple[int, str]] = {}
        """Requests made on a session's behalf (a cluster rejoining it after its room's server
        failed), by session: (request id, room); their reply is not sent to the client."""
        self.media_sinks: dict[int, Callable[[Outlet], None]] = {}
        """Outlets that are no session, drained when the forwarder fills them (the relay)."""
        self.guard = AddressGuard(config.limits, self.stats.abuse)
        """Guest abuse limits per source address, and the addresses bans remember."""
        pipeline.address_limits = self.guard
        pipeline.observers.append(self._guard_observer)
        self.redirect: Callable[[str], dict[str, Any] | None] | None = None
        """The cluster's redirect policy (daemon/cluster/redirect.py): the ``join`` result
        sending a client elsewhere, or None to serve it here. None: never redirect."""
        self.alternatives: Callable[[], list[dict[str, str]]] | None = None
        """The cluster's other nodes a client may reconnect to (the ``hello`` result's
        ``nodes``, PROTOCOL.md 17). None: not a cluster node, the field is left out."""
        self._may_redirect: set[int] = set()
        """Sessions whose hello says they follow redirects and that have not joined yet."""
        self.stream_mode: StreamMode | None = None
        """Handles ``set_stream`` (daemon/stream); None: the server offers no stream mode."""
        self._certificate = certificate
        self._private_key = private_key
        self._web_certificate: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self._next_session_id = 1
        self._dirty: set[Peer] = set()
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._media_flush_interval = config.tuning.media_flush_interval
        self._last_media_flush = -math.inf
        self._inboxes: dict[int, asyncio.Queue[bytes]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._quic_server: QuicServer | None = None
        self.reuse_port = False
        """Bind with SO_REUSEPORT: this salond is one of several workers sharing the port."""
        self._sending: BatchingTransport | None = None
        """The socket's transport: held during a flush, its packets leave in one sendmmsg."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = False
        self.address: tuple[str, int] = ("", 0)
        self._refusals_unlogged = 0
        self._refusal_logged_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def set_web_certificate(self, certificate: str, private_key: str) -> None:
        """Present this certificate (PEM files) to WebTransport clients from now on.

        Browsers pin a certificate by hash only if it is valid for at most 14 days, so in
        development WebTransport handshakes get a short-lived one instead of the long-lived
        certificate ``salon/1`` clients pin. Without one (a CA-signed certificate) both
        ALPNs present the configured certificate.
        """
        cert, key = load_pem_pair(certificate, private_key)
        configured = load_pem_pair(self._certificate, self._private_key)[1]
        if not can_swap_to(configured, key):
            log.warning("web certificate not used: both keys must be ECDSA P-256")
            return
        self._web_certificate = (cert, key)

    def prepare_connection(self, quic: QuicConnection) -> None:
        """Called for every new connection before its first packet is processed."""
        if self._web_certificate is not None:
            present_certificate_for_alpn(quic, H3_ALPN, *self._web_certificate)

    def quic_configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            # ALPN h3: browsers over WebTransport (salon.daemon.net.webtransport).
            alpn_protocols=[ALPN, H3_ALPN],
            is_client=False,
            max_datagram_frame_size=65536,
            idle_timeout=self.config.server.idle_timeout,
            congestion_control_algorithm=MEDIA_CONGESTION_CONTROL,
        )
        configuration.load_cert_chain(self._certificate, self._private_key)
        return configuration

    async def start(self) -> tuple[str, int]:
        """Bind the UDP socket; returns the address actually bound (port 0 picks one)."""
        self._loop = asyncio.get_running_loop()
        self.pipeline.start()

        def create_protocol(*args: Any, **kwargs: Any) -> SessionProtocol:
            session_id = self._next_session_id
            self._next_session_id += 1
            return SessionProtocol(*args, server=self, session_id=session_id, **kwargs)

        if self.reuse_port:
            # A worker of several sharing the port (daemon/cluster/workers.py): the kernel
            # spreads connections over their sockets by a hash of the addresses and ports.
            _, self._quic_server = await self._loop.create_datagram_endpoint(
                lambda: QuicServer(
                    configuration=self.quic_configuration(), create_protocol=create_protocol
                ),
                local_addr=(self.config.server.host, self.config.server.port),
                reuse_port=True,
            )
        else:
            self._quic_server = await serve(
                self.config.server.host,
                self.config.server.port,
                configuration=self.quic_configuration(),
                create_protocol=create_protocol,
            )
        tuning = self.config.tuning
        self._sending = self.traffic.attach(
            self._quic_server, tuning.read_batch, tuning.send_batch, tuning.read_interval
        )
        if tuning.shared_timers:
            connection_timers(asyncio.get_running_loop()).batch = self._sending
        transport = server_transport(self._quic_server)
        enlarge_socket_buffers(transport)  # see SOCKET_BUFFER_BYTES
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        return self.address

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Tell every client, close their connections, and stop listening."""
        if self.shutting_down:
            return
        self.shutting_down = True
        notice = msg.ServerShutdown(reason=reason, reconnect_after=5.0)
        self.deliver(tuple(self.sessions), notice)
        self._flush()
        await asyncio.sleep(0.05)
        protocols = list(self.sessions.values())
        for protocol in protocols:
            protocol.close_with(CloseCode.SERVER_SHUTDOWN, reason)
        waits = [protocol.wait_closed() for protocol in protocols]
        if waits:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*waits), timeout=self.config.server.drain_timeout
                )
            except asyncio.TimeoutError:
                log.warning("drain time-out: %d connections did not close", len(waits))
        for task in list(self._workers.values()):
            task.cancel()
        self.pipeline.stop()
        if self._quic_server is not None:
            self._quic_server.close()

    # ------------------------------------------------------------------ protocol callbacks

    def on_handshake(self, protocol: SessionProtocol) -> None:
        if len(self.sessions) >= self.config.limits.max_sessions:
            self._refuse(protocol)
            return
        self.stats.connections_total += 1
        self.sessions[protocol.session_id] = protocol
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._inboxes[protocol.session_id] = inbox
        self._workers[protocol.session_id] = asyncio.ensure_future(
            self._session_worker(protocol, inbox)
        )
        assert self._loop is not None
        protocol.hello_timer = self._loop.call_later(
            self.config.limits.hello_timeout, self._check_hello, protocol
        )
        if self.shutting_down:
            protocol.close_with(CloseCode.SERVER_SHUTDOWN, "server shutting down")
            return
        refusal = self.guard.handshake(protocol.session_id, protocol.address)
        if refusal is not None:
            protocol.close_with(CloseCode.RATE_ABUSE, refusal)

    def _guard_observer(self, event: CoreEvent) -> None:
        if isinstance(event, RoomClosed):
            self.guard.room_closed(event.room)
        elif isinstance(event, BanChanged) and event.ban is not None:
            self.guard.banned(event.room, event.user, time.time())
        elif isinstance(event, ModerationTaken):
            reason = event.detail.get("reason")
            log.info(
                "moderation: %s %s %s in %s%s",
                event.actor,
                event.action,
                event.target or "-",
                event.room or "the server",
                f" (reason {reason!r})" if reason else "",
            )

    def _refuse(self, protocol: SessionProtocol) -> None:
        """Close a connection beyond ``limits.max_sessions`` before it costs anything more."""
        self.stats.count_drop("max_sessions")
        protocol.close_with(CloseCode.SERVER_FULL, "server full: too many connections")
        self._refusals_unlogged += 1
        assert self._loop is not None
        now = self._loop.time()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s): limits.max_sessions (%d) reached",
                self._refusals_unlogged,
                self.config.limits.max_sessions,
            )
            self._refusals_unlogged = 0
            self._refusal_logged_at = now

    def _check_hello(self, protocol: SessionProtocol) -> None:
        protocol.hello_timer = None
        if protocol.identity is None and not protocol.closed:
            self.stats.count_drop("hello_timeout")
            protocol.close_with(
                CloseCode.HELLO_TIMEOUT,
                f"no hello within {self.config.limits.hello_timeout:g} s",
            )

    def on_closed(self, protocol: SessionProtocol, reason: str) -> None:
        session_id = protocol.session_id
        if protocol.hello_timer is not None:
            # A pending timer would keep the closed connection in memory until it fires.
            protocol.hello_timer.cancel()
            protocol.hello_timer = None
        self.sessions.pop(session_id, None)
        if self.cluster is not None:
            self.cluster.closed(session_id)
        self._inboxes.pop(session_id, None)
        task = self._workers.pop(session_id, None)
        if task is not None:
            task.cancel()
        self._dirty.discard(protocol)
        self.guard.closed(session_id)
        self._may_redirect.discard(session_id)
        if protocol.identity is not None:
            self.core.disconnect(session_id, time.time())
            self.pipeline.pump()
            log.info(
                "disconnected: session %d %s from %s (%s)",
                session_id,
                protocol.identity.user,
                protocol.address,
                reason or "closed",
            )
        else:
            log.debug("session %d closed: %s", session_id, reason)

    def on_control_message(self, protocol: SessionProtocol, payload: bytes) -> None:
        self.stats.messages_in += 1
        now = time.time()
        if not protocol.rate.take(now):
            protocol.rate_strikes += 1
            self.stats.count_drop("rate_limited")
            if protocol.rate_strikes >= RATE_STRIKES_TO_CLOSE:
                protocol.close_with(CloseCode.RATE_ABUSE, "message rate exceeded repeatedly")
                return
            self._reply_error(
                protocol,
                msg.peek_request_id(payload),
                msg.ErrorCode.RATE_LIMITED,
                "too many messages: slow down",
            )
            return
        protocol.rate_strikes = 0
        inbox = self._inboxes.get(protocol.session_id)
        if inbox is not None:
            inbox.put_nowait(payload)

    def on_datagram(self, protocol: SessionProtocol, data: bytes) -> None:
        """The media hot path: forward one datagram to every other member of the room."""
        self.stats.datagrams_in += 1
        if protocol.identity is None:
            self.stats.count_drop("not_authenticated")
            return
        cluster = self.cluster
        if cluster is not None and cluster.uplink(protocol.session_id, data):
            return
        self.forward_media(protocol.session_id, data)

    def forward_media(self, session: int, data: bytes) -> None:
        """Forward a datagram of ``session`` (local, or a remote member's from its edge)."""
        outlets = self.core.receive_datagram(session, data, time.time())
        if outlets:
            sessions = self.sessions
            dirty = self._dirty
            for outlet in outlets:
                target = sessions.get(outlet.session)
                if target is not None:
                    dirty.add(target)
                else:
                    sink = self.media_sinks.get(outlet.session)
                    if sink is not None:
                        sink(outlet)
            self._schedule_media_flush()
        self.pipeline.pump()

    def media_queued(self, protocols: list[SessionProtocol]) -> None:
        """Datagrams were queued on these sessions' outlets outside the forwarder (a cluster
        edge fanning out what the room's home relayed): send them this tick."""
        self._dirty.update(protocols)
        self._schedule_flush()

    def send_framed(self, session: int, framed: bytes) -> None:
        """Send an already framed control message to a local session (an edge passing on
        what the room's home answered)."""
        protocol = self.sessions.get(session)
        if protocol is None:
            return
        self.stats.messages_out += 1
        protocol.send_control(framed)
        self._dirty.add(protocol)
        self._schedule_flush()

    # ------------------------------------------------------------------ remote members

    def attach_remote(self, peer: Peer, identity: Identity) -> None:
        """A member whose client is on another node: its requests come through :meth:`enqueue`."""
        session_id = peer.session_id
        self.remote[session_id] = peer
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._inboxes[session_id] = inbox
        self._workers[session_id] = asyncio.ensure_future(self._session_worker(peer, inbox))
        peer.identity = identity
        self.core.connect(session_id, identity, time.time(), relayed=True)

    def enqueue(self, session: int, payload: bytes, *, on_behalf: str | None = None) -> None:
        """A control message of a remote member, handled in order like a local one.

        ``on_behalf``: a join of that room made for the client, not by it (a cluster rejoining
        it after the room's server failed): the client gets the join's events but no reply, and
        ``removed`` if the join fails.
        """
        inbox = self._inboxes.get(session)
        if inbox is not None:
            if on_behalf is not None:
                request_id = msg.peek_request_id(payload)
                if request_id is not None:
                    self._quiet[session] = (request_id, on_behalf)
            self.stats.messages_in += 1
            inbox.put_nowait(payload)

    def take_on_behalf(self, session: int) -> bool:
        """Whether the session's current request is made on its behalf (and forget it: the
        cluster passes it on to the room's home, which withholds the reply)."""
        return self._quiet.pop(session, None) is not None

    def _withheld(self, protocol: Peer, request_id: int | None, error: str | None) -> bool:
        quiet = self._quiet.get(protocol.session_id)
        if quiet is None or quiet[0] != request_id:
            return False
        del self._quiet[protocol.session_id]
        if error is not None:
            reason = f"rejoining the room after its server failed did not work: {error}"
            self._send(protocol, msg.encode(msg.Removed(room=quiet[1], by="", reason=reason)))
        return True

    def detach_remote(self, session: int) -> None:
        """The remote member's client left its node: it leaves the room as if disconnected."""
        peer = self.remote.pop(session, None)
        if peer is None:
            return
        peer.closed = True
        self._inboxes.pop(session, None)
        task = self._workers.pop(session, None)
        if task is not None:
            task.cancel()
        self._dirty.discard(peer)
        self.core.disconnect(session, time.time())
        self.pipeline.pump()

    # ------------------------------------------------------------------ requests

    async def _session_worker(self, protocol: Peer, inbox: asyncio.Queue[bytes]) -> None:
        # One worker per session keeps that session's requests strictly in arrival order,
        # even when a plugin check awaits.
        while True:
            payload = await inbox.get()
            try:
                await self._handle_payload(protocol, payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "internal error handling a message of session %d", protocol.session_id
                )
                self._reply_error(
                    protocol,
                    msg.peek_request_id(payload),
                    msg.ErrorCode.INTERNAL_ERROR,
                    "internal server error",
                )

    async def _handle_payload(self, protocol: Peer, payload: bytes) -> None:
        try:
            request = msg.decode_request(payload)
        except msg.MessageError as exc:
            self._reply_error(protocol, exc.request_id, exc.code, str(exc))
            return
        if self.shutting_down:
            self._reply_error(
                protocol, request.id, msg.ErrorCode.SHUTTING_DOWN, "server shutting down"
            )
            return
        if isinstance(request, msg.Hello):
            if isinstance(protocol, SessionProtocol):
                await self._hello(protocol, request)
            else:
                self._reply_error(
                    protocol,
                    request.id,
                    msg.ErrorCode.ALREADY_AUTHENTICATED,
                    "this session is already authenticated",
                )
            return
        if protocol.identity is None:
            self._reply_error(
                protocol, request.id, msg.ErrorCode.NOT_AUTHENTICATED, "send hello first"
            )
            return
        if isinstance(request, msg.Ping):
            self._reply_ok(protocol, request.id, {})
            return
        # Before anything routes the join (to this node's core or to the room's home node).
        if isinstance(request, msg.Join) and self._redirected(protocol, request):
            return
        if self.cluster is not None and await self.cluster.route(protocol, request, payload):
            return
        if isinstance(request, msg.ReceiverReport):
            # Media housekeeping every second or two per listener: no policy to consult, no
            # state to persist, so it skips the plugins' review and the store's barriers.
            try:
                self.core.check_session_state(protocol.session_id, request)
                reported = self.core.handle_request(protocol.session_id, request, time.time())
            except CoreError as exc:
                self._reply_error(protocol, request.id, exc.code, exc.message)
            else:
                self._reply_ok(protocol, request.id, reported or {})
            self.pipeline.pump()
            return
        if isinstance(request, msg.SetStream):
            self._set_stream(protocol, request)
            return
        actor = Actor.client(protocol.session_id, protocol.identity, protocol.address)
        try:
            result = await self.pipeline.perform(
                actor, None, request, abandoned=lambda: protocol.closed
            )
        except CoreError as exc:
            self._reply_error(protocol, request.id, exc.code, exc.message)
            return
        except StoreRefused:
            self._reply_error(
                protocol,
                request.id,
                msg.ErrorCode.STORE_UNAVAILABLE,
                "the server cannot store changes right now; nothing was changed, retry later",
            )
            return
        except StoreUnavailable as exc:
            kind = request.__struct_config__.tag
            log.warning("session %d: %s not acknowledged: %s", protocol.session_id, kind, exc)
            self._reply_error(
                protocol,
                request.id,
                msg.ErrorCode.STORE_UNAVAILABLE,
                "the change could not be stored (the server's database is unavailable); it is "
                "not acknowledged and may not survive a restart; retry later",
            )
            return
        if result is not None:
            self._reply_ok(protocol, request.id, result)

    def _redirected(self, protocol: Peer, request: msg.Join) -> bool:
        """PROTOCOL.md 17: a session's first join may be answered with a redirect, if its hello
        said it follows them (and it did not already follow one to get here)."""
        if protocol.session_id not in self._may_redirect:
            return False
        self._may_redirect.discard(protocol.session_id)
        if self.redirect is None:
            return False
        result = self.redirect(request.room)
        if result is None:
            return False
        log.info("session %d: join %s redirected to %s", protocol.session_id, request.room, result)
        self._reply_ok(protocol, request.id, result)
        return True

    def _set_stream(self, protocol: Peer, request: msg.SetStream) -> None:
        """How a room member receives audio is no policy decision: plugins do not review it."""
        if self.stream_mode is None:
            self._reply_error(
                protocol,
                request.id,
                msg.ErrorCode.STREAM_UNAVAILABLE,
                "this server offers no stream mode",
            )
            return
        try:
            result = self.stream_mode.set_stream(protocol.session_id, request.on)
        except CoreError as exc:
            self._reply_error(protocol, request.id, exc.code, exc.message)
            return
        finally:
            self.pipeline.pump()
        self._reply_ok(protocol, request.id, result)

    async def _hello(self, protocol: SessionProtocol, request: msg.Hello) -> None:
        if protocol.identity is not None:
            self._reply_error(
                protocol,
                request.id,
                msg.ErrorCode.ALREADY_AUTHENTICATED,
                "this session is already authenticated",
            )
            return
        if request.version != msg.PROTOCOL_VERSION:
            self._reply_error(
                protocol,
                request.id,
                msg.ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks {msg.PROTOCOL_VERSION}",
            )
            return
        try:
            # The client's own value is checked before its credentials (PROTOCOL.md 3.6): the
            # text rule refuses control and bidi characters (invalid_text), then the length.
            check_text("display_name", request.display_name, max_width=MAX_DISPLAY_NAME)
        except TextError as exc:
            code = msg.ErrorCode.INVALID_TEXT if exc.bad_characters else msg.ErrorCode.INVALID_VALUE
            self._reply_error(protocol, request.id, code, str(exc))
            return
        try:
            identity = await self.pipeline.authenticate(
                request.credentials, request.display_name, protocol.address
            )
        except AuthError as exc:
            self._reply_error(protocol, request.id, msg.ErrorCode.AUTH_FAILED, str(exc))
            return
        if protocol.closed:
            return
        refusal = self.guard.admit(protocol.session_id, identity, protocol.address)
        if refusal is not None:
            self._reply_error(protocol, request.id, msg.ErrorCode.RATE_LIMITED, refusal)
            # Closed once the error is on its way (the reply is flushed at the end of this tick).
            assert self._loop is not None
            self._loop.call_later(
                REFUSED_CLOSE_DELAY, protocol.close_with, CloseCode.RATE_ABUSE, refusal
            )
            return
        self.admit(
            protocol,
            identity,
            red=msg.CAPABILITY_RED in request.capabilities,
            red_flow=msg.CAPABILITY_RED_FLOW in request.capabilities,
        )
        if request.redirects == 0:
            self._may_redirect.add(protocol.session_id)
        log.info(
            "connected: session %d %s from %s",
            protocol.session_id,
            identity.user,
            protocol.address,
        )
        limits = self.config.limits
        result: dict[str, Any] = {
            "session": protocol.session_id,
            "user": identity.user,
            "display_name": identity.display_name,
            "server": f"salond/{__version__}",
            "version": msg.PROTOCOL_VERSION,
            "limits": msgspec.to_builtins(
                msg.Limits(
                    max_message_size=msg.MAX_MESSAGE_SIZE,
                    max_datagram_size=min(MAX_DATAGRAM_SIZE, protocol.peer_max_datagram),
                    # An integer when whole, as the spec's example shows it (50, not 50.0).
                    message_rate=msg.json_number(limits.message_rate),
                    message_burst=limits.message_burst,
                    min_bitrate=limits.min_bitrate,
                    max_bitrate=limits.max_bitrate,
                )
            ),
        }
        if self.alternatives is not None:
            result["nodes"] = self.alternatives()
        self._reply_ok(protocol, request.id, result)

    def admit(
        self,
        protocol: SessionProtocol,
        identity: Identity,
        *,
        red: bool = False,
        red_flow: bool = False,
    ) -> None:
        """Bind an authenticated identity to the session and give it a media outlet.

        ``red``, ``red_flow``: the client decodes RED payloads, sends and uses redundancy flows
        (its ``hello`` listed the capability).
        """
        protocol.identity = identity
        if protocol.hello_timer is not None:
            protocol.hello_timer.cancel()
            protocol.hello_timer = None
        self.core.connect(protocol.session_id, identity, time.time(), red=red, red_flow=red_flow)
        protocol.outlet = self.core.outlet(protocol.session_id)

    # ------------------------------------------------------------------ output

    def _reply_ok(self, protocol: Peer, request_id: int, result: dict[str, Any]) -> None:
        if self._quiet and self._withheld(protocol, request_id, None):
            return
        self._send(protocol, msg.encode(msg.Ok(re=request_id, result=result)))

    def _reply_error(
        self, protocol: Peer, request_id: int | None, code: msg.ErrorCode, text: str
    ) -> None:
        self.stats.errors[code.value] += 1
        if self._quiet and self._withheld(protocol, request_id, text):
            return
        self._send(protocol, msg.encode(msg.Error(re=request_id, code=code.value, message=text)))

    def _send(self, protocol: Peer, payload: bytes) -> None:
        self.stats.messages_out += 1
        protocol.send_control(frame_message(payload))
        self._dirty.add(protocol)
        self._schedule_flush()

    def deliver(self, sessions: tuple[int, ...], message: Any) -> None:
        """Send one event to several sessions, encoding and framing it once."""
        try:
            framed = frame_message(msg.encode(message))
        except WireError as exc:
            # The core bounds every event (PROTOCOL.md 18); should one still be too large, it
            # is dropped and counted, and the events after it still go out.
            log.error("event %s not sent: %s", type(message).__name__, exc)
            self.stats.count_drop("oversized_event")
            return
        local = self.sessions
        for session_id in sessions:
            protocol: Peer | None = local.get(session_id)
            if protocol is None:
                protocol = self.remote.get(session_id)
                if protocol is None:
                    continue
            protocol.send_control(framed)
            self.stats.messages_out += 1
            self._dirty.add(protocol)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _schedule_media_flush(self) -> None:
        """Flush at once, unless the last flush of media was less than
        ``media_flush_interval`` ago: then when that interval is over, so that what other
        speakers send meanwhile shares each listener's packet (a speaker alone, one datagram
        every 20 ms, never waits; with an interval of 0 nothing waits). A flush already due
        takes the media along."""
        loop = self._loop
        if self._flush_handle is not None or loop is None:
            return
        now = loop.time()
        due = self._last_media_flush + self._media_flush_interval
        if due > now:
            self._flush_handle = loop.call_later(due - now, self._flush)
            self._last_media_flush = due
        else:
            self._flush_handle = loop.call_soon(self._flush)
            self._last_media_flush = now

    def _flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = set()
        sending = self._sending
        if sending is not None:
            sending.hold()
        try:
            lists = sending.batch_lists() if sending is not None else None
            if lists is None or flush_links is None or self._loop is None:
                for protocol in dirty:
                    if not protocol.closed:
                        protocol.transmit()
                return
            # Listeners whose media link is loaded are sent to in one call into C; the rest
            # (and what a link leaves to Python) as before.
            rest, sent = flush_links(dirty, self._loop.time(), *lists)
            self.stats.datagrams_out += sent
            for item in rest:
                if type(item) is tuple:
                    item[0].after_link_send(item[1], item[2], item[3])
                elif not item.closed:
                    item.transmit()
        finally:
            if sending is not None:
                sending.release()
