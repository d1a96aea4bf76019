"""The core's view of reception: uplink loss from sequence numbers, and the robust aggregate."""

from __future__ import annotations

from salon.daemon.core.forwarder import NOTIFY_FIRST_PACKET, Flow
from salon.daemon.core.identity import Identity
from salon.daemon.core.reception import FlowQuality, Reception, percentile
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
