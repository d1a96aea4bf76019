"""A UDP relay on loopback that loses, delays and reorders packets, for tests and benchmarks.

No root and no network namespace: clients connect to the relay's address instead of the
daemon's, and each client address gets its own upstream socket, so the daemon sees one peer per
client as it would over a real network. Each direction (client to server: ``up``, server to
client: ``down``) has its own :class:`Impairment` and its own seeded random generator, so a run
is repeatable packet for packet given the same packet sequence.

Loss is either independent (each packet lost with probability ``loss``) or in bursts: a
two-state Gilbert-Elliott model whose bad state loses every packet, sized so that the long-run
loss is ``loss`` and a burst lasts ``burst_length`` packets on average. Delay is ``delay`` plus
a uniform random extra in ``[0, jitter)``; packets with different delays overtake each other,
which is how a real path reorders.

    async with lossy_relay(host, port, down=Impairment(loss=0.05, burst_length=2)) as relay:
        client = await SalonClient.connect(*relay.address, ...)

Set ``relay.cut = True`` to drop everything (a dead path) until it is set back to False.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Impairment:
    """What one direction of the path does to packets."""

    loss: float = 0.0
    """Long-run fraction of packets lost (0..1)."""
    burst_length: float = 1.0
    """Mean number of packets lost in a row; 1 means independent (random) loss."""
    delay: float = 0.0
    """Fixed one-way delay added, in seconds."""
    jitter: float = 0.0
    """Upper bound of a uniform random extra delay, in seconds (reorders packets)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.burst_length < 1.0:
            raise ValueError(f"burst_length must be at least 1, got {self.burst_length}")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must not be negative")


CLEAN = Impairment()


@dataclass
class DirectionStats:
    """Counters of one direction."""

    packets: int = 0
    """Packets that entered the relay in this direction."""
    dropped: int = 0
    """Packets lost on purpose (loss model or a cut path)."""
    forwarded: int = 0
    """Packets sent on."""
    bytes_forwarded: int = 0
    """UDP payload bytes sent on."""


@dataclass
class _Direction:
    impairment: Impairment
    rng: random.Random
    stats: DirectionStats = field(default_factory=DirectionStats)
    in_burst: bool = False

    def lose(self) -> bool:
        imp = self.impairment
        if imp.loss <= 0.0:
            return False
        if imp.burst_length <= 1.0:
            return self.rng.random() < imp.loss
        # Gilbert-Elliott with a lossless good state and an all-losing bad state: leaving the
        # bad state with probability 1/L gives bursts of mean length L; entering it with
        # p = loss/(L (1 - loss)) makes the stationary share of the bad state equal to `loss`.
        leave = 1.0 / imp.burst_length
        enter = imp.loss * leave / (1.0 - imp.loss)
        if self.in_burst:
            self.in_burst = self.rng.random() >= leave
        else:
            self.in_burst = self.rng.random() < enter
        return self.in_burst

    def delay(self) -> float:
        imp = self.impairment
        return imp.delay + (self.rng.random() * imp.jitter if imp.jitter else 0.0)


class LossyRelay(asyncio.DatagramProtocol):
    """Relays UDP between clients and one server address, impairing each direction."""

    def __init__(
        self,
        target: tuple[str, int],
        up: Impairment = CLEAN,
        down: Impairment = CLEAN,
        seed: int = 1,
    ) -> None:
        self.target = target
        self.up = _Direction(up, random.Random(f"{seed}/up"))
        self.down = _Direction(down, random.Random(f"{seed}/down"))
        self.cut = False
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)
        self._upstreams: dict[Any, asyncio.DatagramTransport] = {}
        self._waiting: dict[Any, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def dropped(self) -> int:
        """Packets dropped in both directions."""
        return self.up.stats.dropped + self.down.stats.dropped

    def set_impairment(self, up: Impairment | None = None, down: Impairment | None = None) -> None:
        """Change what the path does from now on (the random generators carry on)."""
        if up is not None:
            self.up.impairment = up
        if down is not None:
            self.down.impairment = down

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._pass(self.up, data, lambda payload: self._to_server(payload, addr))

    def _to_server(self, data: bytes, addr: Any) -> None:
        upstream = self._upstreams.get(addr)
        if upstream is not None:
            upstream.sendto(data)
        elif addr in self._waiting:
            self._waiting[addr].append(data)
        else:
            self._waiting[addr] = [data]
            task = asyncio.ensure_future(self._open(addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _to_client(self, data: bytes, addr: Any) -> None:
        if self.transport is not None and not self._closed:
            self.transport.sendto(data, addr)

    def _pass(self, direction: _Direction, data: bytes, send: Any) -> None:
        direction.stats.packets += 1
        if self.cut or direction.lose():
            direction.stats.dropped += 1
            return
        direction.stats.forwarded += 1
        direction.stats.bytes_forwarded += len(data)
        delay = direction.delay()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, send, data)
        else:
            send(data)

    async def _open(self, addr: Any) -> None:
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _: Any) -> None:
                relay._pass(relay.down, data, lambda payload: relay._to_client(payload, addr))

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        if self._closed:
            transport.close()
            return
        self._upstreams[addr] = transport
        for data in self._waiting.pop(addr, []):
            transport.sendto(data)

    def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for upstream in self._upstreams.values():
            upstream.close()
        if self.transport is not None:
            self.transport.close()


@contextlib.asynccontextmanager
async def lossy_relay(
    host: str,
    port: int,
    *,
    up: Impairment = CLEAN,
    down: Impairment = CLEAN,
    seed: int = 1,
    bind: str = "127.0.0.1",
) -> AsyncIterator[LossyRelay]:
    """A :class:`LossyRelay` to ``host:port`` on a free local port, closed on exit."""
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_datagram_endpoint(
        lambda: LossyRelay((host, port), up, down, seed), local_addr=(bind, 0)
    )
    try:
        yield relay
    finally:
        relay.close()
