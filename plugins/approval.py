"""Approval helper: admits known people to approval rooms without a knock, and tells hosts
who is new.

::

    [plugins.approval]
    allow_users = ["alice", "bob"]     # always admitted without knocking
    remember = true                    # admit users a host approved before...
    per_room = true                    # ...in the same room (false: in any room)
    persist = true                     # keep them across restarts, in <state_dir>/plugins

    [plugins.approval.allow_verified]  # admitted if the auth plugin verified one of these
    email_domain = ["example.org"]

A knock from a user this server has not seen in any room is annotated ``first visit``; from
someone seen before, ``seen before``; from someone approved in another room, ``approved in
<room>`` (when approvals are per room).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from salon.daemon.core import Identity
from salon.daemon.hooks import Approve, SalonAPI, hookimpl

MAX_SEEN = 100_000
"""Users remembered as seen; the least recently seen are forgotten beyond this."""
FILE = "approved.json"


class ApprovalHelper:
    """Auto-approves allow-listed and previously approved identities; annotates the rest."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(("allow_users", "allow_verified", "remember", "per_room", "persist"))
        self.api = api
        self.allow_users = frozenset(settings.strings("allow_users"))
        self.allow_verified: dict[str, frozenset[str]] = {}
        for attribute, values in settings.table("allow_verified").items():
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise settings.problem(f"allow_verified.{attribute}", "expected a list of strings")
            self.allow_verified[attribute] = frozenset(values)
        self.remember = settings.flag("remember", True)
        self.per_room = settings.flag("per_room", True)
        self.persist = settings.flag("persist", True)
        self.approved: dict[str, set[str]] = {}
        """User -> rooms a host approved them in."""
        self.seen: OrderedDict[str, None] = OrderedDict()
        if self.persist:
            self._load()

    # ------------------------------------------------------------------ memory

    @property
    def _path(self) -> Path:
        return self.api.data_dir / FILE

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.api.log.warning("cannot read %s, starting afresh: %s", self._path, exc)
            return
        for user, rooms in data.get("approved", {}).items():
            self.approved[user] = set(rooms)
        for user in data.get("seen", []):
            self.seen[user] = None

    def save(self) -> None:
        if not self.persist:
            return
        data = {
            "approved": {user: sorted(rooms) for user, rooms in self.approved.items()},
            "seen": list(self.seen),
        }
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self._path)

    def _see(self, user: str) -> None:
        self.seen[user] = None
        self.seen.move_to_end(user)
        if len(self.seen) > MAX_SEEN:
            self.seen.popitem(last=False)

    # ------------------------------------------------------------------ hooks

    def allowed(self, identity: Identity) -> str | None:
        """Why ``identity`` is admitted without a knock in any room, or None."""
        if identity.user in self.allow_users:
            return "allow-listed"
        for attribute, values in self.allow_verified.items():
            if identity.verified.get(attribute) in values:
                return f"verified {attribute}"
        return None

    @hookimpl
    def join_request(self, identity: Identity, room: str, knock: bool) -> Any:
        if not knock:
            return None
        reason = self.allowed(identity)
        if reason is not None:
            return Approve((reason,))
        rooms = self.approved.get(identity.user, set())
        if self.remember and rooms and (room in rooms or not self.per_room):
            return Approve(("approved before",))
        if identity.user not in self.seen:
            return ["first visit"]
        notes = ["seen before"]
        notes.extend(f"approved in {other}" for other in sorted(rooms)[:3])
        return notes

    @hookimpl
    def participant_joined(self, user: str) -> None:
        self._see(user)

    @hookimpl
    def moderation_taken(self, room: str, action: str, target: str | None) -> None:
        if action == "approve_knock" and target is not None and self.remember:
            rooms = self.approved.setdefault(target, set())
            if room not in rooms:
                rooms.add(room)
                self.save()
        elif action in ("remove", "ban") and target is not None:
            # A removed or banned member is not "approved before" any more: they knock again.
            rooms = self.approved.get(target, set())
            if room in rooms:
                rooms.discard(room)
                self.save()

    @hookimpl
    def shutdown(self) -> None:
        self.save()
