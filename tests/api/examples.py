"""Example manifests and generated CRDs, as the API tests read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from metal3.api.manifests import iter_folder

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRDS = REPO / "crds"


def crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"metal3.io_{plural}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def valid_examples() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{o['kind']}/{o['metadata']['name']}", o) for p, o in iter_folder(EXAMPLES)]


def invalid_examples() -> list[Path]:
    return sorted((EXAMPLES / "invalid").glob("*.yaml"))
