"""Restart safety: `metal3 operator` (the direct provisioner, as a process) is killed with
SIGKILL while a host's agent inspects, and again in the middle of its deploy (the image
server holds the transfer half way); each time a new operator process takes over. The host
ends provisioned, booted from its disk, with its image fetched and written exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from baremetalhost.kit import cluster, state
from loopdev import LoopDevices
from metal3.agentapi.server import ensure_tls
from metal3.bmc.emulators import FakeSystem, SushyEmulator, free_port
from metal3.kube.resources import BAREMETALHOSTS, SECRETS
from provisioner.harness import (
    ENV,
    SECTOR,
    AgentSetup,
    Disk,
    Image,
    ImageServer,
    MiB,
    Notifications,
    PlayedHost,
    RedfishView,
    bare_metal_host,
    bmc_secret,
    make_qcow2,
    make_sysroot,
    played,
    read_at,
)

pytestmark = pytest.mark.anyio

USER, PASSWORD = "admin", "Restart-pw-4"
GPT_HEAD = 34 * SECTOR


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    hub = Notifications()
    yield hub
    hub.close()


class OperatorProcess:
    """`metal3 operator` as the user runs it; its output is kept across restarts."""

    def __init__(self, kubeconfig: Path, namespace: str, tls_dir: Path, log: Path) -> None:
        self.tls = ensure_tls(tls_dir, "127.0.0.1")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = log
        self.argv = [
            sys.executable, "-m", "metal3", "operator", "--kubeconfig", str(kubeconfig),
            "--namespace", namespace, "--health-addr", "127.0.0.1:0", "--grace-period", "2",
            "--agent-listen", f"127.0.0.1:{self.port}", "--agent-cert", str(self.tls.cert),
            "--agent-key", str(self.tls.key), "--agent-kernel-url", "http://127.0.0.1:9/kernel",
            "--agent-initramfs-url", "http://127.0.0.1:9/initramfs", "--agent-timeout", "120",
            "--log-level", "DEBUG",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=ENV)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def test_sigkill_while_inspecting_and_mid_deploy_writes_the_image_once(
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    loop_devices: LoopDevices,
    notifications: Notifications,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image: Image = make_qcow2(images)
    server = ImageServer(images)
    server.hold(image.name, 16 * MiB)
    system = FakeSystem(
        name="rs", nics=(("52:54:00:ff:00:01", "10.3.0.1"),), external_notifier=True
    )
    disk = Disk(loop_devices.new(4 * 1024 * MiB), "LAB SSD", "rs-1", rotational=False)
    sysroot = make_sysroot(tmp_path / "sysroot", system.nics[0][0], [disk])
    operator = OperatorProcess(kubeconfig, namespace, tmp_path / "tls", tmp_path / "operator.log")
    started = time.monotonic()
    timeline: list[tuple[str, float]] = []
    try:
        with SushyEmulator(
            [system], users={USER: PASSWORD}, power_delay=1, notify_url=notifications.redfish_url
        ) as redfish:
            view = RedfishView(redfish, system, USER, PASSWORD)
            agent = AgentSetup(operator.url, operator.tls.ca_cert)
            player = PlayedHost("rs", view, system.nics[0][0], sysroot, tmp_path / "host", agent)
            async with cluster(kubeconfig, namespace) as c:
                with played(notifications, [player]):
                    operator.start()
                    await c.client.create(SECRETS, bmc_secret("rs-bmc", namespace, USER, PASSWORD))
                    manifest = bare_metal_host(
                        "rs", namespace, redfish.address(system), system.nics[0][0],
                        online=True,
                        image={"url": server.url(image.name), "checksum": image.sha256,
                               "checksumType": "sha256", "format": "qcow2"},
                    )  # fmt: skip
                    await c.client.create(BAREMETALHOSTS, manifest)

                    # Kill 1: the agent has booted for inspection.
                    with anyio.fail_after(60):
                        while not player.boots:
                            await anyio.sleep(0.05)
                    operator.kill()
                    timeline.append(("killed while inspecting", time.monotonic() - started))
                    operator.start()

                    # Kill 2: half way through the image.
                    with anyio.fail_after(120):
                        while not server.reached.is_set():
                            await anyio.sleep(0.05)
                    obj = await c.get("rs")
                    assert state(obj) == "provisioning"
                    operator.kill()
                    timeline.append(("killed mid-deploy", time.monotonic() - started))
                    operator.start()
                    server.release()

                    obj = await c.wait_for(
                        "rs",
                        lambda o: (
                            state(o) == "provisioned" and bool((o or {})["status"].get("poweredOn"))
                        ),
                        timeout=120,
                        what="provisioned",
                    )
                    timeline.append(("provisioned", time.monotonic() - started))
                    seen = await anyio.to_thread.run_sync(view.read)
                    assert seen.on and seen.boot == "disk"
                    reference = image.reference.read_bytes()
                    region = await anyio.to_thread.run_sync(
                        read_at, disk.device.path, 0, len(reference)
                    )
                    assert region[GPT_HEAD:] == reference[GPT_HEAD:]
                    await c.delete("rs")
                    await c.wait_gone("rs", timeout=120)
                    timeline.append(("deleted", time.monotonic() - started))
    finally:
        operator.stop()
        server.close()
    print("\n" + ", ".join(f"{what} at {when:.1f} s" for what, when in timeline))
    log = operator.log.read_text(errors="replace")
    assert operator.starts == 3
    assert "Traceback" not in log, log[-6000:]
    # The image was fetched whole once: the deploy cut off by the kill was not started again.
    assert server.complete_gets(image.name) == 1, server.requests
    assert player.boots[-2:] == ["disk", "agent"], player.boots  # the OS, then deprovisioning
    deploys = player.agent_logs().count("running deploy")
    assert deploys == 1, player.agent_logs()[-5000:]
