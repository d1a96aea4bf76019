"""One aiohttp application on ``[http] host/port`` that features register routes on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from salon.daemon.config import HttpConfig

log = logging.getLogger("salon.http")

MAX_REQUEST_BODY = 64 * 1024
"""The endpoint serves pages and small JSON documents: no request needs a larger body."""

SECURITY_HEADERS = {
    # Everything the page loads comes from this endpoint; WebTransport goes to the QUIC port
    # (another origin, hence https: in connect-src). No inline script, no plugins, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' https:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class HttpEndpoint:
    """The daemon's HTTP server; a component started after the QUIC socket is bound."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.app = web.Application(
            client_max_size=MAX_REQUEST_BODY, middlewares=[_security_headers]
        )
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] = ("", 0)

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Register a feature's routes; only before :meth:`start` (aiohttp freezes the router)."""
        self.app.add_routes(list(routes))

    def add_static(self, prefix: str, path: str) -> None:
        """Serve the files of directory ``path`` under ``prefix`` (no listing, no symlinks)."""
        self.app.router.add_static(prefix, path, show_index=False, follow_symlinks=False)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.address = (str(addresses[0][0]), int(addresses[0][1]))
        log.info("http on http://%s:%d/", *self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
