"""The hooks a Salon plugin may implement; docs/plugin_hooks.md documents each one.

An implementation receives only the arguments it names, so ``def startup(api)`` and
``def startup()`` are both valid. ``api`` is always the :class:`~salon.daemon.hooks.SalonAPI`
bound to the implementing plugin. An implementation may be a plain function or ``async``:
salond awaits what returns an awaitable, within ``[plugins] plugin_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from salon.daemon.core import Identity
    from salon.daemon.wire.messages import JoinRequestInfo, Request, RoomSummary

    from .api import SalonAPI
    from .results import Approve, AudioLevel, Deny

PROJECT = "salon"

hookspec = HookspecMarker(PROJECT)
hookimpl = HookimplMarker(PROJECT)

GROUPS: dict[str, tuple[str, ...]] = {
    "auth": ("authenticate", "authorize"),
    "moderation": (
        "join_request",
        "raise_hand",
        "unmute",
        "promotion",
        "room_text",
        "audio_levels",
    ),
    "topics": ("normalize_topics", "known_topics", "rank_rooms"),
    "observers": (
        "startup",
        "shutdown",
        "room_created",
        "room_closed",
        "participant_joined",
        "participant_left",
        "role_changed",
        "speaking_changed",
        "moderation_taken",
        "knock_received",
    ),
}
"""Hook names by group, in the order docs/plugin_hooks.md presents them."""


# ---------------------------------------------------------------------------------- auth


@hookspec(firstresult=True)
def authenticate(
    api: SalonAPI, credentials: Mapping[str, str], display_name: str, address: str
) -> Identity | Deny | None:
    """Turn a hello's credentials into an Identity, refuse them (Deny), or pass (None)."""


@hookspec
def authorize(
    api: SalonAPI,
    identity: Identity,
    action: str,
    room: str | None,
    target: str | None,
    request: Request,
) -> bool | Deny | None:
    """Allow (True), deny (Deny or False) or have no opinion (None) on a client's request."""


# ---------------------------------------------------------------------------------- moderation


@hookspec
def join_request(
    api: SalonAPI, identity: Identity, room: str, address: str, invite: str | None, knock: bool
) -> Approve | Deny | list[str] | None:
    """Deny a join, admit a knock without the hosts (Approve), or annotate it (list of str)."""


@hookspec
def raise_hand(api: SalonAPI, identity: Identity, room: str) -> Deny | None:
    """Deny a listener's raised hand, or pass (None)."""


@hookspec
def unmute(api: SalonAPI, identity: Identity, room: str, target: str) -> Deny | None:
    """Deny an unmute (of oneself, or by a host of target), or pass (None)."""


@hookspec
def promotion(api: SalonAPI, identity: Identity, room: str, target: str, role: str) -> Deny | None:
    """Deny moving target up to role (speaker, moderator or owner), or pass (None)."""


@hookspec
def room_text(
    api: SalonAPI, identity: Identity, room: str | None, field: str, text: str
) -> str | Deny | None:
    """Deny a room's title or description, replace it (str), or keep it (None)."""


@hookspec
def audio_levels(api: SalonAPI, room: str, levels: list[AudioLevel]) -> None:
    """The audio levels of a room's stage, sampled every 200 ms while the plugin subscribes."""


# ---------------------------------------------------------------------------------- topics


@hookspec
def normalize_topics(
    api: SalonAPI, identity: Identity, room: str | None, topics: list[str]
) -> list[str] | Deny | None:
    """Deny a room's topics, replace them (list of str), or keep them (None)."""


@hookspec
def known_topics(api: SalonAPI) -> list[str] | None:
    """The topics this plugin knows, for clients to discover rooms by."""


@hookspec
def rank_rooms(
    api: SalonAPI, identity: Identity, rooms: list[RoomSummary], topic: str | None
) -> list[RoomSummary] | None:
    """Reorder or filter the rooms a client lists (a new list), or keep them (None)."""


# ---------------------------------------------------------------------------------- observers


@hookspec
def startup(api: SalonAPI) -> None:
    """salond has started and accepts connections."""


@hookspec
def shutdown(api: SalonAPI) -> None:
    """salond is stopping; release what the plugin holds."""


@hookspec
def room_created(api: SalonAPI, room: str, owner: str) -> None:
    """A room was created."""


@hookspec
def room_closed(api: SalonAPI, room: str, reason: str) -> None:
    """A room was closed."""


@hookspec
def participant_joined(api: SalonAPI, room: str, user: str, session: int, role: str) -> None:
    """A session entered a room."""


@hookspec
def participant_left(api: SalonAPI, room: str, user: str, session: int, reason: str) -> None:
    """A session left a room."""


@hookspec
def role_changed(api: SalonAPI, room: str, user: str, old: str, new: str) -> None:
    """A present member's role changed."""


@hookspec
def speaking_changed(api: SalonAPI, room: str, speakers: list[str]) -> None:
    """The set of members speaking in a room changed."""


@hookspec
def moderation_taken(
    api: SalonAPI, room: str, actor: str, action: str, target: str | None, detail: dict[str, Any]
) -> None:
    """A host, an operator or a plugin acted on a room or one of its members."""


@hookspec
def knock_received(api: SalonAPI, room: str, request: JoinRequestInfo) -> None:
    """Someone knocked on an approval room and its hosts were asked."""
