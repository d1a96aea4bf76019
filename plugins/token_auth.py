"""Token authentication: static tokens with profiles, and signed tokens (JWT) with expiry
and role claims, checked with PyJWT.

::

    [plugins.token_auth]
    # Signed tokens: HS256 with a shared secret, or a public key file for RS256/ES256/EdDSA.
    jwt_secret = "a long random secret shared with the service that issues tokens"
    # jwt_public_key_file = "/etc/salon/issuer.pem"
    jwt_algorithms = ["HS256"]
    issuer = "https://accounts.example.org"   # checked when set (the "iss" claim)
    audience = "salon"                         # checked when set (the "aud" claim)
    leeway = 30.0                              # seconds of clock skew tolerated
    require_expiry = true                      # refuse tokens without "exp"

    # Static tokens: token = user id, or a table with a profile and roles.
    [plugins.token_auth.tokens]
    "8c1f...e2" = "alice"
    "93ab...07" = { user = "bob", display_name = "Bob", roles = ["host"] }

    # Roles a request type needs (the request's "type" = a role name).
    [plugins.token_auth.required_roles]
    create_room = "host"

A signed token's claims: ``sub`` (the user id, required), ``exp`` (expiry), ``name`` (display
name imposed on the session), ``roles`` (list of role names) and ``verified`` (an object of
string attributes the issuer vouches for, shown to hosts, e.g. ``{"email": "a@example.org"}``).
The identity's verified attributes carry ``token`` (static) or ``iss`` (signed) and ``roles``.

Credentials that are neither a known static token nor shaped like a JWT are left to the next
authentication plugin (by default ``builtin_auth``, which knows ``[auth.tokens]``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

from salon.daemon.auth import clean_display_name
from salon.daemon.config import GUEST_PREFIX
from salon.daemon.core import Identity
from salon.daemon.hooks import Deny, SalonAPI, hookimpl
from salon.daemon.wire.messages import Request

ROLES = "roles"
"""Key of the identity's verified attributes holding its roles, comma-separated."""

PROFILE_KEYS = ("user", "display_name", "roles", "verified")


def roles_of(identity: Identity) -> set[str]:
    """The roles a token gave ``identity`` (none for other identities)."""
    text = identity.verified.get(ROLES, "")
    return {role for role in text.split(",") if role}


def _verified_strings(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return dict(value)


class _StaticToken:
    __slots__ = ("display_name", "roles", "secret", "user", "verified")

    def __init__(
        self,
        secret: str,
        user: str,
        display_name: str | None,
        roles: tuple[str, ...],
        verified: dict[str, str],
    ) -> None:
        self.secret = secret.encode()
        self.user = user
        self.display_name = display_name
        self.roles = roles
        self.verified = verified


class TokenAuth:
    """Authenticates static and signed tokens; enforces ``required_roles``."""

    def __init__(self, api: SalonAPI) -> None:
        settings = api.settings
        settings.check_known(
            (
                "jwt_secret",
                "jwt_public_key_file",
                "jwt_algorithms",
                "issuer",
                "audience",
                "leeway",
                "require_expiry",
                "tokens",
                "required_roles",
            )
        )
        self.static = [self._static(api, t, v) for t, v in settings.table("tokens").items()]
        secret = settings.text("jwt_secret")
        key_file = settings.text("jwt_public_key_file")
        if secret is not None and key_file is not None:
            raise settings.problem("jwt_secret", "set jwt_secret or jwt_public_key_file, not both")
        self.key: str | bytes | None = secret
        if key_file is not None:
            try:
                self.key = Path(key_file).read_bytes()
            except OSError as exc:
                raise settings.problem("jwt_public_key_file", f"cannot read: {exc}") from None
        default_algorithms = ("HS256",) if key_file is None else ("RS256", "ES256", "EdDSA")
        self.algorithms = list(settings.strings("jwt_algorithms", default_algorithms))
        unknown = set(self.algorithms) - set(jwt.algorithms.get_default_algorithms())
        if unknown:
            raise settings.problem("jwt_algorithms", f"unknown algorithms {sorted(unknown)}")
        self.issuer = settings.text("issuer")
        self.audience = settings.text("audience")
        self.leeway = settings.number("leeway", 30.0)
        self.require_expiry = settings.flag("require_expiry", True)
        self.required_roles = settings.string_table("required_roles")

    @staticmethod
    def _static(api: SalonAPI, token: str, value: Any) -> _StaticToken:
        where = f"tokens.{token[:4]}..."
        if isinstance(value, str):
            value = {"user": value}
        if not isinstance(value, Mapping):
            raise api.settings.problem(where, "expected a user id or a table with user = ...")
        unknown = set(value) - set(PROFILE_KEYS)
        if unknown:
            raise api.settings.problem(where, f"unknown keys {sorted(unknown)}")
        user = value.get("user")
        if not isinstance(user, str) or not user or user.startswith(GUEST_PREFIX):
            raise api.settings.problem(
                where, f"user must be a non-empty user id not starting with {GUEST_PREFIX!r}"
            )
        name = value.get("display_name")
        if name is not None and not isinstance(name, str):
            raise api.settings.problem(where, "display_name must be a string")
        roles = value.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise api.settings.problem(where, "roles must be a list of role names")
        verified = _verified_strings(value.get("verified", {}))
        if verified is None:
            raise api.settings.problem(where, "verified must be a table of strings")
        return _StaticToken(token, user, name, tuple(roles), verified)

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def authenticate(self, credentials: Mapping[str, str], display_name: str) -> Any:
        token = credentials.get("token")
        if token is None:
            return None
        presented = token.encode()
        for static in self.static:
            # Constant-time: a token check must not leak prefixes by timing.
            if hmac.compare_digest(static.secret, presented):
                verified = {**static.verified, "token": static.user}
                return self._identity(
                    static.user, static.display_name or display_name, static.roles, verified
                )
        if self.key is None or token.count(".") != 2:
            return None
        return self._signed(token, display_name)

    def _signed(self, token: str, display_name: str) -> Identity | Deny:
        required = ["sub", "exp"] if self.require_expiry else ["sub"]
        try:
            claims = jwt.decode(
                token,
                self.key,  # type: ignore[arg-type]
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return Deny("token expired")
        except jwt.ImmatureSignatureError:
            return Deny("token is not valid yet")
        except jwt.InvalidSignatureError:
            return Deny("token signature is invalid")
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            return Deny("token was not issued for this server")
        except jwt.MissingRequiredClaimError as exc:
            return Deny(f"token lacks the {exc.claim!r} claim")
        except jwt.InvalidAlgorithmError:
            return Deny("token is signed with an algorithm this server does not accept")
        except jwt.DecodeError:
            return Deny("token is malformed")
        except jwt.InvalidTokenError as exc:
            return Deny(f"token is invalid: {exc}")
        user = claims.get("sub")
        if not isinstance(user, str) or not user or user.startswith(GUEST_PREFIX):
            return Deny("token names no valid user (sub)")
        name = claims.get("name", display_name)
        roles = claims.get(ROLES, [])
        verified = _verified_strings(claims.get("verified", {}))
        if (
            not isinstance(name, str)
            or not isinstance(roles, list)
            or not all(isinstance(r, str) and r and "," not in r for r in roles)
            or verified is None
        ):
            return Deny("token has malformed claims (name, roles or verified)")
        if isinstance(claims.get("iss"), str):
            verified["iss"] = claims["iss"]
        return self._identity(user, name, tuple(roles), verified)

    @staticmethod
    def _identity(
        user: str, display_name: str, roles: tuple[str, ...], verified: dict[str, str]
    ) -> Identity:
        if roles:
            verified[ROLES] = ",".join(roles)
        return Identity(user=user, display_name=clean_display_name(display_name), verified=verified)

    @hookimpl
    def authorize(self, identity: Identity, action: str, request: Request) -> Deny | None:
        role = self.required_roles.get(action)
        # Operators (the admin socket) always pass: their actions are audited as operator.
        if role is None or identity.operator or role in roles_of(identity):
            return None
        return Deny(f"{action} needs the {role!r} role")
