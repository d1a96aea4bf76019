"""WebTransport sessions (ALPN h3) are salon/1 sessions: a Python WebTransport client, no browser.

The client trusts only the short-lived web certificate, so the handshake also shows that h3
connections get that certificate while salon/1 clients keep the long-lived one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3 import events as h3
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from salon.daemon.tls import WEB_CERTIFICATE_FILE
from salon.daemon.wire import messages as msg
from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.daemon.wire.rtp import RtpPacket
from salon.quic.h3 import WT_MAX_SESSIONS
from tests.conftest import InProcessDaemon, SalondProcess, run_daemon, start_salond

GUEST_KEY = "d2VidHJhbnNwb3J0LXRlc3Qta2V5LTEyMzQ1Njc4"


class WebTransportClient(QuicConnectionProtocol):
    """A minimal WebTransport client on aioquic's public HTTP/3 API."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.connection = quic
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.control: int | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id == self.control:
            # aioquic's client side does not mark the WebTransport streams it opens, and would
            # parse the server's bytes as HTTP/3 frames: the control stream is read raw.
            self.events.put_nowait(event)
            return
        for http_event in self.h3.handle_event(event):
            self.events.put_nowait(http_event)

    async def next(self, kind: type, timeout: float = 10.0) -> Any:
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if isinstance(event, kind):
                return event

    def open_session(self, path: str) -> int:
        stream_id = self.connection.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
                (b":protocol", b"webtransport"),
            ],
        )
        self.transmit()
        return stream_id


def webtransport(running: InProcessDaemon) -> Any:
    configuration = QuicConfiguration(
        alpn_protocols=["h3"],
        is_client=True,
        max_datagram_frame_size=65536,
        server_name="localhost",
    )
    configuration.load_verify_locations(str(running.state_dir / "tls" / WEB_CERTIFICATE_FILE))
    return connect(
        running.host,
        running.port,
        configuration=configuration,
        create_protocol=WebTransportClient,
    )


@pytest.fixture
async def web_live(tmp_path: Path) -> AsyncIterator[InProcessDaemon]:
    async with run_daemon(tmp_path / "state", **{"http.enabled": True, "http.port": 0}) as live:
        yield live


async def test_a_webtransport_session_is_a_salon_session(web_live):
    async with webtransport(web_live) as client:
        session = client.open_session("/salon")
        reply = await client.next(h3.HeadersReceived)
        headers = dict(reply.headers)
        assert headers[b":status"] == b"200"
        assert headers[b"sec-webtransport-http3-draft"] == b"draft02"  # Chrome needs it
        assert client.h3.received_settings[WT_MAX_SESSIONS] == 1  # Safari needs it
        control = client.control = client.h3.create_webtransport_stream(session)
        reader = MessageReader()

        async def call(request: dict[str, Any]) -> dict[str, Any]:
            client.connection.send_stream_data(control, frame_message(json.dumps(request).encode()))
            client.transmit()
            while True:
                event = await client.next(StreamDataReceived)
                for payload in reader.feed(event.data):
                    message = json.loads(payload)
                    if message.get("re") == request["id"]:
                        return message
                    messages.append(message)

        messages: list[dict[str, Any]] = []
        hello = await call(
            {
                "type": "hello",
                "id": 1,
                "version": "salon/1",
                "display_name": "Web",
                "credentials": {"guest_key": GUEST_KEY},
            }
        )
        assert hello["type"] == "ok", hello
        room = await call({"type": "create_room", "id": 2, "title": "Both kinds", "room": "both"})
        assert room["type"] == "ok", room
        assert (await call({"type": "join", "id": 3, "room": "both"}))["type"] == "ok"
        assert (await call({"type": "unmute", "id": 4}))["type"] == "ok"
        own_key = next(
            key
            for message in messages
            if message["type"] == "room_state"
            for key in message["room"]["media_keys"]
        )

        # A salon/1 listener in the same room: the forwarder treats both alike.
        listener = await web_live.client("Native")
        await listener.join("both")
        heard: asyncio.Queue[bytes] = asyncio.Queue()
        listener.on_datagram = heard.put_nowait
        rtp = RtpPacket(
            payload_type=111,
            marker=True,
            sequence_number=1,
            timestamp=960,
            ssrc=own_key["ssrc"],
            extensions=[],
            payload=b"\x01" * 40,
        ).serialize()
        datagram = pack_datagram(own_key["flow_id"], rtp)
        client.h3.send_datagram(session, datagram)
        client.transmit()
        assert await asyncio.wait_for(heard.get(), 10) == datagram  # byte for byte

        # And back: the native client, invited on stage, speaks; the browser's side hears it.
        invite = {"type": "invite_to_speak", "id": 5, "user": listener.user}
        assert (await call(invite))["type"] == "ok"
        await listener.wait_for_event(msg.SpeakInvitation, timeout=10)
        await listener.call("accept_speak")
        native_key = (
            await listener.wait_for_event(
                msg.MediaKeyEvent, timeout=10, where=lambda e: e.key.user == listener.user
            )
        ).key
        await listener.call("unmute")
        rtp = RtpPacket(
            payload_type=111,
            marker=True,
            sequence_number=7,
            timestamp=960,
            ssrc=native_key.ssrc,
            extensions=[],
            payload=b"\x02" * 40,
        ).serialize()
        datagram = pack_datagram(native_key.flow_id, rtp)
        listener.send_datagram(datagram)
        received = await client.next(h3.DatagramReceived)
        assert received.stream_id == session and received.data == datagram


async def test_only_the_salon_path_opens_a_session(web_live):
    async with webtransport(web_live) as client:
        client.open_session("/elsewhere")
        reply = await client.next(h3.HeadersReceived)
        assert dict(reply.headers)[b":status"] == b"404"
        client.open_session("/salon")
        assert dict((await client.next(h3.HeadersReceived)).headers)[b":status"] == b"200"
        client.open_session("/salon")
        assert dict((await client.next(h3.HeadersReceived)).headers)[b":status"] == b"429"


async def test_the_page_learns_port_path_and_certificate_hash(web_live):
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    host, port = web_live.daemon.http.address
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}:{port}/api/webtransport") as response:
            info = await response.json()
        async with http.get(f"http://{host}:{port}/r/lobby") as response:
            assert response.status == 200
            assert "script-src" not in response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(f"http://{host}:{port}/web/app.js") as response:
            assert response.status == 200
            assert "javascript" in response.headers["Content-Type"]
        async with http.get(f"http://{host}:{port}/web/../../tls.py") as response:
            assert response.status == 404
        async with http.get(f"http://{host}:{port}/web/%2e%2e/endpoint.py") as response:
            assert response.status in (403, 404)
    assert info["port"] == web_live.port and info["path"] == "/salon"
    pem = (web_live.state_dir / "tls" / WEB_CERTIFICATE_FILE).read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert info["certificate_hashes"] == [base64.b64encode(hashlib.sha256(der).digest()).decode()]


async def test_demo_prints_the_link_that_opens_the_lobby(tmp_path):
    config = tmp_path / "salond.toml"
    config.write_text("[http]\nport = 0\n")
    daemon = start_salond(tmp_path / "state", "--demo", "--config", str(config))
    try:
        link = await asyncio.to_thread(wait_for_link, daemon)
        async with aiohttp.ClientSession() as http, http.get(link) as response:
            assert response.status == 200
            assert '<script type="module" src="/web/app.js">' in await response.text()
    finally:
        assert daemon.stop() == 0


def wait_for_link(daemon: SalondProcess) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = daemon.log_text()
        if "Or open it in a browser:" in text:
            match = re.search(r"Or open it in a browser:\s+(http://\S+/r/lobby)\n", text)
            assert match, text
            return match.group(1)
        time.sleep(0.1)
    raise AssertionError("no link in the demo's output:\n" + daemon.log_text())
