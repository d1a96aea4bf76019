"""Webhooks: POST each event, signed with HMAC-SHA256, to configured URLs.

::

    [plugins.webhooks]
    urls = ["https://hooks.example.org/salon"]
    secret = "a long random secret shared with the receivers"
    events = ["room_created", "room_closed", "moderation_taken"]   # default: all but speaking
    timeout = 5.0          # seconds per HTTP attempt
    retries = 3            # more attempts after a failure (connection error, 5xx, 429)
    retry_delay = 1.0      # seconds before the first retry; doubled each time
    queue_size = 1000      # events waiting for delivery; beyond it new events are dropped

The body is a JSON object ``{"id", "event", "time", "data"}`` where ``data`` holds the hook's
arguments (``room``, ``user``, ...). Headers: ``X-Salon-Event``, ``X-Salon-Delivery`` (the id,
the same on every retry), ``X-Salon-Timestamp`` (seconds since the epoch) and
``X-Salon-Signature: sha256=<hex>``, the HMAC-SHA256 with the secret of
``<timestamp>.<body>``. A receiver recomputes it, compares in constant time, and refuses
timestamps that are too old (replays).

Deliveries run in one worker thread with the standard library's urllib, so a slow or dead
receiver never blocks salond: when the queue is full, events are dropped and counted
(``drops["webhooks:queue_full"]``), as are deliveries that fail after every retry
(``drops["webhooks:undelivered"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import msgspec

from salon.daemon import __version__
from salon.daemon.hooks import SalonAPI, hookimpl

EVENTS = (
    "room_created",
    "room_closed",
    "participant_joined",
    "participant_left",
    "role_changed",
    "speaking_changed",
    "moderation_taken",
    "knock_received",
)
DEFAULT_EVENTS = tuple(e for e in EVENTS if e != "speaking_changed")
SIGNATURE_HEADER = "X-Salon-Signature"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Salon-Signature`` value of a delivery."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


class _Stop:
    pass


class Webhooks:
    """Queues events and delivers them from a worker thread."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(
            ("urls", "secret", "events", "timeout", "retries", "retry_delay", "queue_size")
        )
        self.api = api
        self.urls = settings.strings("urls")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise settings.problem("urls", f"expected http:// or https:// URLs, got {url!r}")
        secret = settings.text("secret")
        if secret is None:
            raise settings.problem("secret", "required: receivers check the signature with it")
        self.secret = secret.encode()
        self.events = frozenset(settings.strings("events", DEFAULT_EVENTS))
        unknown = sorted(self.events - set(EVENTS))
        if unknown:
            raise settings.problem("events", f"unknown events {unknown} (known: {list(EVENTS)})")
        self.timeout = settings.number("timeout", 5.0, minimum=0, allow_minimum=False)
        self.retries = settings.integer("retries", 3)
        self.retry_delay = settings.number("retry_delay", 1.0)
        size = settings.integer("queue_size", 1000, minimum=1)
        self.queue: queue.Queue[tuple[str, bytes, str] | _Stop] = queue.Queue(size)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    # ------------------------------------------------------------------ the daemon's side

    @hookimpl
    def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name="salon-webhooks", daemon=True)
        self.thread.start()

    @hookimpl
    async def shutdown(self) -> None:
        self.stopping.set()
        try:
            self.queue.put_nowait(_Stop())
        except queue.Full:
            pass
        if self.thread is not None:
            # Waits in another thread, so the event loop stays free while it drains.
            await asyncio.to_thread(self.thread.join, self.timeout)

    def enqueue(self, event: str, data: dict[str, Any]) -> None:
        """Queue one event for every URL; never blocks (drops and counts when full)."""
        if event not in self.events or not self.urls:
            return
        delivery = uuid.uuid4().hex
        body = msgspec.json.encode(
            {"id": delivery, "event": event, "time": time.time(), "data": data}
        )
        try:
            self.queue.put_nowait((event, body, delivery))
        except queue.Full:
            self.dropped += 1
            self.api.count_drop("queue_full")

    @hookimpl
    def room_created(self, room: str, owner: str) -> None:
        self.enqueue("room_created", {"room": room, "owner": owner})

    @hookimpl
    def room_closed(self, room: str, reason: str) -> None:
        self.enqueue("room_closed", {"room": room, "reason": reason})

    @hookimpl
    def participant_joined(self, room: str, user: str, role: str) -> None:
        self.enqueue("participant_joined", {"room": room, "user": user, "role": role})

    @hookimpl
    def participant_left(self, room: str, user: str, reason: str) -> None:
        self.enqueue("participant_left", {"room": room, "user": user, "reason": reason})

    @hookimpl
    def role_changed(self, room: str, user: str, old: str, new: str) -> None:
        self.enqueue("role_changed", {"room": room, "user": user, "old": old, "new": new})

    @hookimpl
    def speaking_changed(self, room: str, speakers: list[str]) -> None:
        self.enqueue("speaking_changed", {"room": room, "speakers": speakers})

    @hookimpl
    def moderation_taken(
        self, room: str, actor: str, action: str, target: str | None, detail: dict[str, Any]
    ) -> None:
        self.enqueue(
            "moderation_taken",
            {"room": room, "actor": actor, "action": action, "target": target, "detail": detail},
        )

    @hookimpl
    def knock_received(self, room: str, request: Any) -> None:
        self.enqueue("knock_received", {"room": room, "request": msgspec.to_builtins(request)})

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if isinstance(item, _Stop):
                return
            event, body, delivery = item
            for url in self.urls:
                if self._deliver(url, event, body, delivery):
                    self.delivered += 1
                else:
                    self.failed += 1
                    if self.loop is not None:
                        # Counters belong to the event loop's thread (gone after shutdown).
                        with contextlib.suppress(RuntimeError):
                            self.loop.call_soon_threadsafe(self.api.count_drop, "undelivered")

    def _deliver(self, url: str, event: str, body: bytes, delivery: str) -> bool:
        delay = self.retry_delay
        for attempt in range(self.retries + 1):
            if attempt:
                # While stopping, a retry waits for nobody: give up instead.
                if self.stopping.wait(delay):
                    return False
                delay *= 2
            timestamp = str(int(time.time()))
            request = urllib.request.Request(
                url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "User-Agent": f"salond/{__version__}",
                    "X-Salon-Event": event,
                    "X-Salon-Delivery": delivery,
                    "X-Salon-Timestamp": timestamp,
                    SIGNATURE_HEADER: sign(self.secret, timestamp, body),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    self.api.log.warning("webhook %s refused %s: HTTP %d", url, event, exc.code)
                    return False
                self.api.log.info("webhook %s: HTTP %d (attempt %d)", url, exc.code, attempt + 1)
            except (OSError, ValueError) as exc:
                self.api.log.info("webhook %s: %s (attempt %d)", url, exc, attempt + 1)
        self.api.log.warning("webhook %s: gave up on %s %s", url, event, delivery)
        return False
