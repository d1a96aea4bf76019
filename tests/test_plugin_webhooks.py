"""webhooks: signed POSTs to a local http.server, retries, a bounded queue, never blocking."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.attempts += 1
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
