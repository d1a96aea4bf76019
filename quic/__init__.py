"""Salon's one seam onto aioquic's and asyncio's internals, shared by salond and the client.

Everything that reads or replaces a private attribute of aioquic or asyncio lives in this
package, and nowhere else (``tests/test_layering.py`` scans the other packages):

- :mod:`salon.quic.fastpath`: media sent in packets built beside aioquic's writer, registered
  with its loss recovery and congestion control;
- :mod:`salon.quic.protocol`: the QUIC protocols of both sides (server transmit with the fast
  path and its timer, the bounded hand-over to aioquic's datagram queue, the ACK-state PING,
  the client's delayed ACKs and immediate acknowledgement of control data, the peer's
  certificate and limits);
- :mod:`salon.quic.traffic`: the server socket's packet counters and batched, timed reader;
- :mod:`salon.quic.timers`: every server connection's QUIC timer in one heap behind one loop
  timer;
- :mod:`salon.quic.sendbatch`: the packets of one tick sent with one ``sendmmsg`` call.
- :mod:`salon.quic.ckeys`: the C extension's sealer and opener for an aioquic crypto context,
  checked once against aioquic's bytes (the fast path, the ACK path, the bench's listeners).
- ``salon.quic._speedups`` (``_speedups.c``, optional, built by ``setup.py``): packing, sealing
  and header protection of the fast path's packets, opening the ACK fast path's, and the
  ``sendmmsg`` call, in C; where it was not built the same work runs in Python.
- :mod:`salon.quic.h3`: WebTransport's HTTP/3 settings Safari needs, and the certificate a
  handshake presents chosen by its ALPN.

They were written and tested against one aioquic release, :data:`AIOQUIC_VERSION`, which
pyproject.toml pins; ``tests/test_quic_seam.py`` checks every internal this package relies on
and names the one that moved when aioquic is upgraded.
"""

from __future__ import annotations

import os
from typing import Any

import aioquic

AIOQUIC_VERSION = "1.7.2"
"""The aioquic release whose internals this package was written and tested against."""


def aioquic_matches() -> bool:
    """Whether the installed aioquic is the release this seam was written for."""
    return bool(aioquic.__version__ == AIOQUIC_VERSION)


C_EXTENSION_VARIABLE = "SALON_C_EXTENSION"
"""Set to ``0`` in salond's environment to run the Python paths although the C extension was
built (``bench/c_extension.py`` compares both)."""


def load_speedups() -> Any:
    """The optional C extension ``salon.quic._speedups``, or None: not built (no compiler or
    OpenSSL headers at install), or switched off with :data:`C_EXTENSION_VARIABLE`."""
    if os.environ.get(C_EXTENSION_VARIABLE, "1") == "0":
        return None
    try:
        from salon.quic import _speedups
    except ImportError:
        return None
    return _speedups
