"""Join-flood limiter: token buckets on join requests and knocks, per address and per room.

Loaded by default, because ``[limits] knock_rate`` (knocks per second from one client address)
is a server limit: a flood of knocks must not bury a host's approval queue. The other limits
are off unless ``[plugins.join_flood]`` sets them::

    [plugins.join_flood]
    knock_rate = 10.0        # knocks per second per address (default: limits.knock_rate)
    knock_burst = 10         # knocks at once above that rate (default: the rate, at least 1)
    join_rate = 0.0          # joins (any policy) per second per address; 0: unlimited
    join_burst = 20
    room_knock_rate = 0.0    # knocks per second on one room, from everyone; 0: unlimited
    room_knock_burst = 20
    room_join_rate = 0.0     # joins per second into one room; 0: unlimited
    room_join_burst = 50

A refused request gets ``rate_limited``; nothing else changes (no knock is created).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from salon.daemon.abuse import source_of
from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl
from salon.daemon.wire.messages import ErrorCode

MAX_KEYS = 100_000
"""Buckets kept per limit; the least recently used are forgotten beyond this."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimit:
    """A token bucket per key (an address, a room), with the least recently used forgotten."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(buckets) > MAX_KEYS:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return bucket.take(now)


def _limit(api: SalonAPI, name: str, rate: float, burst: int) -> RateLimit | None:
    rate = api.settings.number(f"{name}_rate", rate)
    burst = api.settings.integer(f"{name}_burst", burst, minimum=1)
    return RateLimit(rate, burst) if rate > 0 else None


class JoinFloodLimiter:
    """Refuses joins and knocks beyond the configured rates with ``rate_limited``."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(
            f"{kind}_{part}"
            for kind in ("knock", "join", "room_knock", "room_join")
            for part in ("rate", "burst")
        )
        knock_rate = api.config.limits.knock_rate
        self.knocks = _limit(api, "knock", knock_rate, max(1, round(knock_rate)))
        self.joins = _limit(api, "join", 0.0, 20)
        self.room_knocks = _limit(api, "room_knock", 0.0, 20)
        self.room_joins = _limit(api, "room_join", 0.0, 50)
        self.clock = time.monotonic
        self.ipv6_prefix = api.config.limits.ipv6_prefix
        self.api = api

    @hookimpl(tryfirst=True)
    def join_request(self, identity: Identity, room: str, address: str, knock: bool) -> Deny | None:
        now = self.clock()
        # Per source: an IPv4 address or an IPv6 prefix (limits.ipv6_prefix), not per key.
        address = source_of(address, self.ipv6_prefix)
        if self.joins is not None and not self.joins.take(address, now):
            return Deny("too many joins from your address: slow down", ErrorCode.RATE_LIMITED)
        if self.room_joins is not None and not self.room_joins.take(room, now):
            return Deny(f"too many joins into {room}: try again soon", ErrorCode.RATE_LIMITED)
        if knock:
            if self.knocks is not None and not self.knocks.take(address, now):
                self.api.count_abuse("knocks")
                return Deny("too many knocks from your address: slow down", ErrorCode.RATE_LIMITED)
            if self.room_knocks is not None and not self.room_knocks.take(room, now):
                return Deny(f"too many knocks on {room}: try again soon", ErrorCode.RATE_LIMITED)
        return None
