"""API keys: random, shown once, stored only as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching needed):
a stolen table of hashes reveals no usable key, and lookup stays one indexed query."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "kelpie_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
