"""The admin protocol ``salon-admin/1``: JSON lines over salond's Unix socket.

Shared by the daemon (:mod:`salon.daemon.admin.server`) and its clients
(:mod:`salon.daemon.admin.client`, ``salon-admin``, ``salonctl``). One JSON object per line,
UTF-8, at most :data:`MAX_LINE` bytes.

On connect the server sends :class:`Welcome`. The client then sends requests, each with a
``"type"`` and an ``"id"``; the server answers each with :class:`Ok` or :class:`Error` carrying
``"re": id``, in order. After ``subscribe`` the server also pushes :class:`Event` lines (no id)
until the connection closes::

    -> {"type": "rooms", "id": 1}
    <- {"type": "ok", "re": 1, "result": {"rooms": [...]}}
    -> {"type": "action", "id": 2, "room": "lobby", "request": {"type": "mute", "user": "bob"}}
    <- {"type": "ok", "re": 2, "result": {"user": "bob", "muted": true, ...}}

An ``action`` carries a ``salon/1`` request (the ``id`` inside may be left out): the daemon
performs it through the core's operator path, with the same permission checks and audit trail
as a host's request from a client.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from salon.daemon.wire.messages import (
    InviteInfo,
    JoinRequestInfo,
    Participant,
    RoomSummary,
)

ADMIN_PROTOCOL = "salon-admin/1"
MAX_LINE = 1 << 20
"""Longest line either side sends, in bytes (a room of many thousand listeners fits)."""

EVENT_KINDS = (
    "room_created",
    "room_closed",
    "member_joined",
    "member_left",
    "role_changed",
    "speaking",
    "knock",
    "knock_resolved",
    "hand_queue",
    "participant",
    "room_updated",
    "recording",
    "moderation",
    "levels",
    "stream",
    "stats",
    "shutdown",
)
"""Every ``kind`` an :class:`Event` may have (see :class:`Event`)."""


class AdminProtocolError(ValueError):
    """A line could not be decoded; ``code`` says why, ``request_id`` echoes its id if any."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


# --------------------------------------------------------------------------- results


class Traffic(msgspec.Struct, kw_only=True):
    """UDP traffic of the QUIC socket since start (every packet: media, control, ACKs)."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class StoreStatus(msgspec.Struct, kw_only=True):
    """Where salond keeps its state, and whether it can write there now."""

    backend: str
    """``sqlite`` or ``postgresql``."""
    location: str
    """The file, or the database URL without its password."""
    available: bool = True
    """False while the database cannot be reached: writing requests get ``store_unavailable``."""
    unavailable_since: float | None = None
    last_error: str = ""
    outages: int = 0
    """Times the database went away since start."""
    reconnects: int = 0
    queued: int = 0
    """Changes waiting to be written."""
    commits: int = 0
    failures: int = 0


class ClusterNodeStatus(msgspec.Struct, kw_only=True):
    """One live node of the cluster, as the node registry lists it."""

    node_id: str
    address: str
    """``host:port`` its QUIC socket is bound to."""
    public: str = ""
    """``host:port`` clients are sent to."""
    pid: int = 0
    started_at: float = 0.0
    sessions: int = 0
    rooms: int = 0
    room_ids: list[str] = []
    """The rooms with members on that node (at most 1000 listed)."""
    this: bool = False
    """True for the node answering this admin API."""


class ClusterStatus(msgspec.Struct, kw_only=True):
    """The cluster this salond is a node of (``[cluster] redis_url``), from its registry view."""

    node_id: str
    nodes: list[ClusterNodeStatus] = []
    read_at: float = 0.0
    """When the registry was last read (0: not yet; refreshed every heartbeat)."""
    heartbeat_failures: int = 0
    redirects: int = 0
    """Clients this node sent to another node (PROTOCOL.md 17)."""
    room_nodes: dict[str, list[str]] = {}
    """Which nodes carry each room: room id -> node ids."""
    counters: dict[str, int] = {}
    """This node's cluster counters: stale epochs dropped, refused uplinks, fenced writes,
    control messages refused, relay queue drops, relayed datagrams, and ``bus_refused.<reason>``
    (docs/cluster.md, "What operators see")."""


class StatusInfo(msgspec.Struct, kw_only=True):
    """The ``status`` result: what the server is and its counters."""

    server: str
    """``salond/<version>``."""
    pid: int
    started_at: float
    uptime: float
    address: str
    """``host:port`` of the QUIC socket."""
    fingerprint: str
    connections: int
    """Client connections open now."""
    connections_total: int
    rooms: int
    """Live rooms."""
    scheduled_rooms: int
    members: int
    """Members of live rooms (speakers and listeners)."""
    speakers: int
    traffic: Traffic
    media_received: int = 0
    media_forwarded: int = 0
    messages_in: int = 0
    messages_out: int = 0
    drops: dict[str, int] = {}
    """Packets or messages dropped, by reason (network layer and forwarder)."""
    errors: dict[str, int] = {}
    """Error replies sent to clients, by code."""
    plugin_errors: dict[str, int] = {}
    """Plugin failures, by hook."""
    abuse: dict[str, int] = {}
    """Requests refused by the per-address guest limits, by limit."""
    admin_clients: int = 0
    store: StoreStatus | None = None
    cluster: ClusterStatus | None = None
    """None: salond is not a cluster node."""


class MeterLevel(msgspec.Struct, kw_only=True):
    """A stage member's smoothed audio level: 0 loudest .. 127 silence (-dBov, RFC 6464)."""

    user: str
    level: int
    speaking: bool


class BanInfo(msgspec.Struct, kw_only=True):
    user: str
    reason: str = ""
    until: float | None = None
    by: str = ""


class RoomStream(msgspec.Struct, kw_only=True):
    """One room's stream mode: who listens how, and what the HLS origin served."""

    room: str
    realtime_listeners: int
    """Audience members receiving real-time media."""
    stream_listeners: int
    """Audience members fetching the room's HLS stream."""
    mixing: bool
    """Whether the room's mix is being made and cut into segments now."""
    segments: int = 0
    """Segments the running mix produced."""
    segments_served: int = 0
    """Segment (and init) responses the origin sent; behind a cache, about one per segment."""
    playlists_served: int = 0
    bytes_served: int = 0
    refused: int = 0
    """Stream requests refused with 403."""
    max_fetches_per_segment: int = 0
    """Most times the origin sent one segment."""
    cpu_seconds: float = 0.0
    """CPU time spent mixing and segmenting this room."""


class RoomDetail(msgspec.Struct, kw_only=True):
    """The ``room`` result: everything an operator sees of one room."""

    summary: RoomSummary
    participants: list[Participant] = []
    """The stage, the raised hands and the first listeners (a room's ``room_state`` as an
    operator sees it: bounded, PROTOCOL.md 18)."""
    partial: bool = False
    """``participants`` leaves listeners out: page them with ``list_participants`` (the
    ``action`` request; ``AdminClient.participants``, ``salonctl members``)."""
    moderators: list[str] = []
    """Moderators of record (present or not), earliest first."""
    hand_queue: list[str] = []
    knocks: list[JoinRequestInfo] = []
    """Pending requests to enter, with each requester's profile."""
    levels: list[MeterLevel] = []
    """Every stage member's audio level, loudest first."""
    invites: list[InviteInfo] = []
    """Usable invite links."""
    bans: list[BanInfo] = []
    """Active bans."""
    stream: RoomStream | None = None
    """Stream mode in this room; null when salond offers no stream mode."""


class AuditEntry(msgspec.Struct, kw_only=True):
    """One moderation or admin action: who did what to whom, when, and where.

    The one audit type of salond: the store writes and reads it (``Store.add_audit``,
    ``Store.audit_log``), the admin API serves it, ``salonctl`` and the console show it.
    """

    at: float
    """When (Unix time)."""
    room: str
    """The room acted on; empty for a server-wide action (``server_ban``, ``server_unban``)."""
    actor: str
    """Who acted: a host's user id, an operator's (admin path) or a plugin's."""
    action: str
    """What: a request type (ban, mute, update_room...), create_room, server_ban, server_unban."""
    target: str | None = None
    """Whom: the user acted upon, if any."""
    detail: dict[str, Any] = {}
    """Action-specific facts (reason, duration, changed fields...); invite tokens are shortened
    in the store."""
    id: int = 0
    """Position in the store's log, increasing (0 for an entry not stored, e.g. without a store)."""


# --------------------------------------------------------------------------- requests


class _Request(msgspec.Struct, tag_field="type", kw_only=True):
    id: Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class Status(_Request, kw_only=True, tag="status"):
    """Server status and counters; result :class:`StatusInfo`."""


class Rooms(_Request, kw_only=True, tag="rooms"):
    """Live and scheduled rooms; result ``{"rooms": [RoomSummary]}``."""

    topic: str | None = None


class Room(_Request, kw_only=True, tag="room"):
    """One room in detail; result ``{"room": RoomDetail}``."""

    room: str


class Action(_Request, kw_only=True, tag="action"):
    """Perform a ``salon/1`` request as the operator; result as in PROTOCOL.md."""

    room: str | None = None
    request: dict[str, Any]


class Audit(_Request, kw_only=True, tag="audit"):
    """Recent audit entries, newest first; result ``{"entries": [AuditEntry]}``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    room: str | None = None


class Subscribe(_Request, kw_only=True, tag="subscribe"):
    """Start (or change) the event stream; ``levels_room``: also stream that room's levels."""

    levels_room: str | None = None
    stats_interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0


class Recordings(_Request, kw_only=True, tag="recordings"):
    """Recordings from the index, newest first (only ``room``'s, or only ``recording``, if
    given); result ``{"recordings": [RecordingInfo]}`` (daemon/recording/index.py)."""

    room: str | None = None
    recording: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100


class Backup(_Request, kw_only=True, tag="backup"):
    """Write a consistent copy of the database to ``path`` (absolute, not existing) while the
    daemon runs; result ``{"path", "bytes", "schema_version", "integrity"}``."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class Streams(_Request, kw_only=True, tag="streams"):
    """Stream mode per room (docs/stream_mode.md); result ``{"streams": [RoomStream]}``."""


Request = Union[Status, Rooms, Room, Action, Audit, Subscribe, Recordings, Backup, Streams]

REQUEST_TYPES: dict[str, type[_Request]] = {
    cls.__struct_config__.tag: cls
    for cls in Request.__args__  # type: ignore[attr-defined]
}


# --------------------------------------------------------------------------- server lines


class Welcome(msgspec.Struct, tag="welcome", tag_field="type", kw_only=True):
    """First line the server sends."""

    protocol: str
    server: str
    operator: str
    """The operator identity actions are performed and audited as (``operator:<unix user>``)."""


class Ok(msgspec.Struct, tag="ok", tag_field="type", kw_only=True):
    re: int
    result: dict[str, Any] = {}


class Error(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """``code`` is a ``salon/1`` error code (PROTOCOL.md) or ``bad_message``/``unknown_type``."""

    re: int | None
    code: str
    message: str


class Event(msgspec.Struct, tag="event", tag_field="type", kw_only=True):
    """Something happened. ``kind`` is one of :data:`EVENT_KINDS`; ``data`` by kind:

    room_created {room, owner} · room_closed {room, reason} · member_joined {room, user, role}
    · member_left {room, user, reason} · role_changed {room, user, old, new}
    · speaking {room, speakers} · knock {room, request: JoinRequestInfo}
    · knock_resolved {room, request_id, user, outcome, by} · hand_queue {room, users}
    · participant {room, participant: Participant} · room_updated {room}
    · recording {room, recording, state} · moderation AuditEntry
    · levels {room, levels: [MeterLevel]} (at most every 0.25 s, when they changed)
    · stats StatusInfo · shutdown {reason}.
    """

    kind: Literal[
        "room_created",
        "room_closed",
        "member_joined",
        "member_left",
        "role_changed",
        "speaking",
        "knock",
        "knock_resolved",
        "hand_queue",
        "participant",
        "room_updated",
        "recording",
        "moderation",
        "levels",
        "stream",
        "stats",
        "shutdown",
    ]
    room: str | None = None
    at: float = 0.0
    data: dict[str, Any] = {}


ServerLine = Union[Welcome, Ok, Error, Event]


# --------------------------------------------------------------------------- codec

_request_decoder = msgspec.json.Decoder(Request)
_server_decoder = msgspec.json.Decoder(ServerLine)
_encoder = msgspec.json.Encoder()


class _IdOnly(msgspec.Struct):
    id: Any = None


_id_decoder = msgspec.json.Decoder(_IdOnly)


def _peek_id(line: bytes) -> int | None:
    try:
        found = _id_decoder.decode(line).id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    return found if isinstance(found, int) and not isinstance(found, bool) else None


def encode_line(message: msgspec.Struct) -> bytes:
    """One message as a JSON line (with the trailing newline)."""
    return _encoder.encode(message) + b"\n"


def decode_request(line: bytes) -> Request:
    """Decode a client line; raises :class:`AdminProtocolError` with a precise reason."""
    try:
        return _request_decoder.decode(line)
    except msgspec.ValidationError as exc:
        text = str(exc)
        code = "unknown_type" if text.endswith("at `$.type`") else "bad_message"
        raise AdminProtocolError(code, text, _peek_id(line)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise AdminProtocolError("bad_message", f"not a JSON object: {exc}") from None


def decode_server_line(line: bytes) -> ServerLine:
    """Decode a server line (client side); raises :class:`AdminProtocolError`."""
    try:
        return _server_decoder.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise AdminProtocolError("bad_message", str(exc)) from None


def convert(data: Any, kind: type[Any]) -> Any:
    """A result's plain data as the typed struct ``kind`` (client side)."""
    return msgspec.convert(data, kind)


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)
