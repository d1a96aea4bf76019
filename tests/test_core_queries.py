"""The core's query API: what the layers above ask instead of re-deriving a core rule."""

from __future__ import annotations

from salon.daemon.core import Identity, MemberLevel, SalonCore
from salon.daemon.wire import messages as m
from tests.test_core_speaking import speaking_room, talk
from tests.test_core_support import Harness, dump


def approval_harness() -> Harness:
    """Room r1 (approval) with a moderator of record, an approved user, a banned one, an invite;
    room r2 scheduled for later; user ``gone`` banned from the whole server."""
    h = Harness()
    h.room("owner")
    owner = h.sessions["owner"]
    h.moderator("mod")
    h.do(h.sessions["mod"], m.Leave)
    h.do(owner, m.UpdateRoom, policy="approval")
    h.do(owner, m.Ban, user="troll")
    knock = h.do(h.connect("friend"), m.Join, room="r1")
    h.do(owner, m.ApproveKnock, request_id=knock["request_id"])
    h.do(h.sessions["friend"], m.Leave)
    h.room("owner2", room="r2", scheduled_for=h.now + 3600)
    root = Identity(user="root", display_name="Operator", operator=True)
    h.core.ban_user_globally(root, "gone", h.now)
    h.drain()
    return h


CASES = [
    # (room, user, invite, knocks?)
    ("r1", "newcomer", None, True),
    ("r1", "friend", None, False),  # approved before
    ("r1", "mod", None, False),  # moderator of record
    ("r1", "owner", None, False),  # present, and the owner
    ("r1", "troll", None, False),  # banned: refused, not knocking
    ("r1", "gone", None, False),  # banned from the server
    ("r2", "newcomer", None, False),  # not started: refused
    ("zz", "newcomer", None, False),  # no such room
]


def test_would_knock_matches_what_a_join_does() -> None:
    h = approval_harness()
    for room, user, invite, knocks in CASES:
        before = dump(h.core)
        assert h.core.would_knock(room, user, invite, h.now) is knocks, (room, user)
        assert dump(h.core) == before, "a query changed the core"
        session = h.connect(user)
        try:
            result = h.do(session, m.Join, room=room, invite=invite)
        except Exception:
            result = {"status": "refused"}
        assert (result["status"] == "knocking") is knocks, (room, user, result)
        h.core.disconnect(session, h.now)
        h.drain()


def test_would_knock_is_false_for_an_invite_and_for_open_rooms() -> None:
    h = approval_harness()
    token = h.do(h.sessions["owner"], m.CreateInvite)["invite"]["token"]
    assert h.core.would_knock("r1", "newcomer", token, h.now) is False
    h.do(h.sessions["owner"], m.UpdateRoom, policy="open")
    assert h.core.would_knock("r1", "newcomer", None, h.now) is False


def test_levels_are_the_stage_members_smoothed_levels_loudest_first() -> None:
    h = Harness()
    speaking_room(h)
    assert h.core.levels("r1") == [
        MemberLevel("owner", 127, False),
        MemberLevel("spk", 127, False),
    ]
    talk(h, "spk", 10, frames=40)
    talk(h, "owner", 90, frames=40)
    levels = h.core.levels("r1")
    assert [level.user for level in levels] == ["spk", "owner"]
    activities = h.core.rooms["r1"].speaking.activities
    assert [level.level for level in levels] == [
        round(activities["spk"].smoothed),
        round(activities["owner"].smoothed),
    ]
    assert levels[0].level < levels[1].level
    assert h.core.levels("unknown") == []


def test_usable_invites_and_active_bans() -> None:
    h = Harness()
    h.room("owner")
    owner = h.sessions["owner"]
    h.do(owner, m.CreateInvite, expires_in=10)
    kept = h.do(owner, m.CreateInvite)["invite"]["token"]
    h.do(owner, m.Ban, user="brief", duration=10)
    h.do(owner, m.Ban, user="forever")
    h.advance(11)
    assert [i.token for i in h.core.usable_invites("r1", h.now)] == [kept]
    assert set(h.core.active_bans("r1", h.now)) == {"forever"}
    assert SalonCore().usable_invites("r1", 0.0) == []
