"""Salon's media library: Opus, SRTP, the RTP timeline, levels, mixing and the jitter buffer.

Shared by the reference client, salond's recorder and its loudness monitor, so that none of them
depends on another: the daemon never imports the client. Built only on the wire format
(:mod:`salon.daemon.wire`), which imports nothing of the daemon's runtime.
"""
