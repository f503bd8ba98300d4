"""Agent tokens: 32 random bytes, given once, kept only as their SHA-256."""

from __future__ import annotations

import base64
import hashlib

import pytest

from metal3.agentapi.tokens import bearer_token, matches, new_token, token_hash, well_formed


def test_a_token_is_32_random_bytes_and_only_its_sha256_is_kept() -> None:
    token, digest = new_token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in digest
    assert len({new_token()[0] for _ in range(200)}) == 200


def test_matches_only_the_token_the_hash_was_made_from() -> None:
    token, digest = new_token()
    other, other_digest = new_token()
    assert matches(token, digest)
    assert not matches(other, digest)
    assert not matches(token, other_digest)
    assert not matches(token, "")  # the host holds no token: nothing matches
    assert not matches(token[:-1], token_hash(token[:-1]))  # not a token we issue


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer short", None),
        ("Bearer " + "a" * 44, None),
        ("Bearer " + "a" * 42 + "=", None),
        ("Bearer " + "A" * 43, "A" * 43),
        ("bearer  " + "-_" * 21 + "x", "-_" * 21 + "x"),
    ],
)
def test_bearer_token_takes_only_well_formed_tokens(
    header: str | None, expected: str | None
) -> None:
    assert bearer_token(header) == expected
    if expected is not None:
        assert well_formed(expected)
