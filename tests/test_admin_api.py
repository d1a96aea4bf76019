"""The admin API over its Unix socket, against an in-process salond with real QUIC clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest

from salon.daemon.admin import protocol as p
from salon.daemon.admin.client import AdminClient, AdminConnectionError, AdminError
from salon.daemon.admin.server import AdminServer, AuditTrail
from salon.daemon.admin.socket_path import AdminSocketError, check_socket_path
from salon.daemon.wire import messages as msg
from tests.conftest import InProcessDaemon


async def admin_of(live: InProcessDaemon) -> AdminClient:
    client = await AdminClient.connect(live.daemon.config.admin_socket)
    live.clients.append(client)  # type: ignore[arg-type]  # closed with the clients
    return client


async def wait_until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_socket_is_private_and_welcomes_the_operator(live: InProcessDaemon) -> None:
    path = live.daemon.config.admin_socket
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    admin = await admin_of(live)
    assert admin.welcome is not None
    assert admin.welcome.protocol == p.ADMIN_PROTOCOL
    assert admin.welcome.operator.startswith("operator:")


async def test_status_counts_connections_rooms_and_traffic(live: InProcessDaemon) -> None:
    admin = await admin_of(live)
    await admin.create_room("hall", "Hall", persistent=True)
    guest = await live.client("Guest")
    await guest.join("hall")
    status = await admin.status()
    assert status.connections == 1
    assert status.rooms == 1
    assert status.members == 1
    assert status.traffic.packets_in > 0 and status.traffic.bytes_out > 0
    assert status.messages_in >= 2
    assert status.admin_clients == 1
    assert status.server.startswith("salond/")


async def test_knock_profile_and_approval_through_the_operator_path(
    live: InProcessDaemon,
) -> None:
    admin = await admin_of(live)
    await admin.create_room("club", "Club", policy="approval", persistent=True)
    guest = await live.client("Grace Hopper")
    result = await guest.join("club")
    assert result["status"] == "knocking"
    detail = await admin.room("club")
    [knock] = detail.knocks
    assert (knock.display_name, knock.user) == ("Grace Hopper", guest.user)
    assert knock.expires_at > knock.requested_at
    await admin.approve_knock("club", knock.request_id)
    state = await guest.wait_for_event(msg.RoomState)
    assert state.room.summary.room == "club"
    detail = await admin.room("club")
    assert [m.user for m in detail.participants] == [guest.user]
    assert detail.knocks == []
    entry = (await admin.audit(room="club", limit=10))[0]
    assert (entry.action, entry.target) == ("approve_knock", guest.user)
    assert entry.actor == admin.welcome.operator  # type: ignore[union-attr]


async def test_actions_use_the_core_permission_checks(live: InProcessDaemon) -> None:
    admin = await admin_of(live)
    await admin.create_room("town", "Town", persistent=True)
    listener = await live.client("Lis")
    await listener.join("town")
    with pytest.raises(AdminError) as info:
        await admin.mute("town", listener.user)  # not on stage
    assert info.value.code == "not_on_stage"
    with pytest.raises(AdminError) as info:
        await admin.remove("nowhere", listener.user)
    assert info.value.code == "room_not_found"
    with pytest.raises(AdminError) as info:
        await admin.act("town", "join", room="town")  # a member's request, not an action
    assert info.value.code == "invalid_value"
    with pytest.raises(AdminError) as info:
        await admin.act("town", "no_such_request")
    assert info.value.code == "unknown_type"
    await admin.invite_to_speak("town", listener.user)
    await listener.wait_for_event(msg.SpeakInvitation)
    await listener.call("accept_speak")
    await admin.mute("town", listener.user)
    [member] = (await admin.room("town")).participants
    assert member.muted_by_moderator
    event = await listener.wait_for_event(msg.Muted)
    assert event.by == admin.welcome.operator  # type: ignore[union-attr]
    await admin.ban("town", listener.user, reason="spam", duration=60)
    removed = await listener.wait_for_event(msg.Removed)
    assert removed.banned and removed.reason == "spam"
    detail = await admin.room("town")
    assert [b.user for b in detail.bans] == [listener.user]
    await admin.unban("town", listener.user)
    assert (await admin.room("town")).bans == []
    actions = [e.action for e in await admin.audit(room="town")]
    assert actions[:4] == ["unban", "ban", "mute", "invite_to_speak"]


async def test_room_settings_invites_and_close(live: InProcessDaemon) -> None:
    admin = await admin_of(live)
    await admin.create_room("deck", "Deck", persistent=True)
    await admin.update_room("deck", title="New deck", topics=["Jazz"], policy="invite")
    summary = (await admin.room("deck")).summary
    assert (summary.title, summary.topics, summary.policy) == ("New deck", ["jazz"], "invite")
    invite = await admin.create_invite("deck", role="speaker", max_uses=2)
    assert [i.token for i in await admin.list_invites("deck")] == [invite.token]
    speaker = await live.client("Spk")
    assert (await speaker.join("deck", invite=invite.token))["role"] == "speaker"
    assert [m.role for m in (await admin.room("deck")).participants] == ["speaker"]
    await admin.revoke_invite("deck", invite.token)
    assert (await admin.room("deck")).invites == []
    await admin.promote("deck", speaker.user)
    assert (await admin.room("deck")).moderators == [speaker.user]
    await admin.demote("deck", speaker.user)
    await admin.close_room("deck")
    closed = await speaker.wait_for_event(msg.RoomClosed)
    assert closed.reason == "closed_by_operator"
    assert [r.room for r in await admin.rooms()] == []


async def test_subscription_streams_events_stats_and_levels(live: InProcessDaemon) -> None:
    admin = await admin_of(live)
    await admin.subscribe(stats_interval=0.2)
    await admin.create_room("ev", "Events", persistent=True)
    guest = await live.client("Eve")
    await guest.join("ev")
    await admin.update_room("ev", title="Renamed")
    kinds: list[str] = []
    stats: list[p.StatusInfo] = []

    async def collect() -> None:
        async for event in admin.events():
            kinds.append(event.kind)
            if event.kind == "stats":
                stats.append(p.convert(event.data, p.StatusInfo))
            if {"room_created", "member_joined", "moderation"} <= set(kinds) and stats:
                return

    await asyncio.wait_for(collect(), 5)
    assert stats[-1].rooms == 1
    await admin.subscribe(levels_room="ev")  # changing the subscription is allowed


async def test_levels_stream_shows_who_is_loud(live: InProcessDaemon) -> None:
    from tests.test_reliability_support import live_room

    async with live_room(live, room="loud") as room:
        admin = await admin_of(live)
        await admin.subscribe(levels_room="loud")
        levels: list[p.MeterLevel] = []

        async def speaker_level() -> None:
            async for event in admin.events():
                if event.kind != "levels":
                    continue
                assert event.room == "loud"
                for entry in event.data["levels"]:
                    level = p.convert(entry, p.MeterLevel)
                    if level.user == room.speaker.user:
                        levels.append(level)
                        if level.speaking:
                            return

        await asyncio.wait_for(speaker_level(), 10)
        # The speaker's tone is at -8 dBov (amplitude 0.4): loud, and reported as speaking;
        # the listener (not on stage) has no meter.
        assert levels[-1].speaking and levels[-1].level < 40, levels
        detail = await admin.room("loud")
        users = {level.user: level for level in detail.levels}
        assert room.listener.user not in users
        assert users[room.speaker.user].level < 40


async def test_bad_lines_get_precise_errors(live: InProcessDaemon) -> None:
    reader, writer = await asyncio.open_unix_connection(str(live.daemon.config.admin_socket))
    welcome = p.decode_server_line(await reader.readline())
    assert isinstance(welcome, p.Welcome)
    for line, code, re in (
        (b"not json\n", "bad_message", None),
        (b'{"type": "frobnicate", "id": 4}\n', "unknown_type", 4),
        (b'{"type": "room", "id": 5}\n', "bad_message", 5),
        (b'{"type": "audit", "id": 6, "limit": 0}\n', "bad_message", 6),
        (b'{"type": "room", "id": 7, "room": "ghost"}\n', "room_not_found", 7),
        (
            b'{"type": "action", "id": 8, "room": "x", "request": {"type": "mute", "user": 3}}\n',
            "bad_message",
            8,
        ),
    ):
        writer.write(line)
        await writer.drain()
        reply = p.decode_server_line(await reader.readline())
        assert isinstance(reply, p.Error), line
        assert (reply.code, reply.re) == (code, re), (line, reply)
    writer.close()


def test_unsafe_socket_paths_are_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(AdminSocketError, match="writable by other users"):
        check_socket_path(shared / "admin.sock")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "admin.sock").write_text("not a socket")
    with pytest.raises(AdminSocketError, match="is a file, not a socket"):
        check_socket_path(private / "admin.sock")
    (private / "link.sock").symlink_to(private / "admin.sock")
    with pytest.raises(AdminSocketError, match="symbolic link"):
        check_socket_path(private / "link.sock")
    # A socket nobody listens on is stale (a salond that died): it is removed.
    stale = private / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()
    check_socket_path(stale)
    assert not stale.exists()
    # A socket that answers belongs to a running salond: never taken over.
    busy = private / "busy.sock"
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(busy))
    listening.listen(1)
    try:
        with pytest.raises(AdminSocketError, match="in use"):
            check_socket_path(busy)
    finally:
        listening.close()
    # A missing directory is created, private.
    check_socket_path(tmp_path / "new" / "admin.sock")
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700


def test_salond_refuses_to_start_on_an_unsafe_socket_path(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = tmp_path / "salond.toml"
    config.write_text(f'[admin]\nsocket = "{shared / "admin.sock"}"\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.app",
            "-c",
            str(config),
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "writable by other users" in done.stderr


async def test_a_second_daemon_does_not_take_over_a_live_socket(live: InProcessDaemon) -> None:
    with pytest.raises(AdminSocketError, match="in use"):
        daemon = live.daemon
        AdminServer(
            daemon.config.admin_socket,
            daemon.pipeline,
            daemon.server,
            daemon.store,
            daemon.recordings.index,
            daemon.tls.fingerprint,
        )
    assert (await (await admin_of(live)).status()).admin_clients == 1


async def test_socket_file_is_removed_on_stop(tmp_path: Path) -> None:
    from tests.conftest import run_daemon

    async with run_daemon(tmp_path / "state") as running:
        path = running.daemon.config.admin_socket
        assert path.exists()
    assert not path.exists()


async def test_admin_can_be_disabled(tmp_path: Path) -> None:
    from tests.conftest import run_daemon

    async with run_daemon(tmp_path / "state", **{"admin.enabled": False}) as running:
        assert not running.daemon.config.admin_socket.exists()
        assert not any(isinstance(c, AdminServer) for c in running.daemon.components)


def test_audit_trail_keeps_the_newest_and_filters_by_room() -> None:
    trail = AuditTrail(kept=3)
    for i in range(5):
        trail.add(p.AuditEntry(at=i, room="a" if i % 2 else "b", actor="x", action=f"act{i}"))
    assert [e.action for e in trail.entries(10)] == ["act4", "act3", "act2"]
    assert [e.action for e in trail.entries(10, room="a")] == ["act3"]
    assert [e.action for e in trail.entries(1)] == ["act4"]


async def test_the_store_keeps_the_audit_entries_the_admin_api_serves() -> None:
    from salon.daemon import store

    assert store.AuditEntry is p.AuditEntry  # one audit type, no conversion between layers
    kept = store.MemoryStore()
    kept.add_audit(
        p.AuditEntry(at=5.0, room="r", actor="alice", action="ban", target="bob", detail={"k": 1})
    )
    [entry] = await kept.audit_log()
    assert entry == p.AuditEntry(
        at=5.0, room="r", actor="alice", action="ban", target="bob", detail={"k": 1}, id=entry.id
    )
    assert entry.id > 0
    assert p.convert(msgspec.to_builtins(entry), p.AuditEntry) == entry


def test_client_module_imports_no_textual() -> None:
    script = (
        "import sys, json\n"
        "import salon.daemon.admin.client, salon.daemon.admin.ctl\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == []


def test_console_talks_to_the_daemon_only_through_the_admin_client() -> None:
    """salon-admin loads no daemon internals (core, net, store, hooks) and no QUIC stack."""
    script = (
        "import sys, json\n"
        "import salon.tui.app\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('salon.', 'aioquic')))))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    daemon_side = {m for m in json.loads(output) if m.startswith(("salon.daemon.", "aioquic"))}
    allowed = {
        "salon.daemon.admin",
        "salon.daemon.admin.client",
        "salon.daemon.admin.protocol",
        "salon.daemon.config",  # to find the socket named in salond's configuration
        "salon.daemon.wire",
        "salon.daemon.wire.messages",  # the schemas shared with clients
        "salon.daemon.wire.text",  # the untrusted-text rule, applied again on screen
        "salon.daemon.wire.confusables",  # lookalike names in the knock review
    }
    assert daemon_side <= allowed, daemon_side - allowed


def test_every_event_kind_is_declared() -> None:
    kinds = typing.get_type_hints(p.Event)["kind"].__args__
    assert set(p.EVENT_KINDS) == set(kinds)


async def test_plugins_review_operator_actions_like_a_hosts(tmp_path: Path) -> None:
    """An admin action meets the same hooks as a client's request; a refusal is not audited."""
    from salon.daemon.hooks import Deny, hookimpl
    from tests.test_plugin_support import plugin_daemon

    asked: list[tuple[str, bool, str, str | None]] = []

    class HouseRules:
        @hookimpl
        def authorize(self, identity, action, room, target):
            asked.append((identity.user, identity.operator, action, target))
            if action == "ban":
                return Deny("bans go through the moderation team")
            return None

        @hookimpl
        def promotion(self, identity, room, target, role):
            if role == "moderator":
                return Deny("moderators are elected")
            return None

    async with plugin_daemon(
        tmp_path, {"rules": HouseRules()}, **{"admin.enabled": True}
    ) as running:
        admin = await admin_of(running)
        assert admin.welcome is not None
        operator = admin.welcome.operator
        await admin.create_room("forum", "Forum", persistent=True)
        member = await running.client("Member")
        await member.join("forum")
        with pytest.raises(AdminError) as info:
            await admin.ban("forum", member.user, reason="spam")
        assert (info.value.code, info.value.message) == (
            "denied_by_plugin",
            "bans go through the moderation team",
        )
        with pytest.raises(AdminError) as info:
            await admin.promote("forum", member.user)
        assert (info.value.code, info.value.message) == (
            "denied_by_plugin",
            "moderators are elected",
        )
        assert [m.user for m in (await admin.room("forum")).participants] == [member.user]
        await admin.remove("forum", member.user, reason="asked to")
        removed = await member.wait_for_event(msg.Removed)
        assert not removed.banned
        actions = [e.action for e in await admin.audit(room="forum")]
        assert "ban" not in actions and "promote" not in actions
        assert actions[0] == "remove"
    assert (operator, True, "create_room", None) in asked
    assert (operator, True, "ban", member.user) in asked
    assert (operator, True, "remove", member.user) in asked


async def raw_admin(live: InProcessDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(
        str(live.daemon.config.admin_socket), limit=p.MAX_LINE * 2
    )
    assert isinstance(p.decode_server_line(await reader.readline()), p.Welcome)
    return reader, writer


def admin_server(live: InProcessDaemon) -> AdminServer:
    [server] = [c for c in live.daemon.components if isinstance(c, AdminServer)]
    return server


async def test_an_over_long_line_gets_too_large_and_the_connection_ends(
    live: InProcessDaemon,
) -> None:
    reader, writer = await raw_admin(live)
    writer.write(b'{"type": "status", "id": 1, "pad": "' + b"x" * p.MAX_LINE + b'"}\n')
    await writer.drain()
    reply = p.decode_server_line(await asyncio.wait_for(reader.readline(), 10))
    assert isinstance(reply, p.Error) and (reply.code, reply.re) == ("too_large", None)
    # Then closed: the rest of the line is not parsed.
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    # Nothing else is affected.
    assert (await (await admin_of(live)).status()).connections == 0


async def test_a_subscriber_that_does_not_read_is_cut_off(
    live: InProcessDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salon.daemon.admin import server as admin_module

    monkeypatch.setattr(admin_module, "OUTBOX_LIMIT", 50)
    _, writer = await raw_admin(live)
    writer.write(b'{"type": "subscribe", "id": 1}\n')
    await writer.drain()
    server = admin_server(live)
    await wait_until(lambda: any(c.subscribed for c in server._connections))
    [slow] = [c for c in server._connections if c.subscribed]
    # Events of 16 KiB each and a client that reads none of them: the socket's buffer fills,
    # then the outbox, and the connection is dropped instead of growing without bound.
    event = p.Event(kind="room_created", at=0.0, data={"room": "x" * 16384})
    sent = 0
    while not slow.overflowed and sent < 500:
        server._broadcast(event)
        sent += 1
        if sent % 20 == 0:
            await asyncio.sleep(0)
    assert slow.overflowed and slow.outbox.qsize() <= 51
    await wait_until(lambda: slow not in server._connections)
    writer.close()
    assert (await (await admin_of(live)).status()).connections == 0


async def test_an_internal_error_is_answered_and_the_connection_goes_on(
    live: InProcessDaemon, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = admin_server(live)

    def broken() -> None:
        raise RuntimeError("bug in status")

    monkeypatch.setattr(server, "status", broken)
    reader, writer = await raw_admin(live)
    writer.write(b'{"type": "status", "id": 3}\n{"type": "rooms", "id": 4}\n')
    await writer.drain()
    error = p.decode_server_line(await reader.readline())
    assert isinstance(error, p.Error)
    assert (error.code, error.re, error.message) == ("internal_error", 3, "internal server error")
    assert "bug in status" not in error.message  # details stay in the log
    ok = p.decode_server_line(await reader.readline())
    assert isinstance(ok, p.Ok) and ok.re == 4
    assert "admin request Status failed" in caplog.text and "bug in status" in caplog.text
    writer.close()


async def test_the_shutdown_announcement_survives_the_reset_that_follows_it(
    tmp_path: Path,
) -> None:
    """The daemon announces its shutdown and closes while a request of ours is unread: the
    reset that follows must not replace "shutting down" as the reason the console shows."""
    path = tmp_path / "admin.sock"
    request_sent = asyncio.Event()

    async def stopping_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(p.encode_line(p.Welcome(protocol=p.ADMIN_PROTOCOL, server="s", operator="o")))
        await writer.drain()
        await request_sent.wait()  # the client's request now waits, unread, in our socket
        writer.write(p.encode_line(p.Event(kind="shutdown", at=0.0, data={"reason": "stops"})))
        await writer.drain()
        writer.close()  # closing with unread data resets the client's side of the socket

    server = await asyncio.start_unix_server(stopping_daemon, path=str(path))
    try:
        client = await AdminClient.connect(path)
        pending = asyncio.ensure_future(client.status())
        while not client._pending:  # the request was written
            await asyncio.sleep(0)
        request_sent.set()
        await asyncio.wait_for(client.wait_closed(), 10.0)
        assert client.close_reason == "the daemon is shutting down"
        with pytest.raises(AdminConnectionError, match="shutting down"):
            await pending
        assert [event.kind async for event in client.events()] == ["shutdown"]
        await client.close()
    finally:
        server.close()


async def test_a_stopping_daemon_lets_a_client_that_writes_read_the_shutdown(
    live: InProcessDaemon,
) -> None:
    """The client writes after salond announced its shutdown and before reading it: it must
    still read the announcement, not meet a broken pipe or a reset first."""
    reader, writer = await raw_admin(live)
    writer.write(p.encode_line(p.REQUEST_TYPES["subscribe"](id=1)))
    assert isinstance(p.decode_server_line(await reader.readline()), p.Ok)
    server = admin_server(live)
    [connection] = list(server._connections)
    stopping = asyncio.ensure_future(server.stop())
    await wait_until(lambda: stopping.done() or (server._stopping and connection.outbox.empty()))
    for _ in range(3):
        await asyncio.sleep(0)  # the shutdown event is written
    writer.write(p.encode_line(p.REQUEST_TYPES["status"](id=2)))
    await writer.drain()
    lines = []
    while line := await reader.readline():  # a reset would raise here
        lines.append(p.decode_server_line(line))
    assert [m.kind for m in lines if isinstance(m, p.Event)][-1:] == ["shutdown"]
    writer.close()
    await stopping
