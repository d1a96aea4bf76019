"""The operator path: owner rights in any room without being a member."""

from __future__ import annotations

import pytest

from salon.daemon.core import CoreError, Identity, ModerationTaken, RoomClosed
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, build_request, dump, of_type, received


def test_only_operators_may_use_the_admin_path() -> None:
    h = Harness()
    h.room("owner")
    before = dump(h.core)
    with pytest.raises(CoreError) as info:
        h.core.admin_request(Identity("eve", "Eve"), "r1", build_request(m.CloseRoom), h.now)
    assert info.value.code == ErrorCode.NOT_PERMITTED
    assert dump(h.core) == before


def test_operator_creates_rooms_without_limit_and_owns_them() -> None:
    h = Harness()
    for i in range(7):
        result = h.admin("ignored", m.CreateRoom, room=f"ops{i}", title="Town hall")
    assert result["room"]["owner"] == "root"
    assert h.core.rooms["ops0"].owner == "root"


def test_operator_acts_on_members_including_the_owner() -> None:
    h = Harness()
    h.room("owner")
    h.moderator("mod")
    lis = h.join("lis")
    owner = h.sessions["owner"]
    h.drain()
    assert h.admin("r1", m.Remove, user="owner", reason="abuse") == {}
    events = h.drain()
    assert received(events, m.Removed)[owner] == [m.Removed(room="r1", by="root", reason="abuse")]
    assert h.core.rooms["r1"].owner == "mod"  # the moderator took over
    moderation = of_type(events, ModerationTaken)
    assert [(e.actor, e.action, e.target) for e in moderation] == [("root", "remove", "owner")]
    h.admin("r1", m.Promote, user="lis")
    h.admin("r1", m.Mute, user="lis")
    assert h.member("lis").muted_by_moderator
    h.admin("r1", m.Ban, user="lis", duration=60)
    assert h.core.session_room(lis) is None
    assert h.admin("r1", m.ListInvites) == {"invites": []}
    assert h.core.room_snapshot("r1").you == ""


def test_banned_owner_loses_the_room() -> None:
    h = Harness()
    h.room("owner")
    h.moderator("mod")
    h.admin("r1", m.Ban, user="owner", reason="abuse")
    room = h.core.rooms["r1"]
    assert room.owner == "mod"
    assert room.moderators == []
    h.refuse(h.sessions["owner"], ErrorCode.BANNED, m.Join, room="r1")


def test_operator_closes_and_starts_rooms() -> None:
    h = Harness()
    alice = h.connect("alice")
    h.do(alice, m.CreateRoom, room="s", title="t", scheduled_for=h.now + 100)
    h.admin(None, m.StartRoom, room="s")
    assert h.core.rooms["s"].state == "live"
    h.do(alice, m.Join, room="s")
    h.drain()
    assert h.admin("s", m.CloseRoom) == {}
    events = h.drain()
    assert received(events, m.RoomClosed) == {
        alice: [m.RoomClosed(room="s", reason="closed_by_operator")]
    }
    assert of_type(events, RoomClosed) == [RoomClosed("s", "closed_by_operator")]


@pytest.mark.parametrize(
    ("room", "cls", "fields", "code"),
    [
        ("r1", m.Join, {"room": "r1"}, ErrorCode.INVALID_VALUE),
        ("r1", m.Leave, {}, ErrorCode.INVALID_VALUE),
        ("r1", m.RaiseHand, {}, ErrorCode.INVALID_VALUE),
        ("r1", m.Mute, {}, ErrorCode.INVALID_VALUE),
        ("r1", m.AcceptSpeak, {}, ErrorCode.INVALID_VALUE),
        (None, m.CloseRoom, {}, ErrorCode.INVALID_VALUE),
        ("nope", m.CloseRoom, {}, ErrorCode.ROOM_NOT_FOUND),
        ("r1", m.Remove, {"user": "ghost"}, ErrorCode.PARTICIPANT_NOT_FOUND),
    ],
)
def test_operator_refusals_change_nothing(
    room: str | None, cls: type, fields: dict, code: ErrorCode
) -> None:
    h = Harness()
    h.room("owner")
    h.drain()
    before = dump(h.core)
    with pytest.raises(CoreError) as info:
        h.admin(room, cls, **fields)
    assert info.value.code == code
    assert dump(h.core) == before
    assert h.drain() == []


def test_requests_from_unknown_sessions_and_session_layer_types() -> None:
    h = Harness()
    with pytest.raises(CoreError) as info:
        h.core.handle_request(99, build_request(m.ListRooms), h.now)
    assert info.value.code == ErrorCode.NOT_AUTHENTICATED
    session = h.connect("alice")
    with pytest.raises(CoreError) as info:
        h.core.handle_request(session, build_request(m.Ping), h.now)
    assert info.value.code == ErrorCode.BAD_MESSAGE
    with pytest.raises(CoreError) as info:
        h.core.connect(session, Identity("alice", "Alice"), h.now)
    assert info.value.code == ErrorCode.ALREADY_AUTHENTICATED
