"""Fixtures for the API type tests: the generated CRD schemas on disk."""

from __future__ import annotations

from typing import Any

import pytest

from api.examples import crd_schema


@pytest.fixture(scope="session")
def bmh_schema() -> dict[str, Any]:
    return crd_schema("baremetalhosts")


@pytest.fixture(scope="session")
def hd_schema() -> dict[str, Any]:
    return crd_schema("hardwaredata")
