"""Bad input over the network against a real salond, while a room keeps talking.

Each test opens a live room (an owner, a speaker playing a real 440 Hz tone through
``RoomAudio``, a listener whose decoded audio is measured), then misbehaves from other
connections: garbage and spoofed datagrams, malformed or oversized control messages, requests
out of order, floods, a client that stops reading. Every bad input must get a clear error or be
dropped and counted (``server.stats`` / ``core.forwarder.drops``), the listener must keep
hearing the tone, and the daemon must keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration

from salon.client.connection import RequestError, SalonClient
from salon.daemon.net import session as net_session
from salon.daemon.wire import messages as msg
from salon.daemon.wire.framing import frame_message
from salon.daemon.wire.varint import encode_varint
from tests.conftest import run_daemon
from tests.test_core_support import media_datagram
from tests.test_reliability_support import live_room, record, scaled

pytestmark = pytest.mark.soak

GUEST = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def still_serving(live: Any) -> None:
    """A new client connects, authenticates and gets an answer: the daemon is up."""
    fresh = await live.client("Fresh")
    assert await fresh.call("ping") == {}
    assert [r["room"] for r in await fresh.list_rooms()]
    await fresh.close()


class RawProtocol(QuicConnectionProtocol):
    """A bare aioquic client: records what arrives and does nothing else with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_bytes = 0
        self.terminated: quic_events.ConnectionTerminated | None = None

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.StreamDataReceived):
            self.stream_bytes += len(event.data)
        elif isinstance(event, quic_events.ConnectionTerminated):
            self.terminated = event


@contextlib.asynccontextmanager
async def raw_client(live: Any, **configuration: Any) -> AsyncIterator[RawProtocol]:
    config = QuicConfiguration(
        alpn_protocols=["salon/1"], is_client=True, max_datagram_frame_size=65536, **configuration
    )
    # These tests attack the server, not the other way round: the pin is tested elsewhere.
    config.verify_mode = ssl.CERT_NONE
    async with quic_connect(
        live.host, live.port, configuration=config, create_protocol=RawProtocol
    ) as protocol:
        assert isinstance(protocol, RawProtocol)
        yield protocol


def send_requests(protocol: RawProtocol, *payloads: bytes) -> None:
    quic = protocol._quic
    stream = 0  # the client's first bidirectional stream
    for payload in payloads:
        quic.send_stream_data(stream, frame_message(payload))
    protocol.transmit()


def hello(name: str, request_id: int = 1, key: str = GUEST) -> bytes:
    return msg.encode(
        msg.Hello(
            id=request_id, version="salon/1", display_name=name, credentials={"guest_key": key}
        )
    )


def server_session(live: Any, display_name: str) -> Any:
    for protocol in live.daemon.server.sessions.values():
        if protocol.identity is not None and protocol.identity.display_name == display_name:
            return protocol
    raise AssertionError(f"no session named {display_name}")


def drops(live: Any) -> dict[str, int]:
    """Every drop counter, the network layer's and the forwarder's."""
    return dict(live.daemon.server.stats.snapshot(live.daemon.core.forwarder)["drops"])


async def send_paced(client: SalonClient, datagrams: list[bytes], per_tick: int = 50) -> None:
    """Send datagrams in small batches so aioquic's congestion control keeps up."""
    for start in range(0, len(datagrams), per_tick):
        for data in datagrams[start : start + per_tick]:
            client._quic.send_datagram_frame(data)
        client._protocol.transmit()
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- datagrams


async def test_random_datagrams_are_dropped_and_counted(live):
    count = scaled(600, 6000)
    rng = random.Random(1)
    async with live_room(live) as room:
        attacker = await live.client("Attacker")
        await attacker.join(room.room)
        forwarder = live.daemon.core.forwarder
        received_before = forwarder.received
        before = drops(live)
        garbage = [rng.randbytes(rng.randint(1, 1100)) for _ in range(count)]
        speaker_flows = {f.flow_id for f in forwarder.flows.values()}
        # A random datagram can only pass by naming the speaker's flow, which the forwarder
        # then refuses as wrong_sender: nothing the attacker sends is forwarded.
        await send_paced(attacker, garbage)
        # The speaker's own datagrams keep arriving too, so wait for the attacker's share.
        await wait_until(lambda: forwarder.received - received_before >= count, 20)
        await wait_until(lambda: sum(drops(live).values()) - sum(before.values()) >= count, 20)
        after = drops(live)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v}
        assert sum(delta.values()) == count, delta
        assert set(delta) <= {"malformed", "unknown_flow", "wrong_sender", "too_large"}, delta
        heard = await room.assert_audio_flows(1.0, minimum=10)
        # The listener never received a byte of the garbage.
        assert room.listener_audio.receiver.stats.drops["malformed"] == 0
        assert room.listener_audio.receiver.stats.drops["unknown_flow"] == 0
        record(
            "random_datagrams",
            sent=count,
            dropped=delta,
            speaker_flows=len(speaker_flows),
            listener_loud_frames_per_s=heard,
        )
        await still_serving(live)


async def test_datagrams_before_hello_are_dropped(live):
    count = scaled(200, 2000)
    async with live_room(live) as room, raw_client(live) as raw:
        before = live.daemon.server.stats.drops["not_authenticated"]
        flow = next(iter(live.daemon.core.forwarder.flows.values()))
        for index in range(count):
            raw._quic.send_datagram_frame(media_datagram(flow.flow_id, flow.ssrc, 10, index))
            if index % 50 == 49:
                raw.transmit()
                await asyncio.sleep(0.01)
        raw.transmit()
        stats = live.daemon.server.stats
        await wait_until(lambda: stats.drops["not_authenticated"] - before >= count)
        assert stats.drops["not_authenticated"] - before == count
        await room.assert_audio_flows(1.0, minimum=10)
        record("datagrams_before_hello", sent=count, dropped_not_authenticated=count)


async def test_oversize_datagrams_are_dropped_as_too_large(live):
    count = scaled(200, 2000)
    async with live_room(live) as room:
        attacker = await live.client("Attacker")
        invite = (await room.owner.call("create_invite", role="speaker"))["invite"]["token"]
        await attacker.join(room.room, invite=invite)
        await attacker.call("unmute")
        flow = live.daemon.core.rooms[room.room].members[attacker.user].flow
        forwarder = live.daemon.core.forwarder
        before = forwarder.drops["too_large"]
        # 1101..1150 bytes: over the 1100-byte limit, still inside one QUIC packet.
        oversize = [
            media_datagram(flow.flow_id, flow.ssrc, 5, i, payload=b"\x01" * 1200)[: 1101 + i % 50]
            for i in range(count)
        ]
        await send_paced(attacker, oversize)
        await wait_until(lambda: forwarder.drops["too_large"] - before >= count)
        assert forwarder.drops["too_large"] - before == count
        await room.assert_audio_flows(1.0, minimum=10)
        record("oversize_datagrams", sent=count, dropped_too_large=count)


async def test_unknown_flow_ids_are_dropped(live):
    count = scaled(300, 3000)
    async with live_room(live) as room:
        attacker = await live.client("Attacker")
        await attacker.join(room.room)
        forwarder = live.daemon.core.forwarder
        known = set(forwarder.flows)
        rng = random.Random(2)
        flows = [rng.choice([rng.randrange(64), rng.randrange(1 << 14), rng.randrange(1 << 30)])]
        datagrams = []
        for index in range(count):
            flow_id = rng.randrange(1 << 30)
            while flow_id in known:
                flow_id = rng.randrange(1 << 30)
            flows.append(flow_id)
            datagrams.append(media_datagram(flow_id, rng.randrange(1 << 32), 3, index))
        before = forwarder.drops["unknown_flow"]
        await send_paced(attacker, datagrams)
        await wait_until(lambda: forwarder.drops["unknown_flow"] - before >= count)
        assert forwarder.drops["unknown_flow"] - before == count
        await room.assert_audio_flows(1.0, minimum=10)
        record("unknown_flow_ids", sent=count, dropped_unknown_flow=count)


async def test_spoofing_another_speakers_flow_or_ssrc_is_dropped(live):
    count = scaled(200, 2000)
    async with live_room(live) as room:
        # A listener who learned the speaker's flow, SSRC and key from its room_state.
        listener = await live.client("Spoofer")
        await listener.join(room.room)
        state = await listener.wait_for_event(msg.RoomState)
        target = next(k for k in state.room.media_keys if k.user == room.speaker.user)
        # A second speaker who puts the first speaker's SSRC on its own flow.
        invite = (await room.owner.call("create_invite", role="speaker"))["invite"]["token"]
        rogue = await live.client("Rogue")
        await rogue.join(room.room, invite=invite)
        await rogue.call("unmute")
        own = live.daemon.core.rooms[room.room].members[rogue.user].flow
        forwarder = live.daemon.core.forwarder
        before = dict(forwarder.drops)
        loud_before = room.probe.loud
        await send_paced(
            listener, [media_datagram(target.flow_id, target.ssrc, 0, i) for i in range(count)]
        )
        await send_paced(
            rogue, [media_datagram(own.flow_id, target.ssrc, 0, i) for i in range(count)]
        )
        await wait_until(
            lambda: (
                forwarder.drops["wrong_sender"] - before.get("wrong_sender", 0) >= count
                and forwarder.drops["ssrc_mismatch"] - before.get("ssrc_mismatch", 0) >= count
            )
        )
        assert forwarder.drops["wrong_sender"] - before.get("wrong_sender", 0) == count
        assert forwarder.drops["ssrc_mismatch"] - before.get("ssrc_mismatch", 0) == count
        await room.assert_audio_flows(1.0, minimum=10)
        # The real listener's SRTP never saw a spoofed packet (none failed authentication).
        assert room.listener_audio.receiver.stats.drops["auth_failed"] == 0
        assert room.probe.loud > loud_before
        record(
            "spoofed_flow_and_ssrc",
            sent_on_foreign_flow=count,
            dropped_wrong_sender=count,
            sent_with_foreign_ssrc=count,
            dropped_ssrc_mismatch=count,
        )


async def test_listener_and_muted_speaker_datagrams_are_dropped(live):
    count = scaled(100, 1000)
    async with live_room(live) as room:
        invite = (await room.owner.call("create_invite", role="speaker"))["invite"]["token"]
        muted = await live.client("Muted")
        await muted.join(room.room, invite=invite)
        flow = live.daemon.core.rooms[room.room].members[muted.user].flow
        forwarder = live.daemon.core.forwarder
        before = dict(forwarder.drops)
        await send_paced(
            muted, [media_datagram(flow.flow_id, flow.ssrc, 0, i) for i in range(count)]
        )
        await wait_until(lambda: forwarder.drops["muted"] - before.get("muted", 0) >= count)
        # Moved back to the audience: its old flow is retired.
        await room.owner.call("move_to_audience", user=muted.user)
        await send_paced(
            muted, [media_datagram(flow.flow_id, flow.ssrc, 0, i) for i in range(count)]
        )
        await wait_until(
            lambda: forwarder.drops["not_speaker"] - before.get("not_speaker", 0) >= count
        )
        assert forwarder.drops["muted"] - before.get("muted", 0) == count
        assert forwarder.drops["not_speaker"] - before.get("not_speaker", 0) == count
        await room.assert_audio_flows(1.0, minimum=10)
        record("muted_and_retired_flows", sent_muted=count, sent_retired=count)


# --------------------------------------------------------------------------- control stream


MALFORMED = [
    (b"\xff\xfe not json", None, "bad_message"),
    (b"[1, 2, 3]", None, "bad_message"),
    (b'"just a string"', None, "bad_message"),
    (b"{}", None, "bad_message"),
    (b'{"type": "join", "id": 3, "room": 5}', 3, "bad_message"),
    (b'{"type": "join", "id": 4}', 4, "bad_message"),
    (b'{"type": "fly", "id": 5}', 5, "unknown_type"),
    (b'{"type": 7, "id": 6}', 6, "bad_message"),
    (b'{"type": "ping", "id": 18446744073709551616}', None, "bad_message"),
    (b'{"type": "ping", "id": -1}', None, "bad_message"),
    (b'{"type": "ping", "id": "7"}', None, "bad_message"),
    (b'{"type": "create_room", "id": 8, "title": "' + b"t" * 300 + b'"}', 8, "invalid_value"),
    (b'{"type": "create_room", "id": 9, "title": "x", "room": "Not A Slug"}', 9, "invalid_value"),
    (
        b'{"type": "list_rooms", "id": 10, "topic": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        None,
        "bad_message",
    ),
    (b'{"type": "leave", "id": 12}', 12, "not_in_room"),
    (b'{"type": "mute", "id": 13}', 13, "not_in_room"),
    (b'{"type": "cancel_knock", "id": 14}', 14, "no_knock"),
    (b'{"type": "join", "id": 15, "room": "no-such-room"}', 15, "room_not_found"),
    (
        b'{"type": "hello", "id": 16, "version": "salon/1", "display_name": "x"}',
        16,
        "already_authenticated",
    ),
]


async def test_malformed_control_messages_get_precise_errors(live):
    rounds = scaled(3, 30)
    async with live_room(live) as room:
        attacker = await live.client("Attacker")
        stats = live.daemon.server.stats
        errors_before = sum(stats.errors.values())
        answered = 0
        for _ in range(rounds):
            for payload, request_id, code in MALFORMED:
                attacker.send_raw(payload)
                error = await attacker.wait_for_event(msg.Error, timeout=5)
                assert (error.re, error.code) == (request_id, code), (payload[:60], error)
                answered += 1
            # Stay under the message rate: this test is about content, not volume.
            await asyncio.sleep(0.5)
        assert sum(stats.errors.values()) - errors_before == answered
        assert await attacker.call("ping") == {}
        await room.assert_audio_flows(1.0, minimum=10)
        record(
            "malformed_control_messages",
            kinds=len(MALFORMED),
            sent=rounds * len(MALFORMED),
            error_replies=answered,
            errors_by_code=dict(stats.errors),
        )


async def test_random_control_payloads_never_break_a_session(live):
    count = scaled(150, 1500)
    rng = random.Random(3)
    async with live_room(live) as room:
        attacker = await live.client("Attacker")
        stats = live.daemon.server.stats
        before = sum(stats.errors.values())
        pieces = [
            b"{",
            b"}",
            b'"type"',
            b":",
            b'"join"',
            b",",
            b'"id"',
            b"1",
            b"null",
            b"[",
            b"]",
            b'"room"',
            b'"stage"',
            b"\xff",
            b"\x00",
            b"true",
            b"-",
            b"1e999",
            b'"\\u0000"',
        ]
        attacker.drain_events()
        messages_before = stats.messages_in
        index = 0
        while index < count:
            if index % 2:
                payload = rng.randbytes(rng.randint(0, 300))
            else:
                payload = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
            try:
                msg.decode_request(payload)
            except msg.MessageError:
                pass
            else:
                continue  # a valid request by chance: not what this test sends
            attacker.send_raw(payload)
            index += 1
            if index % 40 == 0:
                await asyncio.sleep(1.0)  # below 50 messages per second
        # Every payload (none is a valid request) got exactly one error reply: counted by the
        # server, and arrived at the client.
        await wait_until(lambda: stats.messages_in - messages_before >= count, 10)
        await wait_until(lambda: sum(stats.errors.values()) - before >= count, 10)
        replies: list[msg.Error] = []
        await wait_until(
            lambda: (
                replies.extend(e for e in attacker.drain_events() if isinstance(e, msg.Error))
                or len(replies) >= count
            ),
            10,
        )
        assert await attacker.call("ping") == {}
        errors = sum(stats.errors.values()) - before
        assert errors == count and len(replies) == count
        assert "internal_error" not in stats.errors and "rate_limited" not in stats.errors
        await room.assert_audio_flows(1.0, minimum=10)
        record("random_control_payloads", sent=count, error_replies=errors)


async def test_requests_before_hello_are_refused(live):
    async with live_room(live) as room, raw_client(live) as raw:
        stats = live.daemon.server.stats
        before = stats.errors["not_authenticated"]
        send_requests(
            raw,
            b'{"type": "join", "id": 1, "room": "stage"}',
            b'{"type": "create_room", "id": 2, "title": "x"}',
            b'{"type": "ping", "id": 3}',
        )
        await wait_until(lambda: stats.errors["not_authenticated"] - before == 3)
        # The session then authenticates normally.
        send_requests(raw, hello("Late"))
        await wait_until(
            lambda: any(
                p.identity is not None and p.identity.display_name == "Late"
                for p in live.daemon.server.sessions.values()
            )
        )
        assert live.daemon.core.session_room(server_session(live, "Late").session_id) is None
        await room.assert_audio_flows(1.0, minimum=10)
        record("requests_before_hello", sent=3, refused_not_authenticated=3)


async def test_oversized_and_unknown_streams(live):
    async with live_room(live) as room:
        stats = live.daemon.server.stats
        # A length prefix over 64 KiB closes that connection at once (protocol_violation).
        big = await live.client("Big")
        big.send_raw_stream_bytes(encode_varint(65537) + b"{")
        await asyncio.wait_for(big.wait_closed(), 5)
        assert big.close_code == 0x1
        # A message of exactly 64 KiB is read and answered (unknown fields are ignored).
        exact = await live.client("Exact")
        head, tail = b'{"type": "ping", "id": 424242, "pad": "', b'"}'
        body = head + b"p" * (65536 - len(head) - len(tail)) + tail
        assert len(body) == 65536
        # Its own reply, by id: the room's members send receiver reports meanwhile, so the
        # server-wide message count cannot say which message was answered.
        answered = asyncio.get_running_loop().create_future()
        exact._pending[424242] = answered
        exact.send_raw(body)
        assert await asyncio.wait_for(answered, 5) == {}
        assert not exact.drain_events()  # no error: unknown fields are ignored
        # Another stream than the control stream: ignored and counted.
        extra_before = stats.drops["extra_stream"]
        other = exact._quic.get_next_available_stream_id()
        exact._quic.send_stream_data(other, frame_message(b'{"type": "ping", "id": 99}'))
        exact._protocol.transmit()
        await wait_until(lambda: stats.drops["extra_stream"] > extra_before)
        assert await exact.call("ping") == {}
        # A unidirectional stream first: protocol_violation.
        async with raw_client(live) as raw:
            stream = raw._quic.get_next_available_stream_id(is_unidirectional=True)
            raw._quic.send_stream_data(stream, frame_message(hello("Uni")))
            raw.transmit()
            await wait_until(lambda: raw.terminated is not None)
            assert raw.terminated.error_code == 0x1
        await room.assert_audio_flows(1.0, minimum=10)
        assert stats.drops["control_framing"] >= 1
        record("oversized_and_stray_streams", oversized_frames=1, stray_streams=2)


async def test_message_flood_is_rate_limited_then_closed(live):
    async with live_room(live) as room:
        flooder = await live.client("Flooder")
        stats = live.daemon.server.stats
        before = stats.drops["rate_limited"]
        sent = 400
        for index in range(sent):
            flooder.send_raw(b'{"type": "ping", "id": %d}' % (index + 1000))
        await asyncio.wait_for(flooder.wait_closed(), 10)
        assert flooder.close_code == 0x5
        limited = stats.drops["rate_limited"] - before
        assert limited >= 5
        await room.assert_audio_flows(1.0, minimum=10)
        await still_serving(live)
        record("control_flood", sent=sent, rate_limited=limited, closed_with="rate_abuse 0x5")


# --------------------------------------------------------------------------- stalled readers


async def test_client_that_stops_transmitting_is_reclaimed(tmp_path):
    """A client that goes silent (no ACKs, nothing) is dropped by the idle timeout."""
    async with run_daemon(tmp_path / "state", **{"server.idle_timeout": 2.0}) as live:  # noqa: SIM117
        async with live_room(live) as room, raw_client(live) as raw:
            send_requests(raw, hello("Silent"), b'{"type": "join", "id": 2, "room": "stage"}')
            await wait_until(lambda: raw.stream_bytes > 0)
            silent = server_session(live, "Silent")
            await wait_until(lambda: live.daemon.core.session_room(silent.session_id) == "stage")
            # From now on no packet of the client reaches the wire: no ACKs, nothing. (Its
            # socket drops them; replacing ``transmit`` instead would also stop aioquic's timers,
            # and the client's own close at the end of the test would then wait forever.)
            assert raw._transport is not None
            raw._transport.sendto = lambda *args: None  # type: ignore[method-assign]
            left = await room.owner.wait_for_event(
                msg.ParticipantLeft, timeout=15, where=lambda e: e.reason == "disconnected"
            )
            assert left.user == silent.identity.user
            assert silent.session_id not in live.daemon.server.sessions
            await room.assert_audio_flows(1.0, minimum=10)
            record("silent_client", reclaimed_after_idle_timeout_s=2.0)


async def test_client_that_never_reads_its_control_stream_is_closed(live, monkeypatch):
    """A client that ACKs packets (so the connection stays alive, audio included) but never
    grants credit on its control stream must not make the server buffer events forever."""
    monkeypatch.setattr(net_session, "MAX_CONTROL_BACKLOG", 64 * 1024)
    async with (
        live_room(live) as room,
        raw_client(live, max_stream_data=2048, max_data=4096) as raw,
    ):
        # Never raise the flow-control limits: the server can send 2 KiB and no more.
        raw._quic._write_stream_limits = lambda *a, **k: None  # type: ignore[method-assign]
        raw._quic._write_connection_limits = lambda *a, **k: None  # type: ignore[method-assign]
        send_requests(raw, hello("Deaf"), b'{"type": "join", "id": 2, "room": "stage"}')
        await wait_until(lambda: raw.stream_bytes > 0)
        deaf = server_session(live, "Deaf")
        await wait_until(lambda: live.daemon.core.session_room(deaf.session_id) == "stage")
        server = live.daemon.server
        sent = 0
        # Room events the deaf client should read (each about 1 KiB).
        event = msg.RoomClosed(room="x" * 1000, reason="flood")
        while not deaf.closed and sent < 1000:
            server.deliver((deaf.session_id,), event)
            sent += 1
            if sent % 10 == 0:
                await asyncio.sleep(0.005)
        assert deaf.closed, "the server kept buffering for a client that does not read"
        await wait_until(lambda: raw.terminated is not None)
        assert raw.terminated.error_code == net_session.CloseCode.CONTROL_BACKLOG
        assert server.stats.drops["control_backlog"] == 1
        left = await room.owner.wait_for_event(
            msg.ParticipantLeft, timeout=5, where=lambda e: e.reason == "disconnected"
        )
        assert left.user == deaf.identity.user
        await room.assert_audio_flows(1.0, minimum=10)
        record("unread_control_stream", events_before_close=sent, backlog_limit=64 * 1024)


# --------------------------------------------------------------------------- knocks


async def test_a_thousand_knocks_per_second_are_rate_limited(live):
    attackers_count = 25
    per_attacker = scaled(40, 40)
    rounds = scaled(1, 5)
    async with live_room(live) as room:
        host = await live.client("Doorkeeper")
        await host.create_room("Door", room="door", policy="approval")
        await host.join("door")
        attackers = [await live.client(f"Knocker {i}") for i in range(attackers_count)]
        stats = live.daemon.server.stats
        knocks_seen = 0
        limited_before = stats.errors["rate_limited"]
        accepted = 0
        refused_knocks: list[RequestError] = []
        elapsed_total = 0.0
        loop = asyncio.get_running_loop()
        for _ in range(rounds):
            started = loop.time()

            async def knock_many(client: SalonClient) -> int:
                # Pipelined: join, cancel_knock, join, ... sent at once, answered in order.
                calls = []
                for _ in range(per_attacker):
                    calls.append(client.call("join", room="door"))
                    calls.append(client.call("cancel_knock"))
                results = await asyncio.gather(*calls, return_exceptions=True)
                ok = 0
                for result in results[::2]:
                    if isinstance(result, RequestError):
                        assert result.code == "rate_limited", result
                        refused_knocks.append(result)
                    else:
                        assert not isinstance(result, BaseException), result
                        assert result["status"] == "knocking"
                        ok += 1
                for result in results[1::2]:
                    assert not isinstance(result, RequestError) or result.code == "no_knock"
                return ok

            accepted += sum(await asyncio.gather(*(knock_many(a) for a in attackers)))
            elapsed_total += loop.time() - started
            await asyncio.sleep(1.0)  # the attackers' message buckets refill
        for event in host.drain_events():
            if isinstance(event, msg.Knock):
                knocks_seen += 1
        limited = stats.errors["rate_limited"] - limited_before
        attempts = attackers_count * per_attacker * rounds
        knock_rate = live.daemon.config.limits.knock_rate
        # Every knock got exactly one answer: admitted to the queue or rate_limited. The server's
        # counter must include them all (it also counts other members' refusals, such as a
        # listener's receiver report sent early, so it may only be higher).
        assert accepted + len(refused_knocks) == attempts
        assert limited >= len(refused_knocks)
        # Hosts see at most the configured rate (with its burst), not the flood.
        assert accepted <= knock_rate * (elapsed_total + rounds) + knock_rate * rounds
        # ... and at least what the limit lets through: each round starts with a bucket of at
        # least a second's worth (the burst is a second's worth too), so the flood is limited,
        # not refused outright.
        assert accepted >= int(knock_rate) * rounds, (accepted, rounds)
        assert knocks_seen == accepted
        await room.assert_audio_flows(1.0, minimum=10)
        await still_serving(live)
        # Closed together: the fixture would close them one after the other.
        await asyncio.gather(*(a.close() for a in attackers))
        record(
            "knock_flood",
            attempts=attempts,
            seconds=round(elapsed_total, 2),
            attempts_per_second=round(attempts / elapsed_total),
            accepted=accepted,
            rate_limited=limited,
            knock_rate=knock_rate,
        )
