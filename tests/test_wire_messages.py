"""Control message decoding: every request and event, precise errors, hostile input."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import (
    EVENT_TYPES,
    MAX_MESSAGE_SIZE,
    REQUEST_TYPES,
    ErrorCode,
    MessageError,
    decode_request,
    decode_server_message,
    encode,
)

# One valid request of each type, with every required field.
REQUEST_SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"version": "salon/1", "display_name": "Ada", "credentials": {"token": "t"}},
    "ping": {},
    "list_rooms": {"topic": "jazz"},
    "get_room": {"room": "lobby"},
    "create_room": {
        "title": "Late night jazz",
        "room": "jazz",
        "topics": ["jazz", "music"],
        "policy": "approval",
        "max_speakers": 5,
        "mute_on_join": True,
        "persistent": False,
        "scheduled_for": 1700000000.5,
        "description": "bring a record",
    },
    "start_room": {"room": "jazz"},
    "subscribe_room": {"room": "jazz"},
    "unsubscribe_room": {"room": "jazz"},
    "join": {"room": "jazz", "invite": "AbCdEfGhIjKlMnOpQrStUv"},
    "cancel_knock": {},
    "leave": {},
    "approve_knock": {"request_id": "r1"},
    "deny_knock": {"request_id": "r1", "reason": "full"},
    "raise_hand": {},
    "lower_hand": {"user": "bob"},
    "invite_to_speak": {"user": "bob"},
    "accept_speak": {},
    "decline_speak": {},
    "move_to_audience": {"user": "bob"},
    "mute": {"user": "bob"},
    "unmute": {},
    "remove": {"user": "bob", "reason": "spam"},
    "ban": {"user": "bob", "reason": "spam", "duration": 3600.0},
    "unban": {"user": "bob"},
    "promote": {"user": "bob"},
    "demote": {"user": "bob"},
    "transfer_ownership": {"user": "bob"},
    "update_room": {"title": "New title", "topics": [], "policy": "invite", "max_speakers": 3},
    "close_room": {},
    "create_invite": {"role": "speaker", "expires_in": 600.0, "max_uses": 3},
    "revoke_invite": {"token": "AbCdEfGhIjKlMnOpQrStUv"},
    "list_invites": {},
    "list_participants": {"after": "alice", "limit": 50},
    "start_recording": {},
    "stop_recording": {},
    "recording_consent": {"consent": True},
    "set_stream": {"on": True},
    "receiver_report": {
        "reports": [{"flow_id": 4, "expected": 75, "lost": 4, "late": 1, "jitter_ms": 6.5}]
    },
}

SUMMARY = m.RoomSummary(room="jazz", title="Late night jazz", topics=["jazz"], owner="ada")
PARTICIPANT = m.Participant(user="bob", display_name="Bob", role="speaker", verified={"a": "b"})
KNOCK = m.JoinRequestInfo(
    request_id="r1",
    user="carol",
    display_name="Carol",
    trust=["new account"],
    requested_at=1.5,
    expires_at=121.5,
)
MEDIA_KEY = m.MediaKey(user="bob", flow_id=7, ssrc=0xCAFEBABE, key="a2V5", epoch=2)

# One event of each type.
EVENT_SAMPLES: list[msgspec.Struct] = [
    m.RoomState(
        room=m.RoomSnapshot(
            summary=SUMMARY,
            participants=[PARTICIPANT],
            hand_queue=["carol"],
            knocks=[KNOCK],
            media_keys=[MEDIA_KEY],
            you="ada",
        )
    ),
    m.RoomUpdated(room=SUMMARY),
    m.RoomClosed(room="jazz", reason="closed_by_host"),
    m.RoomReminder(room="jazz", title="Late night jazz", starts_at=1700000000.5),
    m.RoomStarted(room=SUMMARY),
    m.ParticipantJoined(room="jazz", participant=PARTICIPANT),
    m.ParticipantLeft(room="jazz", user="bob", reason="left"),
    m.ParticipantUpdated(room="jazz", participant=PARTICIPANT),
    m.OwnerChanged(room="jazz", user="bob"),
    m.HandQueue(room="jazz", users=["carol", "dave"]),
    m.Knock(room="jazz", request=KNOCK),
    m.KnockResolved(room="jazz", request_id="r1", outcome="approved", by="ada"),
    m.KnockDenied(room="jazz", reason="expired"),
    m.SpeakInvitation(room="jazz", by="ada"),
    m.SpeakInvitationDeclined(room="jazz", user="bob"),
    m.MediaKeyEvent(room="jazz", key=MEDIA_KEY),
    m.MediaKeyRevoked(room="jazz", user="bob", flow_id=7),
    m.Speaking(room="jazz", speakers=[m.SpeakerLevel(user="bob", level=30)]),
    m.Muted(room="jazz", by="ada"),
    m.MemberMuted(room="jazz", user="bob", by="plugin:loudness_guard", reason="too loud"),
    m.Removed(room="jazz", by="ada", reason="spam", banned=True, until=99.0),
    m.RecordingStarted(room="jazz", by="ada", recording="pW2xK9qLm0Za"),
    m.RecordingStopped(room="jazz", by="ada", recording="pW2xK9qLm0Za", reason="stopped"),
    m.RecordingConsentRequested(room="jazz", recording="pW2xK9qLm0Za"),
    m.RecordingConsentChanged(room="jazz", user="bob", consent=True),
    m.ServerShutdown(reason="maintenance", reconnect_after=30.0),
    m.Stream(room="jazz", playlist=None),
    m.LossReport(
        room="jazz",
        flow_id=4,
        loss=0.05,
        uplink_loss=0.01,
        late=0.0,
        jitter_ms=6.5,
        reporters=3,
        red=True,
    ),
]

REPLY_SAMPLES: list[msgspec.Struct] = [
    m.Ok(re=1),
    m.Ok(re=2, result={"room": "jazz", "nested": {"list": [1, 2.5, None, True]}}),
    m.Error(re=3, code=ErrorCode.STAGE_FULL.value, message="the stage is full"),
    m.Error(re=None, code=ErrorCode.BAD_MESSAGE.value, message="not a JSON object"),
]


def request_bytes(request_type: str, request_id: object = 1, /, **fields: Any) -> bytes:
    return json.dumps({"type": request_type, "id": request_id, **fields}).encode()


def decode_error(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode_request(data)
    return info.value


# --------------------------------------------------------------------------- valid requests


def test_samples_cover_every_request_type() -> None:
    assert set(REQUEST_SAMPLES) == set(REQUEST_TYPES)


@pytest.mark.parametrize("request_type", sorted(REQUEST_SAMPLES))
def test_every_request_type_decodes(request_type: str) -> None:
    fields = REQUEST_SAMPLES[request_type]
    request = decode_request(request_bytes(request_type, 42, **fields))
    assert type(request) is REQUEST_TYPES[request_type]
    assert request.id == 42
    for name, value in fields.items():
        assert msgspec.to_builtins(getattr(request, name)) == value
    assert decode_request(encode(request)) == request


def test_defaults_and_unknown_fields() -> None:
    request = decode_request(request_bytes("create_room", 5, title="t", future_field=[1, {}]))
    assert request == m.CreateRoom(id=5, title="t")
    assert request.policy == "open"
    assert request.max_speakers == 10


def test_field_order_does_not_matter() -> None:
    assert decode_request(b'{"id": 9, "room": "jazz", "type": "join"}') == m.Join(id=9, room="jazz")


# --------------------------------------------------------------------------- refused requests


def test_unknown_type_keeps_the_request_id() -> None:
    error = decode_error(request_bytes("fly_to_the_moon", 17))
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.request_id == 17
    assert "fly_to_the_moon" in str(error)


def test_missing_type() -> None:
    error = decode_error(b'{"id": 3}')
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.request_id == 3
    assert "type" in str(error)


@pytest.mark.parametrize(
    ("request_type", "fields", "path"),
    [
        ("get_room", {"room": 5}, "$.room"),
        ("join", {"room": "jazz", "invite": 1}, "$.invite"),
        ("create_room", {"title": "t", "max_speakers": "ten"}, "$.max_speakers"),
        ("create_room", {"title": "t", "topics": ["a", 2]}, "$.topics[1]"),
        ("create_room", {"title": "t", "policy": "secret"}, "$.policy"),
        ("create_room", {"title": "t", "mute_on_join": "yes"}, "$.mute_on_join"),
        ("hello", {"version": "salon/1", "display_name": "x", "credentials": []}, "$.credentials"),
        (
            "hello",
            {"version": "salon/1", "display_name": "x", "credentials": {"a": 1}},
            "$.credentials",
        ),
        ("ban", {"user": "bob", "duration": "forever"}, "$.duration"),
        ("create_invite", {"role": "owner"}, "$.role"),
        ("update_room", {"max_speakers": 1.5}, "$.max_speakers"),
    ],
)
def test_wrong_field_type_names_the_field(
    request_type: str, fields: dict[str, Any], path: str
) -> None:
    error = decode_error(request_bytes(request_type, 8, **fields))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.request_id == 8
    assert f"`{path}" in str(error)


def test_missing_required_field() -> None:
    error = decode_error(request_bytes("get_room", 4))
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.request_id == 4
    assert "room" in str(error)


@pytest.mark.parametrize("bad_id", ['"7"', "1.5", "true", "null"])
def test_unusable_request_id(bad_id: str) -> None:
    error = decode_error(b'{"type": "ping", "id": ' + bad_id.encode() + b"}")
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.request_id is None
    assert "$.id" in str(error)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ping",
        b"{",
        b'{"type": "ping", "id": 1',
        b'{"type": "ping", "id": 1} trailing',
        b"\xff\xfe\x00",
        b"\xef\xbb\xbf" + request_bytes("ping"),
        b'{"type": "ping", "id": 1\xff}',
        b"[]",
        b'[{"type": "ping", "id": 1}]',
        b'"ping"',
        b"42",
        b"null",
    ],
)
def test_not_a_json_object(data: bytes) -> None:
    error = decode_error(data)
    assert error.code is ErrorCode.BAD_MESSAGE
    assert error.request_id is None


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "get_room", "id": 1, "room": "\xff"}',
        b'{"type": "ping\xc3", "id": 1}',
    ],
)
def test_invalid_utf8_inside_a_string(data: bytes) -> None:
    assert decode_error(data).code is ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize("field", ["extra", "type"])
def test_deeply_nested_value(field: str) -> None:
    nested = b"[" * 5000 + b"]" * 5000
    data = b'{"id": 1, "' + field.encode() + b'": ' + nested + b"}"
    assert len(data) <= MAX_MESSAGE_SIZE
    assert decode_error(data).code is ErrorCode.BAD_MESSAGE


def test_size_limit() -> None:
    padding = "x" * (MAX_MESSAGE_SIZE - len(request_bytes("ping", 1, pad="")))
    fits = request_bytes("ping", 1, pad=padding)
    assert len(fits) == MAX_MESSAGE_SIZE
    assert decode_request(fits) == m.Ping(id=1)
    error = decode_error(request_bytes("ping", 1, pad=padding + "x"))
    assert error.code is ErrorCode.TOO_LARGE
    assert "65537 bytes" in str(error)
    with pytest.raises(MessageError) as info:
        decode_server_message(b" " * (MAX_MESSAGE_SIZE + 1))
    assert info.value.code is ErrorCode.TOO_LARGE


# --------------------------------------------------------------------------- server messages


def test_samples_cover_every_event_type() -> None:
    assert {type(event) for event in EVENT_SAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize(
    "message", EVENT_SAMPLES + REPLY_SAMPLES, ids=lambda message: type(message).__name__
)
def test_server_messages_round_trip(message: msgspec.Struct) -> None:
    encoded = encode(message)
    assert json.loads(encoded)["type"] in {*EVENT_TYPES, "ok", "error"}
    assert decode_server_message(encoded) == message


def test_server_message_errors() -> None:
    for data in (b"[]", b"{", b'{"type": "nope"}', b'{"type": "ok"}', b'{"type": "ok", "re": "1"}'):
        with pytest.raises(MessageError) as info:
            decode_server_message(data)
        assert info.value.code is ErrorCode.BAD_MESSAGE


def test_requests_are_not_server_messages() -> None:
    with pytest.raises(MessageError):
        decode_server_message(request_bytes("ping"))


# --------------------------------------------------------------------------- hostile input

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    for decode in (decode_request, decode_server_message):
        try:
            decode(data)
        except MessageError:
            pass


@given(
    st.sampled_from([*sorted(REQUEST_TYPES), "ok", "error", "room_state", "nope"]),
    st.one_of(st.integers(), st.text(max_size=4), st.none()),
    st.dictionaries(
        st.sampled_from(["room", "user", "title", "topics", "re", "result", "level", "x"]),
        json_values,
        max_size=4,
    ),
)
def test_random_objects_raise_only_message_error(
    request_type: str, request_id: object, fields: dict[str, Any]
) -> None:
    data = json.dumps({"type": request_type, "id": request_id, **fields}).encode()
    for decode in (decode_request, decode_server_message):
        try:
            decode(data)
        except MessageError as exc:
            assert isinstance(exc.code, ErrorCode)
