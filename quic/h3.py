"""The aioquic internals salond's WebTransport support relies on (see :mod:`salon.quic`):

- :class:`SalonH3Connection` adds the WebTransport settings Safari requires and aioquic 1.7.2
  does not send (aioquic issue #644) by extending ``H3Connection._get_local_settings``;
- :func:`present_certificate_for_alpn` swaps the certificate a TLS handshake presents once the
  ALPN is known, through ``QuicConnection._alpn_handler`` and ``tls.Context.certificate``.
"""

from __future__ import annotations

from typing import Any

from aioquic.h3.connection import H3Connection
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

WT_MAX_SESSIONS = 0x14E9CD29
"""``SETTINGS_WT_MAX_SESSIONS`` of draft-ietf-webtrans-http3-13/14, which Safari 26.4+ requires."""
WT_MAX_SESSIONS_DRAFT07 = 0xC671706A
"""The same setting's codepoint in drafts 07 to 12, which other WebKit builds look for."""


class SalonH3Connection(H3Connection):
    """aioquic's HTTP/3 connection announcing at most one WebTransport session.

    The value 1 (one session per connection, which is what salond accepts) needs none of the
    session flow-control settings that larger values imply.
    """

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[WT_MAX_SESSIONS] = 1
        settings[WT_MAX_SESSIONS_DRAFT07] = 1
        return settings


def present_certificate_for_alpn(
    quic: QuicConnection,
    alpn: str,
    certificate: x509.Certificate,
    private_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Make a server connection present ``certificate`` when the handshake agrees on ``alpn``.

    aioquic calls the ALPN handler after choosing the ALPN and before writing the Certificate
    message, and chose the signature algorithm from the configured key before that: both keys
    must be ECDSA P-256, which the caller checks with :func:`can_swap_to`.
    """
    original = quic._alpn_handler

    def on_alpn(protocol: str) -> None:
        if protocol == alpn:
            quic.tls.certificate = certificate
            quic.tls.certificate_private_key = private_key
        original(protocol)

    # QuicConnection._initialize installs self._alpn_handler as the TLS ALPN callback; an
    # instance attribute shadows the method for this connection only.
    setattr(quic, "_alpn_handler", on_alpn)  # noqa: B010


def can_swap_to(configured_key: Any, key: Any) -> bool:
    """Whether a handshake signing with ``configured_key`` may switch to ``key`` after ALPN."""
    return all(
        isinstance(k, ec.EllipticCurvePrivateKey) and isinstance(k.curve, ec.SECP256R1)
        for k in (configured_key, key)
    )
