"""Room control between nodes: an edge's client requests to the home, the home's output back.

Each node listens on its own Redis channel ``salon:ctl:<node_id>``. A message is a msgspec
struct, sealed (AES-GCM with a key derived from the cluster secret: speaker keys travel in these
messages and never cross Redis in the clear), then signed and framed by the bus codec (tampered,
foreign and replayed messages are refused and counted there). Messages to one node leave in
order, batched: everything queued for that node in one event-loop turn is one bus message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio import Redis
from redis.exceptions import RedisError

from salon.daemon.cluster.bus import BusCodec, Kind
from salon.daemon.cluster.tasks import cancel_and_wait

log = logging.getLogger("salond.cluster")

CONTROL_CHANNEL = "salon:ctl:"
NONCE = 12
MAX_BATCH = 256
"""Control messages to one node sealed into one bus message at most."""


class Request(msgspec.Struct, tag="req", frozen=True):
    """Edge -> home: one control message of a client connected to the edge."""

    node: str
    session: int
    room: str
    user: str
    display_name: str
    verified: dict[str, str]
    operator: bool
    address: str
    payload: bytes
    on_behalf: bool = False
    """A join the edge makes for its client (rejoining after a failover): no reply to it."""


class Gone(msgspec.Struct, tag="gone", frozen=True):
    """Edge -> home: the client left the edge (or its request went elsewhere)."""

    node: str
    session: int


class Output(msgspec.Struct, tag="out", frozen=True):
    """Home -> edge: framed protocol messages for some of the edge's clients (an event to a
    room crosses once per edge, with the list of its clients that get it)."""

    room: str
    epoch: int
    sessions: list[int]
    framed: bytes


class Membership(msgspec.Struct, tag="member", frozen=True):
    """Home -> edge: the client is now a member of the room (``on``) or no longer is: the edge
    fans the room's media out to it only while it is."""

    room: str
    epoch: int
    session: int
    on: bool


class NotHome(msgspec.Struct, tag="nothome", frozen=True):
    """Home -> edge: this node is not the room's home (any more); ``framed`` is the error
    reply for the client, whose next join is routed afresh."""

    room: str
    session: int
    framed: bytes


class Act(msgspec.Struct, tag="act", frozen=True):
    """Node -> home: an operator's or a plugin's request on a room homed there (admin API,
    plugin API), performed there as that actor; answered by :class:`Acted`."""

    node: str
    ref: int
    room: str
    kind: str
    """``operator`` or ``plugin``."""
    user: str
    display_name: str
    verified: dict[str, str]
    operator: bool
    request: bytes
    """The request as a client would send it (``salon/1`` JSON)."""


class Acted(msgspec.Struct, tag="acted", frozen=True):
    """Home -> node: the outcome of an :class:`Act`: the result (JSON), or an error code."""

    ref: int
    result: bytes = b""
    code: str = ""
    message: str = ""


Message = Request | Gone | Output | Membership | NotHome | Act | Acted
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Message])


class Sealer:
    """AES-256-GCM with a key derived from the cluster secret (HKDF-SHA256)."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"salon cluster control"
        ).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, plain: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, plain, None)

    def open(self, sealed: bytes) -> bytes | None:
        if len(sealed) <= NONCE:
            return None
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], None)
        except InvalidTag:
            return None


class ControlBus:
    """Sends control messages to other nodes and hands those for this node to ``on_message``."""

    def __init__(
        self,
        redis: Redis,
        codec: BusCodec,
        secret: bytes,
        node_id: str,
        on_message: Callable[[Any], None],
    ) -> None:
        self._redis = redis
        self._codec = codec
        self._sealer = Sealer(secret)
        self.node_id = node_id
        self._on_message = on_message
        self._outbox: dict[str, list[Any]] = {}
        self._wake = asyncio.Event()
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.received = 0
        self.refused = 0
        """Messages whose seal or content was bad (the codec counts its own refusals)."""

    def send(self, node: str, message: Any) -> None:
        """Queue ``message`` for ``node``; messages to one node keep their order."""
        self._outbox.setdefault(node, []).append(message)
        self._wake.set()

    async def start(self) -> None:
        await self._pubsub.subscribe(CONTROL_CHANNEL + self.node_id)
        self._tasks = [
            asyncio.create_task(self._sender(), name="cluster-control-out"),
            asyncio.create_task(self._listener(), name="cluster-control-in"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self._pubsub.aclose()

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            outbox, self._outbox = self._outbox, {}
            now = int(time.time() * 1000)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for node, messages in outbox.items():
                        for start in range(0, len(messages), MAX_BATCH):
                            batch = messages[start : start + MAX_BATCH]
                            body = self._sealer.seal(_encoder.encode(batch))
                            pipe.publish(
                                CONTROL_CHANNEL + node, self._codec.encode(Kind.CONTROL, body, now)
                            )
                            self.sent += len(batch)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("cluster: control messages lost, Redis unavailable: %s", exc)

    async def _listener(self) -> None:
        while True:
            try:
                item = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("cluster: control subscription failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if item is not None and item.get("type") == "message":
                self.receive(item["data"])

    def receive(self, data: bytes) -> None:
        message = self._codec.decode(data, int(time.time() * 1000))
        if message is None:
            return
        if message.kind is not Kind.CONTROL:
            self.refused += 1
            return
        plain = self._sealer.open(message.body)
        if plain is None:
            self.refused += 1
            return
        try:
            batch = _decoder.decode(plain)
        except msgspec.DecodeError:
            self.refused += 1
            return
        for item in batch:
            self.received += 1
            try:
                self._on_message(item)
            except Exception:
                log.exception("cluster: handling a control message failed")
