"""The exception raised by the binary wire parsers."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes received from the network do not form a valid varint, datagram, RTP packet or frame.

    It is the only exception the parsers in :mod:`salon.daemon.wire` raise on malformed input, so
    a caller handling untrusted bytes needs to catch nothing else.
    """
