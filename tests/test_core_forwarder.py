"""The forwarder: drop reasons, fan-out to exactly the right outlets, bounded queues."""

from __future__ import annotations

import pytest

from salon.daemon.core import Flow, Forwarder, Limits, Outlet
from salon.daemon.wire import messages as m
from tests.test_core_support import Harness, media_datagram


def stage(h: Harness) -> dict[str, int]:
    """Room r1: owner, speaker spk (unmuted), listener lis; room r2 with its own listener."""
    h.room("owner")
    h.speaker("spk")
    h.join("lis")
    h.do(h.sessions["spk"], m.Unmute)
    h.room("other", "r2")
    h.join("elsewhere", "r2")
    return h.sessions


def flow_of(h: Harness, user: str, room: str = "r1") -> Flow:
    flow = h.member(user, room).flow
    assert flow is not None
    return flow


def test_forwards_the_same_bytes_to_every_other_member_only() -> None:
    h = Harness()
    s = stage(h)
    knocker = h.connect("knocker")
    h.do(s["owner"], m.UpdateRoom, policy="approval")
    h.do(knocker, m.Join, room="r1")
    flow = flow_of(h, "spk")
    datagram = media_datagram(flow.flow_id, flow.ssrc, level=30)
    outlets = h.core.receive_datagram(s["spk"], datagram, h.now)
    assert sorted(o.session for o in outlets) == [s["owner"], s["lis"]]
    for session in (s["owner"], s["lis"]):
        queue = h.core.outlet(session).queue
        assert list(queue) == [datagram]
        assert queue[0] is datagram  # never copied, never re-encoded
    for session in (s["spk"], knocker, s["other"], s["elsewhere"]):
        assert not h.core.outlet(session).queue
    forwarder = h.core.forwarder
    assert (forwarder.received, forwarder.forwarded, sum(forwarder.drops.values())) == (1, 2, 0)


def test_recipients_follow_membership() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    h.do(s["lis"], m.Leave)
    late = h.join("late")
    outlets = h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, flow.ssrc), h.now)
    assert sorted(o.session for o in outlets) == [s["owner"], late]
    assert not h.core.outlet(s["lis"]).queue


@pytest.mark.parametrize(
    "reason",
    [
        "too_large",
        "malformed",
        "unknown_flow",
        "wrong_sender",
        "ssrc_mismatch",
        "not_speaker",
        "muted",
        "moderator_muted",
    ],
)
def test_drop_reasons(reason: str) -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    sender = s["spk"]
    datagram = media_datagram(flow.flow_id, flow.ssrc)
    expected = reason
    if reason == "too_large":
        datagram = media_datagram(flow.flow_id, flow.ssrc, payload=bytes(1100))
    elif reason == "malformed":
        datagram = datagram[:8]
    elif reason == "unknown_flow":
        datagram = media_datagram(999, flow.ssrc)
    elif reason == "wrong_sender":
        sender = s["lis"]
    elif reason == "ssrc_mismatch":
        datagram = media_datagram(flow.flow_id, flow.ssrc ^ 1)
    elif reason == "not_speaker":
        h.do(s["spk"], m.MoveToAudience)
    elif reason == "muted":
        h.do(s["spk"], m.Mute)
    else:
        h.do(s["owner"], m.Mute, user="spk")
        expected = "muted"
    assert h.core.receive_datagram(sender, datagram, h.now) == []
    forwarder = h.core.forwarder
    assert dict(forwarder.drops) == {expected: 1}
    assert (forwarder.received, forwarder.forwarded) == (1, 0)
    assert all(not h.core.outlet(session).queue for session in s.values())


def test_checks_apply_in_the_documented_order() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    big = bytes(1100)
    h.core.receive_datagram(s["spk"], media_datagram(999, flow.ssrc, payload=big), h.now)
    h.core.receive_datagram(s["lis"], media_datagram(flow.flow_id, flow.ssrc, payload=big), h.now)
    h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, 1, payload=big), h.now)
    h.do(s["spk"], m.Mute)
    h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, flow.ssrc, payload=big), h.now)
    assert dict(h.core.forwarder.drops) == {
        "unknown_flow": 1,
        "wrong_sender": 1,
        "ssrc_mismatch": 1,
        "muted": 1,
    }


def test_size_limit_is_inclusive() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    header = len(media_datagram(flow.flow_id, flow.ssrc, payload=b""))
    exact = media_datagram(flow.flow_id, flow.ssrc, payload=bytes(1100 - header))
    assert len(exact) == 1100
    assert len(h.core.receive_datagram(s["spk"], exact, h.now)) == 2


def test_flows_of_a_disconnected_sender_become_unknown() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    h.core.disconnect(s["spk"], h.now)
    assert flow.flow_id not in h.core.forwarder.flows
    h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, flow.ssrc), h.now)
    assert dict(h.core.forwarder.drops) == {"unknown_flow": 1}


def test_closed_room_flows_are_retired() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    h.do(s["owner"], m.CloseRoom)
    h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, flow.ssrc), h.now)
    assert dict(h.core.forwarder.drops) == {"not_speaker": 1}


def test_outlet_queue_drops_the_oldest_and_counts() -> None:
    h = Harness(Limits(outlet_queue=4))
    s = stage(h)
    flow = flow_of(h, "spk")
    sent = [media_datagram(flow.flow_id, flow.ssrc, sequence=i) for i in range(7)]
    for datagram in sent:
        h.core.receive_datagram(s["spk"], datagram, h.now)
    for session in (s["owner"], s["lis"]):
        outlet = h.core.outlet(session)
        assert list(outlet.queue) == sent[3:]
        assert outlet.dropped == 3
    forwarder = h.core.forwarder
    assert forwarder.drops["queue_full"] == 6
    assert forwarder.forwarded == 14
    # A listener that drains its queue stops losing packets.
    h.core.outlet(s["lis"]).queue.clear()
    h.core.receive_datagram(s["spk"], sent[0], h.now)
    assert h.core.outlet(s["lis"]).dropped == 3
    assert h.core.outlet(s["owner"]).dropped == 4


def test_forwarder_alone() -> None:
    forwarder = Forwarder(max_datagram_size=200)
    a, b, c = Outlet(1, 8), Outlet(2, 8), Outlet(3, 8)
    for outlet in (a, b):
        forwarder.join("g", outlet)
    flow = Flow(flow_id=70, session=1, ssrc=5, group="g")
    flow.muted = False
    levels: list[tuple[int, float]] = []
    flow.on_level = lambda level, now: levels.append((level, now))
    forwarder.add_flow(flow)
    forwarder.join("g", c)
    datagram = media_datagram(70, 5, level=12)
    assert forwarder.forward(1, datagram, 3.0) == [b, c]
    assert levels == [(12, 3.0)]
    forwarder.forward(1, media_datagram(70, 5), 3.5)  # no level: no callback
    assert levels == [(12, 3.0)]
    forwarder.leave("g", 2)
    assert forwarder.forward(1, datagram, 4.0) == [c]
    assert forwarder.group_sessions("g") == [1, 3]
    forwarder.retire_flow(flow)
    assert forwarder.forward(1, datagram, 5.0) == []
    assert forwarder.drops == {"not_speaker": 1}
    forwarder.forget_session(1)
    assert forwarder.forward(1, datagram, 5.0) == []
    assert forwarder.drops["unknown_flow"] == 1
    assert forwarder.group_sessions("g") == [3]


def test_forwarded_list_is_not_mutated_by_later_membership_changes() -> None:
    h = Harness()
    s = stage(h)
    flow = flow_of(h, "spk")
    outlets = h.core.receive_datagram(s["spk"], media_datagram(flow.flow_id, flow.ssrc), h.now)
    snapshot = list(outlets)
    h.core.disconnect(s["lis"], h.now)
    h.join("new")
    assert outlets == snapshot


def test_a_session_keeps_only_its_latest_retired_flows() -> None:
    """On and off stage all evening: the flows a session retired do not pile up."""
    from salon.daemon.core.forwarder import MAX_RETIRED_FLOWS_PER_SESSION

    forwarder = Forwarder()
    forwarder.join("g", Outlet(2, 16))
    rounds = MAX_RETIRED_FLOWS_PER_SESSION + 6
    for index in range(rounds):
        flow = Flow(100 + index, 1, 1000 + index, "g")
        forwarder.add_flow(flow)
        forwarder.retire_flow(flow)
    current = Flow(100 + rounds, 1, 1000 + rounds, "g")
    forwarder.add_flow(current)
    known = sorted(forwarder.flows)
    assert known == list(range(100 + rounds - MAX_RETIRED_FLOWS_PER_SESSION, 100 + rounds + 1))
    # The newest retired flow is still recognised (its late packets count as not_speaker),
    # an old one is unknown; both are dropped.
    assert forwarder.forward(1, media_datagram(100 + rounds - 1, 1000 + rounds - 1), 1.0) == []
    assert forwarder.forward(1, media_datagram(100, 1000), 1.0) == []
    assert forwarder.drops == {"not_speaker": 1, "unknown_flow": 1}
    forwarder.forget_session(1)
    assert forwarder.flows == {}
