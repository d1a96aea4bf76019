"""token_auth over QUIC: static tokens with profiles, signed tokens (JWT), role claims."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from salon.client.connection import RequestError
from tests.test_plugin_support import guest, plugin_daemon, refused

SECRET = "test secret, long enough for HS256 keys"


def config(**extra: Any) -> dict[str, Any]:
    return {
        "plugins.enabled": "token_auth",
        "plugins.token_auth.jwt_secret": SECRET,
        "plugins.token_auth.audience": "salon-test",
        "plugins.token_auth.tokens": {
            "static-alice-token": "alice",
            "static-bob-token": {"user": "bob", "display_name": "Bob B", "roles": ["host"]},
        },
        "plugins.token_auth.required_roles": {"create_room": "host"},
        **extra,
    }


def signed(key: str = SECRET, **claims: Any) -> str:
    base = {"sub": "carol", "exp": time.time() + 300, "aud": "salon-test"}
    return jwt.encode({**base, **claims}, key, algorithm="HS256")


async def auth_error(running: Any, token: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        await running.client("Someone", credentials={"token": token})
    return caught.value


async def test_static_tokens_with_profiles(tmp_path):
    async with plugin_daemon(tmp_path, **config()) as running:
        alice = await running.client("Alice", credentials={"token": "static-alice-token"})
        assert (alice.user, alice.display_name) == ("alice", "Alice")
        bob = await running.client("whoever", credentials={"token": "static-bob-token"})
        assert (bob.user, bob.display_name) == ("bob", "Bob B")
        await bob.create_room("Bob's", room="bobs")  # his token gives him the host role
        await bob.join("bobs")
        joined = await alice.join("bobs")
        assert joined["status"] == "joined"
        sessions = running.daemon.server.sessions
        assert sessions[alice.session].identity.verified == {"token": "alice"}
        assert sessions[bob.session].identity.verified == {"token": "bob", "roles": "host"}
        # A token that is neither static nor signed goes to [auth.tokens] (builtin_auth).
        error = await auth_error(running, "no-such-token")
        assert (error.code, error.message) == ("auth_failed", "unknown token")


async def test_signed_tokens_and_their_refusals(tmp_path):
    async with plugin_daemon(tmp_path, **config()) as running:
        carol = await running.client(
            "Carol",
            credentials={
                "token": signed(name="Carol C", roles=["host"], verified={"email": "c@x"})
            },
        )
        assert (carol.user, carol.display_name) == ("carol", "Carol C")
        await carol.create_room("Carol's", room="carols")  # the host role allows it
        identity = running.daemon.server.sessions[carol.session].identity
        assert identity.verified == {"email": "c@x", "roles": "host"}

        cases = {
            signed(exp=time.time() - 3600): "token expired",
            signed(key="another secret, also long enough"): "token signature is invalid",
            signed(aud="somewhere-else"): "token was not issued for this server",
            signed(nbf=time.time() + 3600): "token is not valid yet",
            jwt.encode({"sub": "dave", "aud": "salon-test"}, SECRET): "token lacks the 'exp' claim",
            signed(sub="guest-0123456789ab"): "token names no valid user (sub)",
            signed(roles="host"): "token has malformed claims (name, roles or verified)",
            "aaa.bbb.ccc": "token is malformed",
        }
        for token, message in cases.items():
            error = await auth_error(running, token)
            assert (error.code, error.message) == ("auth_failed", message)


async def test_required_roles(tmp_path):
    async with plugin_daemon(tmp_path, **config()) as running:
        alice = await running.client("Alice", credentials={"token": "static-alice-token"})
        error = await refused(alice.create_room("Alice's"))
        assert (error.code, error.message) == (
            "denied_by_plugin",
            "create_room needs the 'host' role",
        )
        visitor = await running.client("Visitor", credentials=guest())
        error = await refused(visitor.create_room("Mine"))
        assert error.code == "denied_by_plugin"
        carol = await running.client("Carol", credentials={"token": signed(roles=["speaker"])})
        assert (await refused(carol.create_room("Carol's"))).code == "denied_by_plugin"


def key_pair(algorithm: str) -> tuple[Any, bytes]:
    """A private key for ``algorithm`` and its public key as PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    private: Any
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_public_key_tokens(tmp_path, algorithm):
    private, public = key_pair(algorithm)
    other, _ = key_pair(algorithm)
    key_file = tmp_path / "issuer.pem"
    key_file.write_bytes(public)
    overrides = config(**{"plugins.token_auth.jwt_public_key_file": str(key_file)})
    del overrides["plugins.token_auth.jwt_secret"]
    claims = {"sub": "erin", "exp": time.time() + 300, "aud": "salon-test", "name": "Erin"}
    async with plugin_daemon(tmp_path, **overrides) as running:
        erin = await running.client(
            "x", credentials={"token": jwt.encode(claims, private, algorithm=algorithm)}
        )
        assert (erin.user, erin.display_name) == ("erin", "Erin")
        forged = jwt.encode(claims, other, algorithm=algorithm)
        error = await auth_error(running, forged)
        assert (error.code, error.message) == ("auth_failed", "token signature is invalid")
        # The public key used as an HMAC secret (algorithm confusion) and unsigned tokens.
        for token in (
            hmac_token(claims, public),
            jwt.encode(claims, None, algorithm="none"),
        ):
            error = await auth_error(running, token)
            assert error.code == "auth_failed"
            assert error.message == "token is signed with an algorithm this server does not accept"


def hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with ``secret`` (PyJWT refuses PEM keys as HMAC secrets)."""
    import base64
    import hashlib
    import hmac
    import json

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{part(mac)}"


async def test_unsigned_tokens_are_refused_with_a_shared_secret(tmp_path):
    claims = {"sub": "mallory", "exp": time.time() + 300, "aud": "salon-test"}
    async with plugin_daemon(tmp_path, **config()) as running:
        error = await auth_error(running, jwt.encode(claims, None, algorithm="none"))
        assert error.code == "auth_failed"
        assert error.message == "token is signed with an algorithm this server does not accept"
