"""The RTP timeline: 16-bit sequence numbers and 32-bit timestamps extended past their wrap."""

from __future__ import annotations

from salon.daemon.wire.rtp import uint16_gt, uint32_gt


def unwrap(value: int, reference: int, bits: int) -> int:
    """Extend a ``bits``-wide wrapping counter to the unbounded value nearest ``reference``."""
    modulus = 1 << bits
    mask = modulus - 1
    ahead = uint16_gt if bits == 16 else uint32_gt
    if ahead(value, reference & mask):
        return reference + ((value - reference) & mask)
    return reference - ((reference - value) & mask)
