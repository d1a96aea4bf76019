"""An asyncio client of salond's admin API, for ``salon-admin``, ``salonctl`` and scripts.

    client = await AdminClient.connect(default_socket_path())
    rooms = await client.rooms()
    await client.mute("lobby", "bob")
    await client.subscribe(levels_room="lobby")
    async for event in client.events():
        ...

This module imports no UI code (a test checks that it never imports textual): the console
receives typed results from it and turns them into messages itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# ConfigError is part of this client's interface: default_socket_path raises it.
from salon.daemon.config import ConfigError as ConfigError
from salon.daemon.wire.messages import InviteInfo, Participant, RoomSummary

from . import protocol as p

SOCKET_ENV = "SALON_ADMIN_SOCKET"
"""Environment variable naming the admin socket."""
CONFIG_ENV = "SALON_CONFIG"
"""Environment variable naming salond's configuration file (to find the socket)."""


class AdminError(Exception):
    """The daemon refused a request; ``code`` is a ``salon/1`` error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AdminConnectionError(Exception):
    """The admin socket cannot be reached, or the connection was lost."""


def default_socket_path(config: Path | None = None) -> Path:
    """Where the admin socket is: ``$SALON_ADMIN_SOCKET``, else the socket named by
    ``config`` (or ``$SALON_CONFIG``), else salond's default ``state/admin.sock``."""
    if config is None and os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if config is None and os.environ.get(CONFIG_ENV):
        config = Path(os.environ[CONFIG_ENV])
    from salon.daemon.config import load_config, resolve_paths

    return resolve_paths(load_config(config)).admin_socket


class AdminClient:
    """One connection to the admin socket; requests may run concurrently."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[p.Event | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self.welcome: p.Welcome | None = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, path: Path | str, timeout: float = 5.0) -> AdminClient:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=p.MAX_LINE), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise AdminConnectionError(f"cannot connect to the admin socket {path}: {exc}") from exc
        client = cls(reader, writer)
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise AdminConnectionError(f"the daemon at {path} closed the connection at once")
            welcome = p.decode_server_line(line)
        except (OSError, asyncio.TimeoutError, p.AdminProtocolError) as exc:
            writer.close()
            raise AdminConnectionError(f"no welcome from the admin socket {path}: {exc}") from exc
        if not isinstance(welcome, p.Welcome):
            writer.close()
            raise AdminConnectionError(f"unexpected first line from {path}")
        client.welcome = welcome
        client._reader_task = asyncio.ensure_future(client._read())
        return client

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        self._lost("closed")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    async def _read(self) -> None:
        reason = "connection closed by the daemon"
        announced = False
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = p.decode_server_line(line)
                except p.AdminProtocolError:
                    continue
                if isinstance(message, p.Ok):
                    future = self._pending.get(message.re)
                    if future is not None and not future.done():
                        future.set_result(message.result)
                elif isinstance(message, p.Error):
                    future = self._pending.get(message.re) if message.re is not None else None
                    if future is not None and not future.done():
                        future.set_exception(AdminError(message.code, message.message))
                elif isinstance(message, p.Event):
                    if message.kind == "shutdown":
                        reason, announced = "the daemon is shutting down", True
                    self._events.put_nowait(message)
        except (OSError, ValueError) as exc:
            # A daemon that announced its shutdown may close with a request of ours unread (a
            # reset) or before our next write (a broken pipe): the announcement stays the reason.
            if not announced:
                reason = f"connection lost: {exc}"
        finally:
            self._lost(reason)
            # Hang up too: a stopping daemon waits for its clients to close their end.
            self._writer.close()

    def _lost(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        self._events.put_nowait(None)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(AdminConnectionError(reason))

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send one request by its type name and return the ``result`` of the reply."""
        if self._closed.is_set():
            raise AdminConnectionError(self.close_reason or "connection closed")
        request_id = next(self._ids)
        message = p.REQUEST_TYPES[type_](id=request_id, **fields)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(p.encode_line(message))
            await self._writer.drain()
            return await future
        except ConnectionError as exc:
            raise AdminConnectionError(str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)

    async def events(self) -> AsyncIterator[p.Event]:
        """Pushed events (after :meth:`subscribe`) until the connection closes."""
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    # ------------------------------------------------------------------ queries

    async def status(self) -> p.StatusInfo:
        result: p.StatusInfo = p.convert(await self.request("status"), p.StatusInfo)
        return result

    async def rooms(self, topic: str | None = None) -> list[RoomSummary]:
        result = await self.request("rooms", topic=topic)
        rooms: list[RoomSummary] = p.convert(result["rooms"], list[RoomSummary])
        return rooms

    async def rooms_raw(self, topic: str | None = None) -> list[dict[str, Any]]:
        """The rooms exactly as the daemon sent them (for ``salonctl --json rooms``)."""
        return list((await self.request("rooms", topic=topic))["rooms"])

    async def room(self, room: str) -> p.RoomDetail:
        detail: p.RoomDetail = p.convert(
            (await self.request("room", room=room))["room"], p.RoomDetail
        )
        return detail

    async def participants(self, room: str, page: int = 500) -> list[Participant]:
        """Every member of ``room``, in user id order, paged with ``list_participants`` (the
        ``room`` detail lists only the first listeners of a big room)."""
        members: list[Participant] = []
        after: str | None = None
        while True:
            result = await self.act(room, "list_participants", after=after, limit=page)
            members.extend(p.convert(result["participants"], list[Participant]))
            after = result["next"]
            if after is None:
                return members

    async def audit(self, limit: int = 100, room: str | None = None) -> list[p.AuditEntry]:
        result = await self.request("audit", limit=limit, room=room)
        entries: list[p.AuditEntry] = p.convert(result["entries"], list[p.AuditEntry])
        return entries

    async def subscribe(self, levels_room: str | None = None, stats_interval: float = 1.0) -> None:
        await self.request("subscribe", levels_room=levels_room, stats_interval=stats_interval)

    # ------------------------------------------------------------------ actions

    async def act(self, room: str | None, type_: str, /, **fields: Any) -> dict[str, Any]:
        """Perform the ``salon/1`` request ``type_`` (fields as in PROTOCOL.md) as the operator
        in ``room`` (None for ``create_room`` and ``start_room``, which name their room)."""
        return await self.request("action", room=room, request={"type": type_, **fields})

    async def create_room(self, room: str | None, title: str, **settings: Any) -> RoomSummary:
        result = await self.act(None, "create_room", room=room, title=title, **settings)
        summary: RoomSummary = p.convert(result["room"], RoomSummary)
        return summary

    async def start_room(self, room: str) -> dict[str, Any]:
        return await self.act(None, "start_room", room=room)

    async def close_room(self, room: str) -> dict[str, Any]:
        return await self.act(room, "close_room")

    async def update_room(self, room: str, **settings: Any) -> dict[str, Any]:
        """Change ``title``, ``topics``, ``policy``, ``max_speakers``, ``mute_on_join`` or
        ``description``; omitted settings keep their value."""
        return await self.act(room, "update_room", **settings)

    async def approve_knock(self, room: str, request_id: str) -> dict[str, Any]:
        return await self.act(room, "approve_knock", request_id=request_id)

    async def deny_knock(self, room: str, request_id: str, reason: str = "") -> dict[str, Any]:
        return await self.act(room, "deny_knock", request_id=request_id, reason=reason)

    async def invite_to_speak(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "invite_to_speak", user=user)

    async def move_to_audience(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "move_to_audience", user=user)

    async def lower_hand(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "lower_hand", user=user)

    async def mute(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "mute", user=user)

    async def unmute(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "unmute", user=user)

    async def remove(self, room: str, user: str, reason: str = "") -> dict[str, Any]:
        return await self.act(room, "remove", user=user, reason=reason)

    async def ban(
        self, room: str, user: str, reason: str = "", duration: float | None = None
    ) -> dict[str, Any]:
        return await self.act(room, "ban", user=user, reason=reason, duration=duration)

    async def unban(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "unban", user=user)

    async def promote(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "promote", user=user)

    async def demote(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "demote", user=user)

    async def transfer_ownership(self, room: str, user: str) -> dict[str, Any]:
        return await self.act(room, "transfer_ownership", user=user)

    async def create_invite(
        self,
        room: str,
        role: str = "listener",
        expires_in: float | None = None,
        max_uses: int | None = None,
    ) -> InviteInfo:
        result = await self.act(
            room, "create_invite", role=role, expires_in=expires_in, max_uses=max_uses
        )
        invite: InviteInfo = p.convert(result["invite"], InviteInfo)
        return invite

    async def revoke_invite(self, room: str, token: str) -> dict[str, Any]:
        return await self.act(room, "revoke_invite", token=token)

    async def list_invites(self, room: str) -> list[InviteInfo]:
        result = await self.act(room, "list_invites")
        invites: list[InviteInfo] = p.convert(result["invites"], list[InviteInfo])
        return invites
