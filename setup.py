"""The optional C extension of the forwarding hot path (everything else is in pyproject.toml).

``salon.quic._speedups`` seals packets with OpenSSL and sends a tick's packets with one
``sendmmsg``; it is built when a C compiler, Python's headers and OpenSSL's headers are present
(``./run`` installs ``libssl-dev``). ``optional=True``: where it cannot be built the install still
succeeds and salond runs the same work in Python (it logs so once).
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(
        Extension(
            "salon.quic._speedups",
            sources=["quic/_speedups.c"],
            libraries=["crypto"],
            # The media link repeats aioquic's floating-point arithmetic: no fused multiply-adds,
            # so that each result is rounded as Python rounds it.
            extra_compile_args=["-ffp-contract=off"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
