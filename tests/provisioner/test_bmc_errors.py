"""A BMC that fails requests on its own side (HTTP 500) while the direct provisioner powers a
host on: the provisioner asks again a moment later, and the host gets powered on with no error
ever recorded in its status (before, the first 500 failed the step: under load, a provisioning
lost that way was redone from the start, image and all).

The 500s are sushy-tools' own. A system with an external notifier makes the emulator send
every state change to the receiver before it answers; with the receiver down, the change is
stored but the request that made it (or applied it: a read of a due power change) is answered
500, as under load its 'database is locked' errors were. With the default `bmc_wait` the
power request's 500 reaches the step at once; with `bmc_wait` near 0 each call finishes in the
background and the step finds its outcome on a later reconcile.
"""

from __future__ import annotations

import http.server
import logging
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from baremetalhost.kit import cluster, state
from metal3.bmc.emulators import FakeSystem, SushyEmulator, free_port
from metal3.kube.resources import BAREMETALHOSTS, SECRETS
from metal3.provisioner.direct.settings import DirectSettings
from provisioner.harness import bare_metal_host, bmc_secret, direct_operator

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Busy-pw-7"
NAME = "busy"


class Receiver:
    """The notifier's receiver on a fixed port, up (answers 200) or down (refuses)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def up(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def powered(obj: dict[str, Any] | None) -> bool | None:
    return ((obj or {}).get("status") or {}).get("poweredOn")  # type: ignore[no-any-return]


@pytest.mark.parametrize("bmc_wait", [2.0, 0.001])
async def test_a_bmc_500_while_powering_on_is_asked_again_not_an_error(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bmc_wait: float,
) -> None:
    caplog.set_level(logging.WARNING, logger="metal3.provisioner.direct.provisioner")
    settings = replace(DirectSettings(), bmc_wait=bmc_wait, poll_interval=0.2)
    system = FakeSystem(
        name=NAME, nics=(("52:54:00:97:00:01", "10.7.0.1"),), external_notifier=True
    )
    receiver = Receiver()
    receiver.up()
    errors: list[tuple[str, str]] = []
    try:
        with SushyEmulator(
            [system], users={USER: PASSWORD}, power_delay=0, notify_url=receiver.url
        ) as redfish:
            async with (
                cluster(kubeconfig, namespace) as c,
                direct_operator(kubeconfig, namespace, tmp_path / "tls", settings),
            ):
                await c.client.create(SECRETS, bmc_secret(f"{NAME}-bmc", namespace, USER, PASSWORD))
                manifest = bare_metal_host(
                    NAME, namespace, redfish.address(system), system.nics[0][0],
                    online=False, externallyProvisioned=True,
                )  # fmt: skip
                await c.client.create(BAREMETALHOSTS, manifest)
                await c.wait_for(
                    NAME,
                    lambda o: state(o) == "externally provisioned" and powered(o) is False,
                    what="externally provisioned and off",
                )

                async def watch(*, task_status: Any) -> None:
                    _, version = await c.client.list(BAREMETALHOSTS, namespace)
                    task_status.started()
                    while True:
                        async for event in c.client.watch(
                            BAREMETALHOSTS, namespace, resource_version=version, timeout_seconds=60
                        ):
                            version = event.object["metadata"].get("resourceVersion", version)
                            status = event.object.get("status") or {}
                            if status.get("errorType") or status.get("errorMessage"):
                                errors.append((status["errorType"], status.get("errorMessage")))

                async with anyio.create_task_group() as group:
                    await group.start(watch)
                    receiver.down()  # from now on, each power change is answered 500
                    await c.patch(NAME, {"spec": {"online": True}})
                    obj = await c.wait_for(NAME, lambda o: powered(o) is True, timeout=60)
                    group.cancel_scope.cancel()
                assert obj is not None
                assert (await anyio.to_thread.run_sync(_power_state, redfish, system)) == "On"
                emulator_log = redfish.log_tail(200_000)
    finally:
        receiver.down()
    # The test's premise: the emulator answered the power request 500.
    assert re.search(r'ComputerSystem\.Reset HTTP/1\.1\S*" 500 ', emulator_log), emulator_log[
        -3000:
    ]
    retried = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert all(f"{NAME}: power on: " in m and "500" in m for m in retried), retried
    if bmc_wait >= 1.0:  # the request's own answer: the 500, taken as one to ride out
        assert retried
    assert errors == [], errors  # no error in the host's status, ever
    assert obj["status"].get("errorCount", 0) == 0, obj["status"]


def _power_state(redfish: SushyEmulator, system: FakeSystem) -> str:
    import base64
    import json
    import urllib.request

    request = urllib.request.Request(f"{redfish.url}{system.path}")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return str(json.loads(response.read())["PowerState"])
