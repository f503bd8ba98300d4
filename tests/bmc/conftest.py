"""Real BMC peers for the BMC tests, each started once per session on 127.0.0.1.

- `redfish`: sushy-tools' emulator (fake driver), six systems with NICs and drives, HTTP basic
  auth from a bcrypt users file;
- `redfish_tls`: the same behind TLS signed by a private CA;
- `ipmi_sim`: our pyghmi-based IPMI simulator in its own process;
- `file_server`: a plain HTTP server for virtual media images.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from metal3.bmc.emulators import IPMISimulator, SushyEmulator, fake_systems

REDFISH_USER = "admin"
REDFISH_PASSWORD = "Redfish-pw-42"
IPMI_USER = "root"
IPMI_PASSWORD = "Ipmi-pw-17"


@pytest.fixture(scope="session")
def redfish() -> Iterator[SushyEmulator]:
    emulator = SushyEmulator(fake_systems(6, drives=2), users={REDFISH_USER: REDFISH_PASSWORD})
    with emulator:
        yield emulator


@pytest.fixture(scope="session")
def redfish_tls() -> Iterator[SushyEmulator]:
    emulator = SushyEmulator(
        fake_systems(1, prefix="tls"), users={REDFISH_USER: REDFISH_PASSWORD}, tls=True
    )
    with emulator:
        yield emulator


@pytest.fixture(scope="session")
def ipmi_sim() -> Iterator[IPMISimulator]:
    with IPMISimulator(users={IPMI_USER: IPMI_PASSWORD, "operator": "op-pw"}) as sim:
        yield sim


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, directory) of a local HTTP file server."""
    root = tmp_path_factory.mktemp("www")

    def handler(*args: object, **kwargs: object) -> _QuietHandler:
        return _QuietHandler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
