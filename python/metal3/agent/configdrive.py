"""The config drive: an ISO 9660 file system labelled ``config-2``, as OpenStack writes it.

cloud-init's ConfigDrive datasource and ignition find it by its file system label and read
``openstack/latest/meta_data.json``, ``user_data`` and ``network_data.json``. The image has
Rock Ridge and Joliet records, so those lowercase names read as they are written whatever
extension a reader uses (the plain ISO 9660 names are their uppercase forms). Only the
``latest`` version directory is written: the readers above look there first.

``meta_data.json`` holds BareMetalHost's defaults for the host (uuid, name, hostname,
metal3-namespace, metal3-name, local-hostname, local_hostname) with the user's metaData
merged over them: the user's keys win.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pycdlib

from metal3.agent.errors import AgentError

LABEL = "config-2"
"""The file system label (ISO 9660 volume id) readers look for."""

MAX_SIZE = 64 << 20
"""The largest config drive written: the size of the partition that receives it."""

_DIRECTORY = "openstack/latest"


class ConfigDriveError(AgentError):
    """The config drive data cannot be written as given (the message says which part)."""


@dataclass(frozen=True)
class HostIdentity:
    """Who the host is in the cluster: its BareMetalHost's uid, namespace and name."""

    uuid: str
    namespace: str
    name: str


def meta_data_with_defaults(
    host: HostIdentity | None, meta_data: Mapping[str, Any] | None
) -> dict[str, Any]:
    """BareMetalHost's default meta data for `host`, with `meta_data` merged over it.

    Raises `ConfigDriveError` when the result has no ``uuid`` (neither a host nor the user's
    meta data gave one) or ``public_keys`` is not a mapping of key names to keys.
    """
    merged: dict[str, Any] = {}
    if host is not None:
        merged = {
            "uuid": host.uuid,
            "name": host.name,
            "hostname": host.name,
            "metal3-namespace": host.namespace,
            "metal3-name": host.name,
            "local-hostname": host.name,
            "local_hostname": host.name,
        }
    merged.update(meta_data or {})
    uuid = merged.get("uuid")
    if not isinstance(uuid, str) or not uuid:
        raise ConfigDriveError(
            "meta data needs a non-empty string uuid: give the host's identity or a uuid in "
            "metaData"
        )
    keys = merged.get("public_keys")
    if keys is not None and not (
        isinstance(keys, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())
    ):
        raise ConfigDriveError(
            "meta data public_keys must map key names to public keys (strings), as in "
            'OpenStack\'s meta_data.json: {"default": "ssh-ed25519 AAAA..."}'
        )
    return merged


def build_config_drive(
    *,
    meta_data: Mapping[str, Any],
    user_data: bytes | None = None,
    network_data: Mapping[str, Any] | None = None,
) -> bytes:
    """The config drive image: ``meta_data.json`` always, the other two files when given.

    `meta_data` is written as given (see `meta_data_with_defaults`); `user_data` byte for
    byte; `network_data` as JSON. Raises `ConfigDriveError` for data that is not JSON or
    for an image larger than `MAX_SIZE`.
    """
    files: list[tuple[str, bytes]] = [("meta_data.json", _json("meta data", meta_data))]
    if user_data is not None:
        files.append(("user_data", bytes(user_data)))
    if network_data is not None:
        files.append(("network_data.json", _json("network data", network_data)))
    given = sum(len(data) for _, data in files)
    if given > MAX_SIZE:
        raise ConfigDriveError(
            f"config drive data is {given} bytes; the config drive holds at most {MAX_SIZE}"
        )
    image = _iso9660(files)
    if len(image) > MAX_SIZE:
        raise ConfigDriveError(
            f"the config drive image is {len(image)} bytes; its partition holds {MAX_SIZE}"
        )
    return image


def _json(what: str, value: Mapping[str, Any]) -> bytes:
    if not isinstance(value, Mapping):
        raise ConfigDriveError(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        return orjson.dumps(dict(value))
    except TypeError as exc:
        raise ConfigDriveError(f"{what} is not JSON: {exc}") from exc


def _iso9660(files: list[tuple[str, bytes]]) -> bytes:
    """An ISO 9660 image labelled `LABEL` with `files` under `_DIRECTORY`."""
    # pycdlib has no annotations: its calls are checked through this one Any.
    iso = cast(Any, pycdlib.PyCdlib())
    iso.new(
        interchange_level=2,  # names up to 31 characters: META_DATA.JSON, NETWORK_DATA.JSON
        vol_ident=LABEL,
        joliet=3,
        rock_ridge="1.09",
        app_ident_str="metal3 agent",
    )
    path = ""
    for part in _DIRECTORY.split("/"):
        path += "/" + part
        iso.add_directory(path.upper(), rr_name=part, joliet_path=path)
    for name, data in files:
        iso_name = name.upper() if "." in name else name.upper() + "."
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/{_DIRECTORY.upper()}/{iso_name};1",
            rr_name=name,
            joliet_path=f"/{_DIRECTORY}/{name}",
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
