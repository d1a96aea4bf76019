"""Stream mode's HTTP routes: per-listener playlists, shared segments (docs/stream_mode.md).

    GET /stream/<room>/live.m3u8?t=<token>          the listener's playlist (no-cache)
    GET /stream/<room>/<epoch>/init.mp4?s=<sig>     init section (immutable)
    GET /stream/<room>/<epoch>/<seq>.m4s?s=<sig>    one segment (immutable)
    GET /stream-player/#<playlist URL>              a browser player page (hls.js)

A missing, malformed or foreign token or signature gets 403 whatever the room: nobody learns
from the origin whether a room streams. A well-signed segment that left the window gets 404.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from salon.daemon.core.ids import ROOM_ID_PATTERN

from .access import EPOCH_PATTERN
from .segmenter import Window

if TYPE_CHECKING:
    from salon.daemon.http.endpoint import HttpEndpoint

    from .service import StreamService, _Room

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "audio/mp4"
IMMUTABLE = "public, max-age=86400, immutable"
FIRST_SEGMENT_WAIT = 3.0
"""Seconds a playlist request waits for a new mix's first segment before answering empty."""
MAX_SEQUENCE_DIGITS = 12


def add_stream_routes(endpoint: HttpEndpoint, service: StreamService) -> None:
    """Serve ``service``'s streams on ``endpoint``."""
    routes = StreamRoutes(service)
    endpoint.add_routes(
        [
            web.get("/stream/{room}/live.m3u8", routes.playlist),
            web.get("/stream/{room}/{epoch}/init.mp4", routes.init),
            web.get("/stream/{room}/{epoch}/{sequence}.m4s", routes.segment),
            web.get("/stream-player/", routes.player_page),
            web.get("/stream-player/{name}", routes.player_file),
        ]
    )


def _forbidden() -> web.Response:
    return web.Response(status=403, text="forbidden\n", headers={"Cache-Control": "no-store"})


def _headers(cache: str) -> dict[str, str]:
    # A page from another origin (a CDN, the web client) may play the stream with MSE.
    return {"Cache-Control": cache, "Access-Control-Allow-Origin": "*"}


PLAYER_FILES = Path(str(resources.files("salon.daemon.stream") / "web"))
"""The browser player: a page, its script and hls.js (package data)."""
PLAYER_TYPES = {".html": "text/html", ".js": "text/javascript"}
PLAYER_CSP = (
    # The playlist may be on a caching front (another origin); MSE plays from blob: URLs.
    "default-src 'self'; connect-src *; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


class StreamRoutes:
    def __init__(self, service: StreamService) -> None:
        self.service = service
        half = int(service.config.segment_seconds / 2)
        self.playlist_cache = f"max-age={half}" if half else "no-cache"
        """Playlists are revalidated about twice a segment; with 1 s segments, every time."""

    def _room(self, request: web.Request) -> _Room | None:
        room_id = request.match_info["room"]
        if not ROOM_ID_PATTERN.fullmatch(room_id):
            return None
        return self.service.rooms.get(room_id)

    async def playlist(self, request: web.Request) -> web.StreamResponse:
        service = self.service
        room = self._room(request)
        token = request.query.get("t", "")
        if room is None or not service.member_token_ok(room.id, token):
            if room is not None:
                room.refused += 1
            return _forbidden()
        window = await self._window(room)
        if window is None:
            return web.Response(status=404, text="no stream\n", headers=_headers("no-store"))
        epoch, current = window
        segments = current.segments[-service.config.window :]
        etag = f'"{epoch}-{segments[-1].sequence if segments else -1}"'
        room.playlists_served += 1
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={**_headers(self.playlist_cache), "ETag": etag})
        signer = service.signer
        target = max([1, *(round(s.duration) for s in segments)])
        init_signature = signer.segment_signature(room.id, epoch, "init")
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            f"#EXT-X-TARGETDURATION:{target}",
            f"#EXT-X-MEDIA-SEQUENCE:{segments[0].sequence if segments else 0}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
            f'#EXT-X-MAP:URI="{epoch}/init.mp4?s={init_signature}"',
        ]
        for segment in segments:
            started = datetime.fromtimestamp(segment.started_at, timezone.utc)
            signature = signer.segment_signature(room.id, epoch, str(segment.sequence))
            lines += [
                f"#EXT-X-PROGRAM-DATE-TIME:{started.isoformat(timespec='milliseconds')}",
                f"#EXTINF:{segment.duration:.6f},",
                f"{epoch}/{segment.sequence}.m4s?s={signature}",
            ]
        body = ("\n".join(lines) + "\n").encode("ascii")
        room.bytes_served += len(body)
        return web.Response(
            body=body,
            content_type=PLAYLIST_TYPE,
            headers={**_headers(self.playlist_cache), "ETag": etag},
        )

    async def _window(self, room: _Room) -> tuple[str, Window] | None:
        """The room's segment window; a new mix is given a moment to finish its first one."""
        deadline = asyncio.get_running_loop().time() + FIRST_SEGMENT_WAIT
        while True:
            window = self.service.windows.get(room.id)
            if window is None or window[1].segments:
                return window
            if asyncio.get_running_loop().time() >= deadline:
                return window
            await asyncio.sleep(0.05)

    def _signed(self, request: web.Request, name: str) -> tuple[_Room, Window] | None:
        room = self._room(request)
        epoch = request.match_info["epoch"]
        signature = request.query.get("s", "")
        if room is None or not EPOCH_PATTERN.match(epoch):
            return None
        if not self.service.signer.check_segment(room.id, epoch, name, signature):
            room.refused += 1
            return None
        window = self.service.windows.get(room.id)
        if window is None or window[0] != epoch:
            return room, Window()
        return room, window[1]

    async def init(self, request: web.Request) -> web.StreamResponse:
        found = self._signed(request, "init")
        if found is None:
            return _forbidden()
        room, window = found
        if not window.init:
            return web.Response(status=404, text="gone\n", headers=_headers("no-store"))
        return self._send(room, window.init)

    async def segment(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["sequence"]
        if not name.isdigit() or len(name) > MAX_SEQUENCE_DIGITS:
            return _forbidden()
        found = self._signed(request, str(int(name)))
        if found is None:
            return _forbidden()
        room, window = found
        segment = window.find(int(name))
        if segment is None:
            return web.Response(status=404, text="gone\n", headers=_headers("no-store"))
        room.served_by_segment[segment.sequence] = (
            room.served_by_segment.get(segment.sequence, 0) + 1
        )
        if len(room.served_by_segment) > 64:
            del room.served_by_segment[min(room.served_by_segment)]
        room.max_fetches_per_segment = max(
            room.max_fetches_per_segment, room.served_by_segment[segment.sequence]
        )
        return self._send(room, segment.data)

    async def player_page(self, request: web.Request) -> web.StreamResponse:
        return self._player("index.html")

    async def player_file(self, request: web.Request) -> web.StreamResponse:
        return self._player(request.match_info["name"])

    @staticmethod
    def _player(name: str) -> web.Response:
        path = PLAYER_FILES / name
        kind = PLAYER_TYPES.get(path.suffix)
        if kind is None or "/" in name or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        return web.Response(
            body=path.read_bytes(),
            content_type=kind,
            charset="utf-8",
            headers={"Cache-Control": "max-age=300", "Content-Security-Policy": PLAYER_CSP},
        )

    @staticmethod
    def _send(room: _Room, data: bytes) -> web.Response:
        room.segments_served += 1
        room.bytes_served += len(data)
        return web.Response(body=data, content_type=SEGMENT_TYPE, headers=_headers(IMMUTABLE))
