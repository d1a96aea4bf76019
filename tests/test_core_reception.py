"""The core's view of reception: uplink loss from sequence numbers, and the robust aggregate."""

from __future__ import annotations

from salon.daemon.core.forwarder import NOTIFY_FIRST_PACKET, Flow
from salon.daemon.core.reception import FlowQuality, Reception, percentile


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
