"""The client's audio path between PCM frames and media datagrams, sans-I/O.

:class:`MediaSender` turns the microphone's 20 ms frames into datagrams
(``varint(flow_id) || SRTP(RTP(Opus))``); :class:`MediaReceiver` takes every speaker's datagrams
in and gives back one mixed 20 ms frame per call. Neither touches a socket or a clock: the
caller passes datagrams, frames and ``now`` in, and sends or plays what comes out.

    sender = MediaSender(key.flow_id, key.ssrc, key.key, OpusEncoder())
    datagram = sender.send_pcm(frame)          # None: nothing to send (DTX or muted)

    receiver = MediaReceiver()
    receiver.add_speaker(key.user, key.flow_id, key.ssrc, key.key)
    receiver.receive(datagram, now)            # never raises; bad input is counted
    pcm, levels = receiver.pull(now)           # every 20 ms
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from salon.daemon.wire.datagram import MAX_DATAGRAM_SIZE, pack_datagram
from salon.daemon.wire.rtp import FRAME_SAMPLES, OPUS_PAYLOAD_TYPE, SILENCE_LEVEL, RtpPacket

from .codec import CodecError, OpusDecoder, OpusEncoder
from .jitter import DEFAULT_MIN_DELAY, FrameKind, JitterBuffer, JitterStats
from .levels import audio_level, measure
from .mixer import mix_arrays
from .packetizer import RtpPacketizer
from .red import MAX_REDUNDANCY, RED_PAYLOAD_TYPE, RedError, RedundantBlock, pack_red, unpack_red
from .srtp import SrtpError, SrtpReceiver, SrtpSender, key_from_base64
from .timeline import unwrap

_SILENT_FRAME = bytes(2 * FRAME_SAMPLES)
# Packets in a row with less redundancy before the playout floor comes down (2 s of audio).
_REDUNDANCY_HOLD = 100
RED_FLOW_SPAN = 3
"""How far back the far copy of a redundancy flow packet reaches (PROTOCOL.md 11.10): the
packet sent with frame N carries frames N-1, N-2 and N-1-span, so a frame is lost only when the
packets of frames N, N+1, N+2 and N+1+span all are: a burst of up to ``span`` + 1 packets is
repaired whole, where copies of N-1 and N-2 alone leave the first frame of any burst of three
or more. The nearer copies repair single losses and pairs with a shorter wait."""
MAX_RED_FLOW_SPAN = 8
"""Largest span a receiver accepts for the playout hold (8 frames: 180 ms of extra delay)."""


@dataclass
class SenderStats:
    """Counters of a :class:`MediaSender`."""

    frames: int = 0
    """PCM frames handed in."""
    sent: int = 0
    """Datagrams produced."""
    bytes_sent: int = 0
    """Total size of those datagrams."""
    dtx: int = 0
    """Frames not sent because the encoder was in DTX (silence)."""
    muted: int = 0
    """Frames not sent because the microphone was muted."""
    too_large: int = 0
    """Frames dropped because their datagram exceeded the size limit."""
    red: int = 0
    """Datagrams sent as RED (carrying earlier frames too)."""
    red_flow_sent: int = 0
    """Datagrams sent on the redundancy flow (PROTOCOL.md 11.10)."""
    red_flow_bytes: int = 0


class RedundancyPolicy:
    """How much protection a speaker adds for the loss the server reports, with hysteresis.

    While RED is off, in-band FEC is sized for the reported loss (capped at
    :attr:`max_fec_loss` percent); with RED on it is sized for none (see :meth:`update`). RED
    carries one earlier frame from :attr:`red_on` loss and two from :attr:`red_two`; each step
    goes back down only below a lower threshold (:attr:`red_off`, :attr:`red_one`) in
    :attr:`hold_reports` reports in a row, so loss hovering around a threshold does not flip
    the packet format (and the listeners' delay) every report.
    """

    red_on = 0.01
    red_off = 0.005
    red_two = 0.03
    red_one = 0.02
    max_fec_loss = 25
    hold_reports = 3

    def __init__(self) -> None:
        self._low_reports = 0
        self.redundancy = 0
        """Earlier frames each packet carries now (0, 1 or 2)."""
        self.expected_loss = 0
        """Loss percentage the encoder's in-band FEC is sized for."""

    def update(self, loss: float, red_allowed: bool = True) -> bool:
        """Take a reported loss fraction (0..1); return whether the redundancy changed.

        Without ``red_allowed`` (a member of the room cannot decode RED) RED goes off at once
        and in-band FEC alone is sized for the loss.
        """
        loss = min(max(loss, 0.0), 1.0)
        if not red_allowed:
            changed = self.redundancy != 0
            self.redundancy = 0
            self._low_reports = 0
            self.expected_loss = min(self.max_fec_loss, round(loss * 100))
            return changed
        level = self.redundancy
        if level == 0 and loss >= self.red_on:
            level = 1
        if level >= 1 and loss >= self.red_two:
            level = 2
        # Stepping down waits for `hold_reports` low reports in a row: loss measured over a
        # second or two of packets is noisy, and each change moves the listeners' playout delay.
        lower = (level == 2 and loss < self.red_one) or (level == 1 and loss < self.red_off)
        self._low_reports = self._low_reports + 1 if lower else 0
        if self._low_reports >= self.hold_reports:
            level -= 1
            self._low_reports = 0
        changed = level != self.redundancy
        self.redundancy = level
        # In-band FEC data for frame N rides in packet N + 1, which with RED carries all of
        # frame N anyway: FEC then only costs the primary frame bits (at 32 kbit/s, sizing it
        # for 10% loss takes WB-PESQ from 3.72 to 3.24 on the codec alone).
        self.expected_loss = 0 if level else min(self.max_fec_loss, round(loss * 100))
        return changed


class BitratePolicy:
    """The encoder's bitrate for the reported loss, within the server's bounds.

    The loss-based rule of WebRTC's congestion control (draft-ietf-rmcat-gcc-02, section 6):
    above :attr:`decrease_above` loss the bitrate drops by half the loss fraction, below
    :attr:`increase_below` it climbs by :attr:`step_up` back towards the preferred one; in
    between it holds. It never leaves ``[minimum, maximum]`` (the ``min_bitrate`` and
    ``max_bitrate`` limits of ``hello``) nor climbs past the preferred bitrate, so on a clean
    network a speaker sends exactly what it did before any loss.
    """

    decrease_above = 0.10
    increase_below = 0.02
    step_up = 1.05

    def __init__(self, preferred: int, minimum: int, maximum: int) -> None:
        if minimum > maximum:
            raise ValueError(f"bitrate bounds reversed: {minimum} > {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        self.ceiling = min(max(preferred, minimum), maximum)
        """The bitrate on a clean network: the preferred one, clipped to the bounds."""
        self.bitrate = self.ceiling

    def update(self, loss: float) -> bool:
        """Take a reported loss fraction (0..1); return whether the bitrate changed."""
        loss = min(max(loss, 0.0), 1.0)
        bitrate = self.bitrate
        if loss > self.decrease_above:
            bitrate = round(bitrate * (1 - 0.5 * loss))
        elif loss < self.increase_below:
            bitrate = round(bitrate * self.step_up)
        bitrate = min(max(bitrate, self.minimum), self.ceiling)
        changed = bitrate != self.bitrate
        self.bitrate = bitrate
        return changed


class MediaSender:
    """Encodes, packetizes, protects and frames one speaker's audio.

    While :attr:`muted`, frames are neither encoded nor sent, but media time still advances so
    that receivers hear the pause as silence. The server also drops a muted speaker's packets;
    not sending them saves the bandwidth.
    """

    def __init__(
        self,
        flow_id: int,
        ssrc: int,
        key_b64: str,
        encoder: OpusEncoder,
        *,
        muted: bool = False,
        sequence_number: int | None = None,
        timestamp: int | None = None,
        bitrate_bounds: tuple[int, int] | None = None,
        red_flow_span: int = RED_FLOW_SPAN,
    ) -> None:
        if not 1 <= red_flow_span <= MAX_RED_FLOW_SPAN:
            raise ValueError(f"red_flow_span must be 1..{MAX_RED_FLOW_SPAN}, got {red_flow_span}")
        self.flow_id = flow_id
        self.red_flow_span = red_flow_span
        """How far back the far copy of a redundancy flow packet reaches (:data:`RED_FLOW_SPAN`)."""
        self.ssrc = ssrc
        self.encoder = encoder
        minimum, maximum = bitrate_bounds or (encoder.bitrate, encoder.bitrate)
        self.bitrate_policy = BitratePolicy(encoder.bitrate, minimum, maximum)
        """The bitrate the loss reports made, within the server's bounds."""
        if encoder.bitrate != self.bitrate_policy.bitrate:
            encoder.set_bitrate(self.bitrate_policy.bitrate)
        self._srtp = SrtpSender(key_from_base64(key_b64))
        self._packetizer = RtpPacketizer(ssrc, sequence_number, timestamp)
        self._muted = muted
        self.stats = SenderStats()
        self.last_level = SILENCE_LEVEL
        """RFC 6464 level of the last frame handed in (127 while muted)."""
        self.policy = RedundancyPolicy()
        """What the loss reports made of FEC and RED (see :meth:`on_loss_report`)."""
        # (sequence number, timestamp, Opus payload) of the last packets sent, newest last.
        self._history: deque[tuple[int, int, bytes]] = deque(
            maxlen=max(MAX_REDUNDANCY, red_flow_span + 1)
        )
        self._red_flow: tuple[int, int, SrtpSender] | None = None
        self.red_flow_on = False
        """Whether the server asked for the redundancy flow (the ``red_flow`` of its reports)."""
        self.red_flow_datagram: bytes | None = None
        """The redundancy flow's datagram that goes with the last :meth:`send_pcm`'s, if any:
        send it right after that one."""

    @property
    def red_flow_id(self) -> int | None:
        """The redundancy flow's id, once the server gave this flow one."""
        return self._red_flow[0] if self._red_flow is not None else None

    def set_red_flow(self, flow_id: int, ssrc: int, key_b64: str) -> None:
        """The flow id, SSRC and key of this flow's redundancy flow (``MediaKey.red_flow``)."""
        self._red_flow = (flow_id, ssrc, SrtpSender(key_from_base64(key_b64)))

    @property
    def redundancy(self) -> int:
        """Earlier frames each packet carries (RFC 2198 RED); 0 sends plain Opus."""
        return self.policy.redundancy

    def on_loss_report(
        self, loss: float, red_allowed: bool = True, red_flow: bool | None = None
    ) -> bool:
        """Adapt FEC, RED and bitrate to the loss fraction the server reports for this flow.

        ``red_allowed``: the report's ``red`` (every receiver decodes RED). ``red_flow``: the
        report's ``red_flow`` (send the redundancy flow; None leaves it as it is). Return
        whether the redundancy changed.
        """
        changed = False
        if red_flow is not None and self._red_flow is not None:
            changed = red_flow != self.red_flow_on
            self.red_flow_on = red_flow
        changed = self.policy.update(loss, red_allowed) or changed
        self.encoder.set_expected_loss(self.policy.expected_loss)
        if self.bitrate_policy.update(loss):
            self.encoder.set_bitrate(self.bitrate_policy.bitrate)
        return changed

    @property
    def muted(self) -> bool:
        """Whether the microphone is muted (nothing is sent)."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        if self._muted and not value:
            # Start the next talkspurt from a clean encoder rather than from audio that
            # predates the mute.
            self.encoder.reset()
        self._muted = value

    def mute(self) -> None:
        """Stop sending."""
        self.muted = True

    def unmute(self) -> None:
        """Resume sending."""
        self.muted = False

    def set_expected_loss(self, percent: float) -> None:
        """Size the encoder's in-band FEC for the loss listeners report."""
        self.encoder.set_expected_loss(percent)

    def send_pcm(self, frame_pcm: bytes) -> bytes | None:
        """The datagram carrying this 20 ms frame, or None when there is nothing to send.

        While the redundancy flow is on, :attr:`red_flow_datagram` is set too.
        """
        stats = self.stats
        stats.frames += 1
        self.red_flow_datagram = None
        if self._muted:
            self.last_level = SILENCE_LEVEL
            self._packetizer.skip()
            self._history.clear()
            stats.muted += 1
            return None
        level, voice = measure(frame_pcm)
        self.last_level = level
        payload = self.encoder.encode(frame_pcm)
        if self.encoder.is_dtx(payload):
            self._packetizer.skip()
            self._history.clear()
            stats.dtx += 1
            return None
        packetizer = self._packetizer
        seq, timestamp = packetizer.sequence_number, packetizer.timestamp
        history = self._history
        if history and history[-1][0] != (seq - 1) & 0xFFFF:
            history.clear()  # frames were skipped: earlier packets are not contiguous any more
        depth = self.policy.redundancy
        if depth:
            blocks = [
                RedundantBlock((timestamp - ts) & 0xFFFFFFFF, old)
                for old_seq, ts, old in list(history)[-depth:]
                if (timestamp - ts) & 0xFFFFFFFF == ((seq - old_seq) & 0xFFFF) * FRAME_SAMPLES
            ]
            rtp = packetizer.packetize(
                pack_red(payload, blocks), level, voice, payload_type=RED_PAYLOAD_TYPE
            )
            stats.red += 1
        else:
            rtp = packetizer.packetize(payload, level, voice)
        if self.red_flow_on and self._red_flow is not None and history:
            self.red_flow_datagram = self._red_flow_packet(history)
        history.append((seq, timestamp, payload))
        datagram = pack_datagram(self.flow_id, self._srtp.protect(rtp))
        if len(datagram) > MAX_DATAGRAM_SIZE:
            stats.too_large += 1
            return None
        stats.sent += 1
        stats.bytes_sent += len(datagram)
        return datagram

    def _red_flow_packet(self, history: deque[tuple[int, int, bytes]]) -> bytes | None:
        """The redundancy flow's packet sent with frame N (PROTOCOL.md 11.10): a RED payload
        whose primary block is frame N-1, with redundant blocks for frames N-1-span and N-2
        (each when it and the frames after it were all sent), N-1's sequence number and
        timestamp, no header extension."""
        assert self._red_flow is not None
        flow_id, ssrc, srtp = self._red_flow
        seq, timestamp, last = history[-1]
        blocks = []
        # Oldest first; the history holds only packets sent in a row (it is cleared at a gap).
        for distance in sorted({self.red_flow_span, 1}, reverse=True):
            if len(history) > distance:
                old_seq, old_ts, old = history[-1 - distance]
                offset = (timestamp - old_ts) & 0xFFFFFFFF
                if old_seq == (seq - distance) & 0xFFFF and offset == distance * FRAME_SAMPLES:
                    blocks.append(RedundantBlock(offset, old))
        rtp = RtpPacket(
            payload_type=RED_PAYLOAD_TYPE,
            sequence_number=seq,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=pack_red(last, blocks),
        ).serialize()
        datagram = pack_datagram(flow_id, srtp.protect(rtp))
        if len(datagram) > MAX_DATAGRAM_SIZE:
            return None
        self.stats.red_flow_sent += 1
        self.stats.red_flow_bytes += len(datagram)
        return datagram


class BurstMeter:
    """Whether a flow's losses come in bursts, from its arrivals (before any repair).

    The redundancy flow packet sent with frame N carries copies of frames N-1, N-2 and
    N-1-span (PROTOCOL.md 11.10). The first two repair single losses and pairs with playout
    held two frames longer; the third arrives ``span`` + 1 frames late, and is needed only when
    a frame's packet and the next two were all lost. So a receiver holds playout for it only
    while such runs of three are frequent: about 1 frame in 8000 starts one at 5% random loss,
    1 in 1000 at 10%, 1 in 80 at 5% loss in bursts of mean length 2
    (``python bench/quality.py --residuals``).

    A sequence number is judged :data:`JUDGE_LAG` frames after the newest one, so that a
    reordered packet counts as arrived. Runs are counted over the last :data:`WINDOW` frames:
    the meter turns bursty at :data:`BURSTY_RUNS` runs when they are at least
    :data:`BURSTY_RATE` of the frames judged, and back only after a whole window with at most
    :data:`CALM_RUNS` (a longer delay costs less than concealing bursts on and off).
    """

    RUN = 3
    WINDOW = 500
    JUDGE_LAG = 8
    BURSTY_RUNS = 2
    BURSTY_RATE = 0.004
    CALM_RUNS = 1

    def __init__(self) -> None:
        self.bursty = False
        self._arrived: set[int] = set()
        self._judged: int | None = None
        self._judged_count = 0
        self._runs: deque[int] = deque()

    def arrived(self, sequence_number: int) -> None:
        """A packet of the flow arrived; ``sequence_number`` unwrapped (any integer)."""
        if self._judged is None:
            self._judged = sequence_number - 1
        if sequence_number > self._judged:
            self._arrived.add(sequence_number)
        horizon = max(self._arrived, default=self._judged) - self.JUDGE_LAG
        if horizon <= self._judged:
            return
        arrived = self._arrived
        if horizon - self._judged > self.WINDOW:
            # A jump of more than a window is a new stream (a resync), not a loss.
            self._judged = horizon
            self._arrived = {seq for seq in arrived if seq > horizon}
            return
        for seq in range(self._judged + 1, horizon + 1):
            if all(seq + k not in arrived for k in range(self.RUN)):
                self._runs.append(seq)
        self._judged_count += horizon - self._judged
        self._judged = horizon
        self._arrived = {seq for seq in arrived if seq > horizon}
        runs = self._runs
        while runs and runs[0] <= horizon - self.WINDOW:
            runs.popleft()
        judged = min(self._judged_count, self.WINDOW)
        if not self.bursty:
            self.bursty = len(runs) >= self.BURSTY_RUNS and len(runs) >= self.BURSTY_RATE * judged
        elif self._judged_count >= self.WINDOW and len(runs) <= self.CALM_RUNS:
            self.bursty = False
            self._judged_count = 0  # another whole window before it may turn bursty again


@dataclass
class _Speaker:
    user: str
    flow_id: int
    ssrc: int
    key: bytes
    decoder: OpusDecoder
    jitter: JitterBuffer
    level: int = SILENCE_LEVEL
    highest_seq: int | None = None
    """Highest sequence number received (unwrapped), for loss reports."""
    report_base: int = 0
    """``highest_seq`` at the last report: the next report covers what came after it."""
    report_received: int = 0
    """Packets received since the last report (whatever their sequence number)."""
    report_late: int = 0
    """The jitter buffer's late count at the last report."""
    redundancy: int = 0
    """Earlier frames the speaker's packets carry (RED depth), as the playout floor follows."""
    redundancy_seen: int = 0
    """Packets in a row with fewer copies than ``redundancy``."""
    bursts: BurstMeter = field(default_factory=BurstMeter)
    """Whether the flow's losses come in bursts: then the playout waits for the redundancy
    flow's far copies too."""


@dataclass(frozen=True)
class FlowReport:
    """What a listener saw of one speaker's flow since its previous report (PROTOCOL.md)."""

    flow_id: int
    expected: int
    """Packets the sequence numbers say were sent in the interval."""
    lost: int
    """Of those, packets that never arrived (before any repair by RED or FEC)."""
    late: int
    """Packets that arrived after their playout slot."""
    jitter_ms: float
    """Spread of transit times the jitter buffer measures, in milliseconds."""


@dataclass
class ReceiverStats:
    """Counters of a :class:`MediaReceiver`."""

    received: int = 0
    """Datagrams handed in."""
    accepted: int = 0
    """Datagrams that reached a jitter buffer."""
    drops: Counter[str] = field(default_factory=Counter)
    """Datagrams dropped, by reason: ``malformed``, ``too_large``, ``unknown_flow``,
    ``auth_failed``, ``replay``, ``wrong_ssrc``, ``ssrc_mismatch``, ``bad_payload_type``,
    ``bad_red``."""
    decode_errors: int = 0
    """Packets libopus could not decode (concealed instead)."""
    bytes: int = 0
    """Bytes of every datagram handed in."""
    red_flow_received: int = 0
    """Datagrams of redundancy flows that reached a speaker's jitter buffer."""
    red_flow_bytes: int = 0
    red_flow_filled: int = 0
    """Copies from redundancy flows that filled the slot of a packet not (yet) arrived."""
    red_flow_far_filled: int = 0
    """Of those, copies in a redundant block at least 2 frames before its packet's primary:
    frames whose packet and the next one were both lost (a burst)."""


class MediaReceiver:
    """Receives every speaker's datagrams and mixes their audio for playout.

    Each speaker has a flow (SRTP key and SSRC), an Opus decoder and an adaptive jitter
    buffer made by ``jitter_buffer`` (e.g. a ``functools.partial`` of :class:`JitterBuffer`
    with other delays). :meth:`pull` must be called once per 20 ms; it pops one frame from each
    buffer, decodes, conceals or rebuilds it from FEC, and mixes the speakers with saturation.
    """

    def __init__(self, jitter_buffer: Callable[[], JitterBuffer] = JitterBuffer) -> None:
        self._srtp = SrtpReceiver()
        self._speakers: dict[int, _Speaker] = {}
        self._red_flows: dict[int, int] = {}
        """Redundancy flow id to the flow id it repairs."""
        self._new_jitter_buffer = jitter_buffer
        self.stats = ReceiverStats()

    def add_speaker(self, user: str, flow_id: int, ssrc: int, key_b64: str) -> None:
        """Start accepting ``user``'s media on ``flow_id``; a user's new flow replaces the old.

        Announcing a flow again with the same SSRC and key changes nothing (the server sends
        keys both in the room snapshot and as events). A malformed key raises
        :class:`~salon.media.srtp.SrtpError`.
        """
        key = key_from_base64(key_b64)
        current = self._speakers.get(flow_id)
        if current is not None and (current.user, current.ssrc, current.key) == (user, ssrc, key):
            return
        for old_flow, speaker in list(self._speakers.items()):
            if speaker.user == user and old_flow != flow_id:
                self.remove_speaker(old_flow)
        self._srtp.add(flow_id, ssrc, key)
        self._speakers[flow_id] = _Speaker(
            user=user,
            flow_id=flow_id,
            ssrc=ssrc,
            key=key,
            decoder=OpusDecoder(),
            jitter=self._new_jitter_buffer(),
        )

    def add_red_flow(self, flow_id: int, red_flow_id: int, ssrc: int, key_b64: str) -> None:
        """Use ``red_flow_id`` (``MediaKey.red_flow``) to fill gaps of the speaker ``flow_id``,
        which must have been added; nothing changes if it is known already."""
        if flow_id not in self._speakers or self._red_flows.get(red_flow_id) == flow_id:
            return
        self._srtp.add(red_flow_id, ssrc, key_from_base64(key_b64))
        self._red_flows[red_flow_id] = flow_id

    def remove_speaker(self, flow_id: int) -> None:
        """Stop accepting media on ``flow_id`` (key revoked, speaker left the stage)."""
        self._srtp.remove(flow_id)
        self._speakers.pop(flow_id, None)
        for red_flow_id in [r for r, f in self._red_flows.items() if f == flow_id]:
            self._srtp.remove(red_flow_id)
            del self._red_flows[red_flow_id]

    @property
    def speakers(self) -> dict[int, str]:
        """Flow id to user of every speaker."""
        return {flow_id: speaker.user for flow_id, speaker in self._speakers.items()}

    def receive(self, datagram: bytes, now: float) -> bool:
        """Take in one media datagram; return whether it was accepted. Never raises."""
        stats = self.stats
        stats.received += 1
        stats.bytes += len(datagram)
        if len(datagram) > MAX_DATAGRAM_SIZE:
            stats.drops["too_large"] += 1
            return False
        try:
            flow_id, packet = self._srtp.open(datagram)
        except SrtpError as exc:
            stats.drops[exc.reason] += 1
            return False
        repaired = self._red_flows.get(flow_id)
        if repaired is not None:
            return self._receive_red_flow(self._speakers[repaired], packet, len(datagram))
        speaker = self._speakers[flow_id]  # added and removed together with its SRTP flow
        redundant: list[RedundantBlock] = []
        if packet.payload_type == RED_PAYLOAD_TYPE:
            try:
                primary, redundant = unpack_red(packet.payload)
            except RedError:
                stats.drops["bad_red"] += 1
                return False
        elif packet.payload_type == OPUS_PAYLOAD_TYPE and packet.payload:
            primary = packet.payload
        else:
            stats.drops["bad_payload_type"] += 1
            return False
        self._count(speaker, packet.sequence_number)
        jitter = speaker.jitter
        jitter.add(packet.sequence_number, packet.timestamp, primary, now)
        for block in redundant:
            jitter.add_redundant(
                (packet.sequence_number - block.distance) & 0xFFFF,
                (packet.timestamp - block.offset) & 0xFFFFFFFF,
                block.payload,
            )
        self._follow_depth(speaker, max((block.distance for block in redundant), default=0))
        stats.accepted += 1
        return True

    def _receive_red_flow(self, speaker: _Speaker, packet: RtpPacket, size: int) -> bool:
        """A packet of a speaker's redundancy flow: its frames fill gaps of the speaker's flow
        (the sequence numbers are the speaker's flow's, PROTOCOL.md 11.10); it is not counted
        in the flow's reports, which measure the loss before repair."""
        stats = self.stats
        if packet.payload_type != RED_PAYLOAD_TYPE:
            stats.drops["bad_payload_type"] += 1
            return False
        try:
            primary, redundant = unpack_red(packet.payload)
        except RedError:
            stats.drops["bad_red"] += 1
            return False
        jitter = speaker.jitter
        seq, timestamp = packet.sequence_number, packet.timestamp
        filled = int(jitter.add_redundant(seq, timestamp, primary))
        for block in redundant:
            if jitter.add_redundant(
                (seq - block.distance) & 0xFFFF,
                (timestamp - block.offset) & 0xFFFFFFFF,
                block.payload,
            ):
                filled += 1
                stats.red_flow_far_filled += block.distance > 1
        stats.red_flow_received += 1
        stats.red_flow_bytes += size
        stats.red_flow_filled += filled
        # The copy of frame N-1 comes with frame N: one frame later than the flow's packets,
        # the copy of N-2 two. The copy of N-1-span comes span + 1 frames late, and is worth
        # waiting for only where the flow loses frames in bursts: single losses and pairs are
        # repaired by the nearer copies.
        distances = [block.distance for block in redundant]
        wait = max(distances, default=0) if speaker.bursts.bursty else min(distances, default=0)
        self._follow_depth(speaker, 1 + min(wait, MAX_RED_FLOW_SPAN))
        stats.accepted += 1
        return True

    @staticmethod
    def _follow_depth(speaker: _Speaker, depth: int) -> None:
        if depth >= speaker.redundancy:
            speaker.redundancy_seen = 0
        else:
            speaker.redundancy_seen += 1
        if depth > speaker.redundancy or speaker.redundancy_seen > _REDUNDANCY_HOLD:
            # A copy is useful only if it arrives before the lost frame's slot: wait `depth`
            # frames longer while the speaker sends them, and no longer once it stopped for a
            # while (the first packets of a talkspurt carry fewer copies: no flapping).
            speaker.redundancy = depth
            speaker.redundancy_seen = 0
            speaker.jitter.set_min_delay(DEFAULT_MIN_DELAY + depth * FRAME_SAMPLES / 48000)

    @staticmethod
    def _count(speaker: _Speaker, sequence_number: int) -> None:
        if speaker.highest_seq is None:
            speaker.highest_seq = speaker.report_base = sequence_number - 1
        seq = unwrap(sequence_number, speaker.highest_seq, 16)
        # Every arrival counts in the interval it arrives in, as RFC 3550 A.3 counts: a packet
        # reordered across a report boundary makes one interval look lossier and the next
        # one less, instead of counting as lost for good.
        speaker.report_received += 1
        speaker.highest_seq = max(speaker.highest_seq, seq)
        speaker.bursts.arrived(seq)

    def reports(self) -> list[FlowReport]:
        """Per speaker, what arrived since the previous call (for a ``receiver_report``).

        Speakers with nothing expected in the interval (silent, muted) are left out.
        """
        result = []
        for speaker in self._speakers.values():
            if speaker.highest_seq is None:
                continue
            expected = speaker.highest_seq - speaker.report_base
            if expected <= 0:
                continue
            stats = speaker.jitter.stats()
            result.append(
                FlowReport(
                    flow_id=speaker.flow_id,
                    expected=expected,
                    lost=max(0, expected - speaker.report_received),
                    late=max(0, stats.late - speaker.report_late),
                    jitter_ms=round(stats.jitter * 1000, 1),
                )
            )
            speaker.report_base = speaker.highest_seq
            speaker.report_received = 0
            speaker.report_late = stats.late
        return result

    def pull(self, now: float) -> tuple[bytes, dict[str, int]]:
        """One 20 ms frame of every speaker mixed, and each speaker's level (0..127) in it."""
        frames = []
        levels: dict[str, int] = {}
        for speaker in self._speakers.values():
            pcm = self._play(speaker, now)
            if pcm is None:
                speaker.level = SILENCE_LEVEL
            else:
                samples = np.frombuffer(pcm, dtype="<i2")
                speaker.level = audio_level(samples)
                frames.append(samples)
            levels[speaker.user] = speaker.level
        if not frames:
            return _SILENT_FRAME, levels
        return mix_arrays(frames).astype("<i2").tobytes(), levels

    def _play(self, speaker: _Speaker, now: float) -> bytes | None:
        frame = speaker.jitter.pop(now)
        if frame is None or frame.kind is FrameKind.SILENCE:
            return None
        decoder = speaker.decoder
        try:
            if frame.kind is FrameKind.AUDIO:
                assert frame.payload is not None
                return decoder.decode(frame.payload)
            if frame.kind is FrameKind.FEC:
                assert frame.payload is not None
                return decoder.decode_fec(frame.payload)
            return decoder.conceal()
        except CodecError:
            # SRTP authenticated the packet, so this is a sender bug; conceal rather than stop.
            self.stats.decode_errors += 1
            try:
                return decoder.conceal()
            except CodecError:
                return None

    def jitter_stats(self) -> dict[str, JitterStats]:
        """Jitter buffer statistics per user."""
        return {speaker.user: speaker.jitter.stats() for speaker in self._speakers.values()}
