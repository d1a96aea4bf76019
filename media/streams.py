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

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from salon.daemon.wire.datagram import MAX_DATAGRAM_SIZE, pack_datagram
from salon.daemon.wire.rtp import FRAME_SAMPLES, OPUS_PAYLOAD_TYPE, SILENCE_LEVEL

from .codec import CodecError, OpusDecoder, OpusEncoder
from .jitter import FrameKind, JitterBuffer, JitterStats
from .levels import audio_level, measure
from .mixer import mix_arrays
from .packetizer import RtpPacketizer
from .srtp import SrtpError, SrtpReceiver, SrtpSender, key_from_base64

_SILENT_FRAME = bytes(2 * FRAME_SAMPLES)


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
    ) -> None:
        self.flow_id = flow_id
        self.ssrc = ssrc
        self.encoder = encoder
        self._srtp = SrtpSender(key_from_base64(key_b64))
        self._packetizer = RtpPacketizer(ssrc, sequence_number, timestamp)
        self._muted = muted
        self.stats = SenderStats()
        self.last_level = SILENCE_LEVEL
        """RFC 6464 level of the last frame handed in (127 while muted)."""

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
        """The datagram carrying this 20 ms frame, or None when there is nothing to send."""
        stats = self.stats
        stats.frames += 1
        if self._muted:
            self.last_level = SILENCE_LEVEL
            self._packetizer.skip()
            stats.muted += 1
            return None
        level, voice = measure(frame_pcm)
        self.last_level = level
        payload = self.encoder.encode(frame_pcm)
        if self.encoder.is_dtx(payload):
            self._packetizer.skip()
            stats.dtx += 1
            return None
        rtp = self._packetizer.packetize(payload, level, voice)
        datagram = pack_datagram(self.flow_id, self._srtp.protect(rtp))
        if len(datagram) > MAX_DATAGRAM_SIZE:
            stats.too_large += 1
            return None
        stats.sent += 1
        stats.bytes_sent += len(datagram)
        return datagram


@dataclass
class _Speaker:
    user: str
    flow_id: int
    ssrc: int
    key: bytes
    decoder: OpusDecoder
    jitter: JitterBuffer
    level: int = SILENCE_LEVEL


@dataclass
class ReceiverStats:
    """Counters of a :class:`MediaReceiver`."""

    received: int = 0
    """Datagrams handed in."""
    accepted: int = 0
    """Datagrams that reached a jitter buffer."""
    drops: Counter[str] = field(default_factory=Counter)
    """Datagrams dropped, by reason: ``malformed``, ``too_large``, ``unknown_flow``,
    ``auth_failed``, ``replay``, ``wrong_ssrc``, ``ssrc_mismatch``, ``bad_payload_type``."""
    decode_errors: int = 0
    """Packets libopus could not decode (concealed instead)."""


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

    def remove_speaker(self, flow_id: int) -> None:
        """Stop accepting media on ``flow_id`` (key revoked, speaker left the stage)."""
        self._srtp.remove(flow_id)
        self._speakers.pop(flow_id, None)

    @property
    def speakers(self) -> dict[int, str]:
        """Flow id to user of every speaker."""
        return {flow_id: speaker.user for flow_id, speaker in self._speakers.items()}

    def receive(self, datagram: bytes, now: float) -> bool:
        """Take in one media datagram; return whether it was accepted. Never raises."""
        stats = self.stats
        stats.received += 1
        if len(datagram) > MAX_DATAGRAM_SIZE:
            stats.drops["too_large"] += 1
            return False
        try:
            flow_id, packet = self._srtp.open(datagram)
        except SrtpError as exc:
            stats.drops[exc.reason] += 1
            return False
        speaker = self._speakers[flow_id]  # added and removed together with its SRTP flow
        if packet.payload_type != OPUS_PAYLOAD_TYPE or not packet.payload:
            stats.drops["bad_payload_type"] += 1
            return False
        speaker.jitter.add(packet.sequence_number, packet.timestamp, packet.payload, now)
        stats.accepted += 1
        return True

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
