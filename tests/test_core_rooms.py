"""Rooms: creation and validation, listing, scheduled rooms, closing, owner absence."""

from __future__ import annotations

import re

import pytest

from salon.daemon.core import Limits, RoomClosed, RoomCreated
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, of_type, received, recipients


def test_create_room_normalises_title_and_topics() -> None:
    h = Harness()
    alice = h.connect("alice")
    result = h.do(
        alice,
        m.CreateRoom,
        room="jazz",
        title="  Late night jazz  ",
        topics=[" Music", "music", "JAZZ ", "talk"],
        max_speakers=3,
    )
    summary = result["room"]
    assert summary["room"] == "jazz"
    assert summary["title"] == "Late night jazz"
    assert summary["topics"] == ["music", "jazz", "talk"]
    assert summary["owner"] == "alice"
    assert summary["state"] == "live"
    assert (summary["speakers"], summary["listeners"], summary["max_speakers"]) == (0, 0, 3)
    assert of_type(h.drain(), RoomCreated) == [RoomCreated("jazz", "alice")]
    # Creating does not join.
    assert h.core.session_room(alice) is None


def test_generated_room_id_is_a_slug() -> None:
    h = Harness()
    alice = h.connect("alice")
    ids = {h.do(alice, m.CreateRoom, title="t")["room"]["room"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[a-z0-9]{8}", room) for room in ids)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"topics": [f"t{i}" for i in range(11)]}, "topics"),
        ({"topics": [" "]}, "topics"),
        ({"topics": ["x" * 41]}, "topics"),
        ({"max_speakers": 0}, "max_speakers"),
        ({"max_speakers": 101}, "max_speakers"),
        ({"room": "Upper"}, "room"),
        ({"room": "-dash"}, "room"),
        ({"room": "a" * 65}, "room"),
        ({"room": ""}, "room"),
        ({"policy": "secret"}, "policy"),
        ({"description": "d" * 2001}, "description"),
        ({"scheduled_for": float("nan")}, "scheduled_for"),
    ],
)
def test_create_room_rejects_out_of_range_values(fields: dict, named: str) -> None:
    h = Harness()
    alice = h.connect("alice")
    fields.setdefault("title", "ok")
    error = h.refuse(alice, ErrorCode.INVALID_VALUE, m.CreateRoom, **fields)
    assert named in error.message


def test_edge_values_are_accepted() -> None:
    h = Harness()
    alice = h.connect("alice")
    result = h.do(
        alice,
        m.CreateRoom,
        room="a" * 64,
        title="x" * 200,
        topics=[f"{i}" * 40 for i in range(10)],
        max_speakers=100,
    )
    assert result["room"]["max_speakers"] == 100
    # Duplicates do not count towards the ten.
    h.do(alice, m.CreateRoom, room="b", title="t", topics=["a"] * 11 + [f"t{i}" for i in range(9)])


def test_operator_cap_on_max_speakers() -> None:
    h = Harness(Limits(max_speakers_cap=8))
    alice = h.connect("alice")
    error = h.refuse(alice, ErrorCode.INVALID_VALUE, m.CreateRoom, title="t", max_speakers=9)
    assert "max_speakers must be 1..8" in error.message
    h.do(alice, m.CreateRoom, room="r1", title="t", max_speakers=8)
    h.do(alice, m.Join, room="r1")
    h.refuse(alice, ErrorCode.INVALID_VALUE, m.UpdateRoom, max_speakers=9)


def test_room_exists_and_closed_ids_are_reusable() -> None:
    h = Harness()
    h.room("alice", "same")
    bob = h.connect("bob")
    h.refuse(bob, ErrorCode.ROOM_EXISTS, m.CreateRoom, room="same", title="again")
    h.do(h.sessions["alice"], m.CloseRoom)
    h.refuse(bob, ErrorCode.ROOM_CLOSED, m.Join, room="same")
    h.do(bob, m.CreateRoom, room="same", title="mine now")
    assert h.core.rooms["same"].owner == "bob"
    assert h.core.rooms["same"].state == "live"


def test_room_limit_per_user() -> None:
    h = Harness(Limits(max_rooms_per_user=2))
    alice = h.connect("alice")
    h.do(alice, m.CreateRoom, room="a", title="t")
    h.do(alice, m.CreateRoom, room="b", title="t")
    h.refuse(alice, ErrorCode.ROOM_LIMIT, m.CreateRoom, room="c", title="t")
    # A closed room no longer counts.
    h.do(alice, m.Join, room="a")
    h.do(alice, m.CloseRoom)
    h.do(alice, m.CreateRoom, room="c", title="t")


def test_list_rooms_filters_by_topic_and_hides_closed() -> None:
    h = Harness()
    h.room("alice", "busy", topics=["music"])
    h.join("bob", "busy")
    h.room("carol", "quiet", topics=["Talk"])
    dave = h.connect("dave")
    h.do(dave, m.CreateRoom, room="later", title="t", topics=["music"], scheduled_for=h.now + 600)
    h.room("erin", "gone")
    h.do(h.sessions["erin"], m.CloseRoom)

    listed = [s.room for s in h.core.list_rooms()]
    assert listed == ["busy", "quiet", "later"]  # live by members, then scheduled
    assert [s.room for s in h.core.list_rooms("MUSIC ")] == ["busy", "later"]
    result = h.do(dave, m.ListRooms, topic="talk")
    assert [r["room"] for r in result["rooms"]] == ["quiet"]
    summary = h.do(dave, m.GetRoom, room="busy")["room"]
    assert (summary["speakers"], summary["listeners"]) == (1, 1)
    h.refuse(dave, ErrorCode.ROOM_NOT_FOUND, m.GetRoom, room="nope")
    h.refuse(dave, ErrorCode.ROOM_CLOSED, m.GetRoom, room="gone")


def test_scheduled_room_only_admits_its_owner_and_starts_on_request() -> None:
    h = Harness()
    alice = h.connect("alice")
    bob = h.connect("bob")
    result = h.do(alice, m.CreateRoom, room="s", title="Soon", scheduled_for=h.now + 3600)
    assert result["room"]["state"] == "scheduled"
    h.refuse(bob, ErrorCode.ROOM_NOT_LIVE, m.Join, room="s")
    h.do(alice, m.Join, room="s")
    assert h.core.rooms["s"].state == "scheduled"  # joining does not start it
    h.refuse(bob, ErrorCode.NOT_PERMITTED, m.StartRoom, room="s")
    h.drain()
    result = h.do(alice, m.StartRoom, room="s")
    assert result["room"]["state"] == "live"
    assert recipients(h.drain(), m.RoomUpdated) == {alice}
    h.refuse(alice, ErrorCode.INVALID_VALUE, m.StartRoom, room="s")
    h.join("bob", "s")


def test_scheduled_room_does_not_close_without_its_owner() -> None:
    h = Harness()
    alice = h.connect("alice")
    h.do(alice, m.CreateRoom, room="s", title="t", scheduled_for=h.now + 10_000)
    h.advance(5_000)
    assert h.core.rooms["s"].state == "scheduled"
    h.do(alice, m.StartRoom, room="s")  # started without joining: the grace period begins
    h.advance(61)
    assert h.core.rooms["s"].state == "closed"


def test_past_schedule_creates_a_live_room() -> None:
    h = Harness()
    alice = h.connect("alice")
    result = h.do(alice, m.CreateRoom, room="s", title="t", scheduled_for=h.now - 1)
    assert result["room"]["state"] == "live"


def test_close_room_tells_everyone_and_empties_the_room() -> None:
    h = Harness()
    h.room("owner")
    mod = h.moderator("mod")
    spk = h.speaker("spk")
    lis = h.join("lis")
    h.do(mod, m.UpdateRoom, policy="approval")
    knocker = h.connect("knocker")
    h.do(knocker, m.Join, room="r1")
    h.refuse(spk, ErrorCode.NOT_PERMITTED, m.CloseRoom)
    h.refuse(lis, ErrorCode.NOT_PERMITTED, m.CloseRoom)
    h.drain()
    h.do(mod, m.CloseRoom)
    events = h.drain()
    closed = received(events, m.RoomClosed)
    assert set(closed) == {h.sessions["owner"], mod, spk, lis}
    assert all(
        msgs == [m.RoomClosed(room="r1", reason="closed_by_host")] for msgs in closed.values()
    )
    assert received(events, m.KnockDenied) == {knocker: [m.KnockDenied(room="r1", reason="closed")]}
    assert of_type(events, RoomClosed) == [RoomClosed("r1", "closed_by_host")]
    for session in (h.sessions["owner"], mod, spk, lis, knocker):
        assert h.core.session_room(session) is None
    assert h.core.forwarder.flows and all(not f.active for f in h.core.forwarder.flows.values())
    h.refuse(lis, ErrorCode.ROOM_CLOSED, m.Join, room="r1")
    h.refuse(knocker, ErrorCode.NO_KNOCK, m.CancelKnock)
    assert h.core.list_rooms() == []


def test_owner_leaving_hands_the_room_to_the_earliest_promoted_moderator_present() -> None:
    h = Harness()
    owner = h.room("owner")
    owner = h.sessions["owner"]
    first = h.moderator("first")
    second = h.moderator("second")
    third = h.moderator("third")
    lis = h.join("lis")
    h.do(first, m.Leave)
    h.drain()
    h.do(owner, m.Leave)
    events = h.drain()
    room = h.core.rooms["r1"]
    assert room.owner == "second"
    assert room.moderators == ["first", "third", "owner"]
    assert h.member("second").role == "owner"
    changed = received(events, m.OwnerChanged)
    assert set(changed) == {second, third, lis}
    assert room.close_at is None
    # The old owner comes back as a moderator.
    h.do(owner, m.Join, room="r1")
    assert h.member("owner").role == "moderator"
    # The first moderator too, and the new owner stays owner.
    h.do(first, m.Join, room="r1")
    assert h.member("first").role == "moderator"
    assert h.member("second").role == "owner"


def test_room_closes_when_the_owner_stays_away_for_the_grace_period() -> None:
    h = Harness()
    h.room("owner")
    lis = h.join("lis")
    h.do(h.sessions["owner"], m.Leave)
    assert h.core.get_timer() == pytest.approx(h.now + 60)
    h.advance(59)
    assert h.core.rooms["r1"].state == "live"
    h.drain()
    h.advance(1)
    events = h.drain()
    assert h.core.rooms["r1"].state == "closed"
    assert received(events, m.RoomClosed) == {lis: [m.RoomClosed(room="r1", reason="owner_left")]}
    assert of_type(events, RoomClosed) == [RoomClosed("r1", "owner_left")]


def test_owner_returning_within_grace_keeps_the_room() -> None:
    h = Harness()
    h.room("owner")
    h.join("lis")
    owner = h.sessions["owner"]
    h.core.disconnect(owner, h.now)
    h.advance(30)
    again = h.connect("owner")
    h.do(again, m.Join, room="r1")
    assert h.member("owner").role == "owner"
    h.advance(100)
    assert h.core.rooms["r1"].state == "live"


def test_moderator_arriving_during_grace_inherits_at_the_deadline() -> None:
    h = Harness()
    h.room("owner")
    mod = h.moderator("mod")
    h.do(mod, m.Leave)
    h.do(h.sessions["owner"], m.Leave)
    h.advance(30)
    h.do(mod, m.Join, room="r1")
    assert h.core.rooms["r1"].owner == "owner"
    h.advance(30)
    room = h.core.rooms["r1"]
    assert room.state == "live"
    assert room.owner == "mod"
    assert h.member("mod").role == "owner"


def test_empty_room_closes_after_grace() -> None:
    h = Harness()
    alice = h.connect("alice")
    h.do(alice, m.CreateRoom, room="r1", title="t")
    h.drain()
    h.advance(60)
    assert of_type(h.drain(), RoomClosed) == [RoomClosed("r1", "empty")]


def test_persistent_room_stays_live_without_owner_or_members() -> None:
    h = Harness()
    h.room("owner", persistent=True)
    h.join("lis")
    h.do(h.sessions["owner"], m.Leave)
    h.advance(1_000)
    assert h.core.rooms["r1"].state == "live"
    h.do(h.sessions["lis"], m.Leave)
    h.advance(1_000)
    assert h.core.rooms["r1"].state == "live"
    assert h.core.get_timer() is None


def test_persistent_room_keeps_its_owner_when_the_owner_leaves() -> None:
    h = Harness()
    h.room("owner", persistent=True)
    owner = h.sessions["owner"]
    h.moderator("mod")
    h.do(owner, m.Leave)
    events = h.drain()
    room = h.core.rooms["r1"]
    assert room.owner == "owner"
    assert h.member("mod").role == "moderator"
    assert received(events, m.OwnerChanged) == {}
    h.do(owner, m.Join, room="r1")
    assert h.member("owner").role == "owner"


def test_update_room_validates_and_tells_members() -> None:
    h = Harness()
    h.room("owner")
    mod = h.moderator("mod")
    lis = h.join("lis")
    h.refuse(mod, ErrorCode.INVALID_VALUE, m.UpdateRoom, title="ok", max_speakers=0)
    h.refuse(lis, ErrorCode.NOT_PERMITTED, m.UpdateRoom, title="x")
    h.drain()
    assert h.do(mod, m.UpdateRoom, title=" New ", topics=["A", "a"], policy="invite") == {}
    events = h.drain()
    summary = received(events, m.RoomUpdated)[mod][0].room
    assert (summary.title, summary.topics, summary.policy) == ("New", ["a"], "invite")
    assert recipients(events, m.RoomUpdated) == {h.sessions["owner"], mod, lis}
    # Nothing changed: no event.
    h.do(mod, m.UpdateRoom, title="New")
    assert recipients(h.drain(), m.RoomUpdated) == set()


def test_random_tokens_never_start_with_a_dash() -> None:
    from salon.daemon.core.ids import random_token

    # 0xf8 >> 2 == 62, the index of "-" in the urlsafe alphabet: the first draw is redrawn.
    draws = iter([b"\xf8" * 16, b"\x00" * 16])
    token = random_token(lambda size: next(draws)[:size], 16)
    assert token == "A" * 22
