"""salond does what PROTOCOL.md says where an independent client author once had to guess.

Each test runs over real QUIC against an in-process salond and names the section (and the
changelog entry of section 14) it holds the server to.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from salon.client.connection import RequestError, SalonClient
from salon.daemon.core import Identity
from salon.daemon.core.speaking import SMOOTHING
from salon.daemon.hooks import Deny, hookimpl
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.framing import MessageReader
from salon.daemon.wire.rtp import HeaderExtension, RtpPacket
from tests.test_plugin_support import guest, plugin_daemon
from tests.test_protocol_doc import RESULTS

SRTP_TAG = bytes(16)
"""Stands in for the SRTP tag: the server forwards without decrypting (11.4)."""


async def until(condition: Callable[[], bool], limit: float = 15.0) -> None:
    """Wait for ``condition``; ``limit`` only bounds a hung test, it is never a measure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Every control payload the clients receive, as ``(id of the client's reader, payload)``."""
    seen: list[tuple[int, bytes]] = []
    feed = MessageReader.feed

    def recording_feed(self: MessageReader, data: bytes) -> list[bytes]:
        payloads = feed(self, data)
        seen.extend((id(self), payload) for payload in payloads)
        return payloads

    monkeypatch.setattr(MessageReader, "feed", recording_feed)
    yield seen


def received(wire: list[tuple[int, bytes]], client: SalonClient) -> list[dict[str, Any]]:
    reader = id(client._reader)
    return [json.loads(payload) for owner, payload in wire if owner == reader]


async def code_of(client: SalonClient, type_: str, **fields: Any) -> str:
    with pytest.raises(RequestError) as caught:
        await client.call(type_, **fields)
    return caught.value.code


def datagram(
    key: msg.MediaKey,
    sequence_number: int,
    extensions: list[HeaderExtension],
    timestamp: int = 0,
    payload: bytes = b"\xf8\xff\xfe",
) -> bytes:
    packet = RtpPacket(
        payload_type=111,
        sequence_number=sequence_number,
        timestamp=timestamp,
        ssrc=key.ssrc,
        extensions=extensions,
        payload=payload + SRTP_TAG,
    )
    return pack_datagram(key.flow_id, packet.serialize())


async def own_key(client: SalonClient) -> msg.MediaKey:
    state = await client.wait_for_event(msg.RoomState)
    return next(k for k in state.room.media_keys if k.user == client.user)


# --------------------------------------------------------------------------- 2.3, entry 1


async def test_development_only_mode_warns_on_every_connection(live, caplog):
    caplog.set_level(logging.WARNING, logger="salon.client")
    for _ in range(2):
        client = await SalonClient.connect(
            live.host,
            live.port,
            display_name="Dev",
            credentials={"guest_key": base64.b64encode(bytes(32)).decode()},
            insecure=True,
        )
        await client.close()
    warnings = [r for r in caplog.records if "NOT authenticated" in r.getMessage()]
    assert len(warnings) == 2
    caplog.clear()
    pinned = await live.client("Pinned")  # a verified connection does not warn
    assert pinned.user and not [r for r in caplog.records if "NOT authenticated" in r.message]


# --------------------------------------------------------------------------- 5, entries 2 and 3


async def test_bad_display_name_is_invalid_value_checked_before_credentials(live):
    for name in ("   ", "x" * 65):
        with pytest.raises(RequestError) as caught:
            await live.client(name, credentials={"token": "no-such-token"})
        assert caught.value.code == "invalid_value"
        assert "display_name" in caught.value.args[0]
    with pytest.raises(RequestError) as caught:
        await live.client("Ada", credentials={"token": "no-such-token"})
    assert caught.value.code == "auth_failed"
    # 64 characters after normalisation are fine.
    assert (await live.client(" " + "y" * 64 + " ")).display_name == "y" * 64


@pytest.mark.parametrize(("length", "accepted"), [(15, False), (16, True), (64, True), (65, False)])
async def test_guest_key_lengths(live, length: int, accepted: bool):
    key = base64.b64encode(secrets.token_bytes(length)).decode()
    if accepted:
        client = await live.client("Guest", credentials={"guest_key": key})
        assert client.user.startswith("guest-")
    else:
        with pytest.raises(RequestError) as caught:
            await live.client("Guest", credentials={"guest_key": key})
        assert caught.value.code == "auth_failed"


async def test_guest_id_of_the_spec_example(live):
    key = bytes(range(0x64, 0x84))
    assert base64.b64encode(key).decode() == "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
    client = await live.client("Amina", credentials={"guest_key": base64.b64encode(key).decode()})
    assert client.user == "guest-e3e16780becf"


# --------------------------------------------------------------------------- 3.4, entry 5


async def test_type_errors_are_bad_message_and_unknown_names_unknown_type(live):
    client = await live.client("Ada")
    cases = [
        (b'{"type": 5, "id": 1}', 1, "bad_message"),
        (b'{"type": null, "id": 2}', 2, "bad_message"),
        (b'{"id": 3}', 3, "bad_message"),
        (b'{"type": "fly", "id": 4}', 4, "unknown_type"),
        (b'{"type": "update_room", "id": 5, "policy": "secret"}', 5, "bad_message"),
    ]
    for payload, _, _ in cases:
        client.send_raw(payload)
    errors = [await client.wait_for_event(msg.Error, timeout=5) for _ in cases]
    assert [(e.re, e.code) for e in errors] == [(re, code) for _, re, code in cases]
    assert "$.policy" in errors[-1].message


# --------------------------------------------------------------------------- 3.6 and 10, entry 6


async def test_order_of_checks(live):
    owner = await live.client("Owner")
    moderator = await live.client("Moderator")
    listener = await live.client("Listener")
    outsider = await live.client("Outsider")
    await owner.create_room("Order", room="order", max_speakers=2)
    await owner.join("order")
    await moderator.join("order")
    await listener.join("order")
    await owner.call("promote", user=moderator.user)
    absent = "guest-000000000000"

    # step 2 before step 4: a malformed request of a session in no room.
    outsider.send_raw(b'{"type": "promote", "id": 90}')
    error = await outsider.wait_for_event(msg.Error, timeout=5)
    assert (error.re, error.code) == (90, "bad_message")
    # step 4 for hello: already_authenticated before the version and the display name.
    assert await code_of(listener, "hello", version="salon/9", display_name=" ") == (
        "already_authenticated"
    )
    # step 4 (session state) before step 6 (role).
    assert await code_of(outsider, "promote", user=owner.user) == "not_in_room"
    assert await code_of(listener, "join", room="no-such-room") == "already_in_room"
    # step 6 (the caller's role) before 7 (values, naming oneself) and 8 (target exists).
    for request in ("promote", "remove", "ban", "demote", "transfer_ownership"):
        assert await code_of(listener, request, user=listener.user) == "not_permitted", request
        assert await code_of(listener, request, user=absent) == "not_permitted", request
    assert await code_of(listener, "ban", user=owner.user, duration=-1) == "not_permitted"
    assert await code_of(listener, "invite_to_speak", user=absent) == "not_permitted"
    assert await code_of(listener, "mute", user=absent) == "not_permitted"
    assert await code_of(listener, "update_room", title="") == "not_permitted"
    assert await code_of(owner, "move_to_audience") == "not_permitted"
    assert await code_of(listener, "move_to_audience") == "not_on_stage"
    assert await code_of(owner, "accept_speak") == "already_on_stage"
    assert await code_of(owner, "decline_speak") == "already_on_stage"
    assert await code_of(listener, "recording_consent", consent=True) == "not_on_stage"
    # step 7 (values) before 8 (target exists) and 9 (rank).
    assert await code_of(owner, "promote", user=owner.user) == "invalid_value"
    assert await code_of(owner, "ban", user=absent, duration=-1) == "invalid_value"
    assert await code_of(moderator, "remove", user=moderator.user) == "invalid_value"
    # step 8 (target exists) before 9 (rank and role).
    assert await code_of(moderator, "remove", user=absent) == "participant_not_found"
    assert await code_of(owner, "invite_to_speak", user=absent) == "participant_not_found"
    # step 9: rank, then what the action does not apply to.
    assert await code_of(moderator, "remove", user=owner.user) == "not_permitted"
    assert await code_of(owner, "promote", user=moderator.user) == "invalid_value"
    assert await code_of(owner, "invite_to_speak", user=moderator.user) == "already_on_stage"
    # step 9 before 10: the stage (owner and moderator, max_speakers 2) is full.
    assert await code_of(owner, "invite_to_speak", user=listener.user) == "stage_full"
    assert await code_of(listener, "accept_speak") == "no_invitation"
    assert await code_of(owner, "recording_consent", consent=True) == "not_recording"
    # Rooms named by the request are found first.
    assert await code_of(listener, "start_room", room="no-such-room") == "room_not_found"
    assert await code_of(listener, "start_room", room="order") == "not_permitted"
    assert await code_of(owner, "start_room", room="order") == "invalid_value"
    await owner.call("ban", user=outsider.user)
    assert await code_of(outsider, "join", room="no-such-room") == "room_not_found"
    assert await code_of(outsider, "join", room="order", invite="bogus") == "banned"


# --------------------------------------------------------------------------- 2.2, entry 7


async def test_datagram_frame_size_bounds_the_whole_frame(live):
    owner = await live.client("Owner")
    common = await live.client("Common", max_datagram_frame_size=1220)
    tight = await live.client("Tight", max_datagram_frame_size=1100)
    assert owner.limits["max_datagram_size"] == 1100
    assert common.limits["max_datagram_size"] == 1100
    assert tight.limits["max_datagram_size"] == 1097
    await owner.create_room("Frames", room="frames")
    await owner.join("frames")
    key = await own_key(owner)
    await owner.call("unmute")
    got: dict[str, list[int]] = {"common": [], "tight": []}
    common.on_datagram = lambda data: got["common"].append(len(data))
    tight.on_datagram = lambda data: got["tight"].append(len(data))
    await common.join("frames")
    await tight.join("frames")
    level = [HeaderExtension(1, b"\x7f")]
    header = len(datagram(key, 0, level, payload=b""))
    for seq, size in enumerate((1100, 1097)):
        owner.send_datagram(datagram(key, seq, level, payload=bytes(size - header)))
    await until(lambda: len(got["common"]) == 2 and len(got["tight"]) == 1)
    assert got == {"common": [1100, 1097], "tight": [1097]}
    assert not tight.closed  # a frame above its limit would have closed the connection
    assert live.daemon.server.stats.drops["peer_limit"] == 1


# ------------------------------------------------------------------ 11.2, 11.6, entries 8-10


async def test_level_read_from_any_extension_layout_and_smoothed_as_specified(live):
    owner = await live.client("Owner")
    listener = await live.client("Listener")
    await owner.create_room("Levels", room="levels")
    await owner.join("levels")
    key = await own_key(owner)
    await owner.call("unmute")
    await listener.join("levels")
    # Two-byte form, another element before the audio level, V bit clear (the server must not
    # rely on it), a random initial timestamp (11.2).
    extensions = [HeaderExtension(20, b"x"), HeaderExtension(1, bytes((10,)))]
    first_timestamp = secrets.randbits(32)
    for seq in range(8):
        timestamp = (first_timestamp + 960 * seq) & 0xFFFFFFFF
        owner.send_datagram(datagram(key, 100 + seq, extensions, timestamp))
    event = await listener.wait_for_event(msg.Speaking, timeout=10)
    [speaker] = event.speakers
    assert speaker.user == owner.user
    # 11.6: s starts at 127 and moves 0.3 of the way to each packet's level; the event is sent
    # when the set changes, after at least the 2 onset packets.
    smoothed, possible = 127.0, set()
    for count in range(1, 9):
        smoothed += (10 - smoothed) * SMOOTHING
        if count >= 2:
            possible.add(round(smoothed))
    assert speaker.level in possible


async def test_epoch_grows_at_a_rotation_on_sequence_wrap(live):
    owner = await live.client("Owner")
    await owner.create_room("Wrap", room="wrap")
    await owner.join("wrap")
    key = await own_key(owner)
    await owner.call("unmute")
    level = [HeaderExtension(1, b"\x7f")]
    for seq in (65534, 65535, 0):
        owner.send_datagram(datagram(key, seq, level))
    rotated = await owner.wait_for_event(msg.MediaKeyEvent, timeout=10)
    assert rotated.key.user == owner.user
    assert rotated.key.epoch == key.epoch + 1 and rotated.key.flow_id != key.flow_id


async def test_accept_speak_events_in_the_order_of_appendix_a(live, wire):
    owner = await live.client("Owner")
    amina = await live.client("Amina")
    await owner.create_room("Stage", room="stage")
    await owner.join("stage")
    await amina.join("stage")
    await amina.call("raise_hand")
    await owner.call("invite_to_speak", user=amina.user)
    await amina.wait_for_event(msg.SpeakInvitation)
    before = len(received(wire, amina))
    await amina.call("accept_speak")
    kinds = [m["type"] for m in received(wire, amina)[before:]]
    assert kinds == ["media_key", "participant_updated", "room_updated", "ok"]


# --------------------------------------------------------------------------- 6 and 8, entry 4


async def test_every_message_the_server_sends_has_the_documented_json_types(live, wire):
    """Decode every server message of a busy session strictly: an integer field sent as
    ``50.0``, a missing field or an undocumented result field fails here."""
    owner = await live.client("Owner")
    guest = await live.client("Guest")
    knocker = await live.client("Knocker")
    hello = received(wire, owner)[0]
    assert hello["result"]["limits"]["message_rate"] == 50
    assert type(hello["result"]["limits"]["message_rate"]) is int
    sent: dict[tuple[int, int], str] = {}

    async def call(client: SalonClient, type_: str, **fields: Any) -> dict[str, Any]:
        request = msg.REQUEST_TYPES[type_](id=0, **fields)
        result = await client.request(request)  # gives the request its id
        sent[(id(client._reader), request.id)] = type_
        return result

    await call(owner, "list_rooms")
    await call(owner, "create_room", title="Typed", room="typed", policy="approval")
    await call(owner, "get_room", room="typed")
    await call(owner, "join", room="typed")
    invite = await call(owner, "create_invite", role="listener", max_uses=3)
    await call(owner, "list_invites")
    await call(guest, "join", room="typed", invite=invite["invite"]["token"])
    await call(knocker, "join", room="typed")
    knock = await owner.wait_for_event(msg.Knock)
    await call(owner, "approve_knock", request_id=knock.request.request_id)
    await call(guest, "raise_hand")
    await call(owner, "invite_to_speak", user=guest.user)
    await call(guest, "accept_speak")
    await call(guest, "unmute")
    await call(owner, "mute", user=guest.user)
    await call(owner, "promote", user=guest.user)
    await call(owner, "demote", user=guest.user)
    await call(owner, "update_room", title="Typed again", topics=["types"])
    await call(owner, "start_recording")
    await call(owner, "recording_consent", consent=False)
    await call(owner, "stop_recording")
    await call(owner, "ban", user=knocker.user, duration=60)
    await call(owner, "unban", user=knocker.user)
    await call(owner, "revoke_invite", token=invite["invite"]["token"])
    await call(owner, "close_room")
    await guest.wait_for_event(msg.RoomClosed)

    checked = 0
    readers = {id(c._reader) for c in (owner, guest, knocker)}
    for reader, payload in wire:
        if reader not in readers:
            continue
        message = msg.decode_server_message(payload)  # strict: 50.0 is no integer
        checked += 1
        if isinstance(message, msg.Ok) and (reader, message.re) in sent:
            request_type = sent[(reader, message.re)]
            shape = RESULTS.get(request_type)
            if shape is None:
                assert message.result == {}, f"{request_type} returns {{}}"
            else:
                msgspec.convert(message.result, shape, strict=True)
    assert checked > 40
    assert len(sent) >= 20


class RefuseEverything:
    """A plugin whose ``authorize`` refuses every request it is asked about."""

    @hookimpl
    def authorize(self, identity: Identity, action: str) -> Any:
        return Deny("closed for maintenance")


async def test_session_state_comes_before_plugins(tmp_path):
    async with plugin_daemon(tmp_path, {"refuse": RefuseEverything()}) as running:
        client = await running.client("Ada", credentials=guest())
        # Out of place: the session-state code, not the plugin's refusal (3.6 steps 4, 5).
        assert await code_of(client, "promote", user="someone") == "not_in_room"
        assert await code_of(client, "cancel_knock") == "no_knock"
        assert await code_of(client, "leave") == "not_in_room"
        # In place: the plugin decides.
        assert await code_of(client, "create_room", title="Nope") == "denied_by_plugin"
