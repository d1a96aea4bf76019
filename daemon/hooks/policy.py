"""The server's authenticator and request policy, answered by the plugins' hooks.

:class:`PluginAuthenticator` asks ``authenticate``; :class:`PluginPolicy` asks ``authorize``
about every request, then the moderation and topic hook that fits the request (``join`` ->
``join_request``, ``unmute`` -> ``unmute``, ``create_room`` -> ``room_text`` and
``normalize_topics``, ``list_rooms`` -> ``rank_rooms`` and ``known_topics``, ...). A request
that no plugin looks at costs a few dictionary look-ups.
"""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from salon.daemon.auth import AuthError, clean_display_name
from salon.daemon.core import CoreError, Identity, ModerationTaken
from salon.daemon.core.identity import identity_problem
from salon.daemon.pipeline import Review
from salon.daemon.wire import messages as msg
from salon.daemon.wire.messages import ErrorCode
from salon.daemon.wire.text import clean_text

from .api import PLUGIN_ACTOR_PREFIX
from .results import Approve, Deny, Failure

if TYPE_CHECKING:
    from .manager import PluginHost

log = logging.getLogger("salon.hooks")

MAX_TRUST = 10
"""Trust annotations kept on one knock (the first ones, in plugin order)."""
MAX_TRUST_TEXT = 120
"""Characters kept of one trust annotation."""

UNCHECKED = frozenset({msg.Leave, msg.CancelKnock})
"""Requests ``authorize`` is not asked about: leaving is always allowed."""

PROMOTIONS: dict[type, str] = {
    msg.AcceptSpeak: "speaker",
    msg.InviteToSpeak: "speaker",
    msg.Promote: "moderator",
    msg.TransferOwnership: "owner",
}

ACTIONS: dict[type, str] = {cls: cls.__struct_config__.tag for cls in typing.get_args(msg.Request)}
"""Request class -> the ``action`` name hooks see (the request's ``type``)."""

Reviewer = Callable[[Identity, "str | None", Any, str], Awaitable[Review]]


def refusal(plugin: str, value: Any, default: ErrorCode) -> CoreError | None:
    """The error a hook's answer asks for, or None if the answer is not a refusal."""
    if isinstance(value, Deny):
        return CoreError(value.code or default, value.reason or f"refused by {plugin}")
    if value is False:
        return CoreError(default, f"refused by {plugin}")
    return None


class PluginAuthenticator:
    """``pipeline.authenticator``: the first plugin to answer ``authenticate`` decides."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    async def authenticate(
        self, credentials: Mapping[str, str], display_name: str, address: str
    ) -> Identity:
        answer = await self.host.first(
            "authenticate",
            credentials=dict(credentials),
            display_name=display_name,
            address=address,
        )
        if answer is None:
            raise AuthError("no credentials this server accepts: send a token or a guest_key")
        plugin, value = answer
        if isinstance(value, Failure):
            raise AuthError("authentication is unavailable; try again later")
        if isinstance(value, Deny) or value is False:
            raise AuthError(getattr(value, "reason", "") or "credentials refused")
        if not isinstance(value, Identity):
            self.host.failed("authenticate", plugin, f"returned {type(value).__name__}")
            raise AuthError("authentication is unavailable; try again later")
        if value.user.startswith(PLUGIN_ACTOR_PREFIX) or value.operator:
            self.host.failed("authenticate", plugin, f"returned a reserved identity {value!r}")
            raise AuthError("authentication is unavailable; try again later")
        problem = identity_problem(value)
        if problem is not None:
            self.host.failed(
                "authenticate", plugin, f"returned an identity out of bounds: {problem}"
            )
            raise AuthError("authentication is unavailable; try again later")
        name = clean_display_name(value.display_name)
        if name != value.display_name:
            value = Identity(value.user, name, dict(value.verified), value.operator)
        return value


class PluginPolicy:
    """``pipeline.policy``: plugins review each request before the core handles it."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        reviewers: dict[type, Reviewer] = {
            msg.Join: self._join,
            msg.RaiseHand: self._raise_hand,
            msg.Unmute: self._unmute,
            msg.CreateRoom: self._room_settings,
            msg.UpdateRoom: self._room_settings,
            msg.ListRooms: self._list_rooms,
        }
        for cls in PROMOTIONS:
            reviewers[cls] = self._promotion
        self._reviewers = reviewers

    async def review(
        self, identity: Identity, room: str | None, request: Any, address: str, now: float
    ) -> Review:
        kind = type(request)
        if room is None or kind is msg.Join:
            room = getattr(request, "room", None)
        if kind not in UNCHECKED and self.host.implemented("authorize"):
            await self._authorize(identity, room, request)
        reviewer = self._reviewers.get(kind)
        if reviewer is None:
            return Review(request)
        return await reviewer(identity, room, request, address)

    async def _authorize(self, identity: Identity, room: str | None, request: Any) -> None:
        answers = await self.host.call(
            "authorize",
            identity=identity,
            action=ACTIONS[type(request)],
            room=room,
            target=getattr(request, "user", None),
            request=request,
        )
        for plugin, value in answers:
            if isinstance(value, Failure):
                raise CoreError(ErrorCode.DENIED_BY_PLUGIN, "a plugin check failed; try again")
            error = refusal(plugin, value, ErrorCode.DENIED_BY_PLUGIN)
            if error is not None:
                raise error

    async def _check(self, hook: str, **kwargs: Any) -> None:
        """Ask a hook whose answers can only refuse; a failure lets the request through."""
        if not self.host.implemented(hook):
            return
        for plugin, value in await self.host.call(hook, **kwargs):
            error = refusal(plugin, value, ErrorCode.DENIED_BY_PLUGIN)
            if error is not None:
                raise error

    # ------------------------------------------------------------------ joins

    def would_knock(self, room_id: str, user: str, invite: str | None) -> bool:
        """Whether the core would turn this join into a knock (``SalonCore.would_knock``)."""
        return self.host.core.would_knock(room_id, user, invite, time.time())

    async def _join(
        self, identity: Identity, room: str | None, request: msg.Join, address: str
    ) -> Review:
        if not self.host.implemented("join_request"):
            return Review(request)
        knock = self.would_knock(request.room, identity.user, request.invite)
        answers = await self.host.call(
            "join_request",
            identity=identity,
            room=request.room,
            address=address,
            invite=request.invite,
            knock=knock,
        )
        trust: list[str] = []
        approved_by: list[str] = []
        for plugin, value in answers:
            error = refusal(plugin, value, ErrorCode.DENIED_BY_PLUGIN)
            if error is not None:
                raise error
            if isinstance(value, Failure):
                # The hosts decide without this plugin's opinion, and are told so.
                trust.append(f"not checked by {plugin}")
            elif isinstance(value, Approve):
                approved_by.append(plugin)
                trust.extend(value.trust)
            elif isinstance(value, str):
                trust.append(value)
            elif isinstance(value, (list, tuple)):
                trust.extend(str(item) for item in value)
        # Plugin strings reach the hosts' screens: the text rule cleans them like client text.
        cleaned = (clean_text(str(t))[:MAX_TRUST_TEXT] for t in trust)
        trust = list(dict.fromkeys(t for t in cleaned if t))[:MAX_TRUST]
        if not (knock and approved_by):
            return Review(request, trust=trust)
        user, plugin = identity.user, approved_by[0]

        async def audit(result: dict[str, Any]) -> dict[str, Any]:
            if result.get("status") == "joined":
                log.info("%s admitted %s to %s without a knock", plugin, user, request.room)
                self.host.notify(
                    ModerationTaken(
                        request.room,
                        PLUGIN_ACTOR_PREFIX + plugin,
                        "auto_approve",
                        user,
                        {"trust": list(trust)},
                    )
                )
            return result

        return Review(request, trust=trust, auto_approve=True, finish=audit)

    # ------------------------------------------------------------------ the stage

    async def _raise_hand(
        self, identity: Identity, room: str | None, request: msg.RaiseHand, address: str
    ) -> Review:
        if room is not None:
            await self._check("raise_hand", identity=identity, room=room)
        return Review(request)

    async def _unmute(
        self, identity: Identity, room: str | None, request: msg.Unmute, address: str
    ) -> Review:
        if room is not None:
            target = request.user or identity.user
            await self._check("unmute", identity=identity, room=room, target=target)
        return Review(request)

    async def _promotion(
        self, identity: Identity, room: str | None, request: Any, address: str
    ) -> Review:
        if room is not None:
            target = getattr(request, "user", None) or identity.user
            role = PROMOTIONS[type(request)]
            await self._check("promotion", identity=identity, room=room, target=target, role=role)
        return Review(request)

    # ------------------------------------------------------------------ texts and topics

    async def _rewrite(self, hook: str, argument: str, value: Any, **kwargs: Any) -> Any:
        """Pass ``value`` through every implementation in turn; each may replace it."""
        for impl in self.host.implementations(hook):
            answer = await self.host.invoke(hook, impl, {**kwargs, argument: value})
            error = refusal(impl.plugin_name, answer, ErrorCode.DENIED_BY_PLUGIN)
            if error is not None:
                raise error
            if answer is None or isinstance(answer, Failure):
                continue
            if hook == "room_text" and isinstance(answer, str):
                value = answer
            elif hook == "normalize_topics" and isinstance(answer, (list, tuple)):
                value = [str(topic) for topic in answer]
            else:
                self.host.failed(hook, impl.plugin_name, f"returned {type(answer).__name__}")
        return value

    async def _room_settings(
        self, identity: Identity, room: str | None, request: Any, address: str
    ) -> Review:
        changes: dict[str, Any] = {}
        if self.host.implemented("room_text"):
            for field in ("title", "description"):
                text = getattr(request, field)
                if text:
                    new = await self._rewrite(
                        "room_text", "text", text, identity=identity, room=room, field=field
                    )
                    if new != text:
                        changes[field] = new
        if request.topics is not None and self.host.implemented("normalize_topics"):
            topics = await self._rewrite(
                "normalize_topics", "topics", list(request.topics), identity=identity, room=room
            )
            if topics != request.topics:
                changes["topics"] = topics
        if changes:
            request = msgspec.structs.replace(request, **changes)
        return Review(request)

    async def _list_rooms(
        self, identity: Identity, room: str | None, request: msg.ListRooms, address: str
    ) -> Review:
        if request.topic and self.host.implemented("normalize_topics"):
            topics = await self._rewrite(
                "normalize_topics", "topics", [request.topic], identity=identity, room=None
            )
            if topics and topics[0] != request.topic:
                request = msgspec.structs.replace(request, topic=topics[0])
        if not (self.host.implemented("rank_rooms") or self.host.implemented("known_topics")):
            return Review(request)
        topic = request.topic

        async def finish(result: dict[str, Any]) -> dict[str, Any]:
            return await self._discovery(identity, topic, result)

        return Review(request, finish=finish)

    async def _discovery(
        self, identity: Identity, topic: str | None, result: dict[str, Any]
    ) -> dict[str, Any]:
        host = self.host
        if host.implemented("rank_rooms"):
            rooms = msgspec.convert(result["rooms"], list[msg.RoomSummary])
            listed = {summary.room for summary in rooms}
            for impl in host.implementations("rank_rooms"):
                answer = await host.invoke(
                    "rank_rooms",
                    impl,
                    {"identity": identity, "rooms": list(rooms), "topic": topic},
                )
                if isinstance(answer, (list, tuple)):
                    # A ranking reorders or leaves out rooms; it never adds any.
                    rooms = [
                        r for r in answer if isinstance(r, msg.RoomSummary) and r.room in listed
                    ]
            result = {**result, "rooms": [msg.to_builtins(r) for r in rooms]}
        if host.implemented("known_topics"):
            known: dict[str, None] = {}
            for _, answer in await host.call("known_topics"):
                if isinstance(answer, (list, tuple)):
                    known.update((str(t), None) for t in answer)
            result = {**result, "topics": list(known)}
        return result
