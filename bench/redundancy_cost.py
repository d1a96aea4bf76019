"""Bytes on the wire for redundancy: per-packet RED against a separate redundancy flow.

One listener of N is lossy. Two ways to protect it without the server decrypting:

- **per-packet RED** (PROTOCOL.md 11.9, kept for speakers without ``red_flow``): every packet
  of the speaker's flow carries the one or two earlier frames, so every listener receives
  them. With the server's 75th-percentile aggregate, one lossy listener turns RED on only
  while it is at least a quarter of the reporters (N <= 3 here); from N = 4 on nobody pays
  and it gets no RED at all.
- **separate redundancy flow** (what Salon does, PROTOCOL.md 11.10): the speaker's flow stays
  plain Opus and a second flow carries the same copies (a RED payload whose primary block is
  frame N-1 and whose redundant block is frame N-2, RTP header without the audio level); the
  forwarder sends that flow only to listeners whose own reports show loss. Each copy costs its
  own datagram. At 2 and 3 copies the sizes are those of the reference ``MediaSender``'s
  redundancy flow (frames N-1 and N-2, and N-1, N-2 and N-4, its default since the far copy
  for bursts); at 1 copy they are built the same way with the primary block only.

Measured, not assumed: the espeak-ng speech of ``bench/quality.py`` goes through the reference
``MediaSender`` (real Opus at 32 kbit/s with DTX, real RED, real SRTP) at redundancy 0, 1 and
2, and each datagram's size is recorded (redundancy flow datagrams are built the same way from
the same payloads). Then a short live run through salond (speaker and one listener, clean,
the same speech) measures what the wire adds per datagram on each side (QUIC header, AEAD tag,
DATAGRAM frame, plus the ACKs and control messages that travel meanwhile), from the UDP bytes
the two clients' sockets send and receive. Bytes per second = datagram bytes of the speech
plus the measured per-datagram wire overhead, over the speech's duration (pauses included).

    python bench/redundancy_cost.py            # about 30 s
    python bench/redundancy_cost.py --offline  # datagram sizes only, a constant overhead
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import start_server
from bench.mouth_to_ear import ByteCounter, count_received, count_sent
from bench.quality import FRAME, SCORED_TEXT, WARMUP_TEXT, guest_key, speak
from salon.client.connection import SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.rtp import FRAME_SAMPLES, RtpPacket
from salon.media.codec import OpusEncoder
from salon.media.red import MAX_REDUNDANCY, RED_PAYLOAD_TYPE, RedundantBlock, pack_red
from salon.media.srtp import SrtpSender, key_from_base64
from salon.media.streams import RED_FLOW_SPAN, MediaSender

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw=="
BITRATE = 32000
QUIC_PACKET_OVERHEAD = 1 + 8 + 2 + 16 + 3
"""Short header byte, 8-byte connection id, 2-byte packet number, AEAD tag, DATAGRAM frame
type and length (aioquic 1.x): the --offline estimate of the wire's cost per datagram."""
LISTENER_COUNTS = (2, 3, 4, 10, 100)


@dataclass
class Stream:
    """Datagrams of one sender configuration over the whole speech."""

    datagrams: int
    datagram_bytes: int
    redundancy_datagrams: int = 0
    redundancy_bytes: int = 0


def frames_of(samples: np.ndarray) -> list[bytes]:
    padded = np.concatenate([samples, np.zeros(-len(samples) % FRAME, dtype=np.int16)])
    return [padded[i : i + FRAME].astype("<i2").tobytes() for i in range(0, len(padded), FRAME)]


def encode(frames: list[bytes], depth: int) -> Stream:
    """The speech through ``MediaSender`` with ``depth`` earlier frames per packet (RED), and
    the redundancy flow a sender at ``depth`` would add beside a plain flow."""
    sender = MediaSender(4, 0x1234, KEY, OpusEncoder(bitrate=BITRATE), sequence_number=1)
    sender.policy.redundancy = min(depth, MAX_REDUNDANCY)
    side = SrtpSender(key_from_base64(KEY))
    payloads: list[bytes | None] = []  # the Opus payload sent for each frame, None for DTX
    original = sender.encoder.encode

    def recording(pcm: bytes) -> bytes:
        payload = original(pcm)
        payloads.append(None if sender.encoder.is_dtx(payload) else payload)
        return payload

    sender.encoder.encode = recording  # type: ignore[method-assign]
    for pcm in frames:
        sender.send_pcm(pcm)
    stream = Stream(sender.stats.sent, sender.stats.bytes_sent)
    seq = 0
    for index, payload in enumerate(payloads):
        if payload is None or depth == 0:
            continue
        # Copies of the frames right before this one, with no DTX gap (as RED requires).
        copies = []
        for back in range(1, depth + 1):
            earlier = payloads[index - back] if index - back >= 0 else None
            if earlier is None:
                break
            copies.append(earlier)
        if not copies:
            continue
        primary, *older = copies  # frame N-1 is the block's primary, N-2 the redundant one
        blocks = [RedundantBlock(FRAME_SAMPLES, block) for block in older]
        rtp = RtpPacket(
            payload_type=RED_PAYLOAD_TYPE,
            sequence_number=seq,
            timestamp=seq * FRAME_SAMPLES,
            ssrc=0x5678,
            payload=pack_red(primary, blocks),
        ).serialize()
        seq += 1
        stream.redundancy_datagrams += 1
        stream.redundancy_bytes += len(pack_datagram(5, side.protect(rtp)))
    if depth >= 2:
        # The redundancy flow as the reference client sends it (PROTOCOL.md 11.10): frames N-1
        # and N-2 (span 1), or N-1, N-2 and N-4 (span 3, its default) for 3 copies.
        span = 1 if depth == 2 else RED_FLOW_SPAN
        real = MediaSender(
            4, 0x1234, KEY, OpusEncoder(bitrate=BITRATE), sequence_number=1, red_flow_span=span
        )
        real.set_red_flow(5, 0x5678, KEY)
        real.red_flow_on = True
        for pcm in frames:
            real.send_pcm(pcm)
        stream.redundancy_datagrams = real.stats.red_flow_sent
        stream.redundancy_bytes = real.stats.red_flow_bytes
    return stream


async def wire_overhead(frames: list[bytes]) -> tuple[float, float]:
    """UDP bytes per media datagram beyond the datagram itself: (speaker sends, listener gets)."""
    with tempfile.TemporaryDirectory(prefix="salon-redundancy-") as tmp:
        server = start_server("salond", Path(tmp) / "state")
        clients: list[SalonClient] = []
        try:

            async def connect(who: str) -> SalonClient:
                client = await SalonClient.connect(
                    server.host,
                    server.port,
                    display_name=who,
                    fingerprint=server.fingerprint,
                    credentials={"guest_key": guest_key(f"redundancy/{who}")},
                )
                clients.append(client)
                return client

            owner, speaker, listener = [await connect(w) for w in ("Host", "Voice", "Ear")]
            await owner.create_room("redundancy cost", room="cost")
            await owner.join("cost")
            invite = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
            talk = RoomAudio(speaker, source=iter(frames), auto_unmute=True, bitrate=BITRATE)
            hear = RoomAudio(listener)
            received = {"datagrams": 0, "bytes": 0}
            deliver = listener.on_datagram
            assert deliver is not None

            def counted(data: bytes) -> None:
                received["datagrams"] += 1
                received["bytes"] += len(data)
                deliver(data)

            listener.on_datagram = counted
            await listener.join("cost")
            await speaker.join("cost", invite=invite)
            up, down = ByteCounter(), ByteCounter()
            count_sent(speaker, up)
            count_received(listener, down)
            stop = asyncio.Event()
            up.counting = down.counting = True
            tasks = [
                asyncio.ensure_future(talk.run(stop=stop)),
                asyncio.ensure_future(hear.run(stop=stop)),
            ]
            while not talk.source_done:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            up.counting = down.counting = False
            stop.set()
            await asyncio.gather(*tasks)
            assert talk.sender is not None
            sent = talk.sender.stats
            return (
                (up.bytes - sent.bytes_sent) / sent.sent,
                (down.bytes - received["bytes"]) / received["datagrams"],
            )
        finally:
            for client in clients:
                await client.close()
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--offline",
        action="store_true",
        help=f"skip the live run; count {QUIC_PACKET_OVERHEAD} bytes of wire per datagram",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="salon-redundancy-") as tmp:
        speech = np.concatenate(
            [
                speak(WARMUP_TEXT, Path(tmp) / "warmup.wav"),
                np.zeros(24000, dtype=np.int16),
                speak(SCORED_TEXT, Path(tmp) / "scored.wav"),
            ]
        )
    frames = frames_of(speech)
    seconds = len(frames) * 0.020
    streams = {depth: encode(frames, depth) for depth in (0, 1, 2, 3)}
    if args.offline:
        up_overhead = down_overhead = float(QUIC_PACKET_OVERHEAD)
        how = f"a constant {QUIC_PACKET_OVERHEAD} bytes per datagram (--offline)"
    else:
        up_overhead, down_overhead = asyncio.run(wire_overhead(frames))
        how = "measured on a live salond run (clean)"
    print(
        f"speech: {seconds:.1f} s, {len(frames)} frames; wire overhead per datagram, {how}: "
        f"speaker {up_overhead:.1f} B, listener {down_overhead:.1f} B"
    )
    for depth, s in streams.items():
        print(
            f"redundancy {depth}: {s.datagrams} datagrams, mean "
            f"{s.datagram_bytes / s.datagrams:.1f} B; redundancy flow "
            f"{s.redundancy_datagrams} datagrams, mean "
            f"{s.redundancy_bytes / max(1, s.redundancy_datagrams):.1f} B"
        )

    def rate(datagrams: int, size: int, overhead: float) -> float:
        return (size + datagrams * overhead) / seconds

    plain = streams[0]
    plain_up = rate(plain.datagrams, plain.datagram_bytes, up_overhead)
    plain_down = rate(plain.datagrams, plain.datagram_bytes, down_overhead)
    print()
    print(
        "| design, copies per frame | N | speaker B/s | clean listener B/s | lossy listener B/s | "
        "server out B/s (N listeners) | vs no redundancy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for depth in (1, 2, 3):
        red = streams[depth]
        red_up = rate(red.datagrams, red.datagram_bytes, up_overhead)
        red_down = rate(red.datagrams, red.datagram_bytes, down_overhead)
        extra_up = rate(red.redundancy_datagrams, red.redundancy_bytes, up_overhead)
        extra_down = rate(red.redundancy_datagrams, red.redundancy_bytes, down_overhead)
        for n in LISTENER_COUNTS:
            baseline = n * plain_down
            # The 75th percentile (nearest rank, index round(0.75 (n-1))) of one lossy report
            # among n is the lossy one only while that index is the last.
            switched = round(0.75 * (n - 1)) == n - 1
            note = "" if switched else " (the 75th percentile leaves it off: 0%, lossy one bare)"
            if depth <= MAX_REDUNDANCY:
                print(
                    f"| per-packet RED, {depth}{note} | {n} | {red_up:.0f} | {red_down:.0f} | "
                    f"{red_down:.0f} | {n * red_down:.0f} | {n * red_down / baseline - 1:+.0%} |"
                )
            flow = baseline + extra_down
            print(
                f"| separate flow, {depth} | {n} | {plain_up + extra_up:.0f} | {plain_down:.0f} | "
                f"{plain_down + extra_down:.0f} | {flow:.0f} | {flow / baseline - 1:+.0%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
