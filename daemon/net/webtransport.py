"""WebTransport over HTTP/3 on salond's UDP port: the browser's way into ``salon/1``.

A connection that negotiates ALPN ``h3`` instead of ``salon/1`` gets a :class:`WebTransportGate`:
HTTP/3 with one WebTransport session at :data:`WEBTRANSPORT_PATH`. The session's first
bidirectional stream is the control stream (same framing) and its datagrams carry the same
``flow_id || SRTP`` payload, behind the HTTP/3 datagram's quarter stream id (PROTOCOL.md
section 15). Everything above the session protocol sees one kind of session.
"""

from __future__ import annotations

from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent

from salon.daemon.wire.varint import encode_varint
from salon.quic.h3 import SalonH3Connection

H3_ALPN = "h3"
WEBTRANSPORT_PATH = "/salon"
"""The path of the extended CONNECT request that opens a Salon WebTransport session."""


class WebTransportGate:
    """HTTP/3 on one connection, accepting a single WebTransport session at the Salon path."""

    def __init__(self, quic: QuicConnection) -> None:
        self.h3 = SalonH3Connection(quic, enable_webtransport=True)
        self.session_stream_id: int | None = None
        self.datagram_prefix = b""
        """The quarter stream id that starts every HTTP/3 datagram of the session."""
        self.refused = 0

    def handle(self, event: QuicEvent) -> list[H3Event]:
        return self.h3.handle_event(event)

    def on_request(self, event: HeadersReceived) -> bool:
        """Answer a request: accept the first WebTransport CONNECT to the Salon path."""
        headers = {name: value for name, value in event.headers}
        path = headers.get(b":path", b"").split(b"?", 1)[0]
        is_session = (
            headers.get(b":method") == b"CONNECT" and headers.get(b":protocol") == b"webtransport"
        )
        if not is_session or path != WEBTRANSPORT_PATH.encode():
            status = b"404"
        elif self.session_stream_id is not None:
            status = b"429"  # one session per connection
        else:
            self.session_stream_id = event.stream_id
            self.datagram_prefix = encode_varint(event.stream_id // 4)
            self.h3.send_headers(
                event.stream_id,
                [
                    (b":status", b"200"),
                    # Chrome accepts the session only with this (the draft it speaks).
                    (b"sec-webtransport-http3-draft", b"draft02"),
                ],
            )
            return True
        self.refused += 1
        self.h3.send_headers(event.stream_id, [(b":status", status)], end_stream=True)
        return False
