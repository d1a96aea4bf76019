"""Stream mode without sockets: URL signatures, the segmenter with the client's decoder, and
who streams (a real core; the service's decisions observed on the core's forwarder)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web

from salon.client.stream_player import AacDecoder, StreamPlayer, parse_playlist
from salon.daemon.config import StreamConfig
from salon.daemon.core.events import Deliver
from salon.daemon.stream.access import StreamSigner
from salon.daemon.stream.segmenter import HlsSegmenter
from salon.daemon.stream.service import StreamService
from salon.daemon.wire import messages
from tests.audio_checks import RATE, dominant_frequencies, tone
from tests.test_core_support import Harness


def test_playlist_tokens_name_their_room_session_and_user() -> None:
    signer = StreamSigner(b"k" * 32)
    token = signer.playlist_token("jazz", 7, "alice")
    assert signer.token_session(token) == 7
    assert signer.check_playlist_token("jazz", token, "alice")
    assert not signer.check_playlist_token("jazz", token, "bob")
    assert not signer.check_playlist_token("rock", token, "alice")
    forged = f"8.{token.split('.', 1)[1]}"
    assert not signer.check_playlist_token("jazz", forged, "alice")
    assert not StreamSigner(b"x" * 32).check_playlist_token("jazz", token, "alice")
    for junk in ("", "7", "7.", "a.bcd", "7." + "A" * 21, "7." + "A" * 22 + "\n"):
        assert signer.token_session(junk) is None or not signer.check_playlist_token(
            "jazz", junk, "alice"
        )


def test_segment_signatures_are_shared_and_specific() -> None:
    signer = StreamSigner(b"k" * 32)
    signature = signer.segment_signature("jazz", "00112233aabbccdd", "5")
    assert signature == StreamSigner(b"k" * 32).segment_signature("jazz", "00112233aabbccdd", "5")
    assert signer.check_segment("jazz", "00112233aabbccdd", "5", signature)
    assert not signer.check_segment("jazz", "00112233aabbccdd", "6", signature)
    assert not signer.check_segment("jazz", "ffffffffffffffff", "5", signature)
    assert not signer.check_segment("rock", "00112233aabbccdd", "5", signature)
    assert not signer.check_segment("jazz", "00112233aabbccdd", "5", "x" * 22)


def test_segmenter_output_decodes_to_the_input(tmp_path: Path) -> None:
    segmenter = HlsSegmenter(tmp_path / "mix", started_at=1000.0, keep=4)
    source = tone([440.0], 3.5)
    finished = []
    for start in range(0, len(source) - 960 + 1, 960):
        finished += segmenter.write(source[start : start + 960].astype("<i2").tobytes())
        # Only the segment being written stays on disk; finished ones live in memory.
        assert len(list((tmp_path / "mix").glob("*.m4s"))) <= 1
    assert [s.sequence for s in finished] == [0, 1, 2]
    assert all(0.9 < s.duration < 1.1 for s in finished)
    assert finished[1].started_at == 1000.0 + finished[0].duration
    window = segmenter.window
    assert window.init.startswith(b"\x00\x00\x00") and b"ftyp" in window.init[:16]
    decoder = AacDecoder(window.init)
    pcm = b"".join(decoder.decode(segment.data) for segment in window.segments)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert abs(len(samples) / RATE - 3.0) < 0.1
    assert abs(dominant_frequencies(samples[RATE // 2 :], 1)[0] - 440.0) < 10
    segmenter.close()
    assert not (tmp_path / "mix").exists()


def test_playlist_parser_reads_what_the_origin_writes() -> None:
    text = (
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:41\n"
        '#EXT-X-MAP:URI="e/init.mp4?s=a"\n'
        "#EXT-X-PROGRAM-DATE-TIME:2026-12-03T12:00:00.500+00:00\n#EXTINF:1.002667,\ne/41.m4s?s=b\n"
        "#EXTINF:1.002667,\ne/42.m4s?s=c\n"
    )
    playlist = parse_playlist(text)
    assert playlist.map_uri == "e/init.mp4?s=a"
    assert [(e.sequence, e.uri) for e in playlist.entries] == [
        (41, "e/41.m4s?s=b"),
        (42, "e/42.m4s?s=c"),
    ]
    assert playlist.entries[0].started_at == 1796299200.5
    assert playlist.entries[1].started_at is None


class Streams:
    """A real core and a stream service observing it, as salond wires them (no HTTP)."""

    def __init__(self, tmp: Path, realtime_listeners: int) -> None:
        self.harness = Harness()
        self.sent: list[tuple[tuple[int, ...], Any]] = []
        self.service = StreamService(
            StreamConfig(enabled=True, realtime_listeners=realtime_listeners),
            self.harness.core,
            lambda sessions, message: self.sent.append((sessions, message)),
            tmp / "stream",
            base_url=lambda: "https://cdn.example.org",
            clock=time.time,
        )

    def pump(self) -> None:
        for event in self.harness.drain():
            if not isinstance(event, Deliver):
                self.service.on_core_event(event)

    def realtime(self, session: int) -> bool:
        return session in self.harness.core.forwarder.group_sessions("r1")

    def last_stream(self, session: int) -> str | None:
        found = [m for s, m in self.sent if s == (session,) and isinstance(m, messages.Stream)]
        assert found, f"no stream event for session {session}"
        return found[-1].playlist


def test_listeners_past_the_threshold_stream_and_come_back_for_the_stage(tmp_path: Path) -> None:
    streams = Streams(tmp_path, realtime_listeners=2)
    h = streams.harness
    h.room()
    first = [h.join(f"l{i}") for i in range(2)]
    streams.pump()
    assert all(streams.realtime(s) for s in first)
    late = h.join("late")
    streams.pump()
    # The third listener gets a playlist URL and no more real-time media.
    playlist = streams.last_stream(late)
    assert playlist is not None
    assert playlist.startswith("https://cdn.example.org/stream/r1/live.m3u8?t=")
    assert not streams.realtime(late)
    token = playlist.split("t=", 1)[1]
    assert streams.service.member_token_ok("r1", token)
    assert not streams.service.member_token_ok("r2", token)
    [stats] = [s for s in streams.service.stats() if s.room == "r1"]
    assert (stats.realtime_listeners, stats.stream_listeners, stats.mixing) == (2, 1, True)

    # Invited on stage: real time (an event with no playlist); moved back: the stream again.
    h.do(h.sessions["late"], messages.RaiseHand)
    h.do(h.sessions["owner"], messages.InviteToSpeak, user="late")
    h.do(late, messages.AcceptSpeak)
    streams.pump()
    assert streams.last_stream(late) is None
    assert streams.realtime(late)
    h.do(h.sessions["owner"], messages.MoveToAudience, user="late")
    streams.pump()
    assert streams.last_stream(late) is not None
    assert not streams.realtime(late)

    # Banned: the token no longer opens the playlist.
    token = streams.last_stream(late).split("t=", 1)[1]  # type: ignore[union-attr]
    assert streams.service.member_token_ok("r1", token)
    h.do(h.sessions["owner"], messages.Ban, user="late")
    streams.pump()
    assert not streams.service.member_token_ok("r1", token)


def test_a_member_may_ask_for_the_stream_and_back(tmp_path: Path) -> None:
    streams = Streams(tmp_path, realtime_listeners=100)
    h = streams.harness
    h.room()
    listener = h.join("ann")
    streams.pump()
    assert streams.realtime(listener)
    streams.service.set_stream(listener, True)
    assert streams.last_stream(listener) is not None
    assert not streams.realtime(listener)
    streams.service.set_stream(listener, False)
    assert streams.last_stream(listener) is None
    assert streams.realtime(listener)
    # The stage stays in real time.
    owner = h.sessions["owner"]
    try:
        streams.service.set_stream(owner, True)
    except Exception as exc:  # CoreError
        assert getattr(exc, "code", None) == messages.ErrorCode.ALREADY_ON_STAGE
    else:
        raise AssertionError("the owner was allowed to stream")
    assert streams.realtime(owner)


def _segments_of(source: np.ndarray, tmp: Path) -> tuple[bytes, list[bytes]]:
    """``source`` through the origin's segmenter: its init section and its finished segments."""
    segmenter = HlsSegmenter(tmp / "mix", started_at=1000.0, keep=16)
    for start in range(0, len(source) - 960 + 1, 960):
        segmenter.write(source[start : start + 960].astype("<i2").tobytes())
    window = segmenter.window
    segmenter.close()
    return window.init, [segment.data for segment in window.segments]


def _decode_whole(init: bytes, segments: list[bytes]) -> np.ndarray:
    """The segments decoded as one file by one FFmpeg decoder: the reference for continuity."""
    chunks = []
    with av.open(io.BytesIO(init + b"".join(segments)), "r", format="mp4") as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.int16)


def _varying_signal(seconds: float) -> np.ndarray:
    """A sweep whose every 20 ms differs from every other (a gap or a repeat shows)."""
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * (200 * t + 150 * t**2))).astype(np.int16)


def test_the_decoder_continues_across_segment_boundaries(tmp_path: Path) -> None:
    init, segments = _segments_of(_varying_signal(4.5), tmp_path)
    assert len(segments) == 4
    whole = _decode_whole(init, segments)
    decoder = AacDecoder(init)
    pieces = [np.frombuffer(decoder.decode(segment), dtype="<i2") for segment in segments]
    # Segment by segment, the player's decoder gives exactly what one decoder gives for the
    # whole file: no sample lost, repeated or re-primed at a boundary.
    assert sum(len(p) for p in pieces) == len(whole)
    assert np.array_equal(np.concatenate(pieces), whole)


async def test_the_player_plays_consecutive_segments_without_gap_or_repeat(
    tmp_path: Path,
) -> None:
    """The player against a live-looking origin on loopback: each playlist load reveals one more
    segment; what :meth:`StreamPlayer.pull` hands out is the decoded segments, end to end."""
    # Four segments: joined at the second, the player holds three seconds (under MAX_BUFFER,
    # past which it would rightly drop the oldest audio).
    init, segments = _segments_of(_varying_signal(4.5), tmp_path)
    assert len(segments) == 4
    shown = 2  # the player joins with two segments listed and starts at the newest

    async def playlist(request: web.Request) -> web.Response:
        nonlocal shown
        lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
        lines.append('#EXT-X-MAP:URI="e/init.mp4"')
        for sequence in range(shown):
            lines += ["#EXTINF:1.0,", f"e/{sequence}.m4s"]
        shown = min(len(segments), shown + 1)
        return web.Response(text="\n".join(lines) + "\n")

    async def segment(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = init if name == "init.mp4" else segments[int(name.split(".")[0])]
        return web.Response(body=data)

    app = web.Application()
    app.add_routes([web.get("/live.m3u8", playlist), web.get("/e/{name}", segment)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    player = StreamPlayer(f"http://127.0.0.1:{port}/live.m3u8")
    player.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while player.segments < len(segments) - 1:
            assert player.error is None and loop.time() < deadline, player.error
            await asyncio.sleep(0.05)
        frames = []
        while not frames or frames[-1] is not None:
            assert loop.time() < deadline
            frame = player.pull()
            if frame is not None or frames:
                frames.append(frame)
            else:
                await asyncio.sleep(0.05)  # the player's wait before it starts playing
    finally:
        player.cancel()
        await runner.cleanup()
    played = np.frombuffer(b"".join(frames[:-1]), dtype="<i2")
    # From the live edge on (segment 1), every sample once, in order, as one decoder decoding
    # segments 1-3 as one file gives them.
    expected = _decode_whole(init, segments[1:])
    assert len(expected) - 960 < len(played) <= len(expected)
    assert np.array_equal(played, expected[: len(played)])
    assert player.underruns == 1  # only the end of the stream
