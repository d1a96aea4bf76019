"""The stage: hands, invitations to speak, moving back, mutes, removal and role changes."""

from __future__ import annotations

import base64

from salon.daemon.core import ModerationTaken, RoleChanged
from salon.daemon.wire import messages as m
from salon.daemon.wire.messages import ErrorCode
from tests.test_core_support import Harness, inbox, of_type, received, recipients


def full_room(h: Harness, **settings: object) -> dict[str, int]:
    """owner, mod (moderator), spk (speaker), lis and lis2 (listeners)."""
    h.room("owner", **settings)
    h.moderator("mod")
    h.speaker("spk")
    h.join("lis")
    h.join("lis2")
    h.drain()
    return h.sessions


# --------------------------------------------------------------------------- hands


def test_hand_queue_order_visibility_and_idempotence() -> None:
    h = Harness()
    s = full_room(h)
    assert h.do(s["lis2"], m.RaiseHand) == {}
    events = h.drain()
    assert received(events, m.HandQueue) == {
        session: [m.HandQueue(room="r1", users=["lis2"], total=1)]
        for session in (s["owner"], s["mod"])
    }
    updated = received(events, m.ParticipantUpdated)
    assert set(updated) == set(s.values())
    assert updated[s["spk"]][0].participant.hand_raised is True
    assert h.do(s["lis"], m.RaiseHand) == {}
    h.drain()
    assert h.do(s["lis2"], m.RaiseHand) == {}  # raising again keeps the place
    assert h.drain() == []
    assert h.core.room_snapshot("r1", s["mod"]).hand_queue == ["lis2", "lis"]
    assert h.core.room_snapshot("r1", s["lis"]).hand_queue == []
    for stage in ("owner", "mod", "spk"):
        h.refuse(s[stage], ErrorCode.ALREADY_ON_STAGE, m.RaiseHand)


def test_lowering_hands() -> None:
    h = Harness()
    s = full_room(h)
    h.do(s["lis"], m.RaiseHand)
    h.do(s["lis2"], m.RaiseHand)
    h.drain()
    assert h.do(s["lis"], m.LowerHand) == {}
    assert received(h.drain(), m.HandQueue)[s["owner"]] == [
        m.HandQueue(room="r1", users=["lis2"], total=1)
    ]
    assert h.do(s["lis"], m.LowerHand) == {}  # not raised: nothing happens
    assert h.drain() == []
    h.refuse(s["lis"], ErrorCode.NOT_PERMITTED, m.LowerHand, user="lis2")
    h.refuse(s["spk"], ErrorCode.NOT_PERMITTED, m.LowerHand, user="lis2")
    h.refuse(s["mod"], ErrorCode.PARTICIPANT_NOT_FOUND, m.LowerHand, user="ghost")
    h.do(s["mod"], m.LowerHand, user="lis2")
    events = h.drain()
    assert received(events, m.HandQueue)[s["mod"]] == [m.HandQueue(room="r1", users=[])]
    assert of_type(events, ModerationTaken)[0].action == "lower_hand"


# --------------------------------------------------------------------------- invitations


def test_invite_accept_gives_a_fresh_key_to_everyone() -> None:
    h = Harness()
    s = full_room(h)
    h.do(s["lis"], m.RaiseHand)
    h.drain()
    assert h.do(s["mod"], m.InviteToSpeak, user="lis") == {}
    events = h.drain()
    assert inbox(events) == {s["lis"]: [m.SpeakInvitation(room="r1", by="mod")]}
    assert h.member("lis").role == "listener"  # not forced onto the stage
    result = h.do(s["lis"], m.AcceptSpeak)
    events = h.drain()
    member = h.member("lis")
    assert member.role == "speaker"
    assert member.muted is True and member.muted_by_moderator is False
    assert "lis" not in h.core.rooms["r1"].hands
    key = member.media_key
    assert result == {}
    assert len(base64.b64decode(key.key)) == 28
    assert key.profile == "AEAD_AES_128_GCM" and key.epoch == 0
    keys = received(events, m.MediaKeyEvent)
    assert set(keys) == set(s.values())  # including the new speaker
    assert all(msgs == [m.MediaKeyEvent(room="r1", key=key)] for msgs in keys.values())
    assert received(events, m.HandQueue)[s["owner"]] == [m.HandQueue(room="r1", users=[])]
    assert of_type(events, RoleChanged) == [RoleChanged("r1", "lis", "listener", "speaker")]
    summary = h.core.rooms["r1"].summary()
    assert (summary.speakers, summary.listeners) == (4, 1)
    assert recipients(events, m.RoomUpdated) == set(s.values())
    # Flow ids are unique, SSRCs unique within the room.
    flows = [mb.flow for mb in h.core.rooms["r1"].members.values() if mb.flow]
    assert len({f.flow_id for f in flows}) == len({f.ssrc for f in flows}) == 4


def test_accept_and_decline_need_an_invitation() -> None:
    h = Harness()
    s = full_room(h)
    h.refuse(s["lis"], ErrorCode.NO_INVITATION, m.AcceptSpeak)
    h.refuse(s["lis"], ErrorCode.NO_INVITATION, m.DeclineSpeak)
    h.refuse(s["spk"], ErrorCode.ALREADY_ON_STAGE, m.AcceptSpeak)
    h.do(s["owner"], m.InviteToSpeak, user="lis")
    h.drain()
    assert h.do(s["lis"], m.DeclineSpeak) == {}
    events = h.drain()
    assert inbox(events) == {
        session: [m.SpeakInvitationDeclined(room="r1", user="lis")]
        for session in (s["owner"], s["mod"])
    }
    h.refuse(s["lis"], ErrorCode.NO_INVITATION, m.AcceptSpeak)


def test_invite_to_speak_targets() -> None:
    h = Harness()
    s = full_room(h)
    h.refuse(s["mod"], ErrorCode.PARTICIPANT_NOT_FOUND, m.InviteToSpeak, user="ghost")
    h.refuse(s["mod"], ErrorCode.ALREADY_ON_STAGE, m.InviteToSpeak, user="spk")
    h.refuse(s["spk"], ErrorCode.NOT_PERMITTED, m.InviteToSpeak, user="lis")
    h.refuse(s["lis2"], ErrorCode.NOT_PERMITTED, m.InviteToSpeak, user="lis")


def test_stage_full_on_invite_and_on_accept() -> None:
    h = Harness()
    s = full_room(h, max_speakers=4)
    h.do(s["owner"], m.InviteToSpeak, user="lis")
    h.do(s["owner"], m.InviteToSpeak, user="lis2")
    h.do(s["lis"], m.AcceptSpeak)
    assert h.core.rooms["r1"].stage_count() == 4
    h.refuse(s["lis2"], ErrorCode.STAGE_FULL, m.AcceptSpeak)
    h.do(s["owner"], m.MoveToAudience, user="lis")
    h.do(s["lis2"], m.AcceptSpeak)
    h.refuse(s["owner"], ErrorCode.STAGE_FULL, m.InviteToSpeak, user="lis")


def test_hosts_are_never_refused_the_stage() -> None:
    h = Harness()
    s = full_room(h, max_speakers=3)
    h.do(s["owner"], m.Promote, user="lis")  # moderators join the stage even when full
    assert h.core.rooms["r1"].stage_count() == 4
    h.do(s["mod"], m.Leave)
    h.do(s["mod"], m.Join, room="r1")
    assert h.member("mod").role == "moderator" and h.member("mod").flow is not None


# --------------------------------------------------------------------------- back to the audience


def test_move_to_audience_retires_the_flow() -> None:
    h = Harness()
    s = full_room(h)
    flow = h.member("spk").flow
    assert flow is not None
    h.drain()
    assert h.do(s["spk"], m.MoveToAudience) == {}
    events = h.drain()
    revoked = m.MediaKeyRevoked(room="r1", user="spk", flow_id=flow.flow_id)
    assert received(events, m.MediaKeyRevoked) == {session: [revoked] for session in s.values()}
    assert h.member("spk").role == "listener"
    assert h.member("spk").media_key is None
    assert not flow.active
    assert all(k.user != "spk" for k in h.core.room_snapshot("r1", s["lis"]).media_keys)
    # Back on stage later: new flow id, next epoch.
    h.do(s["owner"], m.InviteToSpeak, user="spk")
    h.do(s["spk"], m.AcceptSpeak)
    key = h.member("spk").media_key
    assert key.flow_id > flow.flow_id and key.epoch == 1


def test_move_to_audience_rules() -> None:
    h = Harness()
    s = full_room(h)
    h.refuse(s["mod"], ErrorCode.NOT_PERMITTED, m.MoveToAudience)  # demote first
    h.refuse(s["owner"], ErrorCode.NOT_PERMITTED, m.MoveToAudience)
    h.refuse(s["lis"], ErrorCode.NOT_ON_STAGE, m.MoveToAudience)
    h.refuse(s["owner"], ErrorCode.NOT_PERMITTED, m.MoveToAudience, user="mod")
    h.refuse(s["mod"], ErrorCode.NOT_ON_STAGE, m.MoveToAudience, user="lis")
    h.refuse(s["spk"], ErrorCode.NOT_PERMITTED, m.MoveToAudience, user="mod")
    h.do(s["mod"], m.MoveToAudience, user="spk")
    assert of_type(h.drain(), ModerationTaken)[0].target == "spk"


# --------------------------------------------------------------------------- mutes


def test_self_mute_and_unmute() -> None:
    h = Harness()
    s = full_room(h)
    member = h.member("spk")
    assert member.muted and member.flow.muted  # everyone starts muted
    assert h.do(s["spk"], m.Unmute) == {}
    assert not member.muted and not member.muted_by_moderator
    assert not member.flow.muted
    assert recipients(h.drain(), m.ParticipantUpdated) == set(s.values())
    h.do(s["spk"], m.Mute)
    assert member.muted and member.flow.muted
    h.refuse(s["lis"], ErrorCode.NOT_ON_STAGE, m.Unmute)
    h.refuse(s["lis"], ErrorCode.NOT_ON_STAGE, m.Mute)
    h.do(s["owner"], m.Unmute)
    h.do(s["mod"], m.Unmute)


def test_moderator_mute_is_enforced_and_only_lifted_by_a_host() -> None:
    h = Harness()
    s = full_room(h)
    h.do(s["spk"], m.Unmute)
    h.drain()
    assert h.do(s["mod"], m.Mute, user="spk") == {}
    assert h.member("spk").muted and h.member("spk").muted_by_moderator
    events = h.drain()
    assert received(events, m.Muted) == {s["spk"]: [m.Muted(room="r1", by="mod")]}
    assert h.member("spk").flow.muted
    h.refuse(s["spk"], ErrorCode.MUTED_BY_MODERATOR, m.Unmute)
    h.do(s["mod"], m.Unmute, user="spk")
    # The host lifts their mute but cannot open the microphone.
    assert h.member("spk").muted and not h.member("spk").muted_by_moderator
    assert h.member("spk").flow.muted
    h.do(s["spk"], m.Unmute)
    assert not h.member("spk").flow.muted
    h.refuse(s["mod"], ErrorCode.NOT_ON_STAGE, m.Mute, user="lis")
    h.refuse(s["mod"], ErrorCode.NOT_PERMITTED, m.Mute, user="owner")
    h.refuse(s["spk"], ErrorCode.NOT_PERMITTED, m.Mute, user="mod")
    h.do(s["owner"], m.Mute, user="mod")
    assert h.member("mod").muted_by_moderator


def test_mute_on_join_applies_to_speakers_only() -> None:
    h = Harness()
    h.room("owner", mute_on_join=True)
    h.moderator("mod")
    h.speaker("spk")
    assert not h.member("owner").muted_by_moderator
    assert not h.member("mod").muted_by_moderator
    assert h.member("spk").muted_by_moderator
    h.refuse(h.sessions["spk"], ErrorCode.MUTED_BY_MODERATOR, m.Unmute)
    h.do(h.sessions["mod"], m.Unmute, user="spk")
    h.do(h.sessions["spk"], m.Unmute)


# --------------------------------------------------------------------------- removal and roles


def test_remove_sends_the_target_away() -> None:
    h = Harness()
    s = full_room(h)
    assert h.do(s["mod"], m.Remove, user="spk", reason="off topic") == {}
    events = h.drain()
    assert received(events, m.Removed) == {
        s["spk"]: [m.Removed(room="r1", by="mod", reason="off topic")]
    }
    assert received(events, m.ParticipantLeft)[s["lis"]] == [
        m.ParticipantLeft(room="r1", user="spk", reason="removed")
    ]
    assert recipients(events, m.MediaKeyRevoked) == {s["owner"], s["mod"], s["lis"], s["lis2"]}
    assert h.core.session_room(s["spk"]) is None
    h.do(s["spk"], m.Join, room="r1")  # removal is not a ban
    h.refuse(s["mod"], ErrorCode.NOT_PERMITTED, m.Remove, user="owner")
    h.refuse(s["mod"], ErrorCode.INVALID_VALUE, m.Remove, user="mod")
    h.refuse(s["mod"], ErrorCode.PARTICIPANT_NOT_FOUND, m.Remove, user="ghost")


def test_promote_and_demote() -> None:
    h = Harness()
    s = full_room(h, policy="open")
    h.do(s["lis2"], m.RaiseHand)
    h.drain()
    assert h.do(s["owner"], m.Promote, user="lis") == {}
    events = h.drain()
    member = h.member("lis")
    assert member.role == "moderator" and member.flow is not None
    assert h.core.rooms["r1"].moderators == ["mod", "lis"]
    assert recipients(events, m.MediaKeyEvent) == set(s.values())
    # The new moderator is resynchronised and now sees the hand queue.
    state = [e for e in inbox(events)[s["lis"]] if isinstance(e, m.RoomState)]
    assert state and state[0].room.hand_queue == ["lis2"]
    h.refuse(s["mod"], ErrorCode.NOT_PERMITTED, m.Promote, user="lis2")
    h.refuse(s["owner"], ErrorCode.INVALID_VALUE, m.Promote, user="mod")
    h.refuse(s["owner"], ErrorCode.INVALID_VALUE, m.Demote, user="spk")
    flow = member.flow
    assert h.do(s["owner"], m.Demote, user="lis") == {}
    assert member.role == "speaker" and member.flow is flow  # stays on stage
    assert h.core.rooms["r1"].moderators == ["mod"]
    # Demoting a moderator who is away just takes the role back.
    h.do(s["mod"], m.Leave)
    h.do(s["owner"], m.Demote, user="mod")
    assert h.core.rooms["r1"].moderators == []
    h.do(s["mod"], m.Join, room="r1")
    assert h.member("mod").role == "listener"


def test_transfer_ownership() -> None:
    h = Harness()
    s = full_room(h)
    h.refuse(s["mod"], ErrorCode.NOT_PERMITTED, m.TransferOwnership, user="lis")
    h.refuse(s["owner"], ErrorCode.INVALID_VALUE, m.TransferOwnership, user="owner")
    h.refuse(s["owner"], ErrorCode.PARTICIPANT_NOT_FOUND, m.TransferOwnership, user="ghost")
    assert h.do(s["owner"], m.TransferOwnership, user="lis") == {}
    events = h.drain()
    room = h.core.rooms["r1"]
    assert room.owner == "lis"
    assert h.member("lis").role == "owner" and h.member("lis").flow is not None
    assert h.member("owner").role == "moderator"
    assert room.moderators == ["mod", "owner"]
    assert received(events, m.OwnerChanged)[s["spk"]] == [m.OwnerChanged(room="r1", user="lis")]
    assert [e for e in of_type(events, RoleChanged)] == [
        RoleChanged("r1", "owner", "owner", "moderator"),
        RoleChanged("r1", "lis", "listener", "owner"),
    ]
    assert sum(1 for mb in room.members.values() if mb.role == "owner") == 1


def test_self_targeting_user_forms_are_invalid() -> None:
    h = Harness()
    s = full_room(h)
    for request in (m.Remove, m.Ban, m.Promote, m.Demote, m.TransferOwnership):
        h.refuse(s["owner"], ErrorCode.INVALID_VALUE, request, user="owner")
    # Naming yourself in mute/unmute/move/lower is the self form.
    h.do(s["spk"], m.Unmute, user="spk")
    assert h.member("spk").muted is False
    h.do(s["spk"], m.Mute, user="spk")
    assert h.member("spk").muted is True
    h.do(s["spk"], m.MoveToAudience, user="spk")
    assert h.member("spk").role == "listener"


def test_every_host_action_is_reported_for_the_audit_log() -> None:
    h = Harness()
    alice = h.connect("alice")
    h.do(alice, m.CreateRoom, room="r1", title="t", scheduled_for=h.now + 10)
    h.do(alice, m.StartRoom, room="r1")
    h.do(alice, m.Join, room="r1")
    s = {"owner": alice}
    for user in ("a", "b", "c"):
        s[user] = h.join(user)
    h.do(alice, m.UpdateRoom, policy="approval")
    knocker = h.connect("k")
    first = h.do(knocker, m.Join, room="r1")["request_id"]
    h.do(alice, m.DenyKnock, request_id=first)
    second = h.do(knocker, m.Join, room="r1")["request_id"]
    h.do(alice, m.ApproveKnock, request_id=second)
    h.do(alice, m.InviteToSpeak, user="a")
    h.do(s["a"], m.AcceptSpeak)
    h.do(alice, m.Mute, user="a")
    h.do(alice, m.Unmute, user="a")
    h.do(alice, m.MoveToAudience, user="a")
    h.do(alice, m.Promote, user="b")
    h.do(alice, m.Demote, user="b")
    h.do(alice, m.Remove, user="c")
    h.do(alice, m.Ban, user="c")
    h.do(alice, m.Unban, user="c")
    token = h.do(alice, m.CreateInvite)["invite"]["token"]
    h.do(alice, m.RevokeInvite, token=token)
    h.do(alice, m.TransferOwnership, user="b")
    h.do(s["b"], m.CloseRoom)
    actions = [(e.actor, e.action, e.target) for e in of_type(h.drain(), ModerationTaken)]
    assert actions == [
        ("alice", "start_room", None),
        ("alice", "update_room", None),
        ("alice", "deny_knock", "k"),
        ("alice", "approve_knock", "k"),
        ("alice", "invite_to_speak", "a"),
        ("alice", "mute", "a"),
        ("alice", "unmute", "a"),
        ("alice", "move_to_audience", "a"),
        ("alice", "promote", "b"),
        ("alice", "demote", "b"),
        ("alice", "remove", "c"),
        ("alice", "ban", "c"),
        ("alice", "unban", "c"),
        ("alice", "create_invite", None),
        ("alice", "revoke_invite", None),
        ("alice", "transfer_ownership", "b"),
        ("b", "close_room", None),
    ]
