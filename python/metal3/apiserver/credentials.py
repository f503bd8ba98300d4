"""First-start credentials in the data directory: a CA and a serving certificate for
127.0.0.1/localhost, a bearer token, and the kubeconfig clients use."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from metal3.tls import TLSFiles, make_tls_files, write_private


@dataclass(frozen=True)
class Credentials:
    token: str
    ca_cert: Path
    server_cert: Path
    server_key: Path


def ensure_credentials(data_dir: Path, hosts: list[str]) -> Credentials:
    """Create what is missing (never overwrite: clients keep working across restarts)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = data_dir / "token"
    if not token_file.exists():
        write_private(token_file, secrets.token_urlsafe(32).encode())
    token = token_file.read_text().strip()
    ca_cert, server_cert, server_key = (
        data_dir / "ca.crt",
        data_dir / "apiserver.crt",
        data_dir / "apiserver.key",
    )
    if not (ca_cert.exists() and server_cert.exists() and server_key.exists()):
        make_tls_files(
            TLSFiles(ca_cert, server_cert, server_key),
            hosts,
            ca_common_name="metal3-apiserver-ca",
            server_common_name="metal3-apiserver",
            days=3650,
        )
    return Credentials(token, ca_cert, server_cert, server_key)


def write_kubeconfig(path: Path, server: str, token: str, ca_cert: Path | None) -> None:
    cluster: dict[str, str] = {"server": server}
    if ca_cert is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "metal3", "cluster": cluster}],
        "users": [{"name": "metal3-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "metal3",
                "context": {"cluster": "metal3", "user": "metal3-admin", "namespace": "default"},
            }
        ],
        "current-context": "metal3",
        "preferences": {},
    }
    write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
