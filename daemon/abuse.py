"""Guest abuse limits per source address, and what a ban remembers of the banned address.

A guest identity is free (a new key is a new guest), so limits that count per user id stop no
one. These count per *source*: an IPv4 address, or the IPv6 prefix (``limits.ipv6_prefix``,
/64 by default: one customer's network) an address belongs to. They cover guest connections
(at once and per second), rooms created (per second, and live at once whatever keys were used)
and, through the join-flood limiter, knocks. Authenticated users are held to them only when
``limits.guest_limits_for_users`` is set; operators (the admin socket) never are.

A ban remembers the banned user's last source for ``limits.ban_address_memory`` seconds, so
that a knock from the same source under another key is flagged to the hosts.

Refusals are counted by limit (``ServerStats.abuse``, ``salon_abuse_refusals_total``) and
logged at warning level, at most once per limit per ``LOG_INTERVAL`` seconds with the number of
refusals not logged, so a flood cannot flood the log.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from salon.daemon.config import GUEST_PREFIX, LimitsConfig
from salon.daemon.core import Identity

log = logging.getLogger("salon.abuse")

LOG_INTERVAL = 10.0
"""Seconds between two log lines about the same limit."""
MAX_SOURCES = 100_000
"""Sources (and users) remembered per table; the least recently used are forgotten beyond."""


def source_of(address: str, ipv6_prefix: int = 64) -> str:
    """The key a client address is counted under: the IPv4 address, or its IPv6 prefix.

    An IPv4-mapped IPv6 address counts as the IPv4 address. Anything that is not an IP
    address (a test's label, ``admin``) is its own source.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class SourceRate:
    """A token bucket per source: ``rate`` per second, ``burst`` at once; 0 rate: unlimited."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(self.burst, now)
            if len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False


class LogThrottle:
    """Logs one line per kind at most every ``interval`` seconds, counting what it held back."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def log(self, level: int, kind: str, message: str, now: float) -> bool:
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] += 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        suffix = f" ({held} more like this not logged)" if held else ""
        self.logger.log(level, "%s%s", message, suffix)
        return True


@dataclass(frozen=True)
class BannedSource:
    """A ban, remembered by the source the banned user last came from."""

    user: str
    room: str | None
    """The room of the ban; None for a server-wide ban."""
    at: float
    """Wall-clock time of the ban."""


class AddressGuard:
    """The per-source limits of one salond, fed by the network layer (SalonServer)."""

    def __init__(
        self,
        limits: LimitsConfig,
        refusals: Counter[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.refusals = refusals
        """Refusals by limit: ``connections``, ``connect_rate``, ``rooms``, ``create_rate``."""
        self.clock = clock
        self.throttle = LogThrottle(log)
        self.connect_rate = SourceRate(limits.guest_connect_rate, limits.guest_connect_burst)
        self.create_rate = SourceRate(limits.guest_create_rate, limits.guest_create_burst)
        self._sessions: dict[int, str] = {}
        """Session -> source, for sessions held to the limits."""
        self._pending: dict[int, str] = {}
        """Session -> source, for connections that have not said hello yet."""
        self._pending_count: Counter[str] = Counter()
        self._open: Counter[str] = Counter()
        self._rooms: dict[str, str] = {}
        """Room -> source of the guest who created it, while the room is not closed."""
        self._room_count: Counter[str] = Counter()
        self._last_source: OrderedDict[str, str] = OrderedDict()
        """User -> source of their latest connection (to link a ban to an address)."""
        self._bans: OrderedDict[str, list[BannedSource]] = OrderedDict()

    def source(self, address: str) -> str:
        return source_of(address, self.limits.ipv6_prefix)

    def applies(self, identity: Identity) -> bool:
        """Whether this identity is held to the per-source limits."""
        if identity.operator:
            return False
        return identity.user.startswith(GUEST_PREFIX) or self.limits.guest_limits_for_users

    def _refuse(self, limit: str, source: str, message: str) -> str:
        self.refusals[limit] += 1
        self.throttle.log(
            logging.WARNING, limit, f"refused ({limit}) from {source}: {message}", self.clock()
        )
        return message

    # ------------------------------------------------------------------ connections

    def handshake(self, session: int, address: str) -> str | None:
        """A QUIC handshake completed: None to let it say hello, else why it is refused.

        Until its hello nobody knows who it is, so every such connection counts against
        ``guest_connections_per_address``: a flood of handshakes that never say hello is held
        to it too (each would otherwise stay open for the hello time-out)."""
        source = self.source(address)
        limit = self.limits.guest_connections_per_address
        if self._pending_count[source] >= limit:
            return self._refuse(
                "connections",
                source,
                f"too many connections from your address waiting for hello (at most {limit})",
            )
        self._pending[session] = source
        self._pending_count[source] += 1
        return None

    def _said_hello(self, session: int) -> None:
        source = self._pending.pop(session, None)
        if source is not None:
            self._pending_count[source] -= 1
            if self._pending_count[source] <= 0:
                del self._pending_count[source]

    def admit(self, session: int, identity: Identity, address: str) -> str | None:
        """A session said hello as ``identity``: None to admit it, else why it is refused."""
        self._said_hello(session)
        source = self.source(address)
        self._last_source[identity.user] = source
        self._last_source.move_to_end(identity.user)
        if len(self._last_source) > MAX_SOURCES:
            self._last_source.popitem(last=False)
        if not self.applies(identity):
            return None
        limit = self.limits.guest_connections_per_address
        if self._open[source] >= limit:
            return self._refuse(
                "connections",
                source,
                f"too many connections from your address (at most {limit}): close some first",
            )
        if not self.connect_rate.take(source, self.clock()):
            return self._refuse(
                "connect_rate", source, "connecting too often from your address: slow down"
            )
        self._sessions[session] = source
        self._open[source] += 1
        return None

    def closed(self, session: int) -> None:
        self._said_hello(session)
        source = self._sessions.pop(session, None)
        if source is not None:
            self._open[source] -= 1
            if self._open[source] <= 0:
                del self._open[source]

    def open_connections(self, address: str) -> int:
        return self._open.get(self.source(address), 0)

    # ------------------------------------------------------------------ rooms

    def check_create(self, identity: Identity, address: str) -> tuple[str, str] | None:
        """None if this identity may create a room now, else (the limit, why not)."""
        if not self.applies(identity):
            return None
        source = self.source(address)
        limit = self.limits.guest_rooms_per_address
        if self._room_count[source] >= limit:
            return "rooms", self._refuse(
                "rooms",
                source,
                f"guests from your address already own {limit} open rooms: close one first",
            )
        if not self.create_rate.take(source, self.clock()):
            return "create_rate", self._refuse(
                "create_rate", source, "creating rooms too often from your address: slow down"
            )
        return None

    def created(self, room: str, identity: Identity, address: str) -> None:
        if self.applies(identity) and room not in self._rooms:
            source = self.source(address)
            self._rooms[room] = source
            self._room_count[source] += 1

    def room_closed(self, room: str) -> None:
        source = self._rooms.pop(room, None)
        if source is not None:
            self._room_count[source] -= 1
            if self._room_count[source] <= 0:
                del self._room_count[source]

    def rooms_of(self, address: str) -> int:
        return self._room_count.get(self.source(address), 0)

    # ------------------------------------------------------------------ bans

    def banned(self, room: str | None, user: str, now: float) -> None:
        """Remember the banned user's last source (a wall-clock ``now``)."""
        if self.limits.ban_address_memory <= 0:
            return
        source = self._last_source.get(user)
        if source is None:
            return
        entries = [b for b in self._bans.get(source, []) if not (b.user == user and b.room == room)]
        entries.append(BannedSource(user, room, now))
        self._bans[source] = entries[-8:]
        self._bans.move_to_end(source)
        if len(self._bans) > MAX_SOURCES:
            self._bans.popitem(last=False)
        log.info("ban of %s in %s linked to address %s", user, room or "the server", source)

    def ban_notes(self, room: str, user: str, address: str, now: float) -> list[str]:
        """Trust notes for a knock on ``room`` from ``address``: bans from the same source."""
        memory = self.limits.ban_address_memory
        entries = self._bans.get(self.source(address))
        if not entries or memory <= 0:
            return []
        notes = []
        for ban in entries:
            if ban.user == user or (ban.room is not None and ban.room != room):
                continue
            if now - ban.at > memory:
                continue
            minutes = max(0, int((now - ban.at) // 60))
            where = "" if ban.room is not None else " from the server"
            kind = "guest" if ban.user.startswith(GUEST_PREFIX) else "user"
            notes.append(
                f"same address as banned {kind} {ban.user}, banned{where} {minutes} min ago"
            )
        return notes
