"""`--lab DIR`: the direct provisioner wired to a lab made by `metal3 lab up --data-dir DIR`.

Everything comes from `DIR/lab.json` (written last by `lab up`, so its presence means the lab
is ready): the agent API's listen address and TLS files (the lab's hosts reach it through the
lab's relay at `agent_api.lab_address`, and trust the lab's CA), and the agent's boot media:
the ISO BMCs download for virtual media (`agent_iso_url`), and network boot, which the lab
serves itself to hosts that boot from the network (or, when lab.json names them, from
`agent_kernel_url`/`agent_initramfs_url`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metal3.provisioner.direct.settings import AgentBootMedia

LAB_FILE = "lab.json"
LAB_VERSION = 1


class LabError(ValueError):
    """DIR holds no usable lab; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class LabConfig:
    directory: Path
    agent_listen: str  # HOST:PORT the operator's agent API listens on
    agent_lab_address: str  # HOST:PORT the lab's hosts dial (relayed to agent_listen)
    ca_file: Path
    cert_file: Path
    key_file: Path
    agent_iso_url: str | None
    agent_kernel_url: str | None = None
    agent_initramfs_url: str | None = None

    @property
    def boot_media(self) -> AgentBootMedia:
        return AgentBootMedia(
            iso_url=self.agent_iso_url,
            kernel_url=self.agent_kernel_url,
            initramfs_url=self.agent_initramfs_url,
            network_boot_server=f"the lab in {self.directory}",
        )

    @classmethod
    def load(cls, directory: Path) -> LabConfig:
        path = directory / LAB_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(
                f"{path} not found: is a lab up there? (`metal3 lab up --data-dir {directory}`)"
            ) from None
        except (OSError, ValueError) as exc:
            raise LabError(f"{path}: cannot read it: {exc}") from None
        if not isinstance(raw, dict):
            raise LabError(f"{path}: not a JSON object")
        if raw.get("version") != LAB_VERSION:
            raise LabError(f"{path}: version {raw.get('version')!r}, expected {LAB_VERSION}")
        _check_running(path, raw.get("supervisor_pid"))
        api = _object(path, raw, "agent_api")
        return cls(
            directory=directory,
            agent_listen=_text(path, api, "agent_api.listen"),
            agent_lab_address=_text(path, api, "agent_api.lab_address"),
            ca_file=_file(path, api, "agent_api.ca_file"),
            cert_file=_file(path, api, "agent_api.cert_file"),
            key_file=_file(path, api, "agent_api.key_file"),
            agent_iso_url=_optional_text(path, raw, "agent_iso_url"),
            agent_kernel_url=_optional_text(path, raw, "agent_kernel_url"),
            agent_initramfs_url=_optional_text(path, raw, "agent_initramfs_url"),
        )


def _check_running(path: Path, pid: Any) -> None:
    if not isinstance(pid, int) or pid <= 0:
        raise LabError(f"{path}: supervisor_pid must be a process id, not {pid!r}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise LabError(
            f"the lab in {path.parent} is not running (its supervisor, pid {pid}, is gone): "
            f"`metal3 lab up --data-dir {path.parent}` starts it again"
        ) from None
    except PermissionError:
        pass  # it exists, as another user's process


def _object(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise LabError(f"{path}: {key} must be an object")
    return value


def _text(path: Path, raw: dict[str, Any], dotted: str) -> str:
    value = raw.get(dotted.rpartition(".")[2])
    if not isinstance(value, str) or not value:
        raise LabError(f"{path}: {dotted} must be a non-empty string")
    return value


def _optional_text(path: Path, raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise LabError(f"{path}: {key} must be a non-empty string when given")
    return value


def _file(path: Path, raw: dict[str, Any], dotted: str) -> Path:
    file = Path(_text(path, raw, dotted))
    if not file.is_file():
        raise LabError(f"{path}: {dotted} {file} is not a file")
    return file
