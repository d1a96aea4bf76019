"""Joining rooms: open, approval (knocks) and invite policies, invites, bans, replacement."""

from __future__ import annotations

import pytest

from salon.daemon.core import CoreError, KnockReceived, Limits, MemberJoined, MemberLeft
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, inbox, of_type, received, recipients

# --------------------------------------------------------------------------- open rooms


def test_open_join_sends_state_to_newcomer_and_news_to_others() -> None:
    h = Harness()
    h.room("owner")
    spk = h.speaker("spk")
    owner = h.sessions["owner"]
    h.drain()
    lis = h.connect("lis", verified={"email": "lis@example.org"})
    result = h.do(lis, m.Join, room="r1")
    assert result == {
        "status": "joined",
        "role": "listener",
        "room": m.to_builtins(h.core.rooms["r1"].summary()),
    }
    assert result["room"]["listeners"] == 1
    events = h.drain()
    boxes = inbox(events)
    state = boxes[lis][0]
    assert isinstance(state, m.RoomState)
    assert state.room.you == "lis"
    assert [p.user for p in state.room.participants] == ["owner", "spk", "lis"]
    assert {k.user for k in state.room.media_keys} == {"owner", "spk"}
    assert state.room.summary.listeners == 1
    assert state.room.hand_queue == [] and state.room.knocks == []
    assert len(boxes[lis]) == 1  # nothing else for the newcomer
    joined = received(events, m.ParticipantJoined)
    assert set(joined) == {owner, spk}
    participant = joined[owner][0].participant
    assert participant.role == "listener" and participant.muted is True
    assert participant.verified == {"email": "lis@example.org"}
    assert recipients(events, m.RoomUpdated) == {owner, spk}
    assert of_type(events, MemberJoined) == [MemberJoined("r1", "lis", lis, "listener")]


def test_join_errors() -> None:
    h = Harness()
    h.room("owner")
    h.room("other", "r2")
    lis = h.join("lis")
    h.refuse(lis, ErrorCode.ALREADY_IN_ROOM, m.Join, room="r1")
    h.refuse(lis, ErrorCode.ALREADY_IN_ROOM, m.Join, room="r2")
    loner = h.connect("loner")
    h.refuse(loner, ErrorCode.ROOM_NOT_FOUND, m.Join, room="zz")
    h.refuse(loner, ErrorCode.NOT_IN_ROOM, m.Leave)
    h.refuse(loner, ErrorCode.NOT_IN_ROOM, m.RaiseHand)
    h.refuse(loner, ErrorCode.NOT_IN_ROOM, m.CloseRoom)
    h.refuse(loner, ErrorCode.NO_KNOCK, m.CancelKnock)


def test_leave_tells_the_others() -> None:
    h = Harness()
    h.room("owner")
    lis = h.join("lis")
    h.drain()
    assert h.do(lis, m.Leave) == {}
    events = h.drain()
    owner = h.sessions["owner"]
    assert received(events, m.ParticipantLeft) == {
        owner: [m.ParticipantLeft(room="r1", user="lis", reason="left")]
    }
    assert of_type(events, MemberLeft) == [MemberLeft("r1", "lis", lis, "left")]
    assert h.core.session_room(lis) is None
    h.core.disconnect(owner, h.now)
    h.core.disconnect(owner, h.now)  # unknown sessions are fine
    h.core.disconnect(12345, h.now)


# --------------------------------------------------------------------------- approval rooms


def approval_room(h: Harness) -> tuple[int, int, int, int]:
    h.room("owner")
    mod = h.moderator("mod")
    spk = h.speaker("spk")
    lis = h.join("lis")
    h.do(mod, m.UpdateRoom, policy="approval")
    h.drain()
    return h.sessions["owner"], mod, spk, lis


def test_knock_goes_to_hosts_only() -> None:
    h = Harness()
    owner, mod, spk, lis = approval_room(h)
    bob = h.connect("bob", name="Bob B", verified={"github": "bobb"})
    result = h.core.handle_request(bob, m.Join(id=1, room="r1"), h.now, trust=["known:3 rooms"])
    assert result["status"] == "knocking"
    assert result["expires_at"] == h.now + 120
    events = h.drain()
    knocks = received(events, m.Knock)
    assert set(knocks) == {owner, mod}
    info = knocks[owner][0].request
    assert info.request_id == result["request_id"]
    assert (info.user, info.display_name) == ("bob", "Bob B")
    assert info.verified == {"github": "bobb"}
    assert info.trust == ["known:3 rooms"]
    assert of_type(events, KnockReceived) == [KnockReceived("r1", info)]
    assert h.core.session_room(bob) is None
    # Hosts see the knock in snapshots, others do not.
    assert [k.user for k in h.core.room_snapshot("r1", mod).knocks] == ["bob"]
    assert h.core.room_snapshot("r1", spk).knocks == []
    assert h.core.room_snapshot("r1", lis).knocks == []
    assert h.core.room_snapshot("r1", None).knocks == [info]
    # Knocking sessions are in no room.
    h.refuse(bob, ErrorCode.NOT_IN_ROOM, m.RaiseHand)
    h.refuse(bob, ErrorCode.KNOCK_PENDING, m.Join, room="r1")
    h.room("other", "r2")
    h.refuse(bob, ErrorCode.KNOCK_PENDING, m.Join, room="r2")


def test_hosts_enter_approval_rooms_directly() -> None:
    h = Harness()
    _, mod, _, _ = approval_room(h)
    h.do(mod, m.Leave)
    assert h.do(mod, m.Join, room="r1")["role"] == "moderator"


def test_approve_knock_admits_as_listener_and_remembers() -> None:
    h = Harness()
    owner, mod, spk, lis = approval_room(h)
    bob = h.connect("bob")
    request_id = h.do(bob, m.Join, room="r1")["request_id"]
    h.drain()
    h.refuse(spk, ErrorCode.NOT_PERMITTED, m.ApproveKnock, request_id=request_id)
    h.refuse(mod, ErrorCode.REQUEST_NOT_FOUND, m.ApproveKnock, request_id="nope")
    assert h.do(mod, m.ApproveKnock, request_id=request_id) == {"user": "bob"}
    events = h.drain()
    assert received(events, m.KnockResolved) == {
        s: [m.KnockResolved(room="r1", request_id=request_id, outcome="approved", by="mod")]
        for s in (owner, mod)
    }
    assert isinstance(inbox(events)[bob][0], m.RoomState)
    assert h.member("bob").role == "listener"
    assert recipients(events, m.ParticipantJoined) == {owner, mod, spk, lis}
    # Approved once: re-enters without knocking.
    h.do(bob, m.Leave)
    assert h.do(bob, m.Join, room="r1")["status"] == "joined"


def test_auto_approve_admits_without_knocking_and_only_for_knocks() -> None:
    h = Harness()
    owner, mod, _, _ = approval_room(h)
    bob = h.connect("bob")
    result = h.core.handle_request(bob, m.Join(id=1, room="r1"), h.now, auto_approve=True)
    assert result["status"] == "joined" and result["role"] == "listener"
    events = h.drain()
    assert received(events, m.Knock) == {}
    assert of_type(events, KnockReceived) == []
    assert of_type(events, MemberJoined) == [MemberJoined("r1", "bob", bob, "listener")]
    # It is not a host's approval: without the plugin's word, the next join knocks.
    h.do(bob, m.Leave)
    assert h.do(bob, m.Join, room="r1")["status"] == "knocking"
    # It never opens an invite-only room, nor lifts a ban.
    h.do(mod, m.UpdateRoom, policy="invite")
    carol = h.connect("carol")
    with pytest.raises(CoreError) as refused:
        h.core.handle_request(carol, m.Join(id=2, room="r1"), h.now, auto_approve=True)
    assert refused.value.code is ErrorCode.INVITE_REQUIRED
    h.do(mod, m.UpdateRoom, policy="approval")
    h.do(owner, m.Ban, user="carol")
    with pytest.raises(CoreError) as refused:
        h.core.handle_request(carol, m.Join(id=3, room="r1"), h.now, auto_approve=True)
    assert refused.value.code is ErrorCode.BANNED


def test_deny_knock_tells_the_requester() -> None:
    h = Harness()
    owner, mod, _, _ = approval_room(h)
    bob = h.connect("bob")
    request_id = h.do(bob, m.Join, room="r1")["request_id"]
    h.drain()
    assert h.do(owner, m.DenyKnock, request_id=request_id, reason="full") == {}
    events = h.drain()
    assert received(events, m.KnockDenied) == {bob: [m.KnockDenied(room="r1", reason="full")]}
    assert recipients(events, m.KnockResolved) == {owner, mod}
    assert h.core.session_room(bob) is None
    assert h.core.rooms["r1"].knocks == {}
    # The session may knock again.
    assert h.do(bob, m.Join, room="r1")["status"] == "knocking"


def test_knock_expires() -> None:
    h = Harness(Limits(knock_ttl=30))
    owner, _, _, _ = approval_room(h)
    bob = h.connect("bob")
    request_id = h.do(bob, m.Join, room="r1")["request_id"]
    h.drain()
    assert h.core.get_timer() == h.now + 30
    h.advance(29.9)
    assert h.drain() == []
    h.advance(0.1)
    events = h.drain()
    assert received(events, m.KnockDenied) == {bob: [m.KnockDenied(room="r1", reason="expired")]}
    assert received(events, m.KnockResolved)[owner] == [
        m.KnockResolved(room="r1", request_id=request_id, outcome="expired")
    ]
    h.refuse(owner, ErrorCode.REQUEST_NOT_FOUND, m.ApproveKnock, request_id=request_id)


@pytest.mark.parametrize("how", ["cancel", "leave", "disconnect"])
def test_knock_withdrawn(how: str) -> None:
    h = Harness()
    owner, mod, _, _ = approval_room(h)
    bob = h.connect("bob")
    request_id = h.do(bob, m.Join, room="r1")["request_id"]
    h.drain()
    if how == "cancel":
        assert h.do(bob, m.CancelKnock) == {}
    elif how == "leave":
        assert h.do(bob, m.Leave) == {}
    else:
        h.core.disconnect(bob, h.now)
    events = h.drain()
    assert received(events, m.KnockResolved) == {
        s: [m.KnockResolved(room="r1", request_id=request_id, outcome="cancelled", by="bob")]
        for s in (owner, mod)
    }
    assert bob not in inbox(events)
    assert h.core.rooms["r1"].knocks == {}


def test_same_user_knocking_from_a_second_session_replaces_the_knock() -> None:
    h = Harness()
    approval_room(h)
    phone = h.connect("bob")
    laptop = h.connect("bob")
    h.do(phone, m.Join, room="r1")
    h.drain()
    h.do(laptop, m.Join, room="r1")
    events = h.drain()
    assert received(events, m.KnockDenied) == {phone: [m.KnockDenied(room="r1", reason="replaced")]}
    assert [k.session for k in h.core.rooms["r1"].knocks.values()] == [laptop]


# --------------------------------------------------------------------------- invites


def test_invite_policy_requires_an_invite_except_for_hosts() -> None:
    h = Harness()
    h.room("owner", policy="invite")
    owner = h.sessions["owner"]
    bob = h.connect("bob")
    h.refuse(bob, ErrorCode.INVITE_REQUIRED, m.Join, room="r1")
    h.refuse(bob, ErrorCode.INVITE_INVALID, m.Join, room="r1", invite="forged")
    token = h.do(owner, m.CreateInvite)["invite"]["token"]
    assert h.do(bob, m.Join, room="r1", invite=token)["role"] == "listener"
    h.do(owner, m.Promote, user="bob")
    h.do(bob, m.Leave)
    assert h.do(bob, m.Join, room="r1")["role"] == "moderator"


def test_invite_fields_and_roles() -> None:
    h = Harness()
    h.room("owner", policy="invite", max_speakers=2)
    owner = h.sessions["owner"]
    h.refuse(owner, ErrorCode.INVALID_VALUE, m.CreateInvite, role="moderator")
    h.refuse(owner, ErrorCode.INVALID_VALUE, m.CreateInvite, expires_in=0)
    h.refuse(owner, ErrorCode.INVALID_VALUE, m.CreateInvite, max_uses=0)
    invite = h.do(owner, m.CreateInvite, role="speaker", expires_in=60, max_uses=5)["invite"]
    assert len(invite["token"]) == 22
    assert invite["role"] == "speaker"
    assert invite["expires_at"] == h.now + 60
    assert (invite["max_uses"], invite["uses"], invite["created_by"]) == (5, 0, "owner")
    token = invite["token"]
    first = h.connect("first")
    assert h.do(first, m.Join, room="r1", invite=token)["role"] == "speaker"
    assert h.member("first").media_key is not None
    # Stage full (owner + first = 2): a speaker link admits as listener.
    second = h.connect("second")
    assert h.do(second, m.Join, room="r1", invite=token)["role"] == "listener"
    assert h.do(owner, m.ListInvites)["invites"][0]["uses"] == 2


def test_invite_expiry_max_uses_and_revocation() -> None:
    h = Harness()
    h.room("owner", policy="invite")
    owner = h.sessions["owner"]
    timed = h.do(owner, m.CreateInvite, expires_in=10)["invite"]["token"]
    once = h.do(owner, m.CreateInvite, max_uses=1)["invite"]["token"]
    revoked = h.do(owner, m.CreateInvite)["invite"]["token"]
    a, b, c, d = (h.connect(u) for u in "abcd")
    h.do(a, m.Join, room="r1", invite=once)
    error = h.refuse(b, ErrorCode.INVITE_INVALID, m.Join, room="r1", invite=once)
    assert "used up" in error.message
    h.do(owner, m.RevokeInvite, token=revoked)
    error = h.refuse(b, ErrorCode.INVITE_INVALID, m.Join, room="r1", invite=revoked)
    assert "revoked" in error.message
    h.refuse(owner, ErrorCode.INVITE_INVALID, m.RevokeInvite, token=revoked)
    h.refuse(owner, ErrorCode.INVITE_INVALID, m.RevokeInvite, token="unknown")
    assert [i["token"] for i in h.do(owner, m.ListInvites)["invites"]] == [timed]
    h.advance(10)
    error = h.refuse(c, ErrorCode.INVITE_INVALID, m.Join, room="r1", invite=timed)
    assert "expired" in error.message
    error = h.refuse(d, ErrorCode.INVITE_INVALID, m.Join, room="r1", invite="nope")
    assert "unknown" in error.message
    assert h.do(owner, m.ListInvites)["invites"] == []


def test_invite_in_an_approval_room_skips_the_knock() -> None:
    h = Harness()
    h.room("owner", policy="approval")
    token = h.do(h.sessions["owner"], m.CreateInvite)["invite"]["token"]
    bob = h.connect("bob")
    assert h.do(bob, m.Join, room="r1", invite=token)["status"] == "joined"


def test_only_hosts_manage_invites() -> None:
    h = Harness()
    h.room("owner")
    mod = h.moderator("mod")
    lis = h.join("lis")
    token = h.do(mod, m.CreateInvite)["invite"]["token"]
    h.refuse(lis, ErrorCode.NOT_PERMITTED, m.CreateInvite)
    h.refuse(lis, ErrorCode.NOT_PERMITTED, m.ListInvites)
    h.refuse(lis, ErrorCode.NOT_PERMITTED, m.RevokeInvite, token=token)
    h.do(mod, m.RevokeInvite, token=token)


# --------------------------------------------------------------------------- bans


def test_timed_ban_removes_refuses_and_expires() -> None:
    h = Harness()
    h.room("owner")
    owner = h.sessions["owner"]
    lis = h.join("lis")
    other = h.join("other")
    h.drain()
    assert h.do(owner, m.Ban, user="lis", reason="spam", duration=300) == {}
    events = h.drain()
    assert received(events, m.Removed) == {
        lis: [m.Removed(room="r1", by="owner", reason="spam", banned=True, until=h.now + 300)]
    }
    assert received(events, m.ParticipantLeft)[other] == [
        m.ParticipantLeft(room="r1", user="lis", reason="banned")
    ]
    assert h.core.session_room(lis) is None
    error = h.refuse(lis, ErrorCode.BANNED, m.Join, room="r1")
    assert "spam" in error.message and f"{h.now + 300:.0f}" in error.message
    h.advance(299)
    h.refuse(lis, ErrorCode.BANNED, m.Join, room="r1")
    h.advance(1)
    assert "lis" not in h.core.rooms["r1"].bans  # pruned by the timer
    h.do(lis, m.Join, room="r1")


def test_permanent_and_pre_emptive_bans_and_unban() -> None:
    h = Harness()
    h.room("owner")
    owner = h.sessions["owner"]
    mod = h.moderator("mod")
    h.do(mod, m.Ban, user="troll")  # not present: pre-emptive
    assert h.core.rooms["r1"].bans["troll"].until is None
    troll = h.connect("troll")
    error = h.refuse(troll, ErrorCode.BANNED, m.Join, room="r1")
    assert "permanently" in error.message
    h.advance(10_000)
    h.refuse(troll, ErrorCode.BANNED, m.Join, room="r1")
    h.refuse(owner, ErrorCode.PARTICIPANT_NOT_FOUND, m.Unban, user="nobody")
    h.refuse(owner, ErrorCode.INVALID_VALUE, m.Ban, user="x", duration=-1)
    assert h.do(mod, m.Unban, user="troll") == {}
    h.do(troll, m.Join, room="r1")
    # A moderator cannot pre-emptively ban another moderator (or the owner) who is away.
    h.moderator("mod2")
    h.do(h.sessions["mod2"], m.Leave)
    h.refuse(mod, ErrorCode.NOT_PERMITTED, m.Ban, user="mod2")
    h.do(mod, m.Leave)
    h.do(owner, m.Leave)
    h.do(mod, m.Join, room="r1")
    h.refuse(mod, ErrorCode.NOT_PERMITTED, m.Ban, user="owner")


def test_ban_cancels_a_pending_knock_and_strips_moderator() -> None:
    h = Harness()
    h.room("owner", policy="approval")
    owner = h.sessions["owner"]
    bob = h.connect("bob")
    h.do(bob, m.Join, room="r1")
    h.drain()
    h.do(owner, m.Ban, user="bob", reason="no")
    assert received(h.drain(), m.KnockDenied) == {bob: [m.KnockDenied(room="r1", reason="banned")]}
    assert h.core.rooms["r1"].knocks == {}
    h.do(owner, m.UpdateRoom, policy="open")
    h.do(owner, m.Unban, user="bob")
    h.moderator("bob")
    h.do(owner, m.Ban, user="bob")
    assert "bob" not in h.core.rooms["r1"].moderators


# --------------------------------------------------------------------------- same user twice


def test_second_session_of_a_user_replaces_the_first() -> None:
    h = Harness()
    h.room("owner")
    owner = h.sessions["owner"]
    phone = h.speaker("bob")
    old_flow = h.member("bob").flow
    assert old_flow is not None
    laptop = h.connect("bob")
    h.drain()
    assert h.do(laptop, m.Join, room="r1")["role"] == "speaker"
    events = h.drain()
    assert received(events, m.Removed)[phone] == [m.Removed(room="r1", by="bob", reason="replaced")]
    assert h.core.session_room(phone) is None
    assert h.core.session_room(laptop) == "r1"
    assert h.member("bob").session == laptop
    assert not old_flow.active
    new_key = h.member("bob").media_key
    assert new_key is not None and new_key.flow_id != old_flow.flow_id and new_key.epoch == 1
    assert received(events, m.ParticipantLeft)[owner] == [
        m.ParticipantLeft(room="r1", user="bob", reason="replaced")
    ]
    assert h.core.rooms["r1"].stage_count() == 2


def test_owner_replacing_their_own_session_keeps_the_room() -> None:
    h = Harness()
    h.room("owner")
    h.moderator("mod")
    laptop = h.connect("owner")
    h.do(laptop, m.Join, room="r1")
    room = h.core.rooms["r1"]
    assert room.owner == "owner"
    assert h.member("owner").role == "owner"
    assert h.member("mod").role == "moderator"
    assert room.close_at is None


def test_auto_approve_admits_without_a_knock() -> None:
    h = Harness()
    owner, _, _, _ = approval_room(h)
    bob = h.connect("bob")
    result = h.core.handle_request(bob, m.Join(id=1, room="r1"), h.now, auto_approve=True)
    assert result["status"] == "joined"
    events = h.drain()
    assert recipients(events, m.Knock) == set()
    assert h.core.rooms["r1"].knocks == {}
    # It does not bypass bans or the invite policy.
    h.do(owner, m.Ban, user="eve")
    eve = h.connect("eve")
    with pytest.raises(CoreError) as info:
        h.core.handle_request(eve, m.Join(id=1, room="r1"), h.now, auto_approve=True)
    assert info.value.code == ErrorCode.BANNED
    h.do(owner, m.UpdateRoom, policy="invite")
    carl = h.connect("carl")
    with pytest.raises(CoreError) as info:
        h.core.handle_request(carl, m.Join(id=1, room="r1"), h.now, auto_approve=True)
    assert info.value.code == ErrorCode.INVITE_REQUIRED
