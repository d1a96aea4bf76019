"""One event-loop timer for every connection's QUIC timer.

aioquic gives each connection its own ``loop.call_at`` for its next deadline (ACK delay, loss
detection, pacing, idle time-out). A server sending audio moves every listener's loss detection
time later with each packet, so each connection's timer fires early about once per probe
time-out and is armed again: at 1->200 about 1,400 ``TimerHandle`` objects a second went in and
out of the loop's heap. :class:`ConnectionTimers` keeps the connections' deadlines in a heap of
its own and arms one loop timer, at the earliest; arming a connection costs a ``heappush`` and
moves the loop's timer only when the new deadline is earlier than the one armed.

Callbacks run when asyncio would have run theirs (deadline within the loop's clock resolution
of now), in deadline order, so each connection sees the same calls at the same times.
"""

from __future__ import annotations

import asyncio
import heapq
import weakref
from collections.abc import Callable
from itertools import count
from typing import Any


class ConnectionTimer:
    """One armed deadline; :meth:`cancel` as for asyncio's ``TimerHandle``."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback: Callable[[], Any] | None = callback

    def cancel(self) -> None:
        self.callback = None

    def cancelled(self) -> bool:
        return self.callback is None


class ConnectionTimers:
    """The deadlines of every connection on one loop, behind one loop timer."""

    __slots__ = ("_armed", "_armed_at", "_heap", "_loop", "_order", "_resolution", "batch")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, ConnectionTimer]] = []
        self._order = count()
        """Ties keep the order of arming, as in the loop's own heap."""
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        # What asyncio's loop allows: a handle runs once its time is within this of now.
        self._resolution: float = getattr(loop, "_clock_resolution", 0.0)
        self.batch: Any = None
        """The server's batching transport (``hold``/``release``), or None: what the callbacks
        of one firing send (ACKs falling due together, probes) leaves in one ``sendmmsg``."""

    def __len__(self) -> int:
        """Deadlines held, cancelled ones included until they are reached."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], Any]) -> ConnectionTimer:
        """Call ``callback`` at ``when`` (loop time), like ``loop.call_at``."""
        timer = ConnectionTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        if self._armed is None or when < self._armed_at:
            self._arm(when)
        return timer

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed = self._loop.call_at(when, self._fire)
        self._armed_at = when

    def _fire(self) -> None:
        self._armed = None
        heap = self._heap
        end = self._loop.time() + self._resolution
        due = []
        while heap and heap[0][0] <= end:
            due.append(heapq.heappop(heap)[2])
        # A callback may arm its connection again, at a deadline already due: that one runs
        # in the loop's next iteration, as with call_at, never in this loop.
        batch = self.batch
        if batch is not None:
            batch.hold()
        try:
            self._run(due)
        finally:
            if batch is not None:
                batch.release()
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        if heap and (self._armed is None or heap[0][0] < self._armed_at):
            self._arm(heap[0][0])

    def _run(self, due: list[ConnectionTimer]) -> None:
        for timer in due:
            callback = timer.callback
            if callback is not None:
                timer.callback = None
                try:
                    callback()
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    # As asyncio does for a handle: reported, and the others still run.
                    self._loop.call_exception_handler(
                        {
                            "message": f"Exception in connection timer {callback!r}",
                            "exception": exc,
                        }
                    )


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionTimers] = (
    weakref.WeakKeyDictionary()
)


def connection_timers(loop: asyncio.AbstractEventLoop) -> ConnectionTimers:
    """The :class:`ConnectionTimers` of ``loop`` (made on first use)."""
    timers = _PER_LOOP.get(loop)
    if timers is None:
        timers = _PER_LOOP[loop] = ConnectionTimers(loop)
    return timers
