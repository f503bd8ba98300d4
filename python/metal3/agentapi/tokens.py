"""Per-host agent tokens, as Ironic's agent token: random, given once, kept only as a hash.

A token is 32 random bytes in URL-safe base64 (43 characters, no padding). The operator stores
its SHA-256 (hex) in the host's agent record; comparing hashes in constant time means the
record never holds anything that would let a reader call the API as the host.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_token() -> tuple[str, str]:
    """A fresh token and its hash (the only form that is stored)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def well_formed(token: str) -> bool:
    """Whether ``token`` looks like one we issue (anything else is refused without a lookup)."""
    return bool(_TOKEN.match(token))


def matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` is the one whose hash is ``stored_hash`` (constant-time compare)."""
    if not stored_hash or not well_formed(token):
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None when absent/malformed."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not well_formed(credential):
        return None
    return credential
