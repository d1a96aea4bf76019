"""One room across nodes: the home runs it, edges pass their clients' requests and media on.

A room's *home* is the node holding its lease (:mod:`.lease`); its core is the one writer of the
room. A client may connect to any node: when it joins a room whose home is another node, its node
becomes an *edge* for it and from then on

- passes the client's control messages to the home over the control bus (:mod:`.control`),
  where the home's server handles them exactly like a local session's -- the member is a
  :class:`RemoteMember`, a session whose transport is the bus -- and sends the replies and
  events back, tagged with its lease epoch (edges drop a deposed home's, :class:`EpochGuard`);
- sends the client's media datagrams to the home (the room's uplink channel, tagged with the
  sender), where the forwarder checks them like a local speaker's (flow, SSRC, stage, mute);
- receives the room's media from the home once per node (the room's media channel, fed by the
  room's relay outlet in the home's forwarder) and fans it out to its local members.

Datagrams are relayed unchanged: no node decrypts. An edge follows a room's media channel only
while it has local members in the room; a home publishes to it only while the room has members
on other nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from salon.daemon.cluster.control import (
    Act,
    Acted,
    ControlBus,
    Gone,
    Membership,
    NotHome,
    Output,
    Request,
)
from salon.daemon.cluster.lease import EpochGuard, RoomLeases
from salon.daemon.cluster.relay import MediaRelay
from salon.daemon.core import CoreError, Identity, Outlet
from salon.daemon.core.events import (
    CoreEvent,
    HandQueueChanged,
    KnockReceived,
    KnockResolved,
    MemberJoined,
    MemberLeft,
    RoleChanged,
    RoomClosed,
    RoomCreated,
)
from salon.daemon.core.records import RoomRecord
from salon.daemon.core.room import ReturningKnock
from salon.daemon.wire import messages as msg
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.daemon.wire.rtp import peek_media

if TYPE_CHECKING:
    from salon.daemon.net.server import Peer, SalonServer
    from salon.daemon.pipeline import Actor

log = logging.getLogger("salond.cluster")

UPLINK = ".up"
"""Suffix of a room's uplink channel (edges' speakers to the home); room ids have no dots."""
_SESSION = struct.Struct("!Q")
REMOTE_SESSIONS_START = 1 << 40
"""Remote members' session numbers at the home start here, far above local ones."""
MAX_LIVE_USERS = 10_000
"""Users of each list of a room's volatile state read back at a takeover at most."""
REJOIN_REQUEST_ID = 0
"""The request id of a join an edge makes on its client's behalf when the room's home changed
(its reply is withheld: the client sees the join's events only)."""


def uplink_header(node: str, session: int) -> bytes:
    """Who sent an uplink datagram: the edge node and its session (inside the signed part)."""
    name = node.encode()
    return bytes((len(name),)) + name + _SESSION.pack(session)


def split_uplink(data: bytes) -> tuple[str, int, bytes] | None:
    if not data or len(data) < 1 + data[0] + _SESSION.size:
        return None
    end = 1 + data[0]
    try:
        node = data[1:end].decode()
    except UnicodeDecodeError:
        return None
    (session,) = _SESSION.unpack_from(data, end)
    return node, session, data[end + _SESSION.size :]


class RemoteMember:
    """At the home: a member whose client is connected to an edge node. The server handles its
    requests like a local session's; what it sends goes back to the edge over the bus."""

    def __init__(
        self,
        rooms: ClusterRooms,
        session_id: int,
        node: str,
        edge_session: int,
        room: str,
        address: str,
    ) -> None:
        self.rooms = rooms
        self.session_id = session_id
        self.node = node
        self.edge_session = edge_session
        self.room = room
        self.address = address
        self.identity: Identity | None = None
        self.closed = False
        self.since = time.time()
        """When the home first heard of it (wall clock, like the registry's ``started_at``)."""
        self._pending: list[bytes] = []

    def send_control(self, framed: bytes) -> None:
        if not self.closed:
            self._pending.append(framed)

    def transmit(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self.rooms.to_edge(self, b"".join(pending))


@dataclass(slots=True)
class Attachment:
    """At an edge: a local client whose room's home is another node."""

    room: str
    home: str
    pending: set[int] = field(default_factory=set)
    """Ids of the client's requests passed to the home and not answered yet."""


class _Reply(msgspec.Struct):
    """Just enough of a server message to tell a reply (and what it answers) from an event."""

    type: str
    re: int | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)


def answered(framed: bytes) -> set[int]:
    """The request ids the replies among these framed messages answer."""
    ids: set[int] = set()
    try:
        payloads = MessageReader().feed(framed)
    except WireError:
        return ids
    for payload in payloads:
        try:
            reply = _reply_decoder.decode(payload)
        except msgspec.DecodeError:
            continue
        if reply.type in ("ok", "error") and reply.re is not None:
            ids.add(reply.re)
    return ids


class ClusterRooms:
    """Both roles of a node for every room: home for some, edge for others."""

    def __init__(
        self,
        server: SalonServer,
        node_id: str,
        leases: RoomLeases,
        relay: MediaRelay,
        control: ControlBus,
        load_room: Callable[[str], Awaitable[RoomRecord | None]],
        node_boot: Callable[[str], Awaitable[float | None]],
        edge_grace: float = 3.0,
    ) -> None:
        self.server = server
        self._load_room = load_room
        self._node_boot = node_boot
        self._edge_grace = edge_grace
        self._edge_boots: dict[str, float] = {}
        """Edge node -> its registration (boot time) when its members were last checked."""
        self._edge_missing: dict[str, float] = {}
        """Edge node -> loop time its registry entry was first found missing."""
        self.node_id = node_id
        self.leases = leases
        self.relay = relay
        self.control = control
        self.guard = EpochGuard()
        # edge side
        self._attached: dict[int, Attachment] = {}
        self._receiving: dict[str, dict[int, None]] = {}
        self._flow_owner: dict[int, int] = {}
        """Flow id -> the local session speaking it (not sent its own audio back)."""
        self._absent: set[str] = set()
        """Rooms whose lease was missing at the last check of homes."""
        # home side
        self._outgoing: dict[tuple[str, str, int], dict[bytes, list[int]]] = {}
        self._outgoing_handle: asyncio.Handle | None = None
        self._deposed: set[str] = set()
        """Rooms another node took over from this one: it writes nothing of them any more."""
        self._remote: dict[tuple[str, int], RemoteMember] = {}
        self._remote_ids = itertools.count(REMOTE_SESSIONS_START)
        self._remote_members: dict[str, set[int]] = {}
        self._relay_outlets: dict[str, Outlet] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lookups: dict[str, asyncio.Future[str | None]] = {}
        """Rooms whose home is being looked up (or taken over) now, and the answer to come."""
        self._live_dirty: set[str] = set()
        self._live_handle: asyncio.Handle | None = None
        self.uplink_refused = 0
        """Uplink datagrams from an unknown member or for a room this node is not home of."""
        self._kept: set[str] = set()
        """Scheduled and persistent rooms this node knows of (restored at start, or created
        here): each runs on its home only, which this node claims when nobody holds it."""
        self._fresh: set[str] = set()
        """Kept rooms as restored from the store at start, no node having run them since."""
        self._unclaimed: set[str] = set()
        """Kept rooms without a home at the last check."""
        self._restarted: bool | None = None
        """Whether Redis restarted lately, as found during the current check (None: not asked)."""
        self._acting: dict[int, asyncio.Future[Acted]] = {}
        """Operator and plugin requests passed to a room's home, by reference, awaiting it."""
        self._act_refs = itertools.count(1)
        server.cluster = self
        server.pipeline.observers.append(self._observe)
        server.pipeline.route_action = self.act_at_home

    # ------------------------------------------------------------------ edge: requests

    async def route(self, peer: Peer, request: Any, payload: bytes) -> bool:
        if isinstance(peer, RemoteMember):
            # At the home: handled here, but a join waits while this node is still taking the
            # room over (its lease is already in Redis, so an edge may send its rejoins before
            # the room is loaded here; they used to find no room).
            if isinstance(request, msg.Join):
                pending = self._lookups.get(request.room)
                if pending is not None:
                    await asyncio.wait([pending])
            return False
        session = peer.session_id
        attached = self._attached.get(session)
        if attached is not None:
            self._send_request(peer, attached, payload)
            return True
        if not isinstance(request, msg.Join):
            return False
        try:
            home = await self._home_of(request.room)
        except (RedisError, OSError) as exc:
            log.warning(
                "cluster: room directory unavailable, serving %s here: %s", request.room, exc
            )
            return False
        if home is None or home == self.node_id or peer.closed:
            return False
        attached = self._attached[session] = Attachment(request.room, home)
        self._send_request(peer, attached, payload, self.server.take_on_behalf(session))
        return True

    async def _home_of(self, room: str) -> str | None:
        """The room's home node, taking the lease when nobody holds it and the room is here.

        Lookups of one room at once share the first one's answer: two clients of this node
        rejoining after their home died must not both try to take the room over, nor the second
        find the lease taken by this node while the room is still being loaded here."""
        pending = self._lookups.get(room)
        if pending is not None:
            return await asyncio.shield(pending)
        if self.leases.epoch(room) is not None:
            return self.node_id
        return await self._as_the_lookup(room, self._look_up(room))

    async def _as_the_lookup(self, room: str, work: Coroutine[Any, Any, str | None]) -> str | None:
        """Run ``work`` as the room's one lookup: :meth:`_home_of` calls meanwhile wait for
        its answer (or its error) instead of starting their own."""
        lookup = self._lookups[room] = asyncio.get_running_loop().create_future()
        try:
            home = await work
        except asyncio.CancelledError:
            lookup.cancel()
            raise
        except Exception as exc:
            lookup.set_exception(exc)
            lookup.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._lookups[room]
        lookup.set_result(home)
        return home

    async def _look_up(self, room: str) -> str | None:
        home = await self.leases.home(room)
        if home is not None:
            return home.node
        found = self.server.core.rooms.get(room)
        if (found is None or found.state != "live") and not await self.leases.listed(room):
            return None  # no such room in the cluster: refused here like any unknown room
        if await self.leases.acquire(room, floor=self.guard.highest(room)) is None:
            home = await self.leases.home(room)
            return home.node if home is not None else None
        self._deposed.discard(room)
        if not await self._take_over(room):
            await self.leases.release(room)
            return None
        await self.relay.follow(room + UPLINK)
        return self.node_id

    async def _take_over(self, room: str, scheduled: bool = False) -> bool:
        """With the lease just taken: have the room live here (or ``scheduled``), from the
        shared store when this node does not run it (its previous home died, or it was created
        on another node)."""
        core = self.server.core
        found = core.rooms.get(room)
        states = ("live", "scheduled") if scheduled else ("live",)
        if found is not None and found.state in states:
            return True
        record = await self._load_room(room)
        if record is None or record.settings.state not in states:
            return False
        try:
            live = await self.leases.read_live(room)
        except (RedisError, OSError) as exc:
            log.warning("cluster: volatile state of room %s unavailable: %s", room, exc)
            live = None
        found = core.rooms.get(room)
        if found is None or found.state == "closed":
            try:
                core.restore_room(record, time.time())
            except CoreError as exc:
                log.warning("cluster: stored room %s cannot be taken over: %s", room, exc)
                return False
            self._restore_live(room, live)
            self.server.pipeline.pump()
        log.info("cluster: took over room %s from the store", room)
        return True

    def _send_request(
        self, peer: Peer, attached: Attachment, payload: bytes, on_behalf: bool = False
    ) -> None:
        identity = peer.identity
        assert identity is not None
        request_id = msg.peek_request_id(payload)
        if request_id is not None and not on_behalf:
            attached.pending.add(request_id)
        self.control.send(
            attached.home,
            Request(
                node=self.node_id,
                session=peer.session_id,
                room=attached.room,
                user=identity.user,
                display_name=identity.display_name,
                verified=dict(identity.verified),
                operator=identity.operator,
                address=peer.address,
                payload=payload,
                on_behalf=on_behalf,
            ),
        )

    def closed(self, session: int) -> None:
        """A local client is gone: the home hears it left."""
        attached = self._attached.pop(session, None)
        if attached is None:
            return
        self.control.send(attached.home, Gone(node=self.node_id, session=session))
        self._stop_receiving(attached.room, session)
        for flow, owner in list(self._flow_owner.items()):
            if owner == session:
                del self._flow_owner[flow]

    def carried(self) -> set[str]:
        """Rooms homed on other nodes that have members on this one (for the registry)."""
        return {attached.room for attached in self._attached.values()}

    # ------------------------------------------------------------------ edge: media

    def uplink(self, session: int, data: bytes) -> bool:
        attached = self._attached.get(session)
        if attached is None:
            return False
        try:
            flow = peek_media(data).flow_id
        except WireError:
            self.server.stats.count_drop("malformed")
            return True
        if self._flow_owner.get(flow) != session:
            self._flow_owner[flow] = session
        self.relay.publish(attached.room + UPLINK, uplink_header(self.node_id, session) + data)
        return True

    def on_media(self, channel_room: str, data: bytes) -> None:
        """A datagram from the relay: an edge's speaker (at the home) or the room's media."""
        if channel_room.endswith(UPLINK):
            self._from_edge(channel_room[: -len(UPLINK)], data)
            return
        sessions = self._receiving.get(channel_room)
        if not sessions:
            return
        try:
            sender = self._flow_owner.get(peek_media(data).flow_id)
        except WireError:
            self.server.stats.count_drop("malformed")
            return
        local = self.server.sessions
        touched = []
        for session in sessions:
            if session == sender:
                continue
            protocol = local.get(session)
            outlet = protocol.outlet if protocol is not None else None
            if protocol is None or outlet is None:
                continue
            queue = outlet.queue
            if len(queue) == outlet.limit:
                outlet.dropped += 1
                self.server.stats.count_drop("queue_full")
            queue.append(data)
            touched.append(protocol)
        if touched:
            self.server.media_queued(touched)

    def _from_edge(self, room: str, data: bytes) -> None:
        parts = split_uplink(data)
        member = self._remote.get(parts[:2]) if parts is not None else None
        if parts is None or member is None or member.room != room:
            self.uplink_refused += 1
            return
        if self.leases.epoch(room) is None:
            self.uplink_refused += 1
            return
        self.server.forward_media(member.session_id, parts[2])

    def _start_receiving(self, room: str, session: int) -> None:
        sessions = self._receiving.setdefault(room, {})
        first = not sessions
        sessions[session] = None
        if first:
            self._spawn(self.relay.follow(room))

    def _stop_receiving(self, room: str, session: int) -> None:
        sessions = self._receiving.get(room)
        if sessions is None or session not in sessions:
            return
        del sessions[session]
        if not sessions:
            del self._receiving[room]
            self._spawn(self.relay.unfollow(room))

    # ------------------------------------------------------------------ operator actions

    async def act_at_home(self, actor: Actor, room: str, request: Any) -> dict[str, Any] | None:
        """An operator's or a plugin's request on ``room``: performed by the room's home when
        that is another node (its result), else None (performed here). A home that does not
        answer within a lease (it died, or the bus is down) is ``home_unreachable``: the
        request may or may not have taken effect there."""
        if self.leases.epoch(room) is not None:
            return None
        unreachable = msg.ErrorCode.HOME_UNREACHABLE
        try:
            home = await self._home_of(room)
        except (RedisError, OSError) as exc:
            raise CoreError(
                unreachable, f"the cluster's room directory is unavailable: {exc}"
            ) from exc
        if home is None or home == self.node_id:
            return None
        ref = next(self._act_refs)
        answer = self._acting[ref] = asyncio.get_running_loop().create_future()
        identity = actor.identity
        self.control.send(
            home,
            Act(
                node=self.node_id,
                ref=ref,
                room=room,
                kind=actor.kind,
                user=identity.user,
                display_name=identity.display_name,
                verified=dict(identity.verified),
                operator=identity.operator,
                request=msg.encode(request),
            ),
        )
        wait = self.leases.lease_ms / 1000
        try:
            acted = await asyncio.wait_for(answer, wait)
        except asyncio.TimeoutError:
            raise CoreError(
                unreachable, f"node {home}, home of room {room}, did not answer within {wait:g} s"
            ) from None
        finally:
            self._acting.pop(ref, None)
        if acted.code:
            try:
                code = msg.ErrorCode(acted.code)
            except ValueError:
                code = msg.ErrorCode.INTERNAL_ERROR
            raise CoreError(code, acted.message)
        result = json.loads(acted.result)
        return result if isinstance(result, dict) else {}

    async def _act_for(self, message: Act) -> None:
        """At the home: perform a request another node's operator or plugin made."""
        from salon.daemon.pipeline import Actor
        from salon.daemon.store.base import StoreUnavailable

        identity = Identity(
            message.user, message.display_name, dict(message.verified), message.operator
        )
        actor = Actor.plugin(identity) if message.kind == "plugin" else Actor.operator(identity)
        try:
            if self.leases.epoch(message.room) is None:
                raise CoreError(
                    msg.ErrorCode.HOME_UNREACHABLE,
                    f"node {self.node_id} is not the home of room {message.room} any more: retry",
                )
            request = msg.decode_request(message.request)
            # start_room names its room itself (the admin path passes none, as here).
            room = None if isinstance(request, msg.StartRoom) else message.room
            result = await self.server.pipeline.perform(actor, room, request)
            reply = Acted(ref=message.ref, result=json.dumps(result or {}).encode())
        except CoreError as exc:
            reply = Acted(ref=message.ref, code=exc.code.value, message=exc.message)
        except msg.MessageError as exc:
            reply = Acted(ref=message.ref, code=exc.code.value, message=str(exc))
        except StoreUnavailable as exc:
            reply = Acted(
                ref=message.ref,
                code=msg.ErrorCode.STORE_UNAVAILABLE.value,
                message=f"not stored: {exc}",
            )
        except Exception:
            log.exception("cluster: an action from node %s failed", message.node)
            reply = Acted(
                ref=message.ref, code=msg.ErrorCode.INTERNAL_ERROR.value, message="internal error"
            )
        self.control.send(message.node, reply)

    # ------------------------------------------------------------------ edge: the home's output

    def on_control(self, message: Any) -> None:
        if isinstance(message, Request):
            self._request_from_edge(message)
        elif isinstance(message, Act):
            self._spawn(self._act_for(message))
        elif isinstance(message, Acted):
            answer = self._acting.get(message.ref)
            if answer is not None and not answer.done():
                answer.set_result(message)
        elif isinstance(message, Gone):
            member = self._remote.pop((message.node, message.session), None)
            if member is not None:
                self.server.detach_remote(member.session_id)
        elif isinstance(message, Output):
            if self.guard.accept(message.room, message.epoch):
                replies: set[int] | None = None
                for session in message.sessions:
                    attached = self._attached.get(session)
                    if attached is not None and attached.pending:
                        if replies is None:
                            replies = answered(message.framed)
                        attached.pending -= replies
                    self.server.send_framed(session, message.framed)
        elif isinstance(message, Membership):
            if not self.guard.accept(message.room, message.epoch):
                return
            attached = self._attached.get(message.session)
            if attached is None or attached.room != message.room:
                return
            if message.on:
                self._start_receiving(message.room, message.session)
            else:
                # Out of the room: the next join is routed afresh.
                self.closed(message.session)
        elif isinstance(message, NotHome):
            attached = self._attached.get(message.session)
            if attached is not None and attached.room == message.room:
                self.closed(message.session)
            self.server.send_framed(message.session, message.framed)

    # ------------------------------------------------------------------ home

    def _request_from_edge(self, message: Request) -> None:
        key = (message.node, message.session)
        member = self._remote.get(key)
        if self.leases.epoch(message.room) is None:
            if member is not None:
                del self._remote[key]
                self.server.detach_remote(member.session_id)
            refusal = msg.Error(
                re=msg.peek_request_id(message.payload),
                code=msg.ErrorCode.ROOM_NOT_FOUND.value,
                message=f"room {message.room} is not served by this node any more: join again",
            )
            self.control.send(
                message.node,
                NotHome(
                    room=message.room,
                    session=message.session,
                    framed=frame_message(msg.encode(refusal)),
                ),
            )
            return
        if member is None:
            member = RemoteMember(
                self,
                next(self._remote_ids),
                message.node,
                message.session,
                message.room,
                message.address,
            )
            self._remote[key] = member
            identity = Identity(
                message.user, message.display_name, dict(message.verified), message.operator
            )
            self.server.attach_remote(member, identity)
        self.server.enqueue(
            member.session_id,
            message.payload,
            on_behalf=message.room if message.on_behalf else None,
        )

    def to_edge(self, member: RemoteMember, framed: bytes) -> None:
        """What the server sent a remote member this turn: grouped, so that members of one
        edge getting the same bytes (an event to the room) cost one message together."""
        epoch = self.leases.epoch(member.room)
        if epoch is None:
            return  # no longer home: stay silent, the new home speaks with a higher epoch
        group = self._outgoing.setdefault((member.node, member.room, epoch), {})
        sessions = group.get(framed)
        if sessions is None:
            group[framed] = [member.edge_session]
        else:
            sessions.append(member.edge_session)
        if self._outgoing_handle is None:
            self._outgoing_handle = asyncio.get_running_loop().call_soon(self._send_outgoing)

    def _send_outgoing(self) -> None:
        # Each member gets at most one blob per server flush, and the groups keep the order
        # blobs were made in: a member's messages stay in order.
        self._outgoing_handle = None
        outgoing, self._outgoing = self._outgoing, {}
        for (node, room, epoch), groups in outgoing.items():
            for framed, sessions in groups.items():
                self.control.send(
                    node, Output(room=room, epoch=epoch, sessions=sessions, framed=framed)
                )

    def _observe(self, event: CoreEvent) -> None:
        if isinstance(
            event,
            (MemberJoined, MemberLeft, RoleChanged, HandQueueChanged, KnockReceived, KnockResolved),
        ):
            self._live_changed(event.room)
        if isinstance(event, (MemberJoined, MemberLeft)):
            member = self.server.remote.get(event.session)
            if not isinstance(member, RemoteMember):
                # Let go (detached: its edge died or it left there): the relay outlet goes
                # with the room's last remote member all the same.
                members = self._remote_members.get(event.room)
                if isinstance(event, MemberLeft) and members and event.session in members:
                    members.discard(event.session)
                    self._update_relay(event.room)
                return
            joined = isinstance(event, MemberJoined)
            members = self._remote_members.setdefault(event.room, set())
            if joined:
                members.add(event.session)
            else:
                members.discard(event.session)
            self._update_relay(event.room)
            epoch = self.leases.epoch(event.room)
            if epoch is not None:
                self.control.send(
                    member.node,
                    Membership(
                        room=event.room, epoch=epoch, session=member.edge_session, on=joined
                    ),
                )
        elif isinstance(event, RoomCreated):
            self._spawn(self.leases.list_room(event.room))
            found = self.server.core.rooms.get(event.room)
            if found is not None and (found.persistent or found.state == "scheduled"):
                self._kept.add(event.room)
                self._spawn(self._claim(event.room))
        elif isinstance(event, RoomClosed):
            self._kept.discard(event.room)
            if self.may_write(event.room):
                self._spawn(self.leases.unlist_room(event.room))
            self._remote_members.pop(event.room, None)
            self._update_relay(event.room)
            if self.leases.epoch(event.room) is not None:
                self._spawn(self._give_up(event.room))

    # ------------------------------------------------------------------ volatile state

    def _live_changed(self, room: str) -> None:
        """The room's stage or hands changed here: its home writes them to Redis (once per
        event-loop turn), so that the next home can give them back after a failover."""
        if self.leases.epoch(room) is None:
            return
        self._live_dirty.add(room)
        if self._live_handle is None:
            self._live_handle = asyncio.get_running_loop().call_soon(self._write_live)

    def _write_live(self) -> None:
        self._live_handle = None
        dirty, self._live_dirty = self._live_dirty, set()
        for room in dirty:
            epoch = self.leases.epoch(room)
            found = self.server.core.rooms.get(room)
            if epoch is None or found is None or found.state != "live":
                continue
            stage = {u for u, m in found.members.items() if m.role == "speaker"}
            hands = dict(found.hands.raised_at())
            for user, at in found.returning_hands.items():
                hands.setdefault(user, at)
            knocks = {
                k.user: [k.request_id, k.requested_at, k.expires_at] for k in found.knocks.values()
            }
            for user, back in found.returning_knocks.items():
                knocks.setdefault(user, [back.request_id, back.requested_at, back.expires_at])
            state = {
                "stage": sorted(stage | found.returning_stage),
                "hands": sorted(hands.items(), key=lambda hand: hand[1]),  # [user, raised at]
                "knocks": knocks,
            }
            self._spawn(self.leases.write_live(room, epoch, json.dumps(state)))

    def _restore_live(self, room: str, found: tuple[int, str] | None) -> None:
        """At a takeover: who was on stage and who had a hand up at the previous home come back
        to it when they rejoin (as read from Redis; bounded, checked, ignored when malformed)."""
        record = self.server.core.rooms.get(room)
        if found is None or record is None:
            return
        try:
            state = json.loads(found[1])
            stage = state["stage"][:MAX_LIVE_USERS]
            hands = {u: float(at) for u, at in state["hands"][:MAX_LIVE_USERS]}
            knocks = {
                user: ReturningKnock(str(request_id), float(requested), float(expires))
                for user, (request_id, requested, expires) in list(state.get("knocks", {}).items())[
                    :MAX_LIVE_USERS
                ]
            }
            if not all(isinstance(u, str) for u in [*stage, *hands]):
                raise ValueError("not user ids")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("cluster: volatile state of room %s ignored: %s", room, exc)
            return
        record.returning_stage = set(stage)
        record.returning_hands = hands
        record.returning_knocks = knocks
        log.info(
            "cluster: room %s: %d on stage, %d hands and %d knocks to give back",
            room,
            len(record.returning_stage),
            len(record.returning_hands),
            len(record.returning_knocks),
        )

    def _update_relay(self, room: str) -> None:
        """The room's relay outlet exists exactly while the room has members on other nodes."""
        wanted = bool(self._remote_members.get(room))
        outlet = self._relay_outlets.get(room)
        if wanted and outlet is None:
            found = self.server.core.rooms.get(room)
            if found is None or found.state != "live":
                return
            outlet = self.server.core.add_relay(room, self.relay.outbound.limit)
            self._relay_outlets[room] = outlet
            relay = self.relay

            def publish(outlet: Outlet, room: str = room) -> None:
                for datagram in outlet.take_all():
                    relay.publish(room, datagram)

            self.server.media_sinks[outlet.session] = publish
        elif not wanted and outlet is not None:
            del self._relay_outlets[room]
            self.server.media_sinks.pop(outlet.session, None)
            if room in self.server.core.rooms:
                self.server.core.remove_relay(room, outlet)

    async def _give_up(self, room: str) -> None:
        await self.leases.forget_live(room)
        await self.leases.release(room)
        await self.relay.unfollow(room + UPLINK)

    def may_write(self, room: str) -> bool:
        """The store fence: a node that lost a room to another writes nothing of it."""
        return room not in self._deposed

    def lease_regained(self, room: str) -> None:
        """The lease was taken again after Redis forgot it (a restart): so was the room's
        volatile state, which is written again now rather than at the room's next change."""
        self._live_changed(room)

    def lease_lost(self, room: str) -> None:
        """Another node is the room's home now: this one becomes an edge. Remote members are
        let go (their edges rejoin the new home); local members leave the copy here (its
        writes fenced off) and are rejoined at the new home on their behalf."""
        self._deposed.add(room)
        for key, member in list(self._remote.items()):
            if member.room == room:
                del self._remote[key]
                self.server.detach_remote(member.session_id)
        self._remote_members.pop(room, None)
        self._update_relay(room)
        self._spawn(self.relay.unfollow(room + UPLINK))
        core = self.server.core
        rejoin = msg.encode(msg.Join(id=REJOIN_REQUEST_ID, room=room))
        now = time.time()
        for session in list(self.server.sessions):
            if core.session_room(session) != room:
                continue
            try:
                core.handle_request(session, msg.Leave(id=REJOIN_REQUEST_ID), now)
            except CoreError:
                continue
            self.server.enqueue(session, rejoin, on_behalf=room)
        self.server.pipeline.pump()

    # ------------------------------------------------------------------ failover

    async def check_homes(self) -> None:
        """Rejoin local clients whose room's home changed (died: its lease expired, or moved)
        to wherever the room lives now -- possibly this node, which then takes it over."""
        self._restarted = None
        homes: dict[tuple[str, str], list[int]] = {}
        for session, attached in self._attached.items():
            homes.setdefault((attached.room, attached.home), []).append(session)
        absent = set()
        for (room, home), sessions in homes.items():
            current = await self.leases.home(room)
            if current is not None and current.node == home:
                continue
            if current is None and (room not in self._absent or await self._redis_restarted()):
                # Give a living home time to take its lease again (after a Redis restart every
                # lease is gone at once): one check, or while Redis restarted lately; a dead
                # home stays absent.
                absent.add(room)
                continue
            log.warning(
                "cluster: home %s of room %s is gone; rejoining %d client(s)",
                home,
                room,
                len(sessions),
            )
            rejoin = msg.encode(msg.Join(id=REJOIN_REQUEST_ID, room=room))
            for session in sessions:
                still = self._attached.get(session)
                if still is not None:
                    for request_id in sorted(still.pending):
                        # Never answered by the home that failed: its effect, if any, shows in
                        # the room_state of the rejoin that follows.
                        failed = msg.Error(
                            re=request_id,
                            code=msg.ErrorCode.INTERNAL_ERROR.value,
                            message="the room's server failed before answering; the room goes "
                            "on elsewhere: retry",
                        )
                        self.server.send_framed(session, frame_message(msg.encode(failed)))
                    self.closed(session)
                    self.server.enqueue(session, rejoin, on_behalf=room)
        self._absent = absent

    async def _redis_restarted(self) -> bool:
        """Whether Redis started less than two leases ago (asked once per check): every lease
        and registry entry was lost then, and living nodes are still writing theirs again (the
        first command after a restart often meets a closed connection), so a missing one is
        no sign of death yet."""
        if self._restarted is None:
            uptime = await self.leases.redis_uptime()
            self._restarted = uptime < 2 * self.leases.lease_ms / 1000
        return self._restarted

    async def check_edges(self) -> None:
        """Let go of remote members whose edge node died or restarted.

        An entry missing from the registry is not death yet: a Redis restart forgets every
        entry at once, and the living edges write theirs again only at their next heartbeat.
        So an edge's members go only once its entry has been missing for ``edge_grace`` (the
        entry's time to live: a living node has refreshed it by then), or at once when the
        entry names another registration (the edge restarted: its old sessions are gone)."""
        now = asyncio.get_running_loop().time()
        nodes = {member.node for member in self._remote.values()}
        for node in set(self._edge_boots) - nodes:
            del self._edge_boots[node]
        for node in set(self._edge_missing) - nodes:
            del self._edge_missing[node]
        for node in nodes:
            boot = await self._node_boot(node)
            before = float("inf")
            if boot is not None:
                self._edge_missing.pop(node, None)
                known = self._edge_boots.setdefault(node, boot)
                if known == boot:
                    continue
                # Restarted: members from before the new process started are gone (those its
                # new clients made since stay).
                self._edge_boots[node] = boot
                why, before = "restarted", boot
            else:
                missing = self._edge_missing.setdefault(node, now)
                if now - missing < self._edge_grace:
                    continue
                del self._edge_missing[node]
                self._edge_boots.pop(node, None)
                why = "gone"
            log.warning("cluster: edge node %s is %s; its members leave", node, why)
            for key, member in list(self._remote.items()):
                if member.node == node and member.since < before:
                    del self._remote[key]
                    self.server.detach_remote(member.session_id)

    def runs_timers(self, room: str) -> bool:
        """Whether this node runs the room's timers: a scheduled or persistent room is known
        to every node (restored from the shared store at start), but only its home reminds its
        subscribers, lifts its bans, closes it (the other copies' timers are void)."""
        return room not in self._kept or self.leases.holds(room)

    async def claim_kept(self) -> None:
        """Take the lease of each scheduled or persistent room nobody holds (at start, or its
        home died): this node becomes its home, with the room as the store has it."""
        self._restarted = None
        rooms = sorted(room for room in self._kept if not self.leases.holds(room))
        unclaimed = set()
        for room, home in zip(rooms, await self.leases.homes(rooms), strict=True):
            if home is not None:
                self._fresh.discard(room)  # run elsewhere: the copy here may be stale now
            elif room not in self._unclaimed or await self._redis_restarted():
                # Give a living home time to take its lease again (as in check_homes).
                unclaimed.add(room)
            else:
                await self._claim(room, reload=room not in self._fresh)
        self._unclaimed = unclaimed

    async def _claim(self, room: str, reload: bool = False) -> None:
        """Become the home of a scheduled or persistent room. ``reload``: the copy here may
        be stale and its timers void (another node ran the room): it is replaced by the room
        as the store has it, timers armed afresh."""
        if room in self._lookups or self.leases.holds(room):
            return  # being looked up (a join takes it), or ours already
        # A join or an action on the room meanwhile waits for the claim, as for a lookup.
        await self._as_the_lookup(room, self._claim_lease(room, reload))

    async def _claim_lease(self, room: str, reload: bool) -> str | None:
        if await self.leases.acquire(room, floor=self.guard.highest(room)) is None:
            home = await self.leases.home(room)
            return home.node if home is not None else None
        self._deposed.discard(room)
        if reload and self.server.core.forget_room(room):
            log.info("cluster: room %s: reloading it from the store as its home", room)
        if not await self._take_over(room, scheduled=True):
            self._kept.discard(room)  # closed or deleted meanwhile
            await self.leases.release(room)
            return None
        await self.relay.follow(room + UPLINK)
        return self.node_id

    async def _watch(self) -> None:
        interval = self.leases.lease_ms / 3000
        while True:
            try:
                await self.claim_kept()
            except (RedisError, OSError) as exc:
                log.warning("cluster: claiming scheduled and persistent rooms failed: %s", exc)
            await asyncio.sleep(interval)
            try:
                await self.check_homes()
                await self.check_edges()
            except (RedisError, OSError) as exc:
                log.warning("cluster: checking rooms' homes failed: %s", exc)

    def start(self) -> None:
        self.server.core.gate_timers(self.runs_timers)
        self._kept = {
            room.id
            for room in self.server.core.rooms.values()
            if room.state != "closed" and (room.persistent or room.state == "scheduled")
        }
        self._fresh = set(self._kept)
        self._spawn(self._watch())

    # ------------------------------------------------------------------ tasks

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cluster: %s", task.exception())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.server.cluster = None
        self.server.core.gate_timers(None)
        if self.server.pipeline.route_action == self.act_at_home:
            self.server.pipeline.route_action = None
