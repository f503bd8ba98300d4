"""`DIR/manifests/NAME.yaml`: a BareMetalHost and its BMC credentials Secret per registered host,
ready for `kubectl apply -f DIR/manifests/`.

Each host starts `online: false` (registration and inspection need no more); the BMC address
points at the lab's emulator or simulator on 127.0.0.1 and the Secret holds the lab's own
credentials for it. Outside the `default` namespace each file starts with the Namespace, so
applying the folder needs nothing else. Files are owner-only: they hold passwords.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from metal3.lab.profiles import VM_PROFILE
from metal3.lab.state import LabHost


def secret_name(host: str) -> str:
    return f"{host}-bmc-secret"


def host_documents(host: LabHost, namespace: str) -> list[dict[str, Any]]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    documents: list[dict[str, Any]] = []
    if namespace != "default":
        documents.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    documents.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret_name(host.name), "namespace": namespace},
            "type": "Opaque",
            "data": {"username": b64(host.username), "password": b64(host.password)},
        }
    )
    documents.append(
        {
            "apiVersion": "metal3.io/v1alpha1",
            "kind": "BareMetalHost",
            "metadata": {
                "name": host.name,
                "namespace": namespace,
                "labels": {"lab.metal3.io/profile": host.profile},
            },
            "spec": {
                "online": False,
                "bootMACAddress": host.boot_mac,
                "bmc": {
                    "address": host.bmc_address,
                    "credentialsName": secret_name(host.name),
                },
            },
        }
    )
    if host.vm is not None:
        # The VMs start by BIOS (SeaBIOS). Left to the BareMetalHost default (UEFI), a Redfish
        # BMC switches the domain to OVMF at the first boot request, where the agent ISO
        # (ISOLINUX, BIOS only) does not start.
        documents[-1]["spec"]["bootMode"] = "UEFI" if VM_PROFILE.uefi else "legacy"
    return documents


def write_host_manifest(path: Path, host: LabHost, namespace: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# lab host {host.name} ({host.kind}, profile {host.profile}): metal3 lab up\n"
    text = header + yaml.safe_dump_all(host_documents(host, namespace), sort_keys=False)
    fd_path = path.with_name(f".{path.name}.tmp")
    fd_path.touch(mode=0o600)
    fd_path.chmod(0o600)
    fd_path.write_text(text)
    fd_path.replace(path)
