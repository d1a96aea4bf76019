"""Mouth-to-ear latency and bytes on the wire per speaker, with the real client audio path.

A salond process, and in this process three reference clients (``SalonClient`` and
``RoomAudio``, as ``salon join`` uses them): a host who opens the room, a speaker and a
listener. The speaker's source is quiet noise with a loud 1 kHz burst at the start of every
second; the listener's playout (after SRTP, the adaptive jitter buffer and the Opus decoder) is
scanned for the bursts' onsets.

- mouth-to-ear latency of a burst = (time its frame was played + offset of the onset in that
  frame) - (time its frame was captured, i.e. handed to the encoder). It includes encoding,
  SRTP, QUIC both ways, salond's forwarding, the jitter buffer's delay and decoding, i.e.
  everything but the sound card's own buffers;
- bytes per speaker per second: the UDP payload bytes the speaker's socket sends while it
  talks (media, ACKs of the server's packets, everything), and the bytes one listener receives
  for that speaker; "on the wire" adds the IPv4 and UDP headers (28 bytes a packet).

Run alone: ``python bench/mouth_to_ear.py --seconds 15``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import percentile, process_cpu_seconds, start_server
from salon.client.connection import SalonClient
from salon.client.room_audio import RoomAudio

RATE = 48000
FRAME = 960
BURST_EVERY = 50  # frames: one burst a second
BURST_FRAMES = 5
VOICE_PEAK = 2000
BURST_AMPLITUDE = 16000
ONSET_THRESHOLD = 7000
IP_UDP_HEADERS = 28


def source_frames() -> Iterator[bytes]:
    """A steady voiced sound (so the encoder never goes to DTX) with a loud 1 kHz burst at the
    start of every ``BURST_EVERY`` frames.

    The background is a harmonic series whose pitch glides between 110 and 180 Hz, at a peak
    well below the onset threshold; the burst is far above it.
    """
    rng = np.random.default_rng(7)
    t = np.arange(FRAME) / RATE
    harmonics = np.arange(1, 11)[:, None]
    phase = 0.0
    index = 0
    while True:
        pitch = 145 + 35 * np.sin(2 * np.pi * index / 150)
        cycles = phase + pitch * t
        voiced = (np.sin(2 * np.pi * harmonics * cycles) / harmonics).sum(axis=0)
        phase = float((phase + pitch * FRAME / RATE) % 1.0)
        frame = VOICE_PEAK / 3 * voiced + rng.normal(0, 50, FRAME)
        if index % BURST_EVERY < BURST_FRAMES and index >= BURST_EVERY:
            start = (index % BURST_EVERY) * FRAME / RATE
            frame = frame + BURST_AMPLITUDE * np.sin(2 * np.pi * 1000 * (t + start))
        yield np.clip(frame, -32768, 32767).astype("<i2").tobytes()
        index += 1


def guest_key(name: str) -> str:
    digest = hashlib.sha256(f"bench-m2e/{name}/{os.getpid()}".encode()).digest()
    return base64.b64encode(digest).decode()


class ByteCounter:
    """Counts UDP payload bytes and packets while ``counting`` is set."""

    def __init__(self) -> None:
        self.counting = False
        self.bytes = 0
        self.packets = 0

    def add(self, size: int) -> None:
        if self.counting:
            self.bytes += size
            self.packets += 1


def count_sent(client: SalonClient, counter: ByteCounter) -> None:
    protocol = client._protocol
    transport = protocol._transport
    assert transport is not None
    original = transport.sendto

    def sendto(data: bytes, addr: Any = None) -> None:
        counter.add(len(data))
        original(data, addr)

    transport.sendto = sendto


def count_received(client: SalonClient, counter: ByteCounter) -> None:
    protocol = client._protocol
    original = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        counter.add(len(data))
        original(data, addr)

    # asyncio looks the method up on the protocol for each datagram.
    protocol.datagram_received = datagram_received


async def measure(host: str, port: int, fingerprint: str, seconds: float) -> dict[str, Any]:
    async def connect(name: str) -> SalonClient:
        return await SalonClient.connect(
            host,
            port,
            display_name=name,
            fingerprint=fingerprint,
            credentials={"guest_key": guest_key(name)},
        )

    owner = await connect("Host")
    speaker = await connect("Speaker")
    listener = await connect("Listener")
    clients = [owner, speaker, listener]
    try:
        await owner.create_room("mouth to ear", room="m2e")
        await owner.join("m2e")
        invite = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
        # The host is muted and not a speaker of the measured flow; it only opened the room.
        captured: dict[int, float] = {}
        onsets: list[float] = []
        latencies: list[float] = []
        state = {"quiet": 0}

        talk = RoomAudio(speaker, source=source_frames(), auto_unmute=True)
        hear = RoomAudio(listener)

        def on_sent(frames_sent: int, now: float) -> None:
            index = frames_sent - 1
            if index % BURST_EVERY == 0 and index >= BURST_EVERY:
                captured[index] = now

        def on_played(pcm: bytes, now: float) -> None:
            samples = np.frombuffer(pcm, dtype="<i2")
            loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > ONSET_THRESHOLD)
            if loud.size == 0:
                state["quiet"] += 1
                return
            if state["quiet"] >= BURST_EVERY // 2:
                onset = now + int(loud[0]) / RATE
                onsets.append(onset)
                earlier = [t for t in captured.values() if t <= onset]
                if earlier:
                    latencies.append(onset - max(earlier))
            state["quiet"] = 0

        talk.on_frame_sent = on_sent
        hear.on_frame_played = on_played
        await listener.join("m2e")
        await speaker.join("m2e", invite=invite)
        up = ByteCounter()
        down = ByteCounter()
        count_sent(speaker, up)
        count_received(listener, down)
        stop = asyncio.Event()
        tasks = [
            asyncio.ensure_future(talk.run(stop=stop)),
            asyncio.ensure_future(hear.run(stop=stop)),
        ]
        # Wait until the speaker talks, then count bytes over whole seconds.
        for _ in range(200):
            if talk.frames_sent:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        up.counting = down.counting = True
        loop = asyncio.get_running_loop()
        counted_from = loop.time()
        sent_before = talk.sender.stats.bytes_sent if talk.sender else 0
        frames_before = talk.sender.stats.sent if talk.sender else 0
        await asyncio.sleep(seconds)
        counted = loop.time() - counted_from
        up.counting = down.counting = False
        # Read the sender's counters at the same moment (ticks may still run until stopped).
        media_bytes = (talk.sender.stats.bytes_sent if talk.sender else 0) - sent_before
        media_frames = (talk.sender.stats.sent if talk.sender else 0) - frames_before
        stop.set()
        await asyncio.gather(*tasks)
        jitter = hear.receiver.jitter_stats()
        delays = [stats.target_delay * 1000 for stats in jitter.values()]
        latencies_us = sorted(int(value * 1e6) for value in latencies)
        return {
            "bursts": len(captured),
            "heard": len(latencies),
            "p50_ms": percentile(latencies_us, 0.5) / 1000,
            "p99_ms": percentile(latencies_us, 0.99) / 1000,
            "max_ms": (latencies_us[-1] / 1000) if latencies_us else float("nan"),
            "jitter_target_ms": delays[0] if delays else float("nan"),
            "seconds": counted,
            "media_bytes_per_s": media_bytes / counted,
            "media_packets_per_s": media_frames / counted,
            "dtx_frames": talk.sender.stats.dtx if talk.sender else 0,
            "up_bytes_per_s": up.bytes / counted,
            "up_packets_per_s": up.packets / counted,
            "up_wire_bytes_per_s": (up.bytes + IP_UDP_HEADERS * up.packets) / counted,
            "down_bytes_per_s": down.bytes / counted,
            "down_packets_per_s": down.packets / counted,
            "down_wire_bytes_per_s": (down.bytes + IP_UDP_HEADERS * down.packets) / counted,
        }
    finally:
        for client in clients:
            await client.close()


def run(seconds: float = 15.0) -> dict[str, Any]:
    """Start salond, measure, stop it; returns the figures (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="salon-m2e-") as tmp:
        server = start_server("salond", Path(tmp) / "state")
        try:
            result = asyncio.run(
                asyncio.wait_for(
                    measure(server.host, server.port, server.fingerprint, seconds), seconds + 60
                )
            )
            result["server_cpu_s"] = process_cpu_seconds(server.pid)
            return result
        finally:
            server.stop()


def summary_lines(result: dict[str, Any]) -> list[str]:
    def kbit(value: float) -> str:
        return f"{value * 8 / 1000:.1f} kbit/s"

    return [
        f"- mouth-to-ear (capture -> playout incl. jitter buffer, salond on loopback, idle room):"
        f" p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max"
        f" {result['max_ms']:.1f} ms ({result['heard']} of {result['bursts']} bursts heard;"
        f" jitter buffer target {result['jitter_target_ms']:.0f} ms at the end)",
        f"- bytes per speaker per second: Opus+RTP+SRTP datagrams"
        f" {result['media_bytes_per_s']:.0f} B/s ({result['media_packets_per_s']:.0f}/s);"
        f" speaker sends {result['up_bytes_per_s']:.0f} B/s of UDP payload in"
        f" {result['up_packets_per_s']:.0f} packets/s = {result['up_wire_bytes_per_s']:.0f} B/s"
        f" ({kbit(result['up_wire_bytes_per_s'])}) on the wire with IPv4/UDP headers;"
        f" each listener receives {result['down_bytes_per_s']:.0f} B/s in"
        f" {result['down_packets_per_s']:.0f} packets/s ="
        f" {result['down_wire_bytes_per_s']:.0f} B/s ({kbit(result['down_wire_bytes_per_s'])})",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    result = run(args.seconds)
    print(json.dumps(result, indent=2))
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
