"""webhooks: signed POSTs to a local http.server, retries, a bounded queue, never blocking."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from salon.daemon.config import load_config
from salon.daemon.hooks import PluginSettings
from salon.plugins.webhooks import Webhooks, sign
from tests.test_plugin_support import plugin_daemon, wait_until

SECRET = "webhook secret"


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 that answers with ``statuses`` in turn (then 200)."""

    statuses: list[int] = field(default_factory=list)
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    hang: int = 0
    """How many of the next requests get no answer until ``release`` is set."""
    release: threading.Event = field(default_factory=threading.Event)
    arrivals: list[float] = field(default_factory=list)
    """time.monotonic() of every request."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.attempts += 1
            state.arrivals.append(time.monotonic())
            if state.hang:
                state.hang -= 1
                state.release.wait(60)
                return  # no answer at all
            status = state.statuses.pop(0) if state.statuses else 200
            if status == 200:
                state.deliveries.append((dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def verify(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What a receiver does: recompute the signature, compare in constant time, decode."""
    timestamp = headers["X-Salon-Timestamp"]
    expected = (
        "sha256="
        + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(headers["X-Salon-Signature"], expected)
    payload: dict[str, Any] = json.loads(body)
    assert headers["X-Salon-Event"] == payload["event"]
    assert headers["X-Salon-Delivery"] == payload["id"]
    return payload


def settings(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "plugins.enabled": "webhooks",
        "plugins.webhooks.urls": [url],
        "plugins.webhooks.secret": SECRET,
        "plugins.webhooks.retry_delay": 0.01,
        **{f"plugins.webhooks.{k}": v for k, v in extra.items()},
    }


async def test_events_are_posted_signed(tmp_path, receiver):
    async with plugin_daemon(tmp_path, **settings(receiver.url)) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club", policy="approval")
        await host.join("club")
        bob = await running.client("Bob")
        await bob.join("club")
        await wait_until(lambda: len(receiver.deliveries) >= 3)
    payloads = [verify(headers, body) for headers, body in receiver.deliveries]
    events = [p["event"] for p in payloads]
    assert events[:3] == ["room_created", "participant_joined", "knock_received"]
    assert payloads[0]["data"] == {"room": "club", "owner": host.user}
    assert payloads[2]["data"]["request"]["user"] == bob.user
    # The shutdown's own events (members disconnected) were delivered before it completed.
    assert "participant_left" in events


async def test_failed_deliveries_are_retried_with_the_same_id(tmp_path, receiver):
    receiver.statuses = [500, 503]
    async with plugin_daemon(tmp_path, **settings(receiver.url, events=["room_created"])) as r:
        host = await r.client("Host")
        await host.create_room("Club", room="club")
        await wait_until(lambda: len(receiver.deliveries) == 1)
        assert receiver.attempts == 3
        payload = verify(*receiver.deliveries[0])
        assert payload["event"] == "room_created"


async def test_a_refusal_is_not_retried_and_a_dead_receiver_is_counted(tmp_path, receiver):
    receiver.statuses = [403]
    dead = "http://127.0.0.1:9/nobody"  # the discard port: connection refused
    config = settings(receiver.url, events=["room_created"], retries=1)
    config["plugins.webhooks.urls"] = [receiver.url, dead]
    async with plugin_daemon(tmp_path, **config) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club")
        drops = running.daemon.server.stats.drops
        await wait_until(lambda: drops["webhooks:undelivered"] == 2)
        assert receiver.attempts == 1 and receiver.deliveries == []


async def test_a_receiver_that_does_not_answer_times_out_and_is_retried(tmp_path, receiver):
    receiver.hang = 1
    config = settings(receiver.url, events=["room_created"], timeout=0.5, retries=1)
    async with plugin_daemon(tmp_path, **config) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club")
        await wait_until(lambda: len(receiver.deliveries) == 1)
        # The first attempt got no answer; the plugin gave up on it after its timeout.
        assert receiver.attempts == 2
        assert receiver.arrivals[1] - receiver.arrivals[0] >= 0.5
        assert running.daemon.server.stats.drops["webhooks:undelivered"] == 0


async def test_too_many_requests_is_retried_with_growing_delays(tmp_path, receiver):
    receiver.statuses = [429, 429, 429]
    config = settings(receiver.url, events=["room_created"], retry_delay=0.2, retries=3)
    async with plugin_daemon(tmp_path, **config) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club")
        await wait_until(lambda: len(receiver.deliveries) == 1)
    assert receiver.attempts == 4
    gaps = [b - a for a, b in zip(receiver.arrivals, receiver.arrivals[1:], strict=False)]
    # At least the configured delay, doubled each time (waits are lower bounds, never upper).
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    ids = {json.loads(body)["id"] for _, body in receiver.deliveries}
    assert len(ids) == 1


async def test_shutdown_does_not_wait_for_a_hanging_receiver(tmp_path, receiver):
    """The receiver never answers (until the test ends): salond still stops, within the
    plugin's timeout, and the events still queued are given up, not delivered later."""
    receiver.hang = 100
    config = settings(receiver.url, timeout=1.0, retries=5, retry_delay=0.5)
    async with plugin_daemon(tmp_path, **config) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club")
        await wait_until(lambda: receiver.attempts == 1)
        hooks = running.daemon.plugins.pm.get_plugin("webhooks")
        assert isinstance(hooks, Webhooks)
        await host.create_room("Second", room="second")  # queued behind the hanging one
        # Not a timing check: without the bound, stopping would wait for the receiver, which
        # only answers when this test ends (a minute later).
        await asyncio.wait_for(running.daemon.stop(), 20)
        assert not receiver.release.is_set()
        assert hooks.stopping.is_set()
        # The plugin bounded its own shutdown (1 s) within the host's budget (2 s): the host
        # did not have to cut it off.
        assert running.daemon.server.stats.plugin_errors["shutdown"] == 0
    assert receiver.deliveries == []


def test_the_queue_is_bounded_and_never_blocks():
    config = load_config(None)
    table = {"urls": ["http://127.0.0.1:9/"], "secret": SECRET, "queue_size": 2}
    dropped: list[str] = []
    api = SimpleNamespace(
        config=config,
        settings=PluginSettings("webhooks", table),
        count_drop=dropped.append,
        log=None,
    )
    hooks = Webhooks(api)  # type: ignore[arg-type]
    # No worker thread runs: nothing is taken off the queue.
    for index in range(5):
        hooks.room_created(f"r{index}", "ada")
    assert hooks.queue.qsize() == 2
    assert dropped == ["queue_full"] * 3 and hooks.dropped == 3


def test_signature_helper_matches_the_documented_recipe():
    assert sign(b"k", "1700000000", b"{}") == (
        "sha256=" + hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    )
