"""Plays a room's stream (stream mode, PROTOCOL.md section 16): HLS fetched over HTTP, decoded.

:class:`StreamPlayer` reloads the playlist the server gave (once a target duration, sooner while
it has not changed, as RFC 8216 6.3.4 allows), fetches each new segment once, decodes its AAC
with FFmpeg's decoder (PyAV) into 48 kHz mono PCM and queues it; :meth:`pull` hands out one
20 ms frame per call, so the room's audio clock drives playback exactly as in real time.

It starts at the live edge (the newest segment) and waits :data:`PREBUFFER` seconds before
playing it, which covers the wait for the next segment; a queue grown past :data:`MAX_BUFFER`
(the clock of the mix and ours drift, or a stall ended) is cut back to the edge.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urljoin

import aiohttp
import av

log = logging.getLogger("salon.client.stream")

FRAME_BYTES = 960 * 2
PREBUFFER = 0.6
"""Seconds between the first segment's arrival and playback (also after an underrun): the next
segment is ready one segment after the newest one, found up to half a segment late (the
playlist is reloaded twice a segment while it has not changed), and is fetched meanwhile."""
PREBUFFER_STEP = 0.4
"""Seconds added to the wait after each underrun (segments came late: a loaded network or
server), up to :data:`MAX_PREBUFFER`; like a jitter buffer, it trades delay for continuity."""
MAX_PREBUFFER = 2.0
MAX_BUFFER = 4.0
"""Seconds queued beyond which the oldest audio is dropped to get back near live."""
MAX_PLAYLIST = 256 * 1024
MAX_SEGMENT = 4 * 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=10)


class StreamError(Exception):
    """The stream cannot be played (refused, gone, malformed)."""


@dataclass
class PlaylistEntry:
    sequence: int
    duration: float
    uri: str
    started_at: float | None
    """``EXT-X-PROGRAM-DATE-TIME`` of the segment (when the server mixed its first sample)."""


@dataclass
class Playlist:
    target: float
    map_uri: str
    entries: list[PlaylistEntry] = field(default_factory=list)


def parse_playlist(text: str) -> Playlist:
    """The parts of an RFC 8216 media playlist this player needs; StreamError if malformed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != "#EXTM3U":
        raise StreamError("not an HLS playlist")
    target = 1.0
    sequence = 0
    map_uri = ""
    pending_duration: float | None = None
    pending_date: float | None = None
    entries = []
    try:
        for line in lines[1:]:
            if line.startswith("#EXT-X-TARGETDURATION:"):
                target = float(line.split(":", 1)[1])
            elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
                sequence = int(line.split(":", 1)[1])
            elif line.startswith("#EXT-X-MAP:"):
                attributes = line.split(":", 1)[1]
                if 'URI="' in attributes:
                    map_uri = attributes.split('URI="', 1)[1].split('"', 1)[0]
            elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
                stamp = line.split(":", 1)[1].replace("Z", "+00:00")
                pending_date = datetime.fromisoformat(stamp).timestamp()
            elif line.startswith("#EXTINF:"):
                pending_duration = float(line[8:].split(",", 1)[0])
            elif not line.startswith("#"):
                if pending_duration is None:
                    raise StreamError("segment without #EXTINF")
                entries.append(PlaylistEntry(sequence, pending_duration, line, pending_date))
                sequence += 1
                pending_duration = None
                pending_date = None
    except ValueError as exc:
        raise StreamError(f"malformed playlist: {exc}") from None
    if not map_uri:
        raise StreamError("playlist has no EXT-X-MAP (fragmented MP4 expected)")
    return Playlist(target, map_uri, entries)


class AacDecoder:
    """Decodes fragmented-MP4 AAC segments to 48 kHz mono int16, one decoder across segments
    (so each segment continues the previous one without a click)."""

    def __init__(self, init: bytes) -> None:
        self.init = init
        self._codec: av.AudioCodecContext | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)

    def decode(self, segment: bytes) -> bytes:
        try:
            container = av.open(io.BytesIO(self.init + segment), "r", format="mp4")
        except av.FFmpegError as exc:
            raise StreamError(f"unreadable segment: {exc}") from None
        with container:
            stream = container.streams.audio[0]
            if self._codec is None:
                codec = av.CodecContext.create("aac", "r")
                assert isinstance(codec, av.AudioCodecContext)
                codec.extradata = stream.codec_context.extradata
                self._codec = codec
            chunks = []
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                for frame in self._codec.decode(packet):
                    for out in self._resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1).astype("<i2").tobytes())
        return b"".join(chunks)


class StreamPlayer:
    """Fetches and decodes a room's HLS stream; :meth:`pull` gives 20 ms frames."""

    def __init__(self, playlist_url: str) -> None:
        self.playlist_url = playlist_url
        self._buffer = bytearray()
        self._playing = False
        self._play_after: float | None = None
        self._prebuffer = PREBUFFER
        """When playback (re)starts: :data:`PREBUFFER` after audio came in while stopped."""
        self._task: asyncio.Task[None] | None = None
        self.segments = 0
        """Segments fetched and decoded."""
        self.bytes_fetched = 0
        self.underruns = 0
        self.error: str | None = None
        self.delays: list[float] = []
        """Seconds from a segment's mix (its program date-time) to playing its first sample."""
        self._starts: list[tuple[int, float]] = []
        """(position in the stream's bytes, mix time) of each segment's first sample."""
        self._consumed = 0
        """Bytes of the stream played or dropped so far."""

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def cancel(self) -> None:
        """Stop fetching (the HTTP session closes as the task unwinds)."""
        if self._task is not None:
            self._task.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def pull(self) -> bytes | None:
        """The next 20 ms frame, or None (nothing buffered yet, or refilling after an underrun)."""
        buffer = self._buffer
        if not self._playing:
            if self._play_after is None or time.monotonic() < self._play_after:
                return None
            self._playing = True
        if len(buffer) < FRAME_BYTES:
            self._playing = False
            self._play_after = None
            self.underruns += 1
            self._prebuffer = min(MAX_PREBUFFER, self._prebuffer + PREBUFFER_STEP)
            return None
        frame = bytes(buffer[:FRAME_BYTES])
        del buffer[:FRAME_BYTES]
        now = time.time()
        while self._starts and self._starts[0][0] < self._consumed + FRAME_BYTES:
            _, mixed_at = self._starts.pop(0)
            self.delays.append(now - mixed_at)
        self._consumed += FRAME_BYTES
        return frame

    async def _run(self) -> None:
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                await self._follow(http)
        except asyncio.CancelledError:
            raise
        except (StreamError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.error = str(exc) or type(exc).__name__
            log.warning("stream stopped: %s", self.error)

    async def _get(self, http: aiohttp.ClientSession, url: str, limit: int) -> bytes:
        async with http.get(url) as response:
            if response.status == 403:
                raise StreamError("the server refused the stream (403)")
            if response.status != 200:
                raise StreamError(f"HTTP {response.status} for {url.split('?', 1)[0]}")
            body = await response.content.read(limit + 1)
            if len(body) > limit:
                raise StreamError("response too large")
            self.bytes_fetched += len(body)
            return body

    async def _follow(self, http: aiohttp.ClientSession) -> None:
        decoder: AacDecoder | None = None
        map_uri = ""
        last = -1
        missing = 0
        loop = asyncio.get_running_loop()
        while True:
            loaded_at = loop.time()
            try:
                text = (await self._get(http, self.playlist_url, MAX_PLAYLIST)).decode("utf-8")
            except StreamError as exc:
                if "HTTP 404" in str(exc) and missing < 10:
                    missing += 1  # the mix is starting
                    await asyncio.sleep(0.5)
                    continue
                raise
            playlist = parse_playlist(text)
            if playlist.map_uri != map_uri:
                init = await self._get(
                    http, urljoin(self.playlist_url, playlist.map_uri), MAX_SEGMENT
                )
                decoder = AacDecoder(init)
                map_uri = playlist.map_uri
                last = -1
            entries = playlist.entries
            if last < 0 and entries:
                last = entries[-1].sequence - 1  # start at the live edge
            fresh = [entry for entry in entries if entry.sequence > last]
            for entry in fresh:
                assert decoder is not None
                data = await self._get(http, urljoin(self.playlist_url, entry.uri), MAX_SEGMENT)
                pcm = decoder.decode(data)
                if entry.started_at is not None:
                    position = self._consumed + len(self._buffer)
                    self._starts.append((position, entry.started_at))
                self._buffer += pcm
                if not self._playing and self._play_after is None:
                    self._play_after = time.monotonic() + self._prebuffer
                self.segments += 1
                last = entry.sequence
            excess = len(self._buffer) - int(MAX_BUFFER * 48000 * 2)
            if excess > 0:
                excess -= excess % 2
                del self._buffer[:excess]
                self._consumed += excess
                self._starts = [(at, t) for at, t in self._starts if at >= self._consumed]
            # RFC 8216 6.3.4: a target duration after a change, half of it otherwise, counted
            # from when this load began (the time fetching and decoding took is not added).
            wait = playlist.target if fresh else playlist.target / 2
            await asyncio.sleep(max(0.0, loaded_at + wait - loop.time()))
