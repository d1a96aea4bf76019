"""The reference client's connection: QUIC to salond, the control stream, media datagrams.

    client = await SalonClient.connect("127.0.0.1", 4460, display_name="Ada",
                                       fingerprint="sha256:AB:...")
    await client.join("lobby")
    async for event in client.events():
        ...

Requests return the ``result`` of the server's ``ok`` reply, or raise :class:`RequestError`
carrying the error code from PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import itertools
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding

from salon.daemon.wire import messages as msg
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.quic.congestion import MEDIA_CONGESTION_CONTROL
from salon.quic.protocol import CLIENT_ACK_DELAY, ClientProtocol

log = logging.getLogger("salon.client")

ALPN = "salon/1"


INSECURE_WARNING = (
    "--insecure: the server at %s:%s is NOT authenticated (any certificate is accepted);"
    " use this for local development only, never with real credentials"
)


class RequestError(Exception):
    """The server answered a request with ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(Exception):
    """The QUIC connection closed while a request was waiting."""


class ServerVerificationError(Exception):
    """The server's certificate did not match the pinned fingerprint, or could not be verified."""


class ServerUnreachable(ConnectionError):
    """No QUIC connection could be made; the message says why and what to try next."""


PIN_ADVICE = (
    "salond prints its certificate's fingerprint when it starts (and `salonctl status` shows "
    "it): pass it as --fingerprint sha256:..., or --cafile for a CA-signed certificate"
)


def certificate_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    raw = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise ValueError("a fingerprint is 32 bytes of SHA-256 in hex, e.g. sha256:AB:CD:...")
    upper = raw.upper()
    return "sha256:" + ":".join(upper[i : i + 2] for i in range(0, 64, 2))


class RedirectError(Exception):
    """A server's redirect was malformed, or redirects went on for longer than allowed."""


MAX_REDIRECTS = msg.MAX_REDIRECTS
"""Redirects followed for one join at most (PROTOCOL.md 17): a loop between nodes ends here."""
MAX_NODE_ADDRESSES = msg.MAX_NODE_ADDRESSES
"""Nodes of a ``hello`` result read at most (PROTOCOL.md 17)."""
MAX_HOST_LENGTH = 253
MAX_NODE_ID_LENGTH = 64
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Redirect:
    """Where a server sent a joining client: another node of its cluster."""

    host: str
    port: int
    fingerprint: str
    node: str

    @property
    def server(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_redirect(result: dict[str, Any]) -> Redirect:
    """A ``join`` result with ``"status": "redirect"``, checked like any server input (PROTOCOL.md
    17): a host name or IP address, a port, a SHA-256 fingerprint and a node id, all bounded;
    RedirectError otherwise."""
    return parse_node_address(result)


def parse_nodes(value: Any) -> tuple[Redirect, ...]:
    """The ``hello`` result's ``nodes`` (PROTOCOL.md 17): other nodes of the cluster to reconnect
    to. At most MAX_NODE_ADDRESSES are read; an entry that fails the checks of a redirect is
    left out (and logged), the others kept; anything but a list is no nodes."""
    if not isinstance(value, list):
        return ()
    found: list[Redirect] = []
    for entry in value[:MAX_NODE_ADDRESSES]:
        try:
            found.append(parse_node_address(entry if isinstance(entry, dict) else {}))
        except RedirectError as exc:
            log.warning("a node listed by the server is left out: %s", exc)
    return tuple(dict.fromkeys(found))


def parse_node_address(result: dict[str, Any]) -> Redirect:
    """``server``, ``fingerprint`` and ``node`` of a redirect or of a listed node, checked."""
    server, fingerprint, node = result.get("server"), result.get("fingerprint"), result.get("node")
    if not isinstance(server, str) or not isinstance(fingerprint, str):
        raise RedirectError("redirect without a server or fingerprint")
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID_LENGTH:
        raise RedirectError("redirect without a valid node id")
    host, sep, port_text = server.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise RedirectError(f"redirect to {server[:80]!r}: not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise RedirectError(f"redirect to port {port}: out of range")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not _valid_host(host):
        raise RedirectError(f"redirect to {host[:80]!r}: not a host name or IP address")
    try:
        fingerprint = normalize_fingerprint(fingerprint)
    except ValueError as exc:
        raise RedirectError(f"redirect with a bad fingerprint: {exc}") from None
    return Redirect(host, port, fingerprint, node)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if not 0 < len(host) <= MAX_HOST_LENGTH or not host.isascii():
        return False
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


def handshake_failure(
    host: str, port: int, ended: quic_events.ConnectionTerminated | None
) -> Exception:
    """The error for a handshake that ended: a certificate problem says how to pin the server."""
    reason = ended.reason_phrase if ended is not None else ""
    tls_alert = ended is not None and 0x100 <= ended.error_code <= 0x1FF
    if tls_alert or "certificate" in reason.lower():
        return ServerVerificationError(
            f"the certificate of {host}:{port} could not be verified"
            f" ({reason or 'TLS alert'}). If it is salond's own self-signed certificate, "
            + PIN_ADVICE
        )
    return ServerUnreachable(
        f"{host}:{port} ended the connection during the handshake"
        f" ({reason or 'no reason given'}): check the address and that it is a salond"
    )


def load_guest_key(path: Path | None = None) -> str:
    """This device's guest key (created on first use), so a guest keeps its identity."""
    if path is None:
        base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
        path = base / "salon" / "guest_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = base64.b64encode(os.urandom(32)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        return key


class _ClientProtocol(ClientProtocol):
    """aioquic glue: control stream bytes and datagrams go to the owning SalonClient."""

    client: SalonClient | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.termination: quic_events.ConnectionTerminated | None = None
        """How the connection ended, when it ended before a SalonClient took it over."""

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        client = self.client
        if client is None:
            if isinstance(event, quic_events.ConnectionTerminated):
                self.termination = event
            return
        if isinstance(event, quic_events.DatagramFrameReceived):
            client._on_datagram(event.data)
            self.count_datagram_received()
        elif isinstance(event, quic_events.StreamDataReceived):
            client._on_stream_data(event.stream_id, event.data)
        elif isinstance(event, quic_events.ConnectionTerminated):
            # An application close (the server's salon/1 close codes) has no frame type.
            client._on_terminated(
                event.error_code, event.reason_phrase, application=event.frame_type is None
            )


class SalonClient:
    """An authenticated ``salon/1`` session."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._quic = protocol.quic
        self._stream_id = self._quic.get_next_available_stream_id()
        self._reader = MessageReader()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.close_reason = ""
        self.close_code: int | None = None
        self.application_close = False
        """Whether ``close_code`` is a salon/1 close code (PROTOCOL.md 9.2), not a QUIC one
        (an idle timeout, a transport error)."""
        self.on_datagram: Callable[[bytes], None] | None = None
        self.datagrams_received = 0
        self.bad_messages = 0
        self.user = ""
        self.session = 0
        self.display_name = ""
        self.limits: dict[str, Any] = {}
        self.nodes: tuple[Redirect, ...] = ()
        """Other nodes of the server's cluster to reconnect to (the hello's ``nodes``)."""
        self.target: Redirect | None = None
        """The node this connection went to when it was made from the ``nodes`` of another."""
        self.room: str | None = None
        self._clock = asyncio.get_running_loop().time
        self.last_datagram = 0.0
        """Event-loop time of the last datagram from the server (0: none yet)."""
        self._context_manager: Any = None
        self._listeners: list[Callable[[Any], None]] = []
        protocol.client = self

    # ------------------------------------------------------------------ connecting

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        display_name: str,
        credentials: dict[str, str] | None = None,
        fingerprint: str | None = None,
        cafile: str | None = None,
        insecure: bool = False,
        server_name: str | None = None,
        max_datagram_frame_size: int = 65536,
        ack_delay: float = CLIENT_ACK_DELAY,
        timeout: float = 10.0,
        idle_timeout: float = 60.0,
        redirects: int | None = None,
        capabilities: tuple[str, ...] = (msg.CAPABILITY_RED, msg.CAPABILITY_RED_FLOW),
    ) -> SalonClient:
        """Connect, verify the server, and authenticate with ``hello``.

        Exactly one way of verifying the server is used: a pinned ``fingerprint``, a CA file
        (``cafile``), the system trust store (neither given), or ``insecure``: the
        development-only mode of PROTOCOL.md 2.3, which warns on every connection.
        ``max_datagram_frame_size``: the transport parameter sent (RFC 9221; 2.2 of the spec).
        ``idle_timeout``: seconds without any packet from the server after which the connection
        counts as lost (how fast a dead network path is noticed).
        ``redirects``: None, the server never redirects this client; a number, the client
        follows redirects and has followed that many to get here (PROTOCOL.md 17).
        ``capabilities``: what ``hello`` declares; the default ``red`` says this library's
        receiver decodes RED payloads (PROTOCOL.md 11.9), ``red_flow`` that its speaker sends
        a redundancy flow when asked and its receiver uses one (11.10; :class:`RoomAudio`).
        """
        configuration = QuicConfiguration(
            alpn_protocols=[ALPN],
            is_client=True,
            max_datagram_frame_size=max_datagram_frame_size,
            server_name=server_name or host,
            idle_timeout=idle_timeout,
            congestion_control_algorithm=MEDIA_CONGESTION_CONTROL,
        )
        expected = normalize_fingerprint(fingerprint) if fingerprint else None
        if insecure and not expected:
            # PROTOCOL.md 2.3: a mode accepting any certificate is for development only and
            # says so on every connection, since anyone on the path could be the server.
            log.warning(INSECURE_WARNING, host, port)
        if expected or insecure:
            # The chain is not checked; for a pin we compare the certificate itself below,
            # before any credential leaves this process.
            configuration.verify_mode = ssl.CERT_NONE
        elif cafile:
            configuration.load_verify_locations(cafile)
        created: list[_ClientProtocol] = []

        def create_protocol(*args: Any, **kwargs: Any) -> _ClientProtocol:
            created.append(_ClientProtocol(*args, ack_delay=ack_delay, **kwargs))
            return created[-1]

        manager = quic_connect(
            host, port, configuration=configuration, create_protocol=create_protocol
        )
        try:
            protocol = await asyncio.wait_for(manager.__aenter__(), timeout)
        except asyncio.TimeoutError:
            raise ServerUnreachable(
                f"no answer from {host}:{port} within {timeout:.0f} s: check that salond runs "
                "there and listens on that UDP port, and that no firewall drops UDP"
            ) from None
        except ConnectionError:
            ended = created[-1].termination if created else None
            raise handshake_failure(host, port, ended) from None
        assert isinstance(protocol, _ClientProtocol)
        client = cls(protocol)
        client._context_manager = manager
        if expected:
            certificate = protocol.peer_certificate()
            actual = (
                certificate_fingerprint(certificate.public_bytes(Encoding.DER))
                if certificate
                else ""
            )
            if actual != expected:
                await client.close()
                raise ServerVerificationError(
                    f"server certificate {actual or 'missing'} does not match pinned {expected}"
                )
        if credentials is None:
            credentials = {"guest_key": load_guest_key()}
        try:
            result = await asyncio.wait_for(
                client.request(
                    msg.Hello(
                        id=0,
                        version=msg.PROTOCOL_VERSION,
                        display_name=display_name,
                        credentials=credentials,
                        client="salon-python/0.1",
                        redirects=redirects,
                        capabilities=list(capabilities),
                    )
                ),
                timeout,
            )
        except BaseException:
            # A refused or unanswered hello must not leave the QUIC connection open behind the
            # caller's back (a reconnecting client would pile up half-made sessions).
            await client.close()
            raise
        client.user = result["user"]
        client.session = result["session"]
        client.display_name = result["display_name"]
        client.limits = result.get("limits", {})
        client.nodes = parse_nodes(result.get("nodes"))
        return client

    async def close(self, timeout: float = 3.0) -> None:
        """Close the connection politely and wait until it is closed, or ``timeout`` seconds."""
        manager, self._context_manager = self._context_manager, None
        if manager is not None:
            # Leaving aioquic's context closes the connection, waits for it and the socket.
            try:
                await asyncio.wait_for(manager.__aexit__(None, None, None), timeout)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ------------------------------------------------------------------ control

    async def request(self, request: Any) -> dict[str, Any]:
        """Send one request struct (its ``id`` is replaced) and wait for the reply."""
        if self._closed.is_set():
            raise ConnectionLost(self.close_reason or "connection closed")
        request_id = next(self._ids)
        request.id = request_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.send_raw(msg.encode(request))
        try:
            return await future
        finally:
            self._pending.pop(request_id, None)

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request by its type name: ``await client.call("mute", user="bob")``."""
        cls = msg.REQUEST_TYPES[type_]
        return await self.request(cls(id=0, **fields))

    def send_raw(self, payload: bytes) -> None:
        """Send raw control bytes, framed (for tests of the server's error handling)."""
        self._quic.send_stream_data(self._stream_id, frame_message(payload))
        self._protocol.transmit()

    def send_raw_stream_bytes(self, data: bytes) -> None:
        """Send bytes on the control stream without framing (for robustness tests)."""
        self._quic.send_stream_data(self._stream_id, data)
        self._protocol.transmit()

    def add_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(event)`` for every event as it arrives (before it is queued)."""
        self._listeners.append(listener)

    async def events(self) -> AsyncIterator[Any]:
        """Server-pushed events until the connection closes."""
        while True:
            event = await self.next_event()
            if event is None:
                return
            yield event

    async def next_event(self, timeout: float | None = None) -> Any:
        """The next event (``None`` once closed); raises TimeoutError after ``timeout``."""
        if self._events.empty() and self._closed.is_set():
            return None
        getter = asyncio.ensure_future(self._events.get())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closer.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        if closer in done:
            return None if self._events.empty() else self._events.get_nowait()
        raise asyncio.TimeoutError("no event")

    async def wait_for_event(
        self,
        type_: type | tuple[type, ...],
        timeout: float = 5.0,
        where: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Skip events until one of ``type_`` (matching ``where``) arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no {type_} event within {timeout} s")
            event = await self.next_event(remaining)
            if event is None:
                raise ConnectionLost(self.close_reason or "connection closed")
            if isinstance(event, type_) and (where is None or where(event)):
                return event

    def drain_events(self) -> list[Any]:
        """Every event already received, without waiting."""
        items = []
        while not self._events.empty():
            items.append(self._events.get_nowait())
        return items

    # ------------------------------------------------------------------ media

    def send_datagram(self, data: bytes) -> None:
        self._quic.send_datagram_frame(data)
        self._protocol.transmit()

    # ------------------------------------------------------------------ convenience API

    async def list_rooms(self, topic: str | None = None) -> list[dict[str, Any]]:
        return list((await self.call("list_rooms", topic=topic))["rooms"])

    async def create_room(self, title: str, **fields: Any) -> dict[str, Any]:
        return dict((await self.call("create_room", title=title, **fields))["room"])

    async def join(self, room: str, invite: str | None = None) -> dict[str, Any]:
        result = await self.call("join", room=room, invite=invite)
        if result.get("status") == "joined":
            self.room = room
        return result

    async def leave(self) -> None:
        await self.call("leave")
        self.room = None

    async def list_participants(self, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of the current room's members (PROTOCOL.md ``list_participants``):
        ``participants``, their ``media_keys``, the ``next`` cursor (None on the last page) and
        the ``total``."""
        return await self.call("list_participants", after=after, limit=limit)

    async def all_participants(self, page: int = 500) -> list[dict[str, Any]]:
        """Every member of the current room, paged (a big room's ``room_state`` lists only some
        listeners, PROTOCOL.md 18); each member once, in user id order."""
        members: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            result = await self.list_participants(after, page)
            members.extend(result["participants"])
            after = result["next"]
            if after is None:
                return members

    # ------------------------------------------------------------------ protocol input

    def _on_stream_data(self, stream_id: int, data: bytes) -> None:
        if stream_id != self._stream_id:
            return
        try:
            payloads = self._reader.feed(data)
        except WireError as exc:
            log.error("server sent bad framing: %s", exc)
            self._protocol.close(error_code=0x1, reason_phrase=str(exc))
            return
        for payload in payloads:
            try:
                message = msg.decode_server_message(payload)
            except msg.MessageError as exc:
                self.bad_messages += 1
                log.warning("undecodable server message dropped: %s", exc)
                continue
            if isinstance(message, msg.Ok):
                future = self._pending.get(message.re)
                if future is not None and not future.done():
                    future.set_result(message.result)
            elif isinstance(message, msg.Error):
                future = self._pending.get(message.re) if message.re is not None else None
                if future is not None and not future.done():
                    future.set_exception(RequestError(message.code, message.message))
                else:
                    self._events.put_nowait(message)
            else:
                if isinstance(message, (msg.RoomClosed, msg.Removed)):
                    self.room = None
                elif isinstance(message, msg.RoomState):
                    self.room = message.room.summary.room
                for listener in self._listeners:
                    try:
                        listener(message)
                    except Exception:
                        log.exception("event listener failed")
                self._events.put_nowait(message)

    def _on_datagram(self, data: bytes) -> None:
        self.datagrams_received += 1
        self.last_datagram = self._clock()
        callback = self.on_datagram
        if callback is not None:
            callback(data)

    def _on_terminated(self, code: int, reason: str, application: bool = True) -> None:
        self.close_code = code
        self.application_close = application
        self.close_reason = reason
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason or f"closed with code {code}"))
