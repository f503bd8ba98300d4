"""The agent ramdisk, built and booted for real: `metal3 ramdisk build` (from the cache after
the first run), then a TCG virtual machine boots its kernel and initramfs with a virtio NIC on
a bridge in a network namespace (DHCP from dnsmasq there, or a static address from the kernel
command line) and two virtio disks, and finds the operator's agent API (TLS, discovery on)
from the kernel command line. Asserted on the API's side: the lookup carries the VM's MAC and
SMBIOS UUID, and the discovered BareMetalHost's hardware lists the VM's NIC and disks as the
qemu command line made them. And the ISO boots from a virtual CD."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from metal3.agentapi.app import AgentApi
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, AgentServer, ensure_tls
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, NAMESPACES
from metal3.lab.network import in_namespace
from metal3.ramdisk.build import BuildOptions, BuildResult, build
from metal3.ramdisk.cache import default_cache_dir
from metal3.ramdisk.iso import make_iso
from ramdisk.vm import Network, VirtualMachine, boot, vm_network

BOOT_TIMEOUT = 420.0  # TCG on a loaded 2-core machine: ~1 minute when idle


@pytest.fixture(scope="module")
def ramdisk(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The ramdisk, from the shared cache (~/.cache/metal3) when it holds it."""
    return build(
        BuildOptions(output=tmp_path_factory.mktemp("ramdisk"), cache_dir=default_cache_dir())
    )


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with vm_network(tmp_path) as net:
        yield net


@dataclass
class ServedApi:
    client: KubeClient
    url: str
    ca_pem: bytes
    lookups: list[tuple[float, list[str], dict[str, Any]]] = field(default_factory=list)


@asynccontextmanager
async def agent_api(
    network: Network, kubeconfig: Path, namespace: str, folder: Path
) -> AsyncIterator[ServedApi]:
    """The agent API with discovery into ``namespace``, listening on the bridge's gateway
    address inside the namespace only (its socket is made there)."""
    address = network.lab.gateway
    tls = ensure_tls(folder / "tls", address)
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        api = AgentApi(
            client,
            rate_limit=RateLimit(rate=0),
            discovery=DiscoveryOptions(namespace=namespace),
        )
        served = ServedApi(client, "", tls.ca_cert.read_bytes())
        lookup = api.discovery.lookup

        def recording_lookup(macs: set[str], body: Any) -> Any:
            served.lookups.append((time.monotonic(), sorted(macs), dict(body)))
            return lookup(macs, body)

        api.discovery.lookup = recording_lookup  # type: ignore[method-assign]
        options = AgentApiOptions(listen=f"{address}:0", cert_file=tls.cert, key_file=tls.key)
        server = in_namespace(network.namespace, lambda: AgentServer(options, api))
        served.url = server.url
        async with anyio.create_task_group() as tg:
            tg.start_soon(api.run)
            tg.start_soon(server.serve)
            with anyio.fail_after(15):
                while not (api.hosts.synced and server.server.started):
                    await anyio.sleep(0.05)
            try:
                yield served
            finally:
                server.stop()
                await anyio.sleep(0.5)
                tg.cancel_scope.cancel()


def _tail(vm: VirtualMachine, lines: int = 40) -> str:
    return "\n".join(vm.console_text().splitlines()[-lines:])


def _record(figures: dict[str, Any]) -> None:
    """The measured figures, for the closing notes (shown with `pytest -s`)."""
    print(f"ramdisk figures: {json.dumps(figures, sort_keys=True)}")


@pytest.mark.anyio
# DHCP is what every lab VM uses: tests/provisioner/test_vm_e2e.py's IPMI VM boots this
# ramdisk by DHCP through the whole lifecycle, so only the kernel-line addressing runs here.
@pytest.mark.parametrize("addressing", ["static"])
async def test_ramdisk_agent_discovers_the_vm(
    addressing: str,
    ramdisk: BuildResult,
    network: Network,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    async with agent_api(network, kubeconfig, namespace, tmp_path) as api:
        ca = base64.b64encode(api.ca_pem).decode()
        append = f"console=ttyS0 panic=-1 metal3.agent_api={api.url} metal3.agent_ca={ca}"
        static = network.lab.gateway.rsplit(".", 1)[0] + ".50"  # outside the DHCP range
        if addressing == "static":
            append += f" metal3.ip={static}/24 metal3.gateway={network.lab.gateway}"
        vm = boot(
            network, tmp_path, kernel=ramdisk.kernel, initramfs=ramdisk.initramfs, append=append
        )
        try:
            hosts: list[dict[str, Any]] = []
            with anyio.move_on_after(BOOT_TIMEOUT):
                while not hosts:
                    assert vm.process.poll() is None, f"qemu exited:\n{_tail(vm)}"
                    await anyio.sleep(1)
                    hosts, _ = await api.client.list(BAREMETALHOSTS, namespace)
            assert hosts, f"no host discovered in {BOOT_TIMEOUT:.0f} s; console:\n{_tail(vm)}"
            host = hosts[0]
            hardware_data = await api.client.get(HARDWAREDATA, namespace, host["metadata"]["name"])
        finally:
            vm.stop()
    console = vm.console_text()

    # The lookup, as the agent API received it: the VM's MAC and SMBIOS UUID.
    assert api.lookups, "the agent API saw no lookup"
    looked_up_at, macs, body = api.lookups[0]
    assert macs == [vm.mac]
    assert body.get("system_uuid") == vm.system_uuid

    # Its inventory, as discovery recorded it: the NIC and the disks qemu was given.
    assert host["spec"]["bootMACAddress"] == vm.mac
    hardware = hardware_data["spec"]["hardware"]
    nics = hardware["nics"]
    assert [nic["mac"] for nic in nics] == [vm.mac]
    if addressing == "static":
        assert nics[0]["ip"] == static
    else:
        assert network.in_dhcp_range(nics[0]["ip"]), nics
    # (named by their /dev/disk/by-path links: udev runs in the ramdisk, as upstream's)
    storage = sorted(hardware["storage"], key=lambda d: d["serialNumber"])
    assert [(d["sizeBytes"], d["serialNumber"]) for d in storage] == [
        (disk.size, disk.serial) for disk in sorted(vm.disks, key=lambda d: d.serial)
    ]
    assert all(d["name"].startswith("/dev/disk/by-path/pci-") for d in storage), storage
    assert hardware["ramMebibytes"] > 0
    assert hardware["cpu"]["count"] == 1

    # The init's own account on the serial console: the lease, then the agent.
    if addressing == "static":
        assert f": {static}/24 (static)" in console
        assert "DHCP from" not in console
    else:
        assert f"DHCP from {network.lab.gateway}" in console
    assert "metal3-ramdisk: " in console
    assert "starting the agent" in console

    _record(
        {
            "addressing": addressing,
            "build_seconds": ramdisk.seconds,
            "build_cached": ramdisk.cached,
            "initramfs_bytes": ramdisk.manifest["initramfs"]["bytes"],
            "initramfs_unpacked_bytes": ramdisk.manifest["initramfs"]["unpacked_bytes"],
            "kernel_bytes": ramdisk.manifest["kernel"]["bytes"],
            "iso_bytes": (ramdisk.manifest["iso"] or {}).get("bytes"),
            "boot_to_lookup_seconds": round(looked_up_at - vm.started, 1),
        }
    )


def test_iso_boots_the_ramdisk_from_a_cd_in_bios_mode(ramdisk: BuildResult, tmp_path: Path) -> None:
    """The virtual-media ISO: SeaBIOS boots ISOLINUX from the CD, which loads the kernel and
    the initramfs with the ISO's kernel arguments, intact at the length an agent API URL and
    an inline CA need."""
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n" + b"A" * 560).decode()
    args = f"console=ttyS0 panic=-1 metal3.agent_api=https://192.0.2.1:9443 metal3.agent_ca={ca}"
    iso = tmp_path / "agent.iso"
    make_iso(iso, kernel=ramdisk.kernel, initramfs=ramdisk.initramfs, kernel_args=args,
             workdir=tmp_path)  # fmt: skip
    console = tmp_path / "console.log"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-no-reboot", "-machine", "pc",
        "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
        "-serial", f"file:{console}", "-nic", "none",
        "-drive", f"file={iso},media=cdrom,if=ide,readonly=on", "-boot", "d",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    text = ""
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while "metal3-ramdisk: " not in text and time.monotonic() < deadline:
            assert process.poll() is None, f"qemu exited:\n{text[-3000:]}"
            time.sleep(1)
            text = console.read_text(errors="replace") if console.exists() else ""
    finally:
        process.kill()
        process.wait(timeout=30)
    assert "starting (kernel " in text, text[-3000:]
    # (ISOLINUX puts BOOT_IMAGE=... before the ISO's arguments and initrd=... after them)
    [command_line] = [line for line in text.splitlines() if "Kernel command line:" in line]
    assert f" {args} initrd=/boot/initramfs.img" in command_line, command_line


def test_cli_build_again_comes_from_the_cache(ramdisk: BuildResult, tmp_path: Path) -> None:
    """`metal3 ramdisk build` with nothing changed since the fixture's build: every part from
    the cache, and ramdisk.json's digests are those of the files written."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "metal3", "ramdisk", "build", "--output", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest == json.loads((out / "ramdisk.json").read_text())
    assert manifest["cached"] == {"debian": True, "agent": True, "iso": True}
    for part in ("kernel", "initramfs", "iso"):
        written = out / manifest[part]["file"]
        assert manifest[part]["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
        assert manifest[part]["bytes"] == written.stat().st_size
    assert (out / "initramfs.img").read_bytes() == ramdisk.initramfs.read_bytes()
    assert manifest["kernel"]["version"] in manifest["debian"]["kernel_package"]
    assert manifest["debian"]["packages"]["python3"].startswith("3.11")
