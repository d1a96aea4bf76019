"""RFC 2198 redundancy (RED) and loss reports in the media library, sans-I/O, real Opus and SRTP.

A speaker's packets go through :class:`MediaSender` and :class:`MediaReceiver` with chosen
packets lost; with RED the receiver rebuilds them from the next packets before their slot,
without RED it conceals them. The receiver's per-flow report counts the loss the network did.
"""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest

from salon.daemon.wire.rtp import FRAME_SAMPLES, OPUS_PAYLOAD_TYPE, peek_media
from salon.media.codec import OpusEncoder
from salon.media.red import (
    RED_PAYLOAD_TYPE,
    RedError,
    RedundantBlock,
    pack_red,
    primary_opus,
    unpack_red,
)
from salon.media.srtp import SrtpReceiver, key_from_base64
from salon.media.streams import (
    BitratePolicy,
    BurstMeter,
    MediaReceiver,
    MediaSender,
    RedundancyPolicy,
)

KEY = base64.b64encode(os.urandom(28)).decode()


def test_red_round_trip_and_layout():
    blocks = [RedundantBlock(2 * FRAME_SAMPLES, b"older"), RedundantBlock(FRAME_SAMPLES, b"old")]
    payload = pack_red(b"current", blocks)
    # Two 4-byte headers with F=1, a 1-byte primary header, blocks oldest first.
    assert payload[0] == 0x80 | OPUS_PAYLOAD_TYPE and payload[8] == OPUS_PAYLOAD_TYPE
    assert payload.endswith(b"olderoldcurrent")
    assert unpack_red(payload) == (b"current", blocks)
    assert unpack_red(pack_red(b"alone", [])) == (b"alone", [])
    assert primary_opus(RED_PAYLOAD_TYPE, payload) == b"current"
    assert primary_opus(OPUS_PAYLOAD_TYPE, b"x") == b"x"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes([OPUS_PAYLOAD_TYPE]),  # empty primary
        bytes([0x80 | 0]) + bytes(3) + b"x",  # a block that is not Opus
        bytes([0x80 | OPUS_PAYLOAD_TYPE, 0, 0x0F, 0x05, OPUS_PAYLOAD_TYPE]),  # runs past the end
        bytes([0x80 | OPUS_PAYLOAD_TYPE, 0, 0, 0]),  # ends inside the headers
        bytes([0x80 | OPUS_PAYLOAD_TYPE]) + (100 << 10 | 1).to_bytes(3, "big") + b"\x6fab",
        (bytes([0x80 | OPUS_PAYLOAD_TYPE]) + (960 << 10).to_bytes(3, "big")) * 3
        + bytes([OPUS_PAYLOAD_TYPE, 1]),  # three redundant blocks
    ],
)
def test_malformed_red_is_refused(payload: bytes):
    with pytest.raises(RedError):
        unpack_red(payload)


def test_policy_switches_with_hysteresis():
    policy = RedundancyPolicy()
    assert [(policy.update(x), policy.redundancy)[1] for x in (0.0, 0.008)] == [0, 0]
    assert policy.expected_loss == 1  # no RED yet: in-band FEC sized for the loss
    policy.update(0.012)
    assert policy.redundancy == 1 and policy.expected_loss == 0  # RED carries it all
    policy.update(0.007)  # between off and on: stays
    assert policy.redundancy == 1
    policy.update(0.05)
    assert policy.redundancy == 2 and policy.expected_loss == 0
    policy.update(0.025)
    assert policy.redundancy == 2
    # Down one step only after three low reports in a row; a high one starts the count again.
    assert [(policy.update(x), policy.redundancy)[1] for x in (0.01, 0.01, 0.05)] == [2, 2, 2]
    assert [(policy.update(0.01), policy.redundancy)[1] for _ in range(3)] == [2, 2, 1]
    assert [(policy.update(0.0), policy.redundancy)[1] for _ in range(3)] == [1, 1, 0]
    assert policy.expected_loss == 0


def test_red_goes_off_at_once_when_a_member_cannot_decode_it():
    policy = RedundancyPolicy()
    policy.update(0.05)
    assert policy.redundancy == 2
    assert policy.update(0.05, red_allowed=False) and policy.redundancy == 0
    assert policy.expected_loss == 5  # in-band FEC takes over
    policy.update(0.05)
    assert policy.redundancy == 2


def test_bitrate_follows_loss_within_the_bounds():
    policy = BitratePolicy(32000, 16000, 24000)
    assert policy.bitrate == 24000  # the preferred bitrate clipped to the server's bounds
    policy.update(0.05)  # between the thresholds: holds
    assert policy.bitrate == 24000
    seen = []
    for _ in range(10):
        policy.update(0.30)
        seen.append(policy.bitrate)
    assert seen[0] == 20400 and seen[-1] == 16000 and min(seen) == 16000
    for _ in range(20):
        policy.update(0.0)
        seen.append(policy.bitrate)
    assert seen[-1] == 24000 and max(seen) == 24000
    assert BitratePolicy(20000, 16000, 40000).ceiling == 20000  # never above the preferred
    with pytest.raises(ValueError):
        BitratePolicy(32000, 40000, 16000)


def test_the_sender_sets_the_encoder_to_the_adapted_bitrate():
    sender = MediaSender(7, 1234, KEY, OpusEncoder(bitrate=32000), bitrate_bounds=(16000, 40000))
    assert sender.encoder.bitrate == 32000
    sender.on_loss_report(0.2)
    assert sender.encoder.bitrate == 28800
    clean = MediaSender(7, 1234, KEY, OpusEncoder(bitrate=32000))
    clean.on_loss_report(0.5)
    assert clean.encoder.bitrate == 32000  # no bounds given: it keeps its bitrate


def voiced(seconds: float) -> list[bytes]:
    t = np.arange(int(48000 * seconds)) / 48000
    signal = 8000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    samples = signal.astype("<i2")
    return [samples[i : i + 960].tobytes() for i in range(0, len(samples) - 959, 960)]


def run(loss_every: int, redundancy_loss: float) -> tuple[MediaReceiver, MediaSender]:
    sender = MediaSender(7, 1234, KEY, OpusEncoder(), sequence_number=65500)
    sender.on_loss_report(redundancy_loss)
    receiver = MediaReceiver()
    receiver.add_speaker("alice", 7, 1234, KEY)
    now = 0.0
    for index, pcm in enumerate(voiced(2.0)):
        datagram = sender.send_pcm(pcm)
        assert datagram is not None
        if index % loss_every != loss_every - 1:
            receiver.receive(datagram, now)
        receiver.pull(now)
        now += 0.02
    return receiver, sender


def test_red_fills_every_single_loss_before_its_slot():
    receiver, sender = run(loss_every=7, redundancy_loss=0.05)
    assert sender.redundancy == 2 and sender.stats.red == sender.stats.sent
    stats = receiver.jitter_stats()["alice"]
    assert stats.redundancy_filled >= 12
    assert stats.concealed == 0 and stats.lost == 0
    # The buffer waits for the copies: two frames more than its floor.
    assert stats.target_delay >= 0.06 - 1e-9


def test_without_red_the_same_losses_are_concealed_and_reported():
    receiver, sender = run(loss_every=7, redundancy_loss=0.0)
    assert sender.redundancy == 0 and sender.stats.red == 0
    stats = receiver.jitter_stats()["alice"]
    assert stats.redundancy_filled == 0 and stats.lost >= 12
    (report,) = receiver.reports()
    assert report.flow_id == 7
    assert report.expected == 100
    assert report.lost == 14
    assert receiver.reports() == []  # nothing new since


def test_red_packets_keep_the_header_the_forwarder_reads():
    sender = MediaSender(7, 1234, KEY, OpusEncoder())
    sender.on_loss_report(0.2)
    frames = voiced(0.1)
    datagrams = [sender.send_pcm(pcm) for pcm in frames]
    header = peek_media(datagrams[-1])
    assert header.flow_id == 7 and header.ssrc == 1234 and header.level is not None


def test_the_redundancy_flow_fills_losses_of_the_plain_flow_and_is_not_reported():
    """The speaker's flow stays plain Opus; its redundancy flow (PROTOCOL.md 11.10) carries
    frames N-1, N-2 and N-4 beside frame N, with N-1's sequence number, and the receiver fills the
    lost packets of the flow from it. Its reports still count the loss before repair."""
    red_key = base64.b64encode(os.urandom(28)).decode()
    sender = MediaSender(7, 1234, KEY, OpusEncoder(), sequence_number=65500)
    sender.set_red_flow(8, 5678, red_key)
    assert sender.on_loss_report(0.05, red_allowed=False, red_flow=True)
    receiver = MediaReceiver()
    receiver.add_speaker("alice", 7, 1234, KEY)
    receiver.add_red_flow(7, 8, 5678, red_key)
    now = 0.0
    for index, pcm in enumerate(voiced(2.0)):
        datagram = sender.send_pcm(pcm)
        assert datagram is not None
        if index % 7 != 6:
            receiver.receive(datagram, now)
        repair = sender.red_flow_datagram
        if index == 0:
            assert repair is None  # nothing earlier to repeat yet
        else:
            assert repair is not None and peek_media(repair).flow_id == 8
            assert peek_media(repair).level is None  # no header extension
            _, blocks = unpack_red(open_red_flow(repair, red_key))
            assert (
                [block.distance for block in blocks] == [[], [], [1], [1]][index]
                if index < 4
                else [3, 1]
            )
            assert receiver.receive(repair, now)
        receiver.pull(now)
        now += 0.02
    assert sender.stats.red == 0 and sender.stats.red_flow_sent == sender.stats.sent - 1
    stats = receiver.jitter_stats()["alice"]
    assert receiver.stats.red_flow_filled == stats.redundancy_filled >= 12
    # Single losses: the frames right after each lost one bring its copies, and the buffer
    # waits two frames for them, not four (the far copies are for bursts).
    assert stats.lost == 0
    assert stats.target_delay == pytest.approx(0.06)
    assert receiver.stats.red_flow_far_filled == 0
    (report,) = receiver.reports()
    assert (report.expected, report.lost) == (100, 14)
    # The speaker's flow revoked: its redundancy flow goes with it.
    receiver.remove_speaker(7)
    assert not receiver.receive(sender.red_flow_datagram or b"", now)


_RED_FLOW_RECEIVERS: dict[str, SrtpReceiver] = {}


def open_red_flow(datagram: bytes, key_b64: str) -> bytes:
    """The RTP payload of a redundancy flow datagram (flow 8, SSRC 5678); one SRTP context
    per key, which follows the rollover counter across the sequence number wrap."""
    if key_b64 not in _RED_FLOW_RECEIVERS:
        receiver = _RED_FLOW_RECEIVERS[key_b64] = SrtpReceiver()
        receiver.add(8, 5678, key_from_base64(key_b64))
    _, packet = _RED_FLOW_RECEIVERS[key_b64].open(datagram)
    assert packet.payload_type == RED_PAYLOAD_TYPE
    return packet.payload


def burst_run(span: int, bursts_every: int, burst: int) -> tuple[MediaReceiver, MediaSender]:
    """Four seconds of voice with the redundancy flow on, losing ``burst`` frames in a row
    every ``bursts_every`` frames: each lost frame's packet and the redundancy flow packet sent
    with it (one QUIC packet on the wire share one fate)."""
    red_key = base64.b64encode(os.urandom(28)).decode()
    sender = MediaSender(7, 1234, KEY, OpusEncoder(), sequence_number=65500, red_flow_span=span)
    sender.set_red_flow(8, 5678, red_key)
    # The listeners that get the flow are left out of `loss` (PROTOCOL.md 11.10): no FEC.
    sender.on_loss_report(0.0, red_allowed=False, red_flow=True)
    receiver = MediaReceiver()
    receiver.add_speaker("alice", 7, 1234, KEY)
    receiver.add_red_flow(7, 8, 5678, red_key)
    now = 0.0
    for index, pcm in enumerate(voiced(4.0)):
        datagram = sender.send_pcm(pcm)
        assert datagram is not None
        if index % bursts_every >= burst:
            receiver.receive(datagram, now)
            if sender.red_flow_datagram is not None:
                receiver.receive(sender.red_flow_datagram, now)
        receiver.pull(now)
        now += 0.02
    return receiver, sender


def test_the_redundancy_flow_repairs_bursts_of_three_once_the_receiver_sees_bursts():
    """Bursts of 3 frames every 20: the copies of N-1 and N-2 (span 1) arrive only in the
    packets right after the lost frame, lost with it; the copy of N-1-3 comes after the burst,
    and the receiver, having seen its flow lose pairs, waits the four frames it takes."""
    receiver, _ = burst_run(span=3, bursts_every=20, burst=3)
    stats = receiver.jitter_stats()["alice"]
    assert receiver.stats.red_flow_far_filled >= 8
    # Ten bursts of three: the first two make the receiver bursty, then every
    # lost frame is filled by a copy.
    assert stats.redundancy_filled >= 3 * 10 - 6
    assert stats.target_delay >= 0.1 - 1e-9
    near, _ = burst_run(span=1, bursts_every=20, burst=3)
    # Copies of N-1 and N-2: the first frame of each burst has none left (at best the
    # decoder's concealment, or FEC where the encoder sends it).
    assert near.jitter_stats()["alice"].redundancy_filled <= 2 * 10
    assert near.stats.red_flow_far_filled == 0


def test_burst_meter_tells_runs_of_three_losses_from_shorter_ones():
    single, paired, bursty = BurstMeter(), BurstMeter(), BurstMeter()
    for seq in range(1000):
        if seq % 20 != 0:
            single.arrived(seq)
        if seq % 20 not in (0, 1):
            paired.arrived(seq)
        if seq % 20 not in (0, 1, 2):
            bursty.arrived(seq)
    assert not single.bursty and not paired.bursty and bursty.bursty
    # A whole window of pairs only: calm again.
    for seq in range(1000, 1000 + BurstMeter.WINDOW + 2 * BurstMeter.JUDGE_LAG):
        if seq % 20 not in (0, 1):
            bursty.arrived(seq)
    assert not bursty.bursty
    # Reordering is not loss, nor is a jump in sequence numbers (a new stream).
    reordered = BurstMeter()
    for seq in range(0, 1000, 3):
        reordered.arrived(seq + 2)
        reordered.arrived(seq + 1)
        reordered.arrived(seq)
    reordered.arrived(1_000_000)
    assert not reordered.bursty
