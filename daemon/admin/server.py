"""The admin API served by salond on a Unix socket (``salon-admin/1``, see :mod:`.protocol`).

Every action goes through the request pipeline (daemon/pipeline.py) as an operator, like a
client's request and a plugin's: the request policy (plugins) reviews it, the core performs it
with the operator's rights, its outputs are delivered at once and the store's commit barriers
awaited before the answer. Actions are performed as ``operator:<unix user>``, the user the
kernel says is on the other end of the socket, and the core records each in the audit trail
(``ModerationTaken``).

Subscribers get an event for every change the console shows (docs/admin.md, "Events"), so the
console never polls: members, roles, participants' state, the hand queue, knocks as they come
and go, speaking, and each watched room's levels at most every ``LEVELS_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from salon.daemon import __version__
from salon.daemon.core import CoreError, Identity, events
from salon.daemon.pipeline import Actor, RequestPipeline
from salon.daemon.store import StoreError
from salon.daemon.store.base import StoreUnavailable
from salon.daemon.wire import messages as wire

from . import protocol as p
from .socket_path import bind_private_socket, check_socket_path, peer_uid, user_name

if TYPE_CHECKING:
    from salon.daemon.cluster.registry import ClusterSnapshot
    from salon.daemon.net.server import SalonServer
    from salon.daemon.recording.index import RecordingIndex
    from salon.daemon.store.base import Store
    from salon.daemon.stream import StreamService

log = logging.getLogger("salon.admin")

AUDIT_KEPT = 1000
"""Audit entries kept in memory when no store is configured."""
OUTBOX_LIMIT = 2000
"""Lines queued for one admin client; a client this far behind is disconnected."""
TICK = 0.25
"""Seconds between two looks at levels and stats for subscribers: a watched room's levels are
sent at most 4 times a second, only when they changed (the last sample of the interval)."""
SHUTDOWN_LINGER = 2.0
"""Seconds salond waits, when it stops, for each admin client to hang up after the shutdown
event: closing first would make a client that writes meanwhile see a broken pipe (or a reset)
before it read why the daemon went."""


class AdminRefusal(Exception):
    """An admin request that cannot be done; answered with ``code`` and ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def store_status(store: Store | None) -> p.StoreStatus | None:
    """The store's state for ``status`` (None for no store, or one without counters)."""
    stats = getattr(store, "stats", None)
    if stats is None:
        return None
    values = stats()
    return p.StoreStatus(
        backend=values.get("backend", "sqlite"),
        location=values.get("path", ""),
        available=values.get("available", True),
        unavailable_since=values.get("unavailable_since"),
        last_error=values.get("last_error", ""),
        outages=values.get("outages", 0),
        reconnects=values.get("reconnects", 0),
        queued=values.get("queued", 0),
        commits=values.get("commits", 0),
        failures=values.get("failures", 0),
    )


def cluster_status(snapshot: ClusterSnapshot | None) -> p.ClusterStatus | None:
    """The ``cluster`` part of ``status``: the live nodes and which of them carry each room."""
    if snapshot is None:
        return None
    room_nodes: dict[str, list[str]] = {}
    for node in snapshot.nodes:
        for room in node.room_ids:
            room_nodes.setdefault(room, []).append(node.node_id)
    return p.ClusterStatus(
        node_id=snapshot.node_id,
        nodes=[
            p.ClusterNodeStatus(
                node_id=node.node_id,
                address=node.address,
                public=node.public,
                pid=node.pid,
                started_at=node.started_at,
                sessions=node.sessions,
                rooms=node.rooms,
                room_ids=list(node.room_ids),
                this=node.node_id == snapshot.node_id,
            )
            for node in snapshot.nodes
        ],
        read_at=snapshot.read_at,
        heartbeat_failures=snapshot.heartbeat_failures,
        redirects=snapshot.redirects,
        room_nodes=room_nodes,
        counters=dict(snapshot.counters),
    )


class AuditTrail:
    """The most recent audit entries, in memory (the store keeps the durable log)."""

    def __init__(self, kept: int = AUDIT_KEPT) -> None:
        self._entries: collections.deque[p.AuditEntry] = collections.deque(maxlen=kept)

    def add(self, entry: p.AuditEntry) -> None:
        self._entries.append(entry)

    def entries(self, limit: int, room: str | None = None) -> list[p.AuditEntry]:
        """Newest first."""
        found: list[p.AuditEntry] = []
        for entry in reversed(self._entries):
            if room is None or entry.room == room:
                found.append(entry)
                if len(found) >= limit:
                    break
        return found


class _Connection:
    """One admin client: its identity, its outgoing lines and what it subscribed to."""

    def __init__(self, writer: asyncio.StreamWriter, identity: Identity) -> None:
        self.writer = writer
        self.identity = identity
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.subscribed = False
        self.levels_room: str | None = None
        self.last_levels: list[p.MeterLevel] | None = None
        self.last_stream: p.RoomStream | None = None
        self.stats_interval = 1.0
        self.stats_sent_at = 0.0
        self.overflowed = False
        self.hung_up = asyncio.Event()
        """Set when the client closed its end (or its connection failed)."""
        self.sender: asyncio.Task[None] | None = None

    def push(self, line: bytes) -> None:
        if self.overflowed:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            # Too slow to follow the event stream: better a reconnect than unbounded memory.
            self.overflowed = True
            self.outbox.put_nowait(None)
            return
        self.outbox.put_nowait(line)


class AdminServer:
    """The admin API component of salond (started after the QUIC server, stopped before)."""

    def __init__(
        self,
        path: Path,
        pipeline: RequestPipeline,
        server: SalonServer,
        store: Store | None,
        recordings: RecordingIndex,
        fingerprint: str,
        streams: StreamService | None = None,
        cluster: Callable[[], ClusterSnapshot | None] | None = None,
    ) -> None:
        self.path = path
        self.cluster = cluster
        """The cluster as this node's registry sees it (None: not a cluster node)."""
        self.pipeline = pipeline
        self.core = pipeline.core
        self.server = server
        """The QUIC server, for its status: address, sessions, counters, traffic."""
        self.store = store
        """The durable audit log (None: only the recent entries kept in memory)."""
        self.recordings_index = recordings
        self.fingerprint = fingerprint
        self.stream_service = streams
        """Stream mode's per-room figures (None: stream mode is off)."""
        self.audit = AuditTrail()
        self.started_at = time.time()
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self._inode: tuple[int, int] | None = None
        # Refuse an unsafe path before the daemon binds anything.
        check_socket_path(self.path)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        sock = bind_private_socket(self.path)
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        self._server = await asyncio.start_unix_server(
            self._serve_client, sock=sock, limit=p.MAX_LINE
        )
        self.pipeline.observers.append(self._observe)
        self._ticker = asyncio.ensure_future(self._tick())
        log.info("admin API on %s", self.path)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.pipeline.observers.remove(self._observe)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._stopping = True
        self._broadcast(p.Event(kind="shutdown", at=time.time(), data={"reason": "salond stops"}))
        senders = []
        for connection in list(self._connections):
            connection.outbox.put_nowait(None)
            if connection.sender is not None:
                senders.append(connection.sender)
        if senders:
            # Each sender sends the shutdown event, then waits (bounded) for its client to hang up.
            await asyncio.wait(senders, timeout=SHUTDOWN_LINGER + 1.0)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._remove_socket_file()

    @property
    def client_count(self) -> int:
        """Admin API connections open now (the metrics endpoint exports it)."""
        return len(self._connections)

    def _remove_socket_file(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._inode:
            self.path.unlink()

    # ------------------------------------------------------------------ connections

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid not in (os.geteuid(), 0):
            # The socket's mode already keeps other users out; this is the second lock.
            log.warning("admin connection from uid %d refused", uid)
            writer.close()
            return
        identity = Identity(
            user=f"operator:{user_name(uid)}",
            display_name=f"operator {user_name(uid)}",
            operator=True,
        )
        connection = _Connection(writer, identity)
        self._connections.add(connection)
        sender = connection.sender = asyncio.ensure_future(self._send_lines(connection))
        connection.push(
            p.encode_line(
                p.Welcome(
                    protocol=p.ADMIN_PROTOCOL,
                    server=f"salond/{__version__}",
                    operator=identity.user,
                )
            )
        )
        try:
            while not connection.overflowed:
                try:
                    line = await reader.readline()
                except ValueError:
                    connection.push(
                        p.encode_line(p.Error(re=None, code="too_large", message="line too long"))
                    )
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                if line.strip() and not self._stopping:
                    connection.push(await self._answer(connection, line))
        finally:
            connection.hung_up.set()
            self._connections.discard(connection)
            connection.outbox.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender

    async def _send_lines(self, connection: _Connection) -> None:
        writer = connection.writer
        try:
            while True:
                line = await connection.outbox.get()
                if line is None:
                    break
                writer.write(line)
                await writer.drain()
            if self._stopping and not connection.hung_up.is_set() and writer.can_write_eof():
                # Half-close and read on (discarding) until the client hangs up, so that it
                # reads the shutdown event before any write of its own can fail.
                writer.write_eof()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(connection.hung_up.wait(), SHUTDOWN_LINGER)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, connection: _Connection, line: bytes) -> bytes:
        try:
            request = p.decode_request(line)
        except p.AdminProtocolError as exc:
            return p.encode_line(p.Error(re=exc.request_id, code=exc.code, message=str(exc)))
        try:
            result = await self._perform(connection, request)
        except CoreError as exc:
            return p.encode_line(p.Error(re=request.id, code=exc.code.value, message=exc.message))
        except AdminRefusal as exc:
            return p.encode_line(p.Error(re=request.id, code=exc.code, message=exc.message))
        except wire.MessageError as exc:
            return p.encode_line(p.Error(re=request.id, code=exc.code.value, message=str(exc)))
        except StoreUnavailable as exc:
            return p.encode_line(
                p.Error(re=request.id, code="store_unavailable", message=f"not stored: {exc}")
            )
        except Exception:
            log.exception("admin request %s failed", type(request).__name__)
            return p.encode_line(
                p.Error(re=request.id, code="internal_error", message="internal server error")
            )
        return p.encode_line(p.Ok(re=request.id, result=result))

    async def _perform(self, connection: _Connection, request: Any) -> dict[str, Any]:
        core = self.core
        if isinstance(request, p.Status):
            return msgspec.to_builtins(self.status())
        if isinstance(request, p.Rooms):
            return {"rooms": [wire.to_builtins(s) for s in core.list_rooms(request.topic)]}
        if isinstance(request, p.Room):
            return {"room": msgspec.to_builtins(self.room_detail(request.room))}
        if isinstance(request, p.Audit):
            entries = await self.audit_entries(request.limit, request.room)
            return {"entries": msgspec.to_builtins(entries)}
        if isinstance(request, p.Recordings):
            return {"recordings": await self.recordings(request)}
        if isinstance(request, p.Backup):
            return await self.backup(request.path)
        if isinstance(request, p.Streams):
            return {"streams": [msgspec.to_builtins(s) for s in self.streams()]}
        if isinstance(request, p.Subscribe):
            connection.subscribed = True
            connection.levels_room = request.levels_room
            connection.last_levels = None
            connection.last_stream = None
            connection.stats_interval = request.stats_interval
            connection.stats_sent_at = 0.0
            return {}
        assert isinstance(request, p.Action)
        return await self.act(connection.identity, request.room, request.request)

    # ------------------------------------------------------------------ operations

    async def act(
        self, identity: Identity, room: str | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Perform one ``salon/1`` request as ``identity`` (an operator) on ``room``."""
        request = wire.decode_request(msgspec.json.encode({**fields, "id": 0}))
        if isinstance(request, wire.CreateRoom | wire.StartRoom):
            room = None
        result = await self.pipeline.perform(Actor.operator(identity), room, request)
        assert result is not None  # only a client's request is abandoned when it leaves
        return result

    def status(self) -> p.StatusInfo:
        server, core = self.server, self.core
        rooms = [r for r in core.rooms.values() if r.state == "live"]
        counters = server.stats.snapshot(core.forwarder)
        host, port = server.address
        traffic = server.traffic
        now = time.time()
        return p.StatusInfo(
            server=f"salond/{__version__}",
            pid=os.getpid(),
            started_at=self.started_at,
            uptime=now - self.started_at,
            address=f"{host}:{port}",
            fingerprint=self.fingerprint,
            connections=len(server.sessions),
            connections_total=counters["connections_total"],
            rooms=len(rooms),
            scheduled_rooms=sum(1 for r in core.rooms.values() if r.state == "scheduled"),
            members=sum(len(r.members) for r in rooms),
            speakers=sum(r.stage_count() for r in rooms),
            traffic=p.Traffic(
                packets_in=traffic.packets_in,
                packets_out=traffic.packets_out,
                bytes_in=traffic.bytes_in,
                bytes_out=traffic.bytes_out,
            ),
            media_received=counters["media_received"],
            media_forwarded=counters["media_forwarded"],
            messages_in=counters["messages_in"],
            messages_out=counters["messages_out"],
            drops=counters["drops"],
            errors=counters["errors"],
            plugin_errors=counters["plugin_errors"],
            abuse=counters["abuse"],
            admin_clients=len(self._connections),
            store=store_status(self.store),
            cluster=cluster_status(self.cluster() if self.cluster is not None else None),
        )

    def room_detail(self, room_id: str) -> p.RoomDetail:
        core = self.core
        snapshot = core.room_snapshot(room_id)  # raises room_not_found
        now = time.time()
        return p.RoomDetail(
            summary=snapshot.summary,
            participants=snapshot.participants,
            partial=snapshot.partial,
            moderators=list(core.rooms[room_id].moderators),
            hand_queue=snapshot.hand_queue,
            knocks=snapshot.knocks,
            levels=self.levels(room_id),
            invites=core.usable_invites(room_id, now),
            bans=[
                p.BanInfo(user=user, reason=ban.reason, until=ban.until, by=ban.by)
                for user, ban in core.active_bans(room_id, now).items()
            ],
            stream=self.room_stream(room_id),
        )

    def streams(self) -> list[p.RoomStream]:
        service = self.stream_service
        if service is None:
            return []
        return [msgspec.convert(vars(s), p.RoomStream) for s in service.stats()]

    def room_stream(self, room_id: str) -> p.RoomStream | None:
        service = self.stream_service
        if service is None:
            return None
        found = service.room_stats(room_id)
        if found is None:
            return p.RoomStream(
                room=room_id, realtime_listeners=0, stream_listeners=0, mixing=False
            )
        return msgspec.convert(vars(found), p.RoomStream)

    def levels(self, room_id: str) -> list[p.MeterLevel]:
        return [
            p.MeterLevel(user=m.user, level=m.level, speaking=m.speaking)
            for m in self.core.levels(room_id)
        ]

    async def backup(self, path: str) -> dict[str, Any]:
        """``salonctl backup``: the store writes a consistent copy of itself to ``path``."""
        destination = Path(path)
        if not destination.is_absolute():
            raise AdminRefusal("bad_path", f"backup: {path} is not an absolute path")
        if self.store is None:
            raise AdminRefusal("backup_failed", "backup: salond runs without a store")
        try:
            result = await self.store.backup(destination)
        except StoreError as exc:
            raise AdminRefusal("backup_failed", str(exc)) from exc
        log.info("backup of the database written to %s (%d bytes)", path, result["bytes"])
        return result

    async def recordings(self, request: p.Recordings) -> list[dict[str, Any]]:
        """The recordings index (daemon/recording), as plain dicts, newest first."""
        index = self.recordings_index
        if request.recording is not None:
            found = await index.get(request.recording)
            return [] if found is None else [found.to_dict()]
        return [info.to_dict() for info in (await index.recordings(request.room))[: request.limit]]

    async def audit_entries(self, limit: int, room: str | None) -> list[p.AuditEntry]:
        """From the store when there is one (durable), else from memory."""
        if self.store is not None:
            try:
                return await self.store.audit_log(limit=limit, room=room)
            except Exception:
                log.exception("reading the store's audit log failed; showing recent entries")
        return self.audit.entries(limit, room)

    # ------------------------------------------------------------------ events

    def _observe(self, event: events.CoreEvent) -> None:
        now = time.time()
        kind: str
        data: dict[str, Any]
        if isinstance(event, events.ModerationTaken):
            entry = p.AuditEntry(
                at=now,
                room=event.room,
                actor=event.actor,
                action=event.action,
                target=event.target,
                detail=_plain(event.detail),
            )
            self.audit.add(entry)
            kind, data = "moderation", msgspec.to_builtins(entry)
        elif isinstance(event, events.RoomCreated):
            kind, data = "room_created", {"room": event.room, "owner": event.owner}
        elif isinstance(event, events.RoomClosed):
            kind, data = "room_closed", {"room": event.room, "reason": event.reason}
        elif isinstance(event, events.MemberJoined):
            kind = "member_joined"
            data = {"room": event.room, "user": event.user, "role": event.role}
        elif isinstance(event, events.MemberLeft):
            kind = "member_left"
            data = {"room": event.room, "user": event.user, "reason": event.reason}
        elif isinstance(event, events.RoleChanged):
            kind = "role_changed"
            data = {"room": event.room, "user": event.user, "old": event.old, "new": event.new}
        elif isinstance(event, events.SpeakingChanged):
            kind, data = "speaking", {"room": event.room, "speakers": list(event.speakers)}
        elif isinstance(event, events.KnockReceived):
            kind = "knock"
            data = {"room": event.room, "request": wire.to_builtins(event.request)}
        elif isinstance(event, events.KnockResolved):
            kind = "knock_resolved"
            data = {
                "room": event.room,
                "request_id": event.request_id,
                "user": event.user,
                "outcome": event.outcome,
                "by": event.by,
            }
        elif isinstance(event, events.HandQueueChanged):
            # Bounded like the protocol's hand_queue: a big audience may raise thousands.
            users = list(event.users)
            kind = "hand_queue"
            data = {
                "room": event.room,
                "users": users[: wire.MAX_HANDS_LISTED],
                "total": len(users),
            }
        elif isinstance(event, events.ParticipantChanged):
            kind = "participant"
            data = {"room": event.room, "participant": wire.to_builtins(event.participant)}
        elif isinstance(event, events.RoomSettingsChanged):
            kind, data = "room_updated", {"room": event.settings.room}
        elif isinstance(event, events.RecordingStarted | events.RecordingStopped):
            kind = "recording"
            state = "started" if isinstance(event, events.RecordingStarted) else "stopped"
            data = {"room": event.room, "recording": event.recording, "state": state}
        else:
            return
        if self._connections:
            self._broadcast(p.Event(kind=kind, room=data.get("room"), at=now, data=data))  # type: ignore[arg-type]

    def _broadcast(self, event: p.Event, to: Iterable[_Connection] | None = None) -> None:
        line = p.encode_line(event)
        for connection in list(to if to is not None else self._connections):
            if connection.subscribed:
                connection.push(line)

    async def _tick(self) -> None:
        """Stream levels of watched rooms and periodic stats to subscribers."""
        while True:
            await asyncio.sleep(TICK)
            try:
                self._tick_once(time.time())
            except Exception:
                log.exception("admin tick failed")

    def _tick_once(self, now: float) -> None:
        status: p.StatusInfo | None = None
        for connection in list(self._connections):
            if not connection.subscribed:
                continue
            if connection.levels_room is not None:
                levels = self.levels(connection.levels_room)
                if levels != connection.last_levels and (levels or connection.last_levels):
                    connection.last_levels = levels
                    event = p.Event(
                        kind="levels",
                        room=connection.levels_room,
                        at=now,
                        data={
                            "room": connection.levels_room,
                            "levels": msgspec.to_builtins(levels),
                        },
                    )
                    connection.push(p.encode_line(event))
                # Stream mode's counters (segments served...) change without a core event.
                stream = self.room_stream(connection.levels_room)
                if stream is not None and stream != connection.last_stream:
                    connection.last_stream = stream
                    event = p.Event(
                        kind="stream",
                        room=connection.levels_room,
                        at=now,
                        data={"room": connection.levels_room, **msgspec.to_builtins(stream)},
                    )
                    connection.push(p.encode_line(event))
            if now - connection.stats_sent_at >= connection.stats_interval:
                connection.stats_sent_at = now
                if status is None:
                    status = self.status()
                event = p.Event(kind="stats", at=now, data=msgspec.to_builtins(status))
                connection.push(p.encode_line(event))


def _plain(detail: dict[str, Any]) -> dict[str, Any]:
    """Moderation details as JSON-ready data (they are plain already; be safe)."""
    try:
        result = msgspec.to_builtins(detail)
    except TypeError:
        return {key: repr(value) for key, value in detail.items()}
    return dict(result)
