"""A client that stays connected: reconnects with backoff and rejoins its room with its role.

    session = ReconnectingClient(lambda: SalonClient.connect(host, port, display_name="Ada",
                                                             fingerprint=pin, idle_timeout=10))
    await session.start()
    await session.join("lobby", invite=speaker_link)
    ...                      # session.client is the connection of the moment
    await session.close()

After an unexpected loss (a network drop noticed by the QUIC idle timeout, a daemon restart
announced by ``server_shutdown``, a crash) it waits, connects again and sends ``join`` for the
room it was in, following PROTOCOL.md 9.2 and 7: increasing delays with random jitter (1, 2,
4... seconds up to ``maximum``), at least ``reconnect_after`` after a ``server_shutdown`` (capped
by ``maximum`` too), no automatic reconnection after ``protocol_violation`` or ``rate_abuse``.

Roles come back as far as the room allows: an owner or moderator gets the role from the room's
records, a speaker who joined with a speaker invite uses that invite again (as a listener if the
invite no longer works), an approved knocker re-enters an approval room without knocking. A
room that is gone leaves the client connected and outside any room (``rejoin_error`` says why).
Keepalive pings make a dead path visible within the idle timeout even in a silent room.

In a cluster (PROTOCOL.md 17) the server's ``hello`` lists other nodes of the cluster; given
``connect_node``, a lost connection is replaced by one to those nodes first (in random order, so
that the clients of a dead node spread over the others), then to the lost node, then the usual
way. The room's home gives the client its role back wherever it rejoins. A dead node is noticed
sooner than the idle timeout with ``probe_after`` and ``answer_within``: when datagrams stop
arriving the client pings at once, and a ping left unanswered that long counts as a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from salon.client.connection import (
    ConnectionLost,
    Redirect,
    RequestError,
    SalonClient,
    ServerVerificationError,
)
from salon.daemon.wire import messages as msg

log = logging.getLogger("salon.client.reconnect")

# Close codes after which reconnecting would only repeat the close (PROTOCOL.md 9.2).
FINAL_CLOSE_CODES = frozenset({0x1, 0x5})
# Join errors of an invite that no longer works; the client then joins without it.
INVITE_ERRORS = frozenset({"invite_invalid", "stage_full"})


@dataclass
class Backoff:
    """Delays between attempts: ``initial`` doubling up to ``maximum``, each with up to
    ``jitter`` (a fraction) added at random so that clients do not come back all at once."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """The wait before attempt number ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.factor**attempt)
        return min(self.maximum, base * (1.0 + self.jitter * self.rng.random()))


@dataclass
class Outage:
    """One loss of connection and how it ended."""

    reason: str
    attempts: int = 0
    seconds: float = 0.0
    """From noticing the loss to being connected (and back in the room) again."""
    reconnected: bool = False
    rejoined: str | None = None
    """The join status after reconnecting (``joined``, ``knocking``), None if not rejoined."""


class ReconnectingClient:
    """Owns the current :class:`SalonClient` and replaces it when the connection is lost."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[SalonClient]],
        *,
        backoff: Backoff | None = None,
        keepalive: float | None = 5.0,
        on_connected: Callable[[SalonClient], Any] | None = None,
        on_retry: Callable[[Outage, float], Any] | None = None,
        on_reconnected: Callable[[Outage], Any] | None = None,
        reconnect: bool = True,
        connect_node: Callable[[Redirect], Awaitable[SalonClient]] | None = None,
        probe_after: float | None = None,
        answer_within: float | None = None,
    ) -> None:
        self._connect = connect
        self.connect_node = connect_node
        """Connects to one of the nodes a server listed (pinning its fingerprint); None: a
        lost connection is replaced the usual way only."""
        self.probe_after = probe_after
        """Seconds without a datagram, after datagrams were arriving, before a ping is sent at
        once (None: only the keepalive's)."""
        self.answer_within = answer_within
        """Seconds a ping may go unanswered before the connection counts as lost (None: a
        silent connection is lost only at the QUIC idle timeout)."""
        self.backoff = backoff or Backoff()
        self.keepalive = keepalive
        self.on_connected = on_connected
        """Called with each new connection before it rejoins (e.g. to attach a ``RoomAudio``,
        which must see the ``room_state`` of the join)."""
        self.on_retry = on_retry
        """Called before each wait of an outage with the outage and the seconds to wait."""
        self.on_reconnected = on_reconnected
        """Called once a lost connection is replaced (and the room rejoined, if it could be)."""
        self.reconnect = reconnect
        """False: only watch the connection; a loss sets ``stopped_reason``."""
        self.client: SalonClient | None = None
        self.room: str | None = None
        self.invite: str | None = None
        self.outages: list[Outage] = []
        self.rejoin_error: RequestError | None = None
        self.stopped_reason = ""
        """Why the client gave up reconnecting ("" while it has not)."""
        self._shutdown_after: float | None = None
        self._unanswered = ""
        """Why the watched connection was given up for lost by this client ("": it was not)."""
        self._closing = False
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public API

    async def start(self) -> SalonClient:
        """Connect for the first time (errors propagate) and start watching the connection."""
        client = await self._connect()
        self._adopt(client)
        self._task = asyncio.ensure_future(self._supervise())
        return client

    async def join(self, room: str, invite: str | None = None) -> dict[str, Any]:
        """Join ``room`` and remember it (and the invite) for rejoining after a reconnect."""
        result = await self._current().join(room, invite=invite)
        self.room, self.invite = room, invite
        self.rejoin_error = None
        return result

    async def leave(self) -> None:
        self.room, self.invite = None, None
        await self._current().leave()

    async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
        return await self._current().call(type_, **fields)

    async def wait_connected(self, timeout: float | None = None) -> SalonClient:
        """The connection, once there is one (after a reconnect: once it has rejoined)."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        return self._current()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """How many times a lost connection was replaced."""
        return sum(1 for outage in self.outages if outage.reconnected)

    async def close(self, timeout: float = 3.0) -> None:
        """Stop reconnecting and close the connection (waiting at most ``timeout`` seconds)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.client is not None:
            await self.client.close(timeout)
        self._connected.clear()

    # ------------------------------------------------------------------ supervision

    def _current(self) -> SalonClient:
        if self.client is None or not self._connected.is_set():
            raise ConnectionLost("not connected (reconnecting)")
        return self.client

    def _adopt(self, client: SalonClient) -> None:
        self.client = client
        client.add_listener(self._on_event)
        self._shutdown_after = None
        self._connected.set()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, msg.ServerShutdown):
            self._shutdown_after = event.reconnect_after
        elif isinstance(event, (msg.RoomClosed, msg.Removed)):
            # Not a loss of connection: the room is over for this client.
            self.room, self.invite = None, None

    async def _supervise(self) -> None:
        while not self._closing:
            client = self.client
            assert client is not None
            await self._watch(client)
            if self._closing:
                return
            self._connected.clear()
            if not self.reconnect:
                self.stopped_reason = f"connection lost: {client.close_reason or 'closed'}"
                return
            if client.application_close and client.close_code in FINAL_CLOSE_CODES:
                self.stopped_reason = f"closed with {client.close_code:#x}: {client.close_reason}"
                log.error("not reconnecting: %s", self.stopped_reason)
                return
            if not await self._reconnect(client):
                return

    async def _watch(self, client: SalonClient) -> None:
        """Return once ``client``'s connection is closed, pinging it every ``keepalive``
        seconds, and at once when datagrams stop arriving (``probe_after``)."""
        self._unanswered = ""
        if self.keepalive is None:
            await client.wait_closed()
            return
        loop = asyncio.get_running_loop()
        last_ping = loop.time()
        probed = 0.0
        """The last datagram's time when a probe was sent for the silence after it."""
        while not client.closed:
            due = last_ping + self.keepalive
            silence = self.probe_after is not None and client.last_datagram > probed
            if silence:
                assert self.probe_after is not None
                due = min(due, client.last_datagram + self.probe_after)
            now = loop.time()
            if self.probe_after is not None:
                # Look again at least this often: audio that started meanwhile is watched too.
                due = min(due, now + self.probe_after)
            if now < due:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(client.wait_closed()), due - now)
                    return
                continue
            if silence:
                probed = client.last_datagram
            last_ping = now
            if not await self._answers(client):
                self._unanswered = f"no answer to a ping within {self.answer_within:.0f} s"
                log.warning("%s: counting the connection as lost", self._unanswered)
                with contextlib.suppress(Exception):
                    await client.close(timeout=0.5)
                return

    async def _answers(self, client: SalonClient) -> bool:
        """Ping: False only when ``answer_within`` is set and the ping went unanswered that
        long (a lost path otherwise shows as the QUIC idle timeout)."""
        try:
            await asyncio.wait_for(client.call("ping"), self.answer_within or self.keepalive)
        except asyncio.TimeoutError:
            return self.answer_within is None
        except (ConnectionLost, RequestError):
            pass
        return True

    async def _reconnect(self, lost: SalonClient) -> bool:
        loop = asyncio.get_running_loop()
        outage = Outage(reason=self._unanswered or lost.close_reason or f"code {lost.close_code}")
        self.outages.append(outage)
        started = loop.time()
        log.warning("connection lost (%s); reconnecting", outage.reason)
        with contextlib.suppress(Exception):
            await lost.close()
        wait = self.backoff.delay(0)
        candidates = self._candidates(lost)
        if self._shutdown_after is not None and candidates[0] is None:
            # The server announced a restart: come back no sooner than it asked (another node
            # of its cluster, when there is one, is tried first without that wait).
            wait = min(
                self.backoff.maximum,
                self._shutdown_after * (1.0 + self.backoff.rng.random()),
            )
        attempt = 0
        while not self._closing:
            if self.on_retry is not None:
                self.on_retry(outage, wait)
            await asyncio.sleep(wait)
            node = candidates[outage.attempts % len(candidates)]
            outage.attempts += 1
            try:
                if node is None or self.connect_node is None:
                    client = await self._connect()
                else:
                    log.info("reconnecting to node %s at %s", node.node, node.server)
                    client = await self.connect_node(node)
                    client.target = node
            except ServerVerificationError as exc:
                # Not the server we trusted: never send it anything more.
                self.stopped_reason = str(exc)
                log.error("not reconnecting: %s", exc)
                return False
            except RequestError as exc:
                self.stopped_reason = f"hello refused: {exc}"
                log.error("not reconnecting: %s", self.stopped_reason)
                return False
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                attempt += 1
                wait = self.backoff.delay(attempt)
                log.info("reconnect attempt %d failed (%s); next in %.1f s", attempt, exc, wait)
                continue
            try:
                if self.on_connected is not None:
                    self.on_connected(client)
                outage.rejoined = await self._rejoin(client)
            except (asyncio.CancelledError, KeyboardInterrupt):
                with contextlib.suppress(Exception):
                    await client.close()
                raise
            except Exception as exc:
                # The new connection was lost again before it was back in the room (a path
                # that flaps, a daemon that stops again): one more failed attempt, not the end.
                with contextlib.suppress(Exception):
                    await client.close()
                if client.application_close and client.close_code in FINAL_CLOSE_CODES:
                    self.stopped_reason = (
                        f"closed with {client.close_code:#x}: {client.close_reason}"
                    )
                    log.error("not reconnecting: %s", self.stopped_reason)
                    return False
                attempt += 1
                wait = self.backoff.delay(attempt)
                log.info(
                    "reconnect attempt %d lost while rejoining (%s); next in %.1f s",
                    attempt,
                    exc,
                    wait,
                )
                continue
            outage.seconds = loop.time() - started
            outage.reconnected = True
            self._adopt(client)
            log.info("reconnected after %.1f s (%d attempts)", outage.seconds, outage.attempts)
            if self.on_reconnected is not None:
                self.on_reconnected(outage)
            return True
        return False

    def _candidates(self, lost: SalonClient) -> list[Redirect | None]:
        """Where to reconnect, attempt after attempt in turn: the other nodes the lost
        connection's server listed (shuffled: the clients of a dead node spread over the
        others), the lost node itself, and the usual way (None)."""
        if self.connect_node is None:
            return [None]
        candidates: list[Redirect | None] = list(lost.nodes)
        self.backoff.rng.shuffle(candidates)
        if lost.target is not None:
            candidates.append(lost.target)
        candidates.append(None)
        return candidates

    async def _rejoin(self, client: SalonClient) -> str | None:
        if self.room is None:
            return None
        try:
            result = await client.join(self.room, invite=self.invite)
        except RequestError as exc:
            if self.invite is None or exc.code not in INVITE_ERRORS:
                log.warning("could not rejoin %s: %s", self.room, exc)
                self.rejoin_error = exc
                self.room, self.invite = None, None
                return None
            # The invite no longer works: enter as anyone may, if the room allows.
            self.invite = None
            try:
                result = await client.join(self.room)
            except RequestError as again:
                log.warning("could not rejoin %s: %s", self.room, again)
                self.rejoin_error = again
                self.room = None
                return None
        status = str(result.get("status", ""))
        return status
