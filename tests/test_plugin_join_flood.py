"""join_flood: a burst of knocks or joins is held back with rate_limited, over QUIC."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from salon.client.connection import RequestError
from salon.daemon.config import load_config
from salon.daemon.hooks import Deny, PluginSettings
from salon.daemon.wire import messages as msg
from salon.plugins.join_flood import JoinFloodLimiter, RateLimit
from tests.test_plugin_support import plugin_daemon

# A refill this slow never adds a token during a test: only the burst counts.
SLOW = "0.0001"


async def test_a_burst_of_knocks_from_one_address_is_held_back(tmp_path):
    overrides = {"plugins.join_flood.knock_rate": SLOW, "plugins.join_flood.knock_burst": "2"}
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        await host.create_room("Club", room="club", policy="approval")
        await host.join("club")
        outcomes: list[str] = []
        for index in range(5):
            knocker = await running.client(f"Knocker {index}")
            try:
                outcomes.append((await knocker.join("club"))["status"])
            except RequestError as exc:
                assert exc.message == "too many knocks from your address: slow down"
                outcomes.append(exc.code)
        assert outcomes == ["knocking", "knocking"] + ["rate_limited"] * 3
        # Only the knocks that passed reached the hosts.
        for _ in range(2):
            await host.wait_for_event(msg.Knock, timeout=10)
        # Joins that do not knock are not knocks: an open room still admits the same address.
        owner = await running.client("Owner")
        await owner.create_room("Open", room="open")
        visitor = await running.client("Visitor")
        assert (await visitor.join("open"))["status"] == "joined"
        assert not [e for e in host.drain_events() if isinstance(e, msg.Knock)]


async def test_join_limits_per_address_and_per_room(tmp_path):
    overrides = {
        "plugins.join_flood.room_join_rate": SLOW,
        "plugins.join_flood.room_join_burst": "3",
    }
    async with plugin_daemon(tmp_path, **overrides) as running:
        host = await running.client("Host")
        await host.create_room("Busy", room="busy")
        await host.join("busy")  # 1
        codes = []
        for index in range(4):
            client = await running.client(f"Fan {index}")
            try:
                await client.join("busy")
                codes.append("joined")
            except RequestError as exc:
                codes.append(exc.code)
        assert codes == ["joined", "joined", "rate_limited", "rate_limited"]


def limiter(**settings: Any) -> JoinFloodLimiter:
    config = load_config(None, {"limits.knock_rate": "3"})
    refusals: list[str] = []
    api = SimpleNamespace(
        config=config,
        settings=PluginSettings("join_flood", settings),
        count_abuse=refusals.append,
        refusals=refusals,
    )
    return JoinFloodLimiter(api)  # type: ignore[arg-type]


def test_defaults_come_from_limits_knock_rate():
    flood = limiter()
    assert flood.knocks is not None
    assert (flood.knocks.rate, flood.knocks.burst) == (3.0, 3.0)
    assert flood.joins is None and flood.room_joins is None and flood.room_knocks is None
    flood.clock = lambda: 100.0
    identity: Any = None
    answers = [flood.join_request(identity, "r", "10.0.0.1", knock=True) for _ in range(4)]
    assert answers[:3] == [None] * 3 and isinstance(answers[3], Deny)
    # Another address has its own bucket; a join that does not knock is not counted.
    assert flood.join_request(identity, "r", "10.0.0.2", knock=True) is None
    assert flood.join_request(identity, "r", "10.0.0.1", knock=False) is None
    # Tokens come back with time.
    flood.clock = lambda: 101.0
    assert flood.join_request(identity, "r", "10.0.0.1", knock=True) is None
    assert flood.api.refusals == ["knocks"]


def test_knocks_count_per_ipv6_prefix():
    flood = limiter()
    flood.clock = lambda: 100.0
    identity: Any = None
    # Every address of one /64 shares a bucket (a new address there is free to take).
    answers = [
        flood.join_request(identity, "r", f"2001:db8:7:1::{index:x}", knock=True)
        for index in range(1, 5)
    ]
    assert answers[:3] == [None] * 3 and isinstance(answers[3], Deny)
    assert flood.join_request(identity, "r", "2001:db8:7:2::1", knock=True) is None


def test_rate_limit_forgets_the_least_recently_used(monkeypatch):
    from salon.plugins import join_flood

    monkeypatch.setattr(join_flood, "MAX_KEYS", 2)
    limit = RateLimit(rate=0.0001, burst=1)
    assert limit.take("a", 0) and limit.take("b", 0)
    assert not limit.take("a", 0)  # a is now the most recently used
    assert limit.take("c", 0)  # b is forgotten
    assert limit.take("b", 0)
