"""Random sequences of requests, disconnects, media and time keep the core's invariants.

Every refused request must leave the state exactly as it was.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from salon.daemon.core import CoreError, Limits
from salon.daemon.core.permissions import HOST_ROLES, STAGE_ROLES
from salon.daemon.wire import messages as m
from tests.test_core_support import Harness, build_request, dump, media_datagram

USERS = ("u0", "u1", "u2", "u3", "u4", "u5")
# u1 has two devices; the others one each.
DEVICES = (*USERS, "u1")

TARGETED = (
    m.InviteToSpeak,
    m.Remove,
    m.Ban,
    m.Unban,
    m.Promote,
    m.Demote,
    m.TransferOwnership,
)
OPTIONAL_TARGET = (m.LowerHand, m.MoveToAudience, m.Mute, m.Unmute)
UNTARGETED = (
    m.Leave,
    m.CancelKnock,
    m.RaiseHand,
    m.AcceptSpeak,
    m.DeclineSpeak,
    m.ListInvites,
)


INDEX = st.integers(0, len(DEVICES) - 1)
ACTOR = st.sampled_from(["any", "member", "host", "host"])


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(Limits(knock_ttl=5, owner_grace=3, outlet_queue=4), seed=3)
        self.devices: list[int] = [self.h.connect(user) for user in DEVICES]
        self.tokens: list[str] = []
        self.stage_before: set[str] = set()

    @initialize(
        policy=st.sampled_from(["open", "approval", "invite"]),
        max_speakers=st.integers(1, 4),
        mute_on_join=st.booleans(),
        persistent=st.booleans(),
    )
    def create(self, policy: str, max_speakers: int, mute_on_join: bool, persistent: bool) -> None:
        owner = self.devices[0]
        self.h.do(
            owner,
            m.CreateRoom,
            room="r",
            title="Room",
            max_speakers=max_speakers,
            mute_on_join=mute_on_join,
            persistent=persistent,
        )
        # Most users start inside, so that the rules mostly act on a populated room.
        for session in self.devices[:4]:
            self.h.do(session, m.Join, room="r")
        self.h.do(owner, m.UpdateRoom, policy=policy)
        self.h.drain()
        self.stage_before = self.stage()

    # -- helpers

    @property
    def room(self) -> Any:
        return self.h.core.rooms["r"]

    def stage(self) -> set[str]:
        return {u for u, mb in self.room.members.items() if mb.role in STAGE_ROLES}

    def pick(self, index: int, who: str) -> int:
        """A device: any device, or one of a room member / host, by ``index``."""
        if who != "any":
            roles = HOST_ROLES if who == "host" else STAGE_ROLES | {"listener"}
            sessions = {mb.session for mb in self.room.members.values() if mb.role in roles}
            chosen = [i for i, s in enumerate(self.devices) if s in sessions]
            if chosen:
                return chosen[index % len(chosen)]
        return index % len(self.devices)

    def attempt(self, device: int, cls: type, **fields: Any) -> None:
        session = self.devices[device]
        before = dump(self.h.core)
        self.stage_before = self.stage()
        try:
            result = self.h.do(session, cls, **fields)
        except CoreError:
            assert dump(self.h.core) == before
            assert self.h.drain() == []
            return
        if cls is m.CreateInvite:
            self.tokens.append(result["invite"]["token"])
        self.h.drain()

    # -- rules

    @rule(device=INDEX, use_invite=st.booleans())
    def join(self, device: int, use_invite: bool) -> None:
        invite = self.tokens[-1] if use_invite and self.tokens else None
        self.attempt(device, m.Join, room="r", invite=invite)

    @rule(index=INDEX, actor=ACTOR, kind=st.sampled_from(UNTARGETED))
    def untargeted(self, index: int, actor: str, kind: type) -> None:
        self.attempt(self.pick(index, actor), kind)

    @rule(index=INDEX, actor=ACTOR, kind=st.sampled_from(TARGETED), who=st.sampled_from(USERS))
    def targeted(self, index: int, actor: str, kind: type, who: str) -> None:
        fields: dict[str, Any] = {"user": who}
        if kind is m.Ban and who in ("u2", "u4"):
            fields["duration"] = 2.0
        self.attempt(self.pick(index, actor), kind, **fields)

    @rule(
        index=INDEX,
        actor=ACTOR,
        kind=st.sampled_from(OPTIONAL_TARGET),
        who=st.none() | st.sampled_from(USERS),
    )
    def optional_target(self, index: int, actor: str, kind: type, who: str | None) -> None:
        self.attempt(self.pick(index, actor), kind, user=who)

    @rule(index=INDEX, host=st.integers(0, 5), who=st.sampled_from(USERS), accept=st.booleans())
    def invitation(self, index: int, host: int, who: str, accept: bool) -> None:
        self.attempt(self.pick(host, "host"), m.InviteToSpeak, user=who)
        member = self.room.members.get(who)
        if member is not None:
            device = self.devices.index(member.session)
            self.attempt(device, m.AcceptSpeak if accept else m.DeclineSpeak)

    @rule(
        index=INDEX,
        actor=ACTOR,
        max_speakers=st.none() | st.integers(0, 4),
        policy=st.none() | st.sampled_from(["open", "approval", "invite"]),
    )
    def update(self, index: int, actor: str, max_speakers: int | None, policy: str | None) -> None:
        self.attempt(
            self.pick(index, actor), m.UpdateRoom, max_speakers=max_speakers, policy=policy
        )

    @rule(index=INDEX, actor=ACTOR, role=st.sampled_from(["listener", "speaker"]))
    def create_invite(self, index: int, actor: str, role: str) -> None:
        self.attempt(self.pick(index, actor), m.CreateInvite, role=role, max_uses=2)

    @rule(index=INDEX, actor=ACTOR, approve=st.booleans())
    def answer_knock(self, index: int, actor: str, approve: bool) -> None:
        if not self.room.knocks:
            return
        request_id = next(iter(self.room.knocks))
        kind = m.ApproveKnock if approve else m.DenyKnock
        self.attempt(self.pick(index, actor), kind, request_id=request_id)

    @rule(index=INDEX, roll=st.integers(0, 3))
    def close(self, index: int, roll: int) -> None:
        if roll == 0:  # rarely: a closed room leaves little to explore
            self.attempt(self.pick(index, "host"), m.CloseRoom)

    @rule(device=INDEX)
    def reconnect(self, device: int) -> None:
        self.stage_before = self.stage()
        session = self.devices[device]
        identity = self.h.core.identity(session)
        assert identity is not None
        self.h.core.disconnect(session, self.h.now)
        self.devices[device] = self.h.connect(identity.user)
        self.h.drain()

    @rule(device=INDEX, level=st.integers(0, 127))
    def media(self, device: int, level: int) -> None:
        self.stage_before = self.stage()
        flows = list(self.h.core.forwarder.flows.values())
        if not flows:
            return
        flow = flows[device % len(flows)]
        sender = self.devices[device]
        outlets = self.h.core.receive_datagram(
            sender, media_datagram(flow.flow_id, flow.ssrc, level), self.h.now
        )
        if outlets:
            assert flow.session == sender and flow.active and not flow.muted
            members = {mb.session for mb in self.room.members.values()}
            assert {o.session for o in outlets} == members - {sender}
        self.h.drain()

    @rule(seconds=st.sampled_from([0.02, 0.25, 1.0, 4.0]))
    def wait(self, seconds: float) -> None:
        self.stage_before = self.stage()
        self.h.advance(seconds)
        self.h.drain()

    @rule()
    def recreate(self) -> None:
        if self.room.state == "closed":
            self.h.do(self.devices[0], m.CreateRoom, room="r", title="Again")
            for session in self.devices[:4]:
                if self.h.core.session_room(session) is None:
                    try:
                        self.h.do(session, m.Join, room="r")
                    except CoreError:
                        pass  # still knocking elsewhere: fine
            self.tokens.clear()
            self.h.drain()
            self.stage_before = set()

    # -- invariants

    @invariant()
    def one_owner_at_most(self) -> None:
        owners = [mb for mb in self.room.members.values() if mb.role == "owner"]
        assert len(owners) <= 1
        if owners:
            assert owners[0].user == self.room.owner
        assert self.room.owner not in self.room.moderators

    @invariant()
    def stage_is_bounded(self) -> None:
        members = self.room.members.values()
        hosts = sum(1 for mb in members if mb.role in HOST_ROLES)
        stage = self.stage()
        newly_on_stage = {
            u for u in stage - self.stage_before if self.room.members[u].role == "speaker"
        }
        # Checked after every step: the stage is within max_speakers (hosts always fit), or it
        # is over only because the limit was lowered or hosts came up, with no speaker added.
        assert 1 <= self.room.max_speakers <= self.h.core.limits.max_speakers_cap
        within = len(stage) <= max(self.room.max_speakers, hosts)
        assert within or not newly_on_stage, (stage, newly_on_stage, self.room.max_speakers)

    @invariant()
    def no_banned_member(self) -> None:
        for user in self.room.members:
            ban = self.room.bans.get(user)
            assert ban is None or not ban.active(self.h.now)

    @invariant()
    def counts_match_members(self) -> None:
        summary = self.room.summary()
        members = list(self.room.members.values())
        assert summary.speakers == sum(1 for mb in members if mb.role in STAGE_ROLES)
        assert summary.listeners == sum(1 for mb in members if mb.role == "listener")
        assert summary.speakers + summary.listeners == len(members)
        listed = {s.room: s for s in self.h.core.list_rooms()}
        if self.room.state != "closed":
            assert listed["r"] == summary
        else:
            assert "r" not in listed and not members

    @invariant()
    def flows_follow_the_stage(self) -> None:
        sessions = {mb.session for mb in self.room.members.values()}
        for member in self.room.members.values():
            flow = member.flow
            if member.role in STAGE_ROLES:
                assert flow is not None and flow.active and flow.session == member.session
                assert flow.muted == (member.muted or member.muted_by_moderator)
                assert {o.session for o in flow.recipients} == sessions - {member.session}
                assert member.user not in self.room.hands
            else:
                assert flow is None and member.media_key is None
                assert not member.muted_by_moderator
        active = [f for f in self.h.core.forwarder.flows.values() if f.active]
        assert len(active) == len(self.stage())

    @invariant()
    def sessions_agree_with_rooms(self) -> None:
        for session in self.devices:
            room_id = self.h.core.session_room(session)
            identity = self.h.core.identity(session)
            assert identity is not None
            if room_id is not None:
                assert self.room.members[identity.user].session == session
        for knock in self.room.knocks.values():
            assert self.h.core.session_room(knock.session) is None


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(
    max_examples=80,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_build_request_helper_sets_an_id() -> None:
    assert build_request(m.Leave).id == 1
