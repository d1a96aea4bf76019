"""Stream mode: CPU per room for mixing + segmenting, origin HTTP requests/s, bytes per listener.

1. **Mix + segment, per room.** Real speaker datagrams (speech-like voiced noise through the
   reference client's encoder, packetizer and SRTP) for ``--seconds`` of audio go through what
   salond runs per streaming room: the media library's receiver (SRTP, jitter buffer, Opus
   decoders, mixer) and the AAC/fMP4 HLS segmenter (PyAV). Reported as CPU seconds per audio
   second (= share of one core) next to the baseline of the same receiver alone (what one
   real-time listener's client does, and the part salond adds once per room).
2. **Origin requests/s.** A child process runs salond's HTTP endpoint with the stream routes and
   a real core (one room, one streaming member); the parent fetches, with ``--concurrency``
   connections for ``--window`` seconds, (a) one segment (what a cache miss costs) and (b) the
   member's playlist (signed, checked against membership: it always reaches the origin). The
   child's CPU time is read from /proc: requests/s per core of the origin.
3. **Bytes per stream listener**: segment bytes per second of audio plus one playlist per
   segment, next to a real-time listener's media bytes per speaker (Opus datagrams).

Run: ``python bench/stream.py`` (about a minute); ``--quick`` for a smaller run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import process_cpu_seconds
from salon.daemon.config import HttpConfig, StreamConfig
from salon.daemon.stream.segmenter import HlsSegmenter
from salon.media.codec import OpusEncoder
from salon.media.streams import MediaReceiver, MediaSender

RATE = 48000
FRAME = 960
KEY = base64.b64encode(bytes(range(28))).decode()  # 16-byte key + 12-byte salt


def voiced(seconds: float, seed: int) -> list[bytes]:
    """A voiced sound with a gliding pitch (never DTX), as 20 ms int16 frames."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 8)) * 3000
    signal += rng.normal(0, 200, len(t))
    pcm = signal.astype("<i2")
    return [pcm[i : i + FRAME].tobytes() for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def speaker_datagrams(speakers: int, seconds: float) -> list[list[bytes]]:
    """Per 20 ms tick, the datagrams of every speaker (real Opus, RTP, SRTP)."""
    senders = [MediaSender(10 + i, 1000 + i, KEY, OpusEncoder()) for i in range(speakers)]
    sources = [voiced(seconds, seed) for seed in range(speakers)]
    ticks = []
    for frames in zip(*sources, strict=False):
        tick = []
        for sender, frame in zip(senders, frames, strict=True):
            datagram = sender.send_pcm(frame)
            if datagram is not None:
                tick.append(datagram)
        ticks.append(tick)
    return ticks


def mix_cost(speakers: int, seconds: float, segment: bool) -> dict[str, float]:
    ticks = speaker_datagrams(speakers, seconds)
    receiver = MediaReceiver()
    for i in range(speakers):
        receiver.add_speaker(f"s{i}", 10 + i, 1000 + i, KEY)
    scratch = Path(tempfile.mkdtemp(prefix="salon-bench-stream-"))
    segmenter = HlsSegmenter(scratch / "mix", started_at=time.time()) if segment else None
    segments = 0
    started = time.process_time()
    for index, tick in enumerate(ticks):
        now = index * 0.02
        for datagram in tick:
            receiver.receive(datagram, now)
        pcm, _ = receiver.pull(now)
        if segmenter is not None:
            segments += len(segmenter.write(pcm))
    cpu = time.process_time() - started
    audio = len(ticks) * 0.02
    result = {"cpu_per_audio_second": cpu / audio, "audio_seconds": audio}
    if segmenter is not None:
        window = segmenter.window.segments
        result["segments"] = segments
        result["segment_bytes_per_second"] = sum(len(s.data) for s in window) / sum(
            s.duration for s in window
        )
        segmenter.close()
    return result


# --------------------------------------------------------------------------- origin


def serve() -> None:
    """Child process: the HTTP endpoint with stream routes over a real core; prints URLs."""
    from salon.daemon.core import Limits, SalonCore
    from salon.daemon.core.events import Deliver
    from salon.daemon.core.identity import Identity
    from salon.daemon.http import HttpEndpoint
    from salon.daemon.stream.http import add_stream_routes
    from salon.daemon.stream.service import StreamService
    from salon.daemon.wire import messages as msg

    async def main() -> None:
        core = SalonCore(Limits())
        endpoint = HttpEndpoint(HttpConfig(enabled=True, host="127.0.0.1", port=0))
        delivered: list[Any] = []
        service = StreamService(
            StreamConfig(enabled=True, realtime_listeners=0),
            core,
            lambda sessions, message: delivered.append(message),
            Path(tempfile.mkdtemp(prefix="salon-bench-origin-")),
            base_url=lambda: f"http://127.0.0.1:{endpoint.address[1]}",
        )
        add_stream_routes(endpoint, service)
        await service.start()
        await endpoint.start()
        now = time.time()
        for session, user in ((1, "host"), (2, "listener")):
            core.connect(session, Identity(user=user, display_name=user), now)
        core.handle_request(1, msg.CreateRoom(id=1, title="Bench", room="bench"), now)
        core.handle_request(1, msg.Join(id=2, room="bench"), now)
        core.handle_request(2, msg.Join(id=3, room="bench"), now)

        def pump() -> None:
            event = core.next_event()
            while event is not None:
                if not isinstance(event, Deliver):
                    service.on_core_event(event)
                event = core.next_event()

        pump()
        while (
            not service.windows.get("bench", ("", None))[1]
            or not service.windows["bench"][1].segments
        ):
            await asyncio.sleep(0.1)
        playlist = next(m.playlist for m in delivered if isinstance(m, msg.Stream))
        print(json.dumps({"playlist": playlist}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def load(url: str, concurrency: int, window: float) -> int:
    import aiohttp

    done = 0
    deadline = time.monotonic() + window

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with http.get(url) as response:
                await response.read()
                assert response.status == 200, response.status
            done += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return done


def origin_rates(concurrency: int, window: float) -> dict[str, Any]:
    import urllib.request
    from urllib.parse import urljoin

    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        playlist = json.loads(child.stdout.readline())["playlist"]
        with urllib.request.urlopen(playlist) as response:
            text = response.read().decode()
        segment_uri = [line for line in text.splitlines() if ".m4s?" in line][-1]
        segment = urljoin(playlist, segment_uri)
        rates: dict[str, Any] = {"playlist_bytes": len(text)}
        for name, url in (("segment", segment), ("playlist", playlist)):
            cpu0 = process_cpu_seconds(child.pid)
            started = time.monotonic()
            count = asyncio.run(load(url, concurrency, window))
            wall = time.monotonic() - started
            cpu = process_cpu_seconds(child.pid) - cpu0
            rates[name] = {
                "requests_per_second": count / wall,
                "origin_cpu_share": cpu / wall,
                "requests_per_core_second": count / cpu if cpu else 0.0,
            }
        return rates
    finally:
        child.terminate()
        child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio seconds mixed")
    parser.add_argument("--speakers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--window", type=float, default=5.0, help="seconds of HTTP load")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="10 s of audio, 2 s of load")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.quick:
        args.seconds, args.window = 10.0, 2.0
    results: dict[str, Any] = {"mix": {}}
    for speakers in args.speakers:
        results["mix"][speakers] = {
            "receiver_only": mix_cost(speakers, args.seconds, segment=False),
            "mix_and_segment": mix_cost(speakers, args.seconds, segment=True),
        }
    results["origin"] = origin_rates(args.concurrency, args.window)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| speakers | receiver only (one real-time client)"
        " | mix + AAC + HLS segments (salond, per room) |"
    )
    print("|---|---|---|")
    for speakers, row in results["mix"].items():
        base = row["receiver_only"]["cpu_per_audio_second"] * 100
        full = row["mix_and_segment"]["cpu_per_audio_second"] * 100
        print(f"| {speakers} | {base:.1f}% of a core | {full:.1f}% of a core |")
    origin = results["origin"]
    print()
    print(
        f"| origin request (concurrency {args.concurrency}) | requests/s | origin CPU"
        " | requests per core-second |"
    )
    print("|---|---|---|---|")
    for name in ("segment", "playlist"):
        row = origin[name]
        print(
            f"| {name} | {row['requests_per_second']:.0f} | {row['origin_cpu_share'] * 100:.0f}% |"
            f" {row['requests_per_core_second']:.0f} |"
        )
    segment_rate = results["mix"][args.speakers[0]]["mix_and_segment"]["segment_bytes_per_second"]
    playlist = origin["playlist_bytes"]
    opus = 81 + 12 + 16 + 2 + 1  # Opus frame + RTP header + GCM tag + flow id + level extension
    print()
    print("| per listener | bytes/s |")
    print("|---|---|")
    print(f"| stream listener: segments | {segment_rate:.0f} |")
    print(f"| stream listener: one playlist per segment | {playlist:.0f} |")
    print(f"| real-time listener, per speaker talking (Opus datagram payloads) | {opus * 50:.0f} |")


if __name__ == "__main__":
    main()
