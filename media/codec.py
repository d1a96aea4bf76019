"""Opus encoder and decoder for 20 ms mono frames (RFC 7587 profile used by Salon).

Both wrap ``opuslib``'s low-level ``api`` modules rather than its high-level classes, whose
CTL setters are unreliable in opuslib 3.0.1 (``inband_fec`` raises TypeError, ``dtx`` sends
the getter's request): every CTL goes through ``opuslib.api.encoder.encoder_ctl``.

``opuslib`` loads the system libopus when it is imported and raises a bare ``Exception`` when
the library is missing. Importing this module never fails; creating a codec raises
:class:`AudioUnavailable` with the fix instead.
"""

from __future__ import annotations

import ctypes
from typing import Any

FRAME_SAMPLES = 960  # 20 ms at 48 kHz
SAMPLE_RATE = 48000
DEFAULT_BITRATE = 32000
# An Opus packet is at most 1275 bytes per frame; we cap lower so that a media datagram
# (flow id + RTP header + audio level extension + payload + 16-byte GCM tag) stays far below the
# 1100-byte datagram limit whatever the encoder decides.
MAX_PACKET_BYTES = 1000
# The largest frame a decoder may be handed (120 ms); decoding into a buffer this size lets a
# wrong frame duration be reported instead of failing inside libopus.
_MAX_DECODE_SAMPLES = 5760

try:
    import opuslib
    import opuslib.api.ctl
    import opuslib.api.decoder
    import opuslib.api.encoder
    import opuslib.api.info

    _opus: Any = opuslib
    _IMPORT_ERROR: BaseException | None = None
except Exception as exc:  # opuslib raises a plain Exception when libopus is missing
    _opus = None
    _IMPORT_ERROR = exc


class AudioUnavailable(RuntimeError):
    """The audio stack cannot run on this machine (libopus is missing)."""


class CodecError(ValueError):
    """libopus refused to encode or decode (bad input, corrupt or unsupported packet)."""


def _require_opus() -> Any:
    if _opus is None:
        raise AudioUnavailable(
            "libopus is not installed: apt-get install libopus0"
        ) from _IMPORT_ERROR
    return _opus


def opus_available() -> bool:
    """Whether libopus could be loaded."""
    return _opus is not None


def is_dtx(packet: bytes) -> bool:
    """Whether ``packet`` is one the encoder produced during DTX and that must not be sent.

    libopus documents that a packet of 2 bytes or less needs no transmission.
    """
    return len(packet) <= 2


class OpusEncoder:
    """Opus encoder for 20 ms frames of 16-bit PCM, with in-band FEC and DTX enabled.

    In-band FEC only spends bits when the expected loss is above zero, so the loss starts at
    ``expected_loss`` and should follow what listeners report (:meth:`set_expected_loss`).
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        channels: int = 1,
        bitrate: int = DEFAULT_BITRATE,
        expected_loss: int = 0,
        frame_samples: int = FRAME_SAMPLES,
    ) -> None:
        opus = _require_opus()
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = frame_samples
        self._frame_bytes = frame_samples * channels * 2
        self._api = opus.api
        try:
            self._state = opus.api.encoder.create_state(
                sample_rate, channels, opus.APPLICATION_VOIP
            )
        except opus.OpusError as exc:
            raise CodecError(f"cannot create Opus encoder: {exc}") from exc
        self._ctl(opus.api.ctl.set_bitrate, bitrate)
        self._ctl(opus.api.ctl.set_inband_fec, 1)
        self._ctl(opus.api.ctl.set_dtx, 1)
        self._bitrate = bitrate
        self._expected_loss = 0
        self.set_expected_loss(expected_loss)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._api.encoder.destroy(state)

    def _ctl(self, request: Any, value: int | None = None) -> Any:
        return self._api.encoder.encoder_ctl(self._state, request, value)

    @property
    def bitrate(self) -> int:
        """Target bitrate in bits per second."""
        return self._bitrate

    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate (bits per second)."""
        self._ctl(self._api.ctl.set_bitrate, bitrate)
        self._bitrate = bitrate

    @property
    def expected_loss(self) -> int:
        """Packet loss percentage the FEC is sized for."""
        return self._expected_loss

    def set_expected_loss(self, percent: float) -> None:
        """Size the in-band FEC for ``percent`` packet loss (0 switches the redundancy off)."""
        value = max(0, min(100, round(percent)))
        self._ctl(self._api.ctl.set_packet_loss_perc, value)
        self._expected_loss = value

    @property
    def fec(self) -> bool:
        """Whether in-band FEC is enabled (it is, always; it costs bits only with loss)."""
        return bool(self._ctl(self._api.ctl.get_inband_fec))

    @property
    def dtx(self) -> bool:
        """Whether discontinuous transmission is enabled."""
        return bool(self._ctl(self._api.ctl.get_dtx))

    def settings(self) -> dict[str, int]:
        """What libopus itself reports of the encoder's configuration (for comparing two)."""
        ctl = self._api.ctl
        names = ("application", "bitrate", "complexity", "inband_fec", "dtx", "signal", "vbr")
        values = {name: int(self._ctl(getattr(ctl, f"get_{name}"))) for name in names}
        values["packet_loss_perc"] = int(self._ctl(ctl.get_packet_loss_perc))
        values["frame_samples"] = self.frame_samples
        return values

    def encode(self, pcm: bytes) -> bytes:
        """Encode one frame of interleaved int16 samples; see :func:`is_dtx` for the result."""
        if len(pcm) != self._frame_bytes:
            raise CodecError(
                f"PCM frame of {len(pcm)} bytes, expected {self._frame_bytes} "
                f"({self.frame_samples} int16 samples)"
            )
        try:
            return bytes(
                self._api.encoder.encode(self._state, pcm, self.frame_samples, MAX_PACKET_BYTES)
            )
        except Exception as exc:  # opuslib.OpusError, raised with various arguments
            raise CodecError(f"Opus encoding failed: {exc}") from exc

    is_dtx = staticmethod(is_dtx)

    def reset(self) -> None:
        """Forget the signal history (e.g. after the microphone was muted)."""
        self._ctl(self._api.ctl.reset_state)


class OpusDecoder:
    """Opus decoder producing 20 ms frames of int16 PCM, with FEC and loss concealment."""

    def __init__(
        self, sample_rate: int = SAMPLE_RATE, channels: int = 1, frame_samples: int = FRAME_SAMPLES
    ) -> None:
        opus = _require_opus()
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_samples = frame_samples
        self._api = opus.api
        try:
            self._state = opus.api.decoder.create_state(sample_rate, channels)
        except opus.OpusError as exc:
            raise CodecError(f"cannot create Opus decoder: {exc}") from exc
        # One output buffer for the decoder's lifetime, read back with string_at: opuslib's
        # decode() allocates twice the buffer needed and converts it through a list of ints,
        # which costs more than the decoding itself.
        self._pcm = (ctypes.c_int16 * (_MAX_DECODE_SAMPLES * channels))()
        self._pcm_pointer = ctypes.cast(self._pcm, opus.api.c_int16_pointer)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None:
            self._api.decoder.destroy(state)

    def _decode(self, packet: bytes | None, fec: bool) -> bytes:
        frame_size = _MAX_DECODE_SAMPLES if packet and not fec else self.frame_samples
        samples = self._api.decoder.libopus_decode(
            self._state,
            packet,
            len(packet) if packet else 0,
            self._pcm_pointer,
            frame_size,
            int(fec),
        )
        if samples < 0:
            reason = self._api.info.strerror(samples)
            if isinstance(reason, bytes):
                reason = reason.decode("ascii", "replace")
            raise CodecError(f"Opus decoding failed: {reason}")
        if samples != self.frame_samples:
            raise CodecError(f"Opus packet holds {samples} samples, expected {self.frame_samples}")
        return ctypes.string_at(self._pcm, samples * self.channels * 2)

    def decode(self, packet: bytes) -> bytes:
        """Decode one packet into a frame of int16 PCM."""
        if not packet:
            raise CodecError("empty Opus packet")
        return self._decode(packet, fec=False)

    def decode_fec(self, next_packet: bytes) -> bytes:
        """Rebuild the lost frame preceding ``next_packet`` from the FEC data it carries.

        Without FEC data in ``next_packet`` libopus falls back to concealment.
        """
        if not next_packet:
            raise CodecError("empty Opus packet")
        return self._decode(next_packet, fec=True)

    def conceal(self) -> bytes:
        """Synthesize a frame for a packet that never arrived (packet loss concealment)."""
        return self._decode(None, fec=False)

    def reset(self) -> None:
        """Forget the decoding history."""
        self._api.decoder.decoder_ctl(self._state, self._api.ctl.reset_state)
