"""Salon's bundled plugins, each registered as an entry point of the ``salon.plugins`` group.

| name | what it does | loaded |
| --- | --- | --- |
| ``builtin_auth`` | guests (by key) and ``[auth.tokens]`` static tokens | always (``trylast``) |
| ``join_flood`` | per-address and per-room limits on joins and knocks | always |
| ``token_auth`` | static tokens with profiles and roles; signed tokens (JWT) | when enabled |
| ``approval`` | auto-approves allow-listed or known users, annotates first visits | when enabled |
| ``text_filter`` | refuses or masks listed words in titles, descriptions, topics | when enabled |
| ``topic_directory`` | curated topics, aliases, discovery ranking | when enabled |
| ``webhooks`` | HMAC-signed event POSTs with retries, from a worker thread | when enabled |
| ``floor_control`` | hand queue auto-advance, timed turns, one speaker at a time | when enabled |
"""
