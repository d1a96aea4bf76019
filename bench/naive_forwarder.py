"""The naive aioquic forwarder the benchmarks compare salond against.

It is what one writes first with aioquic: when a DATAGRAM arrives, call
``send_datagram_frame`` and ``transmit`` on every other connection of the room. It speaks just
enough of ``salon/1`` for the bench clients (``hello`` and ``join`` get an ``ok``; every
connection that joined is in the one room) and checks nothing. It runs on the stock asyncio
event loop with aioquic's defaults, as salond's own QUIC configuration does.

Run: ``python bench/naive_forwarder.py --state-dir DIR`` (prints the address and fingerprint
lines salond prints, so the bench launches both the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from salon.daemon.tls import ensure_certificate
from salon.daemon.wire import messages as msg
from salon.daemon.wire.framing import MessageReader, frame_message


class Room:
    def __init__(self) -> None:
        self.members: list[NaiveProtocol] = []
        self.sessions = 0
        self.max_backlog = 0


class NaiveProtocol(QuicConnectionProtocol):
    room: Room

    def __init__(self, *args: Any, room: Room, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.room = room
        self.reader = MessageReader()
        room.sessions += 1
        self.session = room.sessions
        self.stream_id: int | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.DatagramFrameReceived):
            # The naive fan-out: queue and transmit, one connection after the other.
            data = event.data
            for member in self.room.members:
                if member is not self:
                    member._quic.send_datagram_frame(data)
                    member.transmit()
        elif isinstance(event, events.StreamDataReceived):
            self.stream_id = event.stream_id
            for payload in self.reader.feed(event.data):
                self._on_request(json.loads(payload))
        elif isinstance(event, events.ConnectionTerminated) and self in self.room.members:
            self.room.members.remove(self)

    def _on_request(self, request: dict[str, Any]) -> None:
        kind = request.get("type")
        result: dict[str, Any] = {}
        if kind == "hello":
            result = {"session": self.session, "user": f"user-{self.session}", "display_name": ""}
        elif kind == "join":
            if self not in self.room.members:
                self.room.members.append(self)
            result = {"status": "joined", "role": "listener"}
        assert self.stream_id is not None
        reply = msg.encode(msg.Ok(re=int(request.get("id", 0)), result=result))
        self._quic.send_stream_data(self.stream_id, frame_message(reply))
        self.transmit()


async def main_async(state_dir: Path, host: str, port: int) -> None:
    tls = ensure_certificate(state_dir / "tls", "localhost")
    configuration = QuicConfiguration(
        alpn_protocols=["salon/1"], is_client=False, max_datagram_frame_size=65536
    )
    configuration.load_cert_chain(str(tls.certificate), str(tls.private_key))
    room = Room()

    def create_protocol(*args: Any, **kwargs: Any) -> NaiveProtocol:
        return NaiveProtocol(*args, room=room, **kwargs)

    server = await serve(host, port, configuration=configuration, create_protocol=create_protocol)
    sockname = server._transport.get_extra_info("sockname")  # type: ignore[union-attr]
    print(f"naive forwarder listening on {sockname[0]}:{sockname[1]}", flush=True)
    print(f"certificate fingerprint {tls.fingerprint}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def watch_backlog() -> None:
        while True:
            await asyncio.sleep(0.5)
            for member in room.members:
                room.max_backlog = max(room.max_backlog, len(member._quic._datagrams_pending))

    watcher = asyncio.ensure_future(watch_backlog())
    await stop.wait()
    watcher.cancel()
    print(f"max datagram backlog {room.max_backlog}", flush=True)
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.state_dir, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
