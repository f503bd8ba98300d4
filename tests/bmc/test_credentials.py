"""Credentials from a Secret: data (base64) and stringData, validation, no secret in errors."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from metal3.bmc.credentials import Credentials, credentials_from_secret
from metal3.bmc.errors import BMCCredentialsError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(data: dict[str, Any] | None = None, string_data: dict[str, Any] | None = None) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bmc-creds", "namespace": "metal3"},
    }
    if data is not None:
        obj["data"] = data
    if string_data is not None:
        obj["stringData"] = string_data
    return obj


def test_data_is_base64_decoded() -> None:
    creds = credentials_from_secret(secret({"username": b64("admin"), "password": b64("pä ss")}))
    assert creds == Credentials("admin", "pä ss")


def test_string_data_wins_over_data() -> None:
    creds = credentials_from_secret(
        secret({"username": b64("old"), "password": b64("old-pw")}, {"password": "new-pw"})
    )
    assert creds.username == "old"
    assert creds.password == "new-pw"


def test_values_are_kept_exactly_and_whitespace_is_reported() -> None:
    creds = credentials_from_secret(secret({"username": b64("admin"), "password": b64("pw\n")}))
    assert creds.password == "pw\n"
    assert creds.warnings() == ["the password has leading or trailing whitespace (a newline?)"]
    assert Credentials("a", "b").warnings() == []


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (secret({"username": b64("admin")}), "missing key(s): password"),
        (secret(), "missing key(s): username, password"),
        (
            secret({"username": b64("  "), "password": b64("pw")}),
            "empty value for key(s): username",
        ),
        (
            secret(string_data={"username": "admin", "password": ""}),
            "empty value for key(s): password",
        ),
        (secret({"username": 5, "password": b64("pw")}), "data.username is not a base64 string"),
        (secret(string_data={"username": ["x"], "password": "y"}), "stringData.username is not"),
        (secret({"username": "admin", "password": "%%%"}), "not valid base64"),
    ],
)
def test_unusable_secrets(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BMCCredentialsError) as info:
        credentials_from_secret(obj)
    assert fragment in str(info.value)
    assert "Secret metal3/bmc-creds" in str(info.value)


def test_bad_base64_does_not_echo_the_value() -> None:
    with pytest.raises(BMCCredentialsError) as info:
        credentials_from_secret(secret({"username": b64("admin"), "password": "s3cr3t!!"}))
    assert "s3cr3t" not in str(info.value)
    assert "data.password" in str(info.value)


def test_repr_hides_the_password() -> None:
    creds = Credentials("admin", "topsecret")
    assert "topsecret" not in repr(creds)
    assert "admin" in repr(creds)
