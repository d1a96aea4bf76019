"""The core's view of reception: uplink loss from sequence numbers, and the robust aggregate."""

from __future__ import annotations

from salon.daemon.core.forwarder import NOTIFY_FIRST_PACKET, Flow
from salon.daemon.core.identity import Identity
from salon.daemon.core.reception import REPORT_TTL, FlowQuality, Reception, percentile
from salon.daemon.wire import messages
from tests.test_core_support import Harness, received


def test_uplink_loss_from_the_sequence_numbers_the_forwarder_saw():
    flow = Flow(1, session=1, ssrc=5, group="room")
    quality = FlowQuality()
    flow.last_seq, flow.packets = 65530, 10
    assert Reception._uplink_loss(flow, quality) == 0.0  # the first look sets the marks
    # 100 packets sent across the wrap (65530 -> 94), 90 of them arrived.
    flow.last_seq, flow.packets = 94, 100
    assert abs(Reception._uplink_loss(flow, quality) - 0.10) < 1e-9
    # Nothing lost since: reordering or duplicates never make it negative.
    flow.last_seq, flow.packets = 144, 160
    assert Reception._uplink_loss(flow, quality) == 0.0
    flow.last_seq = NOTIFY_FIRST_PACKET  # a rotated flow before its first packet
    assert Reception._uplink_loss(flow, quality) == 0.0


def test_one_bad_listener_does_not_set_the_room_s_loss():
    assert percentile([0.0, 0.0, 0.0, 0.3]) == 0.0
    assert percentile([0.0, 0.05, 0.06, 0.3]) == 0.06
    assert percentile([0.02]) == 0.02


def test_speakers_may_send_red_only_while_every_other_member_decodes_it():
    h = Harness()
    h.connect("owner", red=True)
    h.room()
    voice = h.connect("alice", red=True)
    h.speaker("alice")
    ear = h.connect("ear", red=True)
    h.join("ear")
    flow = h.member("alice").flow
    assert flow is not None

    def report(lost: int) -> None:
        h.do(
            ear,
            messages.ReceiverReport,
            reports=[messages.FlowReception(flow_id=flow.flow_id, expected=50, lost=lost)],
        )

    def loss_reports() -> list[messages.LossReport]:
        return received(h.drain(), messages.LossReport).get(voice, [])

    h.drain()
    report(5)
    (allowed,) = loss_reports()
    assert allowed.red and allowed.loss == 0.1
    # A member of an older revision enters: the speaker hears at once, figures unchanged.
    old = h.connect("old")
    h.join("old")
    (stop,) = loss_reports()
    assert not stop.red and stop.loss == allowed.loss and stop.reporters == allowed.reporters
    h.advance(1.5)
    report(5)
    (still,) = loss_reports()
    assert not still.red
    # Another RED-capable member entering changes nothing; the old one leaving allows RED again.
    h.connect("new", red=True)
    h.join("new")
    assert loss_reports() == []
    h.do(old, messages.Leave)
    h.advance(1.5)
    report(5)
    (again,) = loss_reports()
    assert again.red


def test_a_member_in_stream_mode_does_not_hold_red_back_until_it_comes_back():
    h = Harness()
    h.connect("owner", red=True)
    h.room()
    voice = h.connect("alice", red=True)
    h.speaker("alice")
    ear = h.connect("ear", red=True)
    h.join("ear")
    old = h.connect("old")
    h.join("old")
    flow = h.member("alice").flow
    assert flow is not None

    def report_and_tell() -> list[messages.LossReport]:
        h.advance(1.5)
        h.do(
            ear,
            messages.ReceiverReport,
            reports=[messages.FlowReception(flow_id=flow.flow_id, expected=50, lost=5)],
        )
        return received(h.drain(), messages.LossReport).get(voice, [])

    assert [r.red for r in report_and_tell()] == [False]
    assert h.core.set_realtime(old, False)  # the old client now plays the HLS stream
    assert [r.red for r in report_and_tell()] == [True]
    assert h.core.set_realtime(old, True)  # back to datagrams: the speaker is told at once
    assert [r.red for r in received(h.drain(), messages.LossReport)[voice]] == [False]


def test_a_member_on_another_node_counts_as_without_red():
    h = Harness()
    h.connect("owner", red=True)
    h.room()
    voice = h.connect("alice", red=True)
    h.speaker("alice")
    ear = h.connect("ear", red=True)
    h.join("ear")
    remote = 99
    h.core.connect(remote, Identity(user="far", display_name="Far"), h.now, relayed=True)
    h.do(remote, messages.Join, room="r1")
    flow = h.member("alice").flow
    assert flow is not None
    h.drain()
    h.do(
        ear,
        messages.ReceiverReport,
        reports=[messages.FlowReception(flow_id=flow.flow_id, expected=50, lost=5)],
    )
    (report,) = received(h.drain(), messages.LossReport)[voice]
    assert not report.red


def test_the_redundancy_flow_goes_to_each_listener_by_its_own_loss():
    """One lossy listener among clean ones gets the speaker's redundancy flow however many
    clean ones outvote it; a lossy one without the capability never does; it stops after two
    clean reports in a row, and the speaker is told at each change (PROTOCOL.md 11.10)."""
    h = Harness()
    h.connect("owner", red=True, red_flow=True)
    h.room()
    voice = h.connect("alice", red=True, red_flow=True)
    h.speaker("alice")
    lossy = h.connect("lossy", red=True, red_flow=True)
    h.join("lossy")
    older = h.connect("older", red=True)
    h.join("older")
    clean = [h.connect(f"clean{i}", red=True, red_flow=True) for i in range(4)]
    for i in range(4):
        h.join(f"clean{i}")
    member = h.member("alice")
    flow = member.flow
    assert flow is not None and flow.red_flow is not None
    assert member.media_key.red_flow.flow_id == flow.red_flow.flow_id
    assert flow.red_flow.flow_id != flow.flow_id and flow.red_flow.ssrc != flow.ssrc
    h.drain()

    def report(session: int, lost: int) -> list[messages.LossReport]:
        h.do(
            session,
            messages.ReceiverReport,
            reports=[messages.FlowReception(flow_id=flow.flow_id, expected=50, lost=lost)],
        )
        return received(h.drain(), messages.LossReport).get(voice, [])

    def red_flow_to() -> set[int]:
        assert flow.red_flow is not None
        return {outlet.session for outlet in flow.red_flow.recipients}

    for session in clean:
        report(session, 0)
    h.advance(1.5)
    assert [r.red_flow for r in report(older, 5)] == [False]  # lossy, but without the capability
    assert red_flow_to() == set()
    (on,) = report(lossy, 5)  # told at once, not a second later
    assert on.red_flow and not on.red
    assert red_flow_to() == {lossy}
    # The lossy listeners' loss: "older" is bare, "lossy" covered by the flow; the 75th
    # percentile of the bare reports (4 clean, 1 older) stays 0.
    assert on.loss == 0.0
    h.advance(0.6)
    assert report(lossy, 0) == []  # one clean report is not enough
    assert red_flow_to() == {lossy}
    h.advance(0.6)
    (off,) = report(lossy, 0)
    assert not off.red_flow and red_flow_to() == set()
    # Muting the speaker mutes its redundancy flow too; leaving the stage retires it.
    h.advance(1.5)
    report(lossy, 10)
    assert red_flow_to() == {lossy}
    h.do(voice, messages.Mute)
    assert flow.red_flow.muted
    h.drain()
    h.do(lossy, messages.Leave)  # its only listener leaves: the speaker is told at once
    assert red_flow_to() == set()
    assert [r.red_flow for r in received(h.drain(), messages.LossReport)[voice]] == [False]
    h.do(voice, messages.MoveToAudience, user="alice")
    assert not flow.red_flow.active


def test_a_speaker_without_the_capability_has_no_redundancy_flow():
    h = Harness()
    h.connect("owner", red=True, red_flow=True)
    h.room()
    h.connect("alice", red=True)
    h.speaker("alice")
    member = h.member("alice")
    assert member.flow.red_flow is None and member.media_key.red_flow is None


def test_the_redundancy_flow_stops_when_its_listener_stops_reporting():
    """A lossy listener that stops reporting (its reports lost, or its client gone quiet)
    stops getting the redundancy flow once its last report is REPORT_TTL old, though nobody
    else reports to trigger the check; the speaker is told at once (PROTOCOL.md 11.10)."""
    h = Harness()
    h.connect("owner", red=True, red_flow=True)
    h.room()
    voice = h.connect("alice", red=True, red_flow=True)
    h.speaker("alice")
    lossy = h.connect("lossy", red=True, red_flow=True)
    h.join("lossy")
    flow = h.member("alice").flow
    assert flow is not None and flow.red_flow is not None
    h.drain()

    def report(lost: int) -> None:
        h.do(
            lossy,
            messages.ReceiverReport,
            reports=[messages.FlowReception(flow_id=flow.flow_id, expected=50, lost=lost)],
        )

    report(5)
    assert [r.red_flow for r in received(h.drain(), messages.LossReport)[voice]] == [True]
    h.advance(1.5)
    report(6)  # still lossy: the expiry moves on with the latest report
    h.drain()
    h.advance(REPORT_TTL - 0.1)
    assert {outlet.session for outlet in flow.red_flow.recipients} == {lossy}
    assert received(h.drain(), messages.LossReport).get(voice, []) == []
    h.advance(0.2)
    assert flow.red_flow.recipients == []
    assert [r.red_flow for r in received(h.drain(), messages.LossReport)[voice]] == [False]
    # Reporting again brings it back.
    h.advance(1.0)
    report(5)
    assert [r.red_flow for r in received(h.drain(), messages.LossReport)[voice]] == [True]
