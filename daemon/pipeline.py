"""The one request pipeline: every request, whoever sends it, takes the same steps.

A client (over QUIC), an operator (over the admin socket) and a plugin (through its
``SalonAPI``) differ only by the :class:`Actor` they act as. For each of them,
:meth:`RequestPipeline.perform`:

0. for a client, checks the request fits its session's state and its address's limits (the
   QUIC server's guest abuse limits: rooms created per address);
1. asks the request policy (the plugins: ``authorize`` and the hook that fits the request) to
   review the request; a refusal is a :class:`~salon.daemon.core.CoreError`;
2. hands the reviewed request to the core: a client's as a member of its room
   (``SalonCore.handle_request``, with the policy's trust annotations -- and, on a knock, the
   bans its address recalls -- and auto-approval), an
   operator's or a plugin's with operator rights (``SalonCore.admin_request``);
3. pumps the core's outputs: events to sessions through the ``deliver`` sink, everything else to
   the observers (store, plugins, admin API, recorders), then re-arms the core's timer;
4. awaits the commit barriers (the store's commit) when the request handed the store a change,
   so the ``ok`` an actor gets is already durable, then lets the policy finish the result (e.g.
   rank listed rooms). While the store cannot write, a request that would change stored state
   is refused before anything changes (:class:`StoreRefused`), and one whose commit fails raises
   ``StoreUnavailable``: performed but not acknowledged.

The pipeline also authenticates a client's hello (:meth:`authenticate`), so the plugins'
authentication and request review sit in one place, with the types they answer with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from salon.daemon.core import CoreError, Identity, SalonCore
from salon.daemon.core.events import CoreEvent, Deliver
from salon.daemon.store.base import StoreUnavailable
from salon.daemon.wire import messages as msg

log = logging.getLogger("salon.pipeline")

ActorKind = Literal["client", "operator", "plugin"]


@dataclass(frozen=True)
class Actor:
    """Who sends a request, and so with which rights the core performs it."""

    kind: ActorKind
    """``client``: a member acting in its own room; ``operator`` and ``plugin``: operator rights
    in any room, without being a member."""
    identity: Identity
    """The identity the request is reviewed, performed and audited as."""
    session: int | None = None
    """The client's session (None for operators and plugins)."""
    address: str = ""
    """Where the request comes from, as the policy sees it (a client's IP, ``admin``, ...)."""

    @classmethod
    def client(cls, session: int, identity: Identity, address: str) -> Actor:
        return cls("client", identity, session, address)

    @classmethod
    def operator(cls, identity: Identity) -> Actor:
        return cls("operator", identity, None, "admin")

    @classmethod
    def plugin(cls, identity: Identity) -> Actor:
        return cls("plugin", identity, None, "plugin")


@dataclass
class Review:
    """What the request policy decided about a request the core is about to handle."""

    request: Any
    """The request to hand to the core (a plugin may have rewritten it, e.g. a title)."""
    trust: list[str] = field(default_factory=list)
    """Annotations shown to hosts with a knock (e.g. "first visit", "verified email")."""
    auto_approve: bool = False
    """For a knock: admit without asking the host."""
    finish: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
    """Called with the core's result before the ``ok`` reply (e.g. to rank listed rooms)."""


class RequestPolicy(Protocol):
    """Reviews every request before the core sees it; raises CoreError to refuse it."""

    async def review(
        self, identity: Identity, room: str | None, request: Any, address: str, now: float
    ) -> Review: ...


class AllowAll:
    """The policy without plugins: every request goes to the core unchanged."""

    async def review(
        self, identity: Identity, room: str | None, request: Any, address: str, now: float
    ) -> Review:
        return Review(request)


class Authenticator(Protocol):
    """Turns a hello's credentials into an identity, or raises AuthError."""

    async def authenticate(
        self, credentials: Mapping[str, str], display_name: str, address: str
    ) -> Identity: ...


class AddressLimits(Protocol):
    """Limits a client's source address puts on its requests (the QUIC server's guard)."""

    def check_create(self, identity: Identity, address: str) -> tuple[str, str] | None:
        """None if ``identity`` may create a room now, else (the limit, why not)."""
        ...

    def created(self, room: str, identity: Identity, address: str) -> None: ...

    def ban_notes(self, room: str, user: str, address: str, now: float) -> list[str]:
        """Trust notes for a knock from ``address`` (bans from the same source)."""
        ...


CommitBarrier = Callable[[], Awaitable[None]]
"""Awaited after the core accepted a request and before the requester gets ``ok``: the store
uses it so that an acknowledged action is already on disk."""

Observer = Callable[[CoreEvent], None]
"""Called with every core output that is not a delivery to sessions (store, plugins, admin)."""

DeliverSink = Callable[[tuple[int, ...], Any], None]
"""Sends one protocol event to several sessions (the QUIC server)."""


ActionRouter = Callable[["Actor", str, Any], Awaitable[dict[str, Any] | None]]
"""Performs an operator's or plugin's request on another node: its result, or None to perform
it here; raises CoreError (``home_unreachable`` when that node does not answer)."""


class StoreRefused(StoreUnavailable):
    """A request that would change stored state came while the store cannot write: refused
    before anything changed (the caller says "nothing was changed, retry later")."""


def _nowhere(sessions: tuple[int, ...], message: Any) -> None:
    """The sink before a server is attached: there are no sessions to deliver to."""


class RequestPipeline:
    """Review -> core -> event pump -> commit barrier, for every actor (see the module doc)."""

    def __init__(self, core: SalonCore, authenticator: Authenticator) -> None:
        self.core = core
        self.authenticator = authenticator
        """Answers a client's hello (the plugins' ``authenticate``)."""
        self.policy: RequestPolicy = AllowAll()
        """Reviews every request (the plugins' ``authorize`` and moderation hooks)."""
        self.commit_barriers: list[CommitBarrier] = []
        self.observers: list[Observer] = []
        self.deliver: DeliverSink = _nowhere
        """Where events for sessions go (set by the QUIC server)."""
        self.address_limits: AddressLimits | None = None
        """Per-address limits on clients' requests (set by the QUIC server)."""
        self.store_available: Callable[[], bool] = lambda: True
        """False while the store cannot write: requests in ``STORED_REQUESTS`` are refused."""
        self.store_changes: Callable[[], int] | None = None
        """Changes handed to the store so far, when known: a request that added none is
        acknowledged without waiting for the commit barriers (it has nothing to make durable,
        and a database outage does not hold it up)."""
        self.route_action: ActionRouter | None = None
        """Performs an operator's or a plugin's request on the room's home node when that is
        another cluster node (daemon/cluster/rooms.py); None: every room is served here."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core_timer: asyncio.TimerHandle | None = None
        self._core_timer_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run the core's timers on the running event loop from now on."""
        self._loop = asyncio.get_running_loop()

    def stop(self) -> None:
        if self._core_timer is not None:
            self._core_timer.cancel()
            self._core_timer = None
        self._loop = None

    # ------------------------------------------------------------------ requests

    async def authenticate(
        self, credentials: Mapping[str, str], display_name: str, address: str
    ) -> Identity:
        """The identity a hello's credentials prove, or AuthError."""
        return await self.authenticator.authenticate(credentials, display_name, address)

    async def perform(
        self,
        actor: Actor,
        room: str | None,
        request: Any,
        *,
        abandoned: Callable[[], bool] | None = None,
    ) -> dict[str, Any] | None:
        """Review and perform ``request`` as ``actor``; returns the ``ok`` result once it is
        committed, or None if ``abandoned()`` says the requester left during the review.

        ``room`` is the room an operator or plugin acts on; a client acts in its own room.
        A refusal (policy or core) raises CoreError, after the core's outputs were delivered;
        a store that cannot write raises StoreUnavailable (see the module doc).
        """
        core = self.core
        session = actor.session
        target = request.room if isinstance(request, msg.StartRoom) else room
        if session is None and target is not None and self.route_action is not None:
            # One writer per room: the room's home reviews and performs it.
            routed = await self.route_action(actor, target, request)
            if routed is not None:
                return routed
        if request.__struct_config__.tag in msg.STORED_REQUESTS and not self.store_available():
            raise StoreRefused("the store is unavailable: nothing was changed, retry later")
        if session is not None:
            room = core.session_room(session)
        counter = self.store_changes
        changes = counter() if counter is not None else None
        limits = self.address_limits if session is not None else None
        try:
            if session is not None:
                # A plugin's refusal must never hide that the request was out of place.
                core.check_session_state(session, request)
            if limits is not None and isinstance(request, msg.CreateRoom):
                refused = limits.check_create(actor.identity, actor.address)
                if refused is not None:
                    limit, text = refused
                    code = (
                        msg.ErrorCode.ROOM_LIMIT if limit == "rooms" else msg.ErrorCode.RATE_LIMITED
                    )
                    raise CoreError(code, text)
            review = await self.policy.review(
                actor.identity, room, request, actor.address, time.time()
            )
            if abandoned is not None and abandoned():
                return None
            if limits is not None and isinstance(review.request, msg.Join):
                notes = limits.ban_notes(
                    review.request.room, actor.identity.user, actor.address, time.time()
                )
                if notes:
                    review.trust = notes + review.trust
            if session is not None:
                result = core.handle_request(
                    session,
                    review.request,
                    time.time(),
                    trust=review.trust,
                    auto_approve=review.auto_approve,
                )
            else:
                result = core.admin_request(actor.identity, room, review.request, time.time())
        finally:
            self.pump()
        if limits is not None and isinstance(review.request, msg.CreateRoom):
            created = result.get("room")
            if isinstance(created, dict) and isinstance(created.get("room"), str):
                limits.created(created["room"], actor.identity, actor.address)
        if counter is None or counter() != changes:
            # StoreUnavailable from a barrier: performed, but not durable, so not acknowledged.
            for barrier in self.commit_barriers:
                await barrier()
        if review.finish is not None:
            result = await review.finish(result)
        return result

    # ------------------------------------------------------------------ the event pump

    def pump(self) -> None:
        """Pull every pending core output, then re-arm the core's timer. Called after every
        call into the core, wherever it came from (requests, datagrams, disconnects, timers)."""
        core = self.core
        event = core.next_event()
        while event is not None:
            if isinstance(event, Deliver):
                self.deliver(event.sessions, event.message)
            else:
                self.notify(event)
            event = core.next_event()
        self._arm_core_timer()

    def notify(self, event: CoreEvent) -> None:
        """Give one event to every observer; an observer that raises is logged, not fatal."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception("observer failed on %s", type(event).__name__)

    def _arm_core_timer(self) -> None:
        if self._loop is None:
            return  # not started: the first pump after start() arms it
        deadline = self.core.get_timer()
        if deadline == self._core_timer_at:
            return
        if self._core_timer is not None:
            self._core_timer.cancel()
            self._core_timer = None
        self._core_timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - time.time())
            self._core_timer = self._loop.call_later(delay, self._on_core_timer)

    def _on_core_timer(self) -> None:
        self._core_timer = None
        self._core_timer_at = None
        self.core.handle_timer(time.time())
        self.pump()
