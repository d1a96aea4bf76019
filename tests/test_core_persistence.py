"""The core's side of persistence: records, restore, server-wide bans, scheduled-room reminders,
and the state-change events a store follows."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import pytest

from salon.daemon.core import (
    ApprovalChanged,
    Ban,
    BanChanged,
    CoreError,
    Identity,
    InviteChanged,
    Limits,
    ModerationTaken,
    RoomRecord,
    RoomSettings,
    RoomSettingsChanged,
    SalonCore,
    SubscriptionChanged,
)
from salon.daemon.core.permissions import ALLOWED, MATRIX, ROLES
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, build_request, dump, of_type, received

ROOT = Identity(user="root", display_name="Operator", operator=True)


def plain(record: RoomRecord) -> dict[str, Any]:
    """A record as comparable data (bans and invites compare by identity otherwise)."""
    data = asdict(record)
    data["invites"] = sorted(data["invites"], key=lambda invite: invite["token"])
    return data


def rich_room(h: Harness) -> str:
    """A persistent approval room with a moderator, bans, invites and an approved user."""
    h.room("owner", policy="approval", persistent=True, topics=["Jazz"], max_speakers=4)
    owner = h.sessions["owner"]
    h.do(owner, m.CreateInvite, role="speaker", max_uses=3)
    token = h.do(owner, m.CreateInvite, role="listener")["invite"]["token"]
    h.do(owner, m.RevokeInvite, token=token)
    h.do(owner, m.Ban, user="troll", reason="spam")
    h.do(owner, m.Ban, user="brief", duration=60)
    knocker = h.connect("amina")
    request_id = h.do(knocker, m.Join, room="r1")["request_id"]
    h.do(owner, m.ApproveKnock, request_id=request_id)
    h.moderator("amina")
    h.do(owner, m.UpdateRoom, title="Late jazz", description="records")
    return "r1"


# --------------------------------------------------------------------------- records and restore


def test_room_record_holds_what_lasts() -> None:
    h = Harness()
    rich_room(h)
    record = h.core.room_record("r1")
    settings = record.settings
    assert (settings.title, settings.owner, settings.policy) == ("Late jazz", "owner", "approval")
    assert settings.topics == ("jazz",) and settings.persistent and settings.max_speakers == 4
    assert settings.moderators == ("amina",)
    assert set(record.bans) == {"troll", "brief"}
    assert record.bans["brief"].until == h.now + 60
    assert sorted((i.role, i.max_uses, i.revoked) for i in record.invites) == [
        ("listener", None, True),
        ("speaker", 3, False),
    ]
    assert record.approved_users == ["amina"]
    with pytest.raises(CoreError) as info:
        h.core.room_record("nope")
    assert info.value.code == ErrorCode.ROOM_NOT_FOUND


def test_a_restored_room_behaves_like_the_original() -> None:
    h = Harness()
    rich_room(h)
    record = h.core.room_record("r1")
    speaker_token = next(i.token for i in record.invites if i.role == "speaker")

    fresh = Harness(seed=11)
    fresh.core.restore_room(record, fresh.now)
    assert fresh.drain() == []  # restoring emits nothing: the store already has it
    assert plain(fresh.core.room_record("r1")) == plain(record)
    # The moderator and the owner get their role back; the approved user needs no knock.
    assert fresh.do(fresh.connect("owner"), m.Join, room="r1")["role"] == "owner"
    assert fresh.do(fresh.connect("amina"), m.Join, room="r1")["role"] == "moderator"
    refused = fresh.connect("troll")
    fresh.refuse(refused, ErrorCode.BANNED, m.Join, room="r1")
    # The invite keeps counting: used once here, twice before would make three.
    assert fresh.do(fresh.connect("guest"), m.Join, room="r1", invite=speaker_token)["role"] == (
        "speaker"
    )
    assert fresh.core.rooms["r1"].invites[speaker_token].uses == 1


def test_restore_drops_expired_bans_and_arms_the_others() -> None:
    h = Harness()
    settings = RoomSettings(room="r1", title="Room", owner="owner", created_at=h.now)
    record = RoomRecord(
        settings,
        bans={
            "old": Ban(reason="", until=h.now - 1, by="owner"),
            "soon": Ban(reason="", until=h.now + 10, by="owner"),
            "ever": Ban(reason="x", until=None, by="owner"),
        },
    )
    h.core.restore_room(record, h.now)
    assert set(h.core.rooms["r1"].bans) == {"soon", "ever"}
    h.advance(11)
    assert set(h.core.rooms["r1"].bans) == {"ever"}
    assert of_type(h.drain(), BanChanged) == [BanChanged("r1", "soon", None)]


def test_restore_checks_what_it_is_given() -> None:
    h = Harness()
    good = RoomSettings(room="r1", title="Room", owner="owner", created_at=h.now)
    for bad, code in [
        (replace(good, title=" "), ErrorCode.INVALID_VALUE),
        (replace(good, room="Bad Id"), ErrorCode.INVALID_VALUE),
        (replace(good, policy="secret"), ErrorCode.INVALID_VALUE),  # type: ignore[arg-type]
        (replace(good, state="closed"), ErrorCode.INVALID_VALUE),
        (replace(good, owner=""), ErrorCode.INVALID_VALUE),
    ]:
        with pytest.raises(CoreError) as info:
            h.core.restore_room(RoomRecord(bad), h.now)
        assert info.value.code == code
    assert h.core.rooms == {}
    h.core.restore_room(RoomRecord(good), h.now)
    with pytest.raises(CoreError) as info:
        h.core.restore_room(RoomRecord(good), h.now)
    assert info.value.code == ErrorCode.ROOM_EXISTS


def test_restore_caps_the_stage_and_cleans_moderators() -> None:
    h = Harness(Limits(max_speakers_cap=5))
    settings = RoomSettings(
        room="r1",
        title="Room",
        owner="owner",
        created_at=h.now,
        max_speakers=50,
        moderators=("a", "owner", "a", "b"),
    )
    h.core.restore_room(RoomRecord(settings), h.now)
    room = h.core.rooms["r1"]
    assert room.max_speakers == 5
    assert room.moderators == ["a", "b"]


def test_a_restored_live_room_that_is_not_persistent_closes_without_its_owner() -> None:
    h = Harness(Limits(owner_grace=5))
    settings = RoomSettings(room="r1", title="Room", owner="owner", created_at=h.now)
    h.core.restore_room(RoomRecord(settings), h.now)
    h.core.restore_room(
        RoomRecord(replace(settings, room="r2", persistent=True)),
        h.now,
    )
    h.advance(6)
    assert h.core.rooms["r1"].state == "closed"
    assert h.core.rooms["r2"].state == "live"


# --------------------------------------------------------------------------- change events


def test_every_lasting_change_is_announced() -> None:
    h = Harness()
    owner = h.connect("owner")
    h.do(owner, m.CreateRoom, room="r1", title="Room", policy="approval")
    events = h.drain()
    assert [e.settings.title for e in of_type(events, RoomSettingsChanged)] == ["Room"]
    h.do(owner, m.Join, room="r1")
    h.join("bob")  # knocks
    knock = next(iter(h.core.rooms["r1"].knocks))
    h.drain()
    h.do(owner, m.ApproveKnock, request_id=knock)
    assert of_type(h.drain(), ApprovalChanged) == [ApprovalChanged("r1", "bob", True)]
    h.do(owner, m.Promote, user="bob")
    assert of_type(h.drain(), RoomSettingsChanged)[-1].settings.moderators == ("bob",)
    token = h.do(owner, m.CreateInvite, max_uses=2)["invite"]["token"]
    (created,) = of_type(h.drain(), InviteChanged)
    assert (created.invite.token, created.invite.uses) == (token, 0)
    h.join("carol", invite=token)
    (used,) = of_type(h.drain(), InviteChanged)
    assert used.invite.uses == 1 and used.invite is not h.core.rooms["r1"].invites[token]
    h.do(owner, m.Ban, user="bob", reason="spam")
    events = h.drain()
    (ban_event,) = of_type(events, BanChanged)
    assert (ban_event.room, ban_event.user, ban_event.ban and ban_event.ban.reason) == (
        "r1",
        "bob",
        "spam",
    )
    assert of_type(events, ApprovalChanged) == [ApprovalChanged("r1", "bob", False)]
    assert of_type(events, RoomSettingsChanged)[-1].settings.moderators == ()
    h.do(owner, m.Unban, user="bob")
    assert of_type(h.drain(), BanChanged) == [BanChanged("r1", "bob", None)]
    h.do(owner, m.UpdateRoom, title="Room")  # nothing changes: no settings event
    assert of_type(h.drain(), RoomSettingsChanged) == []
    h.do(owner, m.TransferOwnership, user="carol")
    assert of_type(h.drain(), RoomSettingsChanged)[-1].settings.owner == "carol"


def test_a_reused_room_id_does_not_inherit_old_ban_expiries() -> None:
    h = Harness()
    h.room("owner")
    h.do(h.sessions["owner"], m.Ban, user="bob", duration=10)
    h.do(h.sessions["owner"], m.CloseRoom)
    h.do(h.sessions["owner"], m.CreateRoom, room="r1", title="Again")
    h.drain()
    h.advance(11)
    assert of_type(h.drain(), BanChanged) == []


# --------------------------------------------------------------------------- server-wide bans


def test_a_server_ban_removes_everywhere_and_refuses_entry() -> None:
    h = Harness()
    h.room("owner", room="r1")
    h.room("host2", room="r2", policy="approval")
    bob = h.join("bob", room="r1")
    bob_knock = h.connect("bob")
    h.do(bob_knock, m.Join, room="r2")
    h.drain()
    result = h.core.ban_user_globally(ROOT, "bob", h.now, reason="abuse", duration=100)
    assert result == {"user": "bob", "until": h.now + 100}
    events = h.drain()
    assert received(events, m.Removed)[bob] == [
        m.Removed(room="r1", by="root", reason="abuse", banned=True, until=h.now + 100)
    ]
    assert received(events, m.KnockDenied)[bob_knock] == [m.KnockDenied(room="r2", reason="banned")]
    assert h.core.session_room(bob) is None
    assert of_type(events, BanChanged) == [BanChanged(None, "bob", h.core.server_bans["bob"])]
    (audit,) = of_type(events, ModerationTaken)
    assert (audit.room, audit.actor, audit.action, audit.target) == (
        "",
        "root",
        "server_ban",
        "bob",
    )
    error = h.refuse(bob, ErrorCode.BANNED, m.Join, room="r1")
    assert "this server" in error.message and "abuse" in error.message
    h.refuse(bob, ErrorCode.BANNED, m.CreateRoom, room="mine", title="Mine")
    assert set(h.core.active_server_bans(h.now)) == {"bob"}
    assert h.core.active_server_bans(h.now + 101) == {}
    # It ends by itself...
    h.now += 101
    h.do(bob, m.Join, room="r1")


def test_a_server_ban_is_lifted_by_an_operator_only() -> None:
    h = Harness()
    h.room("owner")
    bob = h.connect("bob")
    h.drain()
    with pytest.raises(CoreError) as info:
        h.core.ban_user_globally(Identity("eve", "Eve"), "bob", h.now)
    assert info.value.code == ErrorCode.NOT_PERMITTED
    for user, duration in [("root", None), ("", None), ("bob", -1.0)]:
        with pytest.raises(CoreError) as info:
            h.core.ban_user_globally(ROOT, user, h.now, duration=duration)
        assert info.value.code == ErrorCode.INVALID_VALUE
    assert h.drain() == []
    h.core.ban_user_globally(ROOT, "bob", h.now)
    with pytest.raises(CoreError) as info:
        h.core.unban_user_globally(Identity("eve", "Eve"), "bob", h.now)
    assert info.value.code == ErrorCode.NOT_PERMITTED
    h.drain()
    assert h.core.unban_user_globally(ROOT, "bob", h.now) == {}
    events = h.drain()
    assert of_type(events, BanChanged) == [BanChanged(None, "bob", None)]
    assert [e.action for e in of_type(events, ModerationTaken)] == ["server_unban"]
    h.do(bob, m.Join, room="r1")
    with pytest.raises(CoreError) as info:
        h.core.unban_user_globally(ROOT, "bob", h.now)
    assert info.value.code == ErrorCode.PARTICIPANT_NOT_FOUND


def test_restored_server_bans_are_enforced_unless_expired() -> None:
    core = SalonCore()
    core.restore_server_ban("bob", Ban(reason="", until=None, by="root"), 10.0)
    core.restore_server_ban("old", Ban(reason="", until=5.0, by="root"), 10.0)
    assert set(core.active_server_bans(10.0)) == {"bob"}
    assert set(core.server_bans) == {"bob"}


# --------------------------------------------------------------------------- scheduled rooms


def scheduled(h: Harness, start_in: float = 1000.0) -> int:
    owner = h.connect("owner")
    h.do(owner, m.CreateRoom, room="s1", title="Book club", scheduled_for=h.now + start_in)
    return owner


def test_subscribers_are_reminded_before_and_at_the_start() -> None:
    h = Harness(Limits(reminder_lead=300))
    owner = scheduled(h)
    start = h.now + 1000
    ada = h.connect("ada")
    ada_phone = h.connect("ada")
    bystander = h.connect("bob")
    assert h.do(ada, m.SubscribeRoom, room="s1") == {}
    assert h.do(ada_phone, m.SubscribeRoom, room="s1") == {}  # again: no change
    events = h.drain()
    assert of_type(events, SubscriptionChanged) == [SubscriptionChanged("s1", "ada", True)]
    h.advance(699)
    assert h.drain() == []
    h.advance(1)
    reminder = m.RoomReminder(room="s1", title="Book club", starts_at=start)
    reminded = received(h.drain(), m.RoomReminder)
    assert reminded == {ada: [reminder], ada_phone: [reminder], owner: [reminder]}
    assert bystander not in reminded
    h.advance(300)
    assert set(received(h.drain(), m.RoomReminder)) == {ada, ada_phone, owner}


def test_starting_notifies_subscribers_and_ends_subscriptions() -> None:
    h = Harness()
    owner = scheduled(h)
    ada = h.connect("ada")
    h.do(ada, m.SubscribeRoom, room="s1")
    h.do(owner, m.Join, room="s1")
    h.drain()
    h.do(owner, m.StartRoom, room="s1")
    events = h.drain()
    started = received(events, m.RoomStarted)
    assert list(started) == [ada]  # the owner is in the room: room_updated is enough
    assert started[ada][0].room.state == "live"
    assert of_type(events, SubscriptionChanged) == [SubscriptionChanged("s1", "ada", False)]
    assert h.core.rooms["s1"].subscribers == set()
    (settings,) = of_type(events, RoomSettingsChanged)
    assert settings.settings.state == "live"
    h.advance(2000)  # the reminders of a started room are not sent
    assert received(h.drain(), m.RoomReminder) == {}


def test_subscribing_needs_a_scheduled_room_and_no_ban() -> None:
    h = Harness()
    owner = scheduled(h)
    h.room("host", room="live1")
    ada = h.connect("ada")
    h.refuse(ada, ErrorCode.INVALID_VALUE, m.SubscribeRoom, room="live1")
    h.refuse(ada, ErrorCode.ROOM_NOT_FOUND, m.SubscribeRoom, room="nope")
    h.do(owner, m.Join, room="s1")
    h.do(owner, m.Ban, user="troll")
    h.refuse(h.connect("troll"), ErrorCode.BANNED, m.SubscribeRoom, room="s1")
    h.core.ban_user_globally(ROOT, "eve", h.now)
    h.refuse(h.connect("eve"), ErrorCode.BANNED, m.SubscribeRoom, room="s1")
    # A ban ends an existing subscription.
    h.do(ada, m.SubscribeRoom, room="s1")
    h.drain()
    h.do(owner, m.Ban, user="ada")
    assert SubscriptionChanged("s1", "ada", False) in h.drain()


def test_unsubscribing_always_succeeds() -> None:
    h = Harness()
    scheduled(h)
    ada = h.connect("ada")
    h.do(ada, m.SubscribeRoom, room="s1")
    h.drain()
    assert h.do(ada, m.UnsubscribeRoom, room="s1") == {}
    assert of_type(h.drain(), SubscriptionChanged) == [SubscriptionChanged("s1", "ada", False)]
    assert h.do(ada, m.UnsubscribeRoom, room="s1") == {}
    assert h.do(ada, m.UnsubscribeRoom, room="gone") == {}
    assert h.drain() == []


def test_restored_scheduled_room_keeps_subscribers_and_future_reminders() -> None:
    h = Harness(Limits(reminder_lead=300))
    scheduled(h, start_in=100)  # the early reminder is already past
    h.do(h.connect("ada"), m.SubscribeRoom, room="s1")
    record = h.core.room_record("s1")
    fresh = Harness(Limits(reminder_lead=300))
    fresh.now = h.now
    fresh.core.restore_room(record, fresh.now)
    ada = fresh.connect("ada")
    fresh.advance(99)
    assert fresh.drain() == []
    fresh.advance(1)
    assert list(received(fresh.drain(), m.RoomReminder)) == [ada]
    assert fresh.core.rooms["s1"].subscribers == {"ada"}


def test_refused_requests_still_change_nothing() -> None:
    h = Harness()
    scheduled(h)
    before = dump(h.core)
    with pytest.raises(CoreError):
        h.core.handle_request(h.connect("x"), build_request(m.SubscribeRoom, room="Bad Id"), h.now)
    assert dump(h.core)["rooms"] == before["rooms"]


def test_every_action_reserved_to_hosts_is_audited() -> None:
    """Each action the permission matrix keeps from speakers and listeners leaves an audit
    entry (reading the invite list aside); a new host action without one fails here."""
    speaker, listener = ROLES.index("speaker"), ROLES.index("listener")
    reserved = {
        action.value
        for action, rule in MATRIX.items()
        if rule.actor[speaker] is not ALLOWED and rule.actor[listener] is not ALLOWED
    }
    reserved = {"lower_hand" if a == "lower_hand_of" else a for a in reserved}
    reserved.discard("list_invites")
    h = Harness()
    owner = h.connect("owner")
    h.do(owner, m.CreateRoom, room="later", title="Later", scheduled_for=h.now + 3600)
    h.do(owner, m.StartRoom, room="later")
    h.room("owner")
    h.moderator("mod")
    lis = h.join("lis")
    h.do(lis, m.RaiseHand)
    h.do(owner, m.LowerHand, user="lis")
    h.do(owner, m.InviteToSpeak, user="lis")
    h.do(lis, m.AcceptSpeak)
    h.do(owner, m.Mute, user="lis")
    h.do(owner, m.Unmute, user="lis")
    h.do(owner, m.MoveToAudience, user="lis")
    h.do(owner, m.Remove, user="lis")
    h.do(owner, m.Ban, user="troll")
    h.do(owner, m.Unban, user="troll")
    token = h.do(owner, m.CreateInvite)["invite"]["token"]
    h.do(owner, m.RevokeInvite, token=token)
    h.do(owner, m.UpdateRoom, policy="approval")
    knocks = [h.do(h.connect(user), m.Join, room="r1")["request_id"] for user in ("ama", "ben")]
    h.do(owner, m.ApproveKnock, request_id=knocks[0])
    h.do(owner, m.DenyKnock, request_id=knocks[1])
    h.do(owner, m.StartRecording)
    h.do(owner, m.StopRecording)
    h.do(owner, m.Demote, user="mod")
    h.do(owner, m.TransferOwnership, user="mod")
    h.do(h.sessions["mod"], m.CloseRoom)
    audited = of_type(h.drain(), ModerationTaken)
    assert {event.action for event in audited} == reserved
    assert all(event.actor in ("owner", "mod") for event in audited)
