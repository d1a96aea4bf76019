"""Rooms with thousands of members: bounded room_state, paging, and quiet audience churn."""

from __future__ import annotations

import random

import pytest

from salon.daemon.core import CoreError, Limits
from salon.daemon.core.events import Deliver
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode, MessageError
from tests.test_core_support import Harness, received

LONG_NAME = "Listener with a rather long display name number "


def big_room(
    listeners: int, limits: Limits | None = None, speakers: int = 3, **settings: object
) -> Harness:
    """owner, ``speakers`` speakers spk0.., and ``listeners`` listeners l00000.. with long names."""
    h = Harness(limits)
    h.room("owner", **settings)
    for i in range(speakers):
        h.speaker(f"spk{i}")
    for i in range(listeners):
        user = f"l{i:05d}"
        h.connect(user, name=f"{LONG_NAME}{i}"[:64])
        h.join(user)
        h.drain()  # as the server pumps after every request (a backlog slows the GC down)
    return h


def deliveries(events: list[object]) -> int:
    """Messages sent, one per receiving session."""
    return sum(len(e.sessions) for e in events if isinstance(e, Deliver))


def test_room_state_of_a_room_of_thousands_is_bounded_and_says_it_is_partial() -> None:
    h = big_room(3000)
    h.connect("late", name=LONG_NAME)
    h.join("late")
    (state,) = received(h.drain(), m.RoomState)[h.sessions["late"]]
    assert len(m.encode(state)) <= m.MAX_MESSAGE_SIZE
    snapshot = state.room
    users = [p.user for p in snapshot.participants]
    assert users[:4] == ["owner", "spk0", "spk1", "spk2"]  # the stage first, complete
    assert "late" in users
    assert len(users) == 4 + 1 + 100  # stage, the receiver, snapshot_listeners
    assert len(set(users)) == len(users)
    assert snapshot.partial is True
    assert {k.user for k in snapshot.media_keys} == {"owner", "spk0", "spk1", "spk2"}
    assert (snapshot.summary.speakers, snapshot.summary.listeners) == (4, 3001)


def test_a_full_stage_with_real_names_is_listed_whole_in_a_big_room() -> None:
    h = big_room(1500, speakers=99, max_speakers=100, description="d" * 2000, title="t" * 200)
    for i in range(20):
        h.moderator(f"mod{i}")
    h.connect("late", name=LONG_NAME, verified={"email_domain": "example.org"})
    h.join("late")
    (state,) = received(h.drain(), m.RoomState)[h.sessions["late"]]
    assert len(m.encode(state)) <= m.MAX_MESSAGE_SIZE
    stage = [p.user for p in state.room.participants if p.role != "listener"]
    assert len(stage) == 120
    assert len(state.room.media_keys) == 120
    assert state.room.partial


def test_a_small_room_state_is_complete() -> None:
    h = big_room(20)
    state = h.core.room_snapshot("r1", h.sessions["l00003"])
    assert state.partial is False
    assert len(state.participants) == 24


def test_room_state_for_hosts_lists_hands_and_knocks_within_the_limit() -> None:
    h = big_room(2000, Limits(snapshot_listeners=10))
    for i in range(0, 2000, 2):
        h.do(h.sessions[f"l{i:05d}"], m.RaiseHand)
    h.do(h.sessions["owner"], m.UpdateRoom, policy="approval")
    for i in range(300):
        h.join(f"knocker{i}")
    h.drain()
    state = h.core.room_snapshot("r1", h.sessions["owner"])
    assert len(m.encode(m.RoomState(room=state))) <= m.MAX_MESSAGE_SIZE
    assert state.hand_queue_total == 1000
    assert state.knocks_total == 300
    assert state.hand_queue[:3] == ["l00000", "l00002", "l00004"]
    assert 0 < len(state.hand_queue) <= 1000
    assert state.partial
    # A listener sees no hands and no knocks.
    listener = h.core.room_snapshot("r1", h.sessions["l00001"])
    assert (listener.hand_queue, listener.knocks) == ([], [])
    assert (listener.hand_queue_total, listener.knocks_total) == (0, 0)


def test_hand_queue_event_lists_the_first_hands_and_counts_all() -> None:
    h = big_room(300)
    for i in range(300):
        h.do(h.sessions[f"l{i:05d}"], m.RaiseHand)
    events = h.drain()
    last = received(events, m.HandQueue)[h.sessions["owner"]][-1]
    assert last.total == 300
    assert last.users == [f"l{i:05d}" for i in range(m.MAX_HANDS_LISTED)]


def test_paging_lists_every_member_exactly_once_while_members_come_and_go() -> None:
    h = big_room(3000, Limits(audience_events_above=50))
    core = h.core
    rng = random.Random(5)
    stayed = set(core.rooms["r1"].members)
    ever = set(stayed)
    seen: list[str] = []
    after: str | None = None
    newcomer = 0
    pages = 0
    while True:
        page = h.do(h.sessions["owner"], m.ListParticipants, after=after, limit=rng.randint(1, 500))
        pages += 1
        assert page["total"] == len(core.rooms["r1"].members)
        seen.extend(p["user"] for p in page["participants"])
        keys = {k["user"] for k in page["media_keys"]}
        stage = {p["user"] for p in page["participants"] if p["role"] != "listener"}
        assert keys == stage
        after = page["next"]
        if after is None:
            break
        # Between pages: some leave (before and after the cursor), some arrive.
        members = [u for u in core.rooms["r1"].members if u.startswith("l")]
        for user in rng.sample(members, 20):
            h.do(h.sessions[user], m.Leave)
            stayed.discard(user)
        for _ in range(20):
            user = f"new{newcomer:04d}" if newcomer % 2 else f"a-new{newcomer:04d}"
            newcomer += 1
            h.join(user)
            ever.add(user)
        # Someone who left comes back: still listed at most once.
        back = rng.choice(sorted(ever - set(core.rooms["r1"].members)))
        h.join(back)
        h.drain()
    assert pages > 10
    assert len(seen) == len(set(seen)), "a member was listed twice"
    assert stayed <= set(seen), "a member present throughout was not listed"
    assert set(seen) <= ever
    assert seen == sorted(seen)


def test_list_participants_is_a_room_request_with_a_bounded_limit() -> None:
    h = big_room(5)
    outsider = h.connect("outsider")
    h.refuse(outsider, ErrorCode.NOT_IN_ROOM, m.ListParticipants)
    with pytest.raises(MessageError) as info:
        m.decode_request(b'{"type": "list_participants", "id": 1, "limit": 501}')
    assert info.value.code is ErrorCode.BAD_MESSAGE
    everyone = h.do(h.sessions["l00002"], m.ListParticipants, limit=500)
    assert everyone["next"] is None and everyone["total"] == 9
    first = h.do(h.sessions["l00002"], m.ListParticipants, limit=2)
    assert [p["user"] for p in first["participants"]] == ["l00000", "l00001"]
    assert first["next"] == "l00001"
    # Operators page any room through the admin path.
    result = h.admin("r1", m.ListParticipants, after="owner", limit=500)
    assert [p["user"] for p in result["participants"]] == ["spk0", "spk1", "spk2"]


def test_a_big_audience_gets_coalesced_counts_not_one_event_per_listener() -> None:
    threshold = 100
    h = big_room(threshold, Limits(audience_events_above=threshold, counts_interval=1.0))
    members = len(h.core.rooms["r1"].members)
    h.advance(5)
    h.drain()
    joining = 1000
    for i in range(joining):
        h.join(f"crowd{i:04d}")
    events = h.drain()
    assert received(events, m.ParticipantJoined) == {}
    # Each newcomer gets its room_state; the others got at most one room_updated each.
    assert set(received(events, m.RoomState)) == {
        h.sessions[f"crowd{i:04d}"] for i in range(joining)
    }
    sent = deliveries(events)
    assert sent <= joining + members + joining, sent  # not joining * members
    h.advance(1.0)
    events = h.drain()
    updates = received(events, m.RoomUpdated)
    assert len(updates) == members + joining
    assert all(u[-1].room.listeners == threshold + joining for u in updates.values())
    # Leaving is quiet too.
    for i in range(500):
        h.do(h.sessions[f"crowd{i:04d}"], m.Leave)
    events = h.drain()
    assert received(events, m.ParticipantLeft) == {}
    h.advance(1.0)
    updates = received(h.drain(), m.RoomUpdated)
    assert all(u[-1].room.listeners == threshold + 500 for u in updates.values())


def test_in_a_big_audience_the_stage_is_always_announced_and_hosts_see_hands() -> None:
    h = big_room(200, Limits(audience_events_above=50))
    owner, spk, lis = h.sessions["owner"], h.sessions["spk0"], h.sessions["l00007"]
    everyone = set(h.sessions[u] for u in h.core.rooms["r1"].members)
    # A hand raised reaches the hosts (hand_queue and the update) and the listener only.
    h.do(lis, m.RaiseHand)
    events = h.drain()
    assert set(received(events, m.HandQueue)) == {owner}
    assert set(received(events, m.ParticipantUpdated)) == {owner, lis}
    # Coming on stage: everyone is told, with the key.
    h.do(owner, m.InviteToSpeak, user="l00007")
    h.do(lis, m.AcceptSpeak)
    events = h.drain()
    assert set(received(events, m.ParticipantUpdated)) == everyone
    assert set(received(events, m.MediaKeyEvent)) == everyone
    # Back to the audience: everyone is told too.
    h.do(owner, m.MoveToAudience, user="l00007")
    events = h.drain()
    assert set(received(events, m.ParticipantUpdated)) == everyone
    # A stage member leaving is announced at once.
    h.do(spk, m.Leave)
    events = h.drain()
    assert set(received(events, m.ParticipantLeft)) == everyone - {spk}
    assert set(received(events, m.RoomUpdated)) == everyone - {spk}


def test_below_the_threshold_every_listener_is_announced() -> None:
    h = big_room(10, Limits(audience_events_above=50))
    h.join("fresh")
    events = h.drain()
    assert len(received(events, m.ParticipantJoined)) == 14
    h.do(h.sessions["fresh"], m.Leave)
    assert len(received(h.drain(), m.ParticipantLeft)) == 14


def test_a_closed_room_sends_no_late_counts() -> None:
    h = big_room(60, Limits(audience_events_above=50))
    h.join("x")
    h.join("y")
    h.do(h.sessions["owner"], m.CloseRoom)
    h.drain()
    h.advance(2.0)
    assert received(h.drain(), m.RoomUpdated) == {}


def test_operator_view_is_bounded_too() -> None:
    h = big_room(500)
    snapshot = h.core.room_snapshot("r1")
    assert snapshot.partial and len(snapshot.participants) == 4 + 100
    with pytest.raises(CoreError):
        h.core.room_snapshot("nowhere")


def test_the_big_room_benchmark_runs() -> None:
    from bench.big_room import run

    _, _, per_event, state_bytes = run(members=160, stage=3, joins=5, quiet=True)
    assert per_event == 0.5  # the joiner's room_state per join, nothing per leave
    assert 0 < state_bytes <= m.MAX_MESSAGE_SIZE
    _, _, loud, _ = run(members=160, stage=3, joins=5, quiet=False)
    assert loud > 100  # every member told of every join and leave


def test_list_rooms_leaves_out_what_does_not_fit_one_reply() -> None:
    h = Harness(Limits(max_rooms_per_user=1000))
    owner = h.connect("owner")
    for i in range(400):
        room = f"room-{i:03d}"
        h.do(owner, m.CreateRoom, room=room, title="A title " * 20, description="d" * 300)
        if i < 5:  # the most listened rooms are listed first and kept
            h.join(f"fan{i}", room=room)
    rooms = h.do(h.sessions["owner"], m.ListRooms)["rooms"]
    assert 0 < len(rooms) < 400
    assert len(m.encode(m.Ok(re=1, result={"rooms": rooms}))) <= m.MAX_MESSAGE_SIZE
    assert {r["room"] for r in rooms[:5]} == {f"room-{i:03d}" for i in range(5)}
    assert len(h.core.list_rooms()) == 400  # the operator's listing is whole


def test_list_invites_keeps_the_newest_that_fit_one_reply() -> None:
    h = big_room(0)
    owner = h.sessions["owner"]
    tokens = [h.do(owner, m.CreateInvite)["invite"]["token"] for _ in range(600)]
    invites = h.do(owner, m.ListInvites)["invites"]
    assert len(m.encode(m.Ok(re=1, result={"invites": invites}))) <= m.MAX_MESSAGE_SIZE
    assert [i["token"] for i in invites] == tokens[-len(invites) :]
    assert 100 < len(invites) < 600
