"""The connections' shared timers (salon.quic.timers): one loop timer, the same calls as aioquic's
per-connection ``loop.call_at``, and salond's loss detection running on them."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from salon.quic.protocol import ServerProtocol
from salon.quic.timers import ConnectionTimer, ConnectionTimers, connection_timers


def loop_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The loop's armed timers (asyncio's own heap; cancelled ones left out)."""
    return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


async def test_one_loop_timer_for_every_deadline() -> None:
    loop = asyncio.get_running_loop()
    timers = ConnectionTimers(loop)
    now = loop.time()
    fired: list[int] = []
    for index in range(50):
        timers.call_at(now + 10 + index, lambda index=index: fired.append(index))
    [armed] = loop_timers(loop)
    assert armed.when() == now + 10
    # An earlier deadline moves the one loop timer; a later one leaves it alone.
    timers.call_at(now + 5, lambda: None)
    timers.call_at(now + 60, lambda: None)
    [armed] = loop_timers(loop)
    assert armed.when() == now + 5 and len(timers) == 52
    assert connection_timers(loop) is connection_timers(loop)


async def test_the_same_calls_as_call_at_in_deadline_order() -> None:
    """Random deadlines, some cancelled, some callbacks arming again (one at a deadline
    already due): each live deadline is called once, no sooner than ``call_at`` would, in
    deadline order, and a callback armed from a callback at a due time waits for the loop's
    next iteration as with ``call_at``."""
    loop = asyncio.get_running_loop()
    timers = ConnectionTimers(loop)
    rng = random.Random(7)
    start = loop.time()
    resolution = loop._clock_resolution  # type: ignore[attr-defined]
    fired: list[tuple[float, float, str]] = []
    done = asyncio.Event()
    expected: set[str] = set()

    def callback(name: str, when: float) -> None:
        fired.append((when, loop.time(), name))
        if name == "a3":
            arm("again", loop.time() - 0.001)  # already due: runs in the next iteration
        if len(fired) == len(expected):
            done.set()

    def arm(name: str, when: float) -> ConnectionTimer:
        expected.add(name)
        return timers.call_at(when, lambda: callback(name, when))

    handles = {f"a{i}": arm(f"a{i}", start + rng.uniform(0.001, 0.05)) for i in range(40)}
    for name in rng.sample(sorted(handles), 10):
        if name != "a3":
            handles[name].cancel()
            expected.discard(name)
    await asyncio.wait_for(done.wait(), 10)
    assert sorted(name for _, _, name in fired) == sorted(expected)
    assert all(at >= when - resolution for when, at, _ in fired)
    first_round = [when for when, _, name in fired if name != "again"]
    assert first_round == sorted(first_round)
    assert fired.index(next(f for f in fired if f[2] == "again")) > fired.index(
        next(f for f in fired if f[2] == "a3")
    )
    assert not loop_timers(loop) and len(timers) == 0


async def test_callbacks_firing_together_send_in_one_batch() -> None:
    """What the callbacks of one firing send is held together (the server's batching
    transport: one ``sendmmsg``), and released even when a callback fails."""
    loop = asyncio.get_running_loop()
    timers = ConnectionTimers(loop)
    events: list[str] = []

    class Batch:
        held = 0

        def hold(self) -> None:
            self.held += 1
            events.append("hold")

        def release(self) -> None:
            self.held -= 1
            events.append("release")

    batch = Batch()
    timers.batch = batch
    done = loop.create_future()

    def send(name: str) -> None:
        events.append(f"{name} held={batch.held}")

    def fail() -> None:
        raise RuntimeError("a failing timer")

    now = loop.time()
    timers.call_at(now + 0.01, lambda: send("a"))
    timers.call_at(now + 0.01, fail)
    timers.call_at(now + 0.01, lambda: send("b"))
    timers.call_at(now + 0.05, lambda: done.set_result(None))
    loop.set_exception_handler(lambda loop, context: events.append("reported"))
    try:
        await asyncio.wait_for(done, 5)
    finally:
        loop.set_exception_handler(None)
    assert events[:6] == ["hold", "a held=1", "reported", "b held=1", "release", "hold"]
    assert batch.held == 0


async def test_a_failing_callback_is_reported_and_the_others_still_run() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    timers = ConnectionTimers(loop)
    ran: list[str] = []
    done = asyncio.Event()

    def fail() -> None:
        ran.append("fail")
        raise RuntimeError("boom")

    now = loop.time()
    timers.call_at(now, fail)
    timers.call_at(now, lambda: ran.append("next"))
    timers.call_at(now + 0.01, done.set)
    await asyncio.wait_for(done.wait(), 10)
    assert ran == ["fail", "next"]
    [context] = reported
    assert isinstance(context["exception"], RuntimeError)


@pytest.mark.parametrize("shared", [True, False])
async def test_a_silent_listener_s_loss_detection_fires(tmp_path: Path, shared: bool) -> None:
    """A listener that stops acknowledging: salond's probe time-out fires (on the shared
    timers, or on the connection's own loop timer) and declares the audio lost."""
    from tests.conftest import run_daemon
    from tests.test_fastpath import _room_with_listeners, _speaker_datagram

    async with run_daemon(tmp_path / "state", **{"tuning.shared_timers": shared}) as live:
        speaker, key, listeners = await _room_with_listeners(live, 2)
        deaf = listeners[0]
        deaf._protocol.datagram_received = lambda data, addr: None
        protocol: ServerProtocol = live.daemon.server.sessions[deaf.session]
        loss = protocol.quic._loss
        for seq in range(10):
            speaker.send_datagram(_speaker_datagram(key, seq))
            await asyncio.sleep(0.01)
        for _ in range(500):
            if loss._pto_count > 0:
                break
            await asyncio.sleep(0.02)
        assert loss._pto_count > 0
        assert isinstance(protocol._timer, ConnectionTimer) == shared
        assert (protocol.timers is not None) == shared
        if shared:
            loop = asyncio.get_running_loop()
            fires = [h for h in loop_timers(loop) if "ConnectionTimers._fire" in repr(h)]
            assert len(fires) == 1
