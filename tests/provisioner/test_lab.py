"""The lifecycle on `metal3 lab`, the way a user runs it: `metal3 lab up`, `metal3 standalone
--lab DIR`, `kubectl apply -f DIR/manifests/`; then provision, and delete. A Redfish host
(network boot), a Redfish virtual-media host and an IPMI host go register -> inspect ->
available -> provision -> provisioned -> deprovision -> deleted through the direct provisioner.

Judged by the lab and reference tools: what each host booted and what its "OS boot" found
(`os.json`: the config drive's host name and user data digest), the disks (`qemu-img convert`
reference bytes, `wipefs` after cleaning), the lab image server's access log (each image
fetched whole once), the BMCs' power (`state.json`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from apiserver.apiserver_kit import current_kubectl
from baremetalhost.kit import state
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, SECRETS
from provisioner.harness import ENV, SECTOR, make_qcow2, read_at, sh

pytestmark = pytest.mark.anyio

NAMESPACE = "lab-hosts"
GPT_HEAD = 34 * SECTOR
USER_DATA = b"#cloud-config\nwrite_files: [{path: /etc/lab, content: provisioned}]\n"


def metal3(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def start_standalone(
    data_dir: Path, lab_dir: Path, log: Path
) -> tuple[subprocess.Popen[str], Path]:
    out = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metal3", "standalone", "--data-dir", str(data_dir),
         "--listen", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--grace-period", "5",
         "--lab", str(lab_dir), "--agent-timeout", "180"],
        stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"^kubeconfig: (\S+)$", log.read_text(), re.MULTILINE)
        if match:
            return proc, Path(match.group(1))
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError("standalone did not start:\n" + log.read_text())


def lab_state(lab_dir: Path, host: str, name: str = "state.json") -> dict[str, Any]:
    return dict(json.loads((lab_dir / "hosts" / host / name).read_text()))


async def test_lifecycle_on_the_lab(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    image = await anyio.to_thread.run_sync(make_qcow2, tmp_path)
    started = time.monotonic()
    lab_up = ("lab", "up", "--hosts", "3", "--power-delay", "0", "--namespace", NAMESPACE)
    up = await anyio.to_thread.run_sync(lambda: metal3(*lab_up, "--data-dir", str(lab_dir)))
    timings = [("lab up", time.monotonic() - started)]
    proc: subprocess.Popen[str] | None = None
    try:
        assert up.returncode == 0, up.stderr
        lab = json.loads((lab_dir / "lab.json").read_text())
        hosts = {h["name"]: h for h in lab["hosts"] if h["registered"]}
        assert sorted(h["kind"] for h in hosts.values()) == [
            "ipmi",
            "redfish",
            "redfish-virtualmedia",
        ]
        shutil.copy(image.path, lab_dir / "images" / image.name)
        image_url = lab["images"]["url"].rstrip("/") + "/" + image.name

        mark = time.monotonic()
        proc, kubeconfig = await anyio.to_thread.run_sync(
            start_standalone, tmp_path / "standalone", lab_dir, tmp_path / "standalone.log"
        )
        apply = [current_kubectl(), "--kubeconfig", str(kubeconfig), "apply", "-f"]
        applied = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [*apply, str(lab_dir / "manifests")], capture_output=True, text=True, timeout=60
            )
        )
        assert applied.returncode == 0, applied.stderr
        async with await KubeClient.connect(str(kubeconfig)) as client:
            await _lifecycle(client, lab_dir, hosts, image_url, image, timings, mark)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        down = await anyio.to_thread.run_sync(
            lambda: metal3("lab", "down", "--data-dir", str(lab_dir))
        )
        assert down.returncode == 0, down.stderr
    log = (tmp_path / "standalone.log").read_text()
    assert "Traceback" not in log, log[-5000:]
    print("\n" + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings))


async def _wait(
    client: KubeClient, name: str, check: Any, what: str, timeout: float = 180.0
) -> dict[str, Any] | None:
    last: dict[str, Any] | None = None
    with anyio.move_on_after(timeout):
        while True:
            try:
                last = await client.get(BAREMETALHOSTS, NAMESPACE, name)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                last = None
            if check(last):
                return last
            await anyio.sleep(0.2)
    raise AssertionError(f"{name}: timed out waiting for {what}: {(last or {}).get('status')}")


async def _lifecycle(
    client: KubeClient,
    lab_dir: Path,
    hosts: dict[str, dict[str, Any]],
    image_url: str,
    image: Any,
    timings: list[tuple[str, float]],
    mark: float,
) -> None:
    def lap(what: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings.append((what, now - mark))
        mark = now

    for name in hosts:
        await client.create(
            SECRETS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-user-data", "namespace": NAMESPACE},
                "data": {"userData": base64.b64encode(USER_DATA).decode()},
            },
        )
    for name in hosts:
        await _wait(client, name, lambda o: state(o) == "available", "available")
    lap("register + inspect + clean (3 hosts)")
    for name, host in hosts.items():
        obj = await client.get(BAREMETALHOSTS, NAMESPACE, name)
        hardware = obj["status"]["hardware"]
        data = await client.get(HARDWAREDATA, NAMESPACE, name)
        assert data["spec"]["hardware"] == hardware
        assert {s["name"] for s in hardware["storage"]} == set(host["loop_devices"])
        assert host["boot_mac"] in {n["mac"] for n in hardware["nics"]}
        with anyio.fail_after(60):  # offline: the BMC powers it off
            while lab_state(lab_dir, name)["power"] != "off":
                await anyio.sleep(0.2)

    for name in hosts:
        await client.patch(
            BAREMETALHOSTS,
            NAMESPACE,
            name,
            {
                "spec": {
                    "online": True,
                    "image": {"url": image_url, "checksum": image.sha256,
                              "checksumType": "sha256", "format": "qcow2"},
                    "userData": {"name": f"{name}-user-data"},
                }
            },
        )  # fmt: skip
    reference = image.reference.read_bytes()
    disks: dict[str, str] = {}
    for name in hosts:
        await _wait(
            client, name,
            lambda o: state(o) == "provisioned" and bool((o or {})["status"].get("poweredOn")),
            "provisioned",
        )  # fmt: skip
        with anyio.fail_after(60):  # the lab boots "the OS" and records what it found
            while (lab_state(lab_dir, name).get("booted")) != "os":
                await anyio.sleep(0.2)
        found = lab_state(lab_dir, name, "os.json")
        assert found["booted"] is True
        assert found["hostname"] == name
        assert found["user_data_sha256"] == hashlib.sha256(USER_DATA).hexdigest()
        disks[name] = found["disk"]
        region = await anyio.to_thread.run_sync(read_at, Path(found["disk"]), 0, len(reference))
        assert region[GPT_HEAD:] == reference[GPT_HEAD:]
    lap("provision (3 hosts)")

    # Each host's image was fetched whole exactly once.
    size = image.path.stat().st_size
    log = [
        json.loads(line) for line in (lab_dir / "images" / "access.log").read_text().splitlines()
    ]
    whole = [e for e in log if e["path"] == f"/{image.path.name}" and e["status"] == 200
             and e["bytes"] == size]  # fmt: skip
    assert len(whole) == len(hosts), log

    for name in hosts:
        await client.delete(BAREMETALHOSTS, NAMESPACE, name)
    for name in hosts:
        await _wait(client, name, lambda o: o is None, "deletion")
    lap("deprovision + delete (3 hosts)")
    for name in hosts:
        assert lab_state(lab_dir, name)["power"] == "off"
        wiped = await anyio.to_thread.run_sync(
            lambda d=disks[name]: sh("wipefs", "--no-act", "--noheadings", d).stdout.decode()
        )
        assert wiped.strip() == "", (name, wiped)
