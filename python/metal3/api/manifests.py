"""Reading Kubernetes manifests (multi-document YAML) into plain JSON-compatible objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest file that is not a sequence of Kubernetes objects."""


def load_documents(text: str, source: str = "<string>") -> list[dict[str, Any]]:
    """Every non-empty YAML document in ``text``, each of which must be an object with a kind."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ManifestError(f"{source}: document {index} is not a Kubernetes object")
        objects.append(doc)
    return objects


def load_file(path: Path) -> list[dict[str, Any]]:
    return load_documents(path.read_text(), str(path))


def iter_folder(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, object) for every object in the folder's *.yaml files, in file name order."""
    for path in sorted(folder.glob("*.yaml")):
        for obj in load_file(path):
            yield path, obj
