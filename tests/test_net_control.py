"""The control protocol over real QUIC against an in-process salond."""

from __future__ import annotations

import asyncio

import pytest

from salon.client.connection import RequestError, SalonClient, ServerVerificationError
from salon.daemon.wire import messages as msg
from salon.daemon.wire.varint import encode_varint


async def test_hello_gives_stable_guest_identity(live):
    first = await live.client("Ada", credentials={"guest_key": "a" * 44})
    second = await live.client("Ada again", credentials={"guest_key": "a" * 44})
    assert first.user == second.user
    assert first.user.startswith("guest-")
    assert first.session != second.session
    assert first.limits["max_message_size"] == 65536


async def test_wrong_fingerprint_is_refused_before_hello(live):
    wrong = "sha256:" + ":".join(["00"] * 32)
    with pytest.raises(ServerVerificationError):
        await SalonClient.connect(live.host, live.port, display_name="Eve", fingerprint=wrong)
    # Nothing reached the server's session table: the hello was never sent.
    assert all(
        p.identity is None or p.identity.display_name != "Eve"
        for p in live.daemon.server.sessions.values()
    )


async def test_bad_credentials_get_auth_failed(live):
    with pytest.raises(RequestError) as caught:
        await live.client("Mallory", credentials={"token": "not-a-token"})
    assert caught.value.code == "auth_failed"


async def test_requests_before_hello_are_refused(live):
    client = await live.client("Ada")
    # A second hello on an authenticated session.
    with pytest.raises(RequestError) as caught:
        await client.request(
            msg.Hello(
                id=0, version="salon/1", display_name="x", credentials={"guest_key": "b" * 44}
            )
        )
    assert caught.value.code == "already_authenticated"


async def test_malformed_messages_get_precise_errors_and_session_survives(live):
    client = await live.client("Ada")
    client.send_raw(b'{"type": "join", "id": 7, "room": 5}')
    client.send_raw(b'{"type": "fly", "id": 8}')
    client.send_raw(b"\xff\xfe not json")
    errors = []
    for _ in range(3):
        errors.append(await client.wait_for_event(msg.Error, timeout=5))
    assert [(e.re, e.code) for e in errors] == [
        (7, "bad_message"),
        (8, "unknown_type"),
        (None, "bad_message"),
    ]
    assert "$.room" in errors[0].message
    assert await client.call("ping") == {}
    stats = live.daemon.server.stats
    assert stats.errors["bad_message"] == 2 and stats.errors["unknown_type"] == 1


async def test_oversized_control_frame_closes_only_that_connection(live):
    bystander = await live.client("Bob")
    attacker = await live.client("Mallory")
    attacker.send_raw_stream_bytes(encode_varint(70_000) + b"{")
    await asyncio.wait_for(attacker.wait_closed(), 5)
    assert attacker.close_code == 0x1
    assert await bystander.call("ping") == {}
    assert live.daemon.server.stats.drops["control_framing"] == 1


async def test_room_lifecycle_over_quic(live):
    owner = await live.client("Owner")
    guest = await live.client("Guest")
    room = await owner.create_room("Book club", room="books", topics=["Books", "reading"])
    assert room["room"] == "books" and room["topics"] == ["books", "reading"]
    await owner.join("books")
    state = await owner.wait_for_event(msg.RoomState)
    assert state.room.you == owner.user
    result = await guest.join("books")
    assert result["status"] == "joined" and result["role"] == "listener"
    joined = await owner.wait_for_event(msg.ParticipantJoined)
    assert joined.participant.user == guest.user
    rooms = await guest.list_rooms()
    assert [r["room"] for r in rooms] == ["books"] and rooms[0]["listeners"] == 1
    with pytest.raises(RequestError) as caught:
        await guest.call("close_room")
    assert caught.value.code == "not_permitted"
    await owner.call("close_room")
    closed = await guest.wait_for_event(msg.RoomClosed)
    assert closed.room == "books"


async def test_sigterm_style_shutdown_tells_clients(tmp_path):
    from tests.conftest import run_daemon

    async with run_daemon(tmp_path / "state") as running:
        client = await running.client("Ada")
        await running.daemon.server.shutdown("maintenance")
        notice = await client.wait_for_event(msg.ServerShutdown, timeout=5)
        assert notice.reason == "maintenance"
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_code == 0x3
