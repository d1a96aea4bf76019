"""The default authentication: guests identified by their key, and ``[auth.tokens]``.

It wraps :class:`salon.daemon.auth.BuiltinAuthenticator` unchanged (same refusals, same guest
user ids: ``guest-`` + 12 hex digits of SHA-256 of the key) and is called last (``trylast``),
so any other authentication plugin is asked first and may override it.
"""

from __future__ import annotations

from collections.abc import Mapping

from salon.daemon.auth import BuiltinAuthenticator
from salon.daemon.core import Identity
from salon.daemon.hooks import SalonAPI, hookimpl


class BuiltinAuth:
    """Guests and static operator tokens, as configured in ``[auth]``."""

    def __init__(self, api: SalonAPI) -> None:
        api.settings.check_known(())
        auth = api.config.auth
        self.authenticator = BuiltinAuthenticator(auth.tokens, auth.allow_guests)

    @hookimpl(trylast=True)
    async def authenticate(
        self, credentials: Mapping[str, str], display_name: str, address: str
    ) -> Identity:
        # Refusals are raised as AuthError, which the plugin host turns into a Deny.
        return await self.authenticator.authenticate(credentials, display_name, address)
