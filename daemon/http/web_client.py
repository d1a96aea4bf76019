"""The web client's routes: its page and files, and what the page needs to reach salond.

The page is plain ES modules (``web/``), served as they are: no build step, nothing from
another site. It connects over WebTransport to the QUIC port (PROTOCOL.md section 15) and learns
from ``/api/webtransport`` where that is and which certificate hash to pin.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from salon.daemon.http.endpoint import HttpEndpoint
from salon.daemon.net.webtransport import WEBTRANSPORT_PATH

WEB_FILES = Path(str(resources.files("salon.daemon.http") / "web"))
"""The web client's files (package data)."""

ROOM_ID_LIMIT = 200
"""Longest room id accepted in a /r/<room> link; the page validates it again as any input."""


def add_web_client(
    endpoint: HttpEndpoint,
    quic_port: Callable[[], int],
    certificate_hashes: Callable[[], list[bytes]],
) -> None:
    """Serve the web client on ``endpoint``.

    ``quic_port`` gives the UDP port WebTransport sessions go to, ``certificate_hashes`` the
    SHA-256 hashes of the certificates a page may pin (empty with a CA-signed certificate).
    Both are called per request: the port is known only once bound, the hash changes on
    rotation.
    """
    index = (WEB_FILES / "index.html").read_bytes()

    async def page(request: web.Request) -> web.Response:
        room = request.match_info.get("room", "")
        if len(room) > ROOM_ID_LIMIT:
            raise web.HTTPNotFound(text="no such room\n")
        return web.Response(
            body=index,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def webtransport(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "port": quic_port(),
                "path": WEBTRANSPORT_PATH,
                "certificate_hashes": [
                    base64.b64encode(digest).decode("ascii") for digest in certificate_hashes()
                ],
            },
            headers={"Cache-Control": "no-store"},
        )

    endpoint.add_routes(
        [
            web.get("/", page),
            web.get("/r/{room}", page),
            web.get("/api/webtransport", webtransport),
        ]
    )
    endpoint.add_static("/web/", str(WEB_FILES))
