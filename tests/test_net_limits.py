"""Connection limits over real QUIC: ``limits.max_sessions`` and ``limits.hello_timeout``."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

from salon.daemon.metrics import MetricsEndpoint
from salon.daemon.net.session import CloseCode
from tests.conftest import run_daemon
from tests.test_abuse_network import hello, raw_client, send_requests, wait_until
from tests.test_metrics import samples, scrape


def census(live) -> dict[str, int]:
    """The per-connection structures the server holds (all must return to zero)."""
    server = live.daemon.server
    quic_server = server._quic_server
    return {
        "sessions": len(server.sessions),
        "workers": len(server._workers),
        "inboxes": len(server._inboxes),
        "quic_connections": len(set(quic_server._protocols.values())) if quic_server else 0,
    }


async def test_handshakes_beyond_max_sessions_are_refused_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="salon.net")
    overrides = {"limits.max_sessions": 2, "metrics.enabled": True, "metrics.port": 0}
    async with run_daemon(tmp_path / "state", **overrides) as live:
        first = await live.client("First")
        second = await live.client("Second")
        stats = live.daemon.server.stats
        refused = []
        for _ in range(3):
            async with raw_client(live) as raw:
                await wait_until(lambda raw=raw: raw.terminated is not None)
                refused.append(raw.terminated.error_code)
        assert refused == [CloseCode.SERVER_FULL] * 3
        assert stats.drops["max_sessions"] == 3
        assert len(live.daemon.server.sessions) == 2
        # The metrics endpoint shows them.
        [endpoint] = [c for c in live.daemon.components if isinstance(c, MetricsEndpoint)]
        _, body = await scrape(*endpoint.address)
        assert samples(body)[("salon_drops_total", (("reason", "max_sessions"),))] == 3
        assert samples(body)[("salon_connections_total", ())] == 2
        # Logged once, not once per refusal (rate-limited).
        lines = [r for r in caplog.records if "max_sessions" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        # The admitted clients are unaffected; a seat that frees up is taken again.
        assert await first.call("ping") == {}
        await second.close()
        await wait_until(lambda: len(live.daemon.server.sessions) == 1)
        third = await live.client("Third")
        assert await third.call("ping") == {}
        assert stats.drops["max_sessions"] == 3


async def test_connection_without_hello_is_closed_after_hello_timeout(tmp_path):
    async with run_daemon(tmp_path / "state", **{"limits.hello_timeout": 0.5}) as live:
        loop = asyncio.get_running_loop()
        async with raw_client(live) as raw:
            started = loop.time()
            await wait_until(lambda: raw.terminated is not None, timeout=10)
            waited = loop.time() - started
            assert raw.terminated.error_code == CloseCode.HELLO_TIMEOUT
            assert "0.5 s" in raw.terminated.reason_phrase
        # Closed by the timer, not by anything earlier.
        assert waited >= 0.5
        assert live.daemon.server.stats.drops["hello_timeout"] == 1
        await wait_until(lambda: census(live) == dict.fromkeys(census(live), 0))


async def test_hello_in_time_cancels_the_timer(tmp_path):
    async with run_daemon(tmp_path / "state", **{"limits.hello_timeout": 0.5}) as live:
        async with raw_client(live) as raw:
            send_requests(raw, hello("Prompt"))
            await wait_until(lambda: raw.stream_bytes > 0)
            (session,) = live.daemon.server.sessions.values()
            assert session.identity is not None and session.hello_timer is None
            await asyncio.sleep(1.0)  # twice the timeout: the connection must still be up
            assert raw.terminated is None
        assert live.daemon.server.stats.drops["hello_timeout"] == 0


async def test_closed_connections_without_hello_release_everything(tmp_path):
    """The hello-timer fix: a connection that closes before saying hello leaves nothing behind
    (its pending timer used to hold it for the whole timeout)."""
    async with run_daemon(tmp_path / "state", **{"limits.hello_timeout": 3600.0}) as live:
        protocols = []
        for _ in range(5):
            async with raw_client(live):
                await wait_until(lambda: len(live.daemon.server.sessions) == 1, timeout=60)
                protocols.append(weakref.ref(next(iter(live.daemon.server.sessions.values()))))
            await wait_until(lambda: not live.daemon.server.sessions, timeout=60)
        await wait_until(lambda: census(live) == dict.fromkeys(census(live), 0), timeout=60)
        # Long before the hour-long timer: the connections themselves are released (a pending
        # timer would hold each one until it fires). Not at once: the session's request worker
        # is cancelled when the connection closes and holds it until the event loop has run
        # that cancellation, a turn or more later on a busy machine.
        deadline = asyncio.get_running_loop().time() + 60
        while any(ref() is not None for ref in protocols):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
            gc.collect()
        assert [ref() for ref in protocols] == [None] * 5
        assert live.daemon.server.stats.drops["hello_timeout"] == 0


async def test_receive_only_connection_releases_its_sent_packets(live):
    """The ACK-only-packet fix: a connection that only receives datagrams answers them with
    ACK-only packets the peer never acknowledges; the server's periodic PING gets them
    acknowledged, so aioquic's record of sent packets stays bounded instead of growing by one
    per ACK for as long as the client talks."""
    from aioquic import tls

    from salon.quic.protocol import ACK_STATE_CHECK, ACK_STATE_LIMIT

    sender = await live.client("Sender")
    (session,) = live.daemon.server.sessions.values()
    space = session._quic._spaces[tls.Epoch.ONE_RTT]
    count = 2000
    largest = 0
    for start in range(0, count, 5):
        for index in range(start, start + 5):
            sender._quic.send_datagram_frame(b"\x01" + index.to_bytes(4, "big"))
        sender._protocol.transmit()
        await asyncio.sleep(0.005)
        largest = max(largest, len(space.sent_packets))
    await wait_until(lambda: session.datagrams_received == count)
    acks_sent = session._quic._packet_number
    # Without the PINGs every ACK-only packet would still be held (hundreds of them).
    assert acks_sent > 2 * (ACK_STATE_LIMIT + ACK_STATE_CHECK)
    assert largest <= ACK_STATE_LIMIT + ACK_STATE_CHECK, (largest, acks_sent)


async def test_salond_stops_a_recording_at_its_bound_and_says_why(tmp_path):
    from salon.daemon.admin.client import AdminClient
    from salon.daemon.wire import messages as msg

    overrides = {"limits.recording_max_duration": 1.0}
    async with run_daemon(tmp_path / "state", **overrides) as live:
        host = await live.client("Host")
        listener = await live.client("Listener")
        await host.create_room("Recorded", room="rec")
        await host.join("rec")
        await listener.join("rec")
        recording = (await host.call("start_recording"))["recording"]
        for member in (host, listener):
            stopped = await member.wait_for_event(msg.RecordingStopped, timeout=15)
            assert (stopped.recording, stopped.reason, stopped.by) == (recording, "limit", "")
        admin = await AdminClient.connect(live.daemon.config.admin_socket)
        entries: list = []
        try:
            for _ in range(200):  # the store commits on its own thread
                entries = [e for e in await admin.audit(room="rec") if e.actor == "salond"]
                if entries:
                    break
                await asyncio.sleep(0.05)
        finally:
            await admin.close()
        assert [e.action for e in entries] == ["stop_recording"]
        assert entries[0].detail["reason"] == "limit"
        assert "max duration" in entries[0].detail["why"]
        index = live.daemon.recordings.index
        found: list = []

        async def completed() -> bool:
            found[:] = [i for i in await index.recordings("rec") if i.status == "complete"]
            return bool(found)

        for _ in range(200):
            if await completed():
                break
            await asyncio.sleep(0.05)
        [info] = found
        assert info.id == recording and info.duration >= 1.0
