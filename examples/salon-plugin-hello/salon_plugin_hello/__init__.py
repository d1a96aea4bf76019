"""salon-plugin-hello: the example plugin of docs/writing_plugins.md.

- Hosts see ``hello: 2 earlier visits`` (or ``hello: first visit``) on each knock.
- Room titles and descriptions written in capitals are refused as shouting, or, with
  ``fix_shouting = true``, rewritten in sentence case.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl

__all__ = ["HelloPlugin"]


def shouting(text: str) -> bool:
    """Whether ``text`` is written in capitals (at least four letters, none lower case)."""
    letters = [c for c in text if c.isalpha()]
    return len(letters) >= 4 and all(c.isupper() for c in letters)


class HelloPlugin:
    """salond makes one instance per daemon, passing the plugin's own SalonAPI."""

    def __init__(self, api: SalonAPI) -> None:
        # Validate settings here: a mistake stops salond at start-up with a clear message.
        api.settings.check_known(("greeting", "fix_shouting"))
        self.api = api
        self.greeting = api.settings.text("greeting", "hello")
        self.fix_shouting = api.settings.flag("fix_shouting", False)
        self.visits: Counter[str] = Counter()

    @hookimpl
    def startup(self) -> None:
        self.api.log.info("ready to say %s", self.greeting)

    @hookimpl
    def participant_joined(self, user: str) -> None:
        # An observer: it runs in the plugin's own task, after the fact, never in the way.
        self.visits[user] += 1

    @hookimpl
    async def join_request(self, identity: Identity, knock: bool) -> list[str] | None:
        # An async implementation: salond awaits it within [plugins] plugin_timeout.
        if not knock:
            return None
        await asyncio.sleep(0)  # a real plugin might ask another service here
        count = self.visits[identity.user]
        visits = "first visit" if count == 0 else f"{count} earlier visits"
        return [f"{self.greeting}: {visits}"]

    @hookimpl
    def room_text(self, field: str, text: str) -> str | Deny | None:
        if not shouting(text):
            return None
        if self.fix_shouting:
            return text.capitalize()
        return Deny(f"please do not shout: write the {field} in lower case")
