"""End to end: a TCG virtual machine (never /dev/kvm) network-boots the agent ramdisk through
`metal3 bootserver`, in BIOS mode (SeaBIOS: the NIC's own iPXE ROM asks DHCP and gets the
chain script's URL at once) and in UEFI mode with no NIC ROM (OVMF's own virtio-net driver and
PXE client get `snponly.efi` over TFTP, which asks DHCP again as iPXE on the firmware's network
driver: the path of a real UEFI server). Then iPXE fetches the
per-MAC script, the kernel and the initramfs over HTTP, and the agent finds the agent API
(served on the provisioning address, in the same namespace) from the kernel command line and
looks itself up with the VM's MAC. Nothing but the namespaces of bootnet.py is used.

The figures (`pytest -s`): seconds from qemu's start to the DHCP answer, to the chain
script, to the initramfs fetched, and to the agent's lookup."""

from __future__ import annotations

import datetime
import json
import random
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from bootserver.bootnet import BootNet, boot_network, start_server
from metal3.agentapi.app import AgentApi
from metal3.agentapi.ratelimit import RateLimit
from metal3.agentapi.server import AgentApiOptions, AgentServer, ensure_tls
from metal3.bootserver.registry import BootServer
from metal3.discovery.service import DiscoveryOptions
from metal3.kube.client import KubeClient
from metal3.kube.resources import NAMESPACES
from metal3.lab.network import BRIDGE, in_namespace, run_ip
from metal3.ramdisk.build import BuildOptions, BuildResult, build
from metal3.ramdisk.cache import default_cache_dir

BOOT_TIMEOUT = 420.0  # TCG on a loaded 2-core machine
TAP = "tap0"
OVMF = Path("/usr/share/OVMF")  # Debian's ovmf


@pytest.fixture(scope="module")
def ramdisk(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The ramdisk, from the shared cache (~/.cache/metal3) when it holds it."""
    return build(
        BuildOptions(
            output=tmp_path_factory.mktemp("ramdisk"), cache_dir=default_cache_dir(), iso=False
        )
    )


@pytest.fixture
def net() -> Iterator[BootNet]:
    with boot_network() as made:
        run_ip(
            ["-n", made.server_ns],
            batch=[
                f"tuntap add dev {TAP} mode tap",
                f"link set {TAP} master {BRIDGE}",
                f"link set {TAP} up",
            ],
        )
        yield made


@asynccontextmanager
async def agent_api(
    net: BootNet, kubeconfig: Path, namespace: str, folder: Path
) -> AsyncIterator[tuple[str, bytes, list[tuple[float, list[str]]]]]:
    """The agent API (discovery on) on the provisioning address, inside the namespace; its
    URL, its CA, and the lookups it saw (monotonic time, MACs)."""
    tls = ensure_tls(folder / "tls", net.address)
    lookups: list[tuple[float, list[str]]] = []
    async with await KubeClient.connect(str(kubeconfig)) as client:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        api = AgentApi(
            client, rate_limit=RateLimit(rate=0), discovery=DiscoveryOptions(namespace=namespace)
        )
        lookup = api.discovery.lookup

        def recording_lookup(macs: set[str], body: Any) -> Any:
            lookups.append((time.monotonic(), sorted(macs)))
            return lookup(macs, body)

        api.discovery.lookup = recording_lookup  # type: ignore[method-assign]
        options = AgentApiOptions(listen=f"{net.address}:0", cert_file=tls.cert, key_file=tls.key)
        server = in_namespace(net.server_ns, lambda: AgentServer(options, api))
        async with anyio.create_task_group() as tg:
            tg.start_soon(api.run)
            tg.start_soon(server.serve)
            with anyio.fail_after(15):
                while not (api.hosts.synced and server.server.started):
                    await anyio.sleep(0.05)
            try:
                yield server.url, tls.ca_cert.read_bytes(), lookups
            finally:
                server.stop()
                await anyio.sleep(0.5)
                tg.cancel_scope.cancel()


def _seconds_since(start_wall: float, stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp() - start_wall


def _dhcp_ack_time(log: Path, mac: str, year: int) -> float | None:
    """The wall time of dnsmasq's first DHCPACK to ``mac`` (its log has second precision)."""
    for line in log.read_text(errors="replace").splitlines():
        if "DHCPACK(" in line and mac in line:
            stamp = datetime.datetime.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S")
            return stamp.timestamp()
    return None


@pytest.mark.anyio
# BIOS network boot through this boot server is tests/provisioner/test_vm_e2e.py's IPMI VM.
@pytest.mark.parametrize("firmware", ["uefi"])
async def test_vm_network_boots_the_agent(
    firmware: str,
    ramdisk: BuildResult,
    net: BootNet,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    async with agent_api(net, kubeconfig, namespace, tmp_path) as (url, ca_pem, lookups):
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(ca_pem)
        server = start_server(
            net,
            tmp_path,
            ramdisk=ramdisk.kernel.parent,
            agent_api=url,
            extra=["--agent-ca-file", str(ca_file), "--kernel-args", "panic=-1"],
        )
        mac = "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        BootServer(server.state).allow(mac, name="vm-0")
        while mac not in (server.state / "dnsmasq.hosts").read_text():
            await anyio.sleep(0.1)
        await anyio.sleep(0.5)
        console = tmp_path / "console.log"
        rom = ",romfile=" if firmware == "uefi" else ""  # UEFI: the firmware's own PXE
        disk = tmp_path / "disk.img"
        with disk.open("wb") as handle:
            handle.truncate(1 << 30)
        argv = [
            "ip", "netns", "exec", net.server_ns,
            "qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-no-reboot",
            "-machine", "pc", "-m", "1024", "-smp", "1", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console}", "-boot", "n",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}" + rom,
            "-drive", f"if=none,id=d0,file={disk},format=raw",
            "-device", "virtio-blk-pci,drive=d0",
        ]  # fmt: skip
        if firmware == "uefi":
            variables = tmp_path / "OVMF_VARS.fd"
            variables.write_bytes((OVMF / "OVMF_VARS_4M.fd").read_bytes())
            argv += [
                "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF / 'OVMF_CODE_4M.fd'}",
                "-drive", f"if=pflash,format=raw,file={variables}",
            ]  # fmt: skip
        started, started_wall = time.monotonic(), time.time()  # (qemu starts now)
        qemu = subprocess.Popen(
            argv, stdout=(tmp_path / "qemu.log").open("wb"), stderr=subprocess.STDOUT
        )
        try:
            with anyio.move_on_after(BOOT_TIMEOUT):
                while not lookups:
                    assert qemu.poll() is None, (tmp_path / "qemu.log").read_text()
                    await anyio.sleep(0.5)
        finally:
            qemu.kill()
            qemu.wait(timeout=30)
            assert server.stop() == 0, server.log_text()
    text = console.read_text(errors="replace") if console.exists() else ""
    access = [json.loads(line) for line in (server.state / "access.log").read_text().splitlines()]
    assert lookups, f"no lookup in {BOOT_TIMEOUT:.0f} s; access {access}; console:\n{text[-3000:]}"
    looked_up_at, macs = lookups[0]
    assert macs == [mac]
    fetched = [(entry["path"], entry["status"]) for entry in access]
    host_script = f"/boot/{mac.replace(':', '-')}.ipxe"
    assert fetched[:4] == [
        ("/boot.ipxe", 200),
        (host_script, 200),
        ("/vmlinuz", 200),
        ("/initramfs.img", 200),
    ], fetched
    assert access[3]["bytes"] == ramdisk.initramfs.stat().st_size
    # the kernel got the command line of the host's script
    [command_line] = [line for line in text.splitlines() if "Kernel command line:" in line]
    assert f"metal3.agent_api={url}" in command_line
    assert "console=ttyS0" in command_line
    # iPXE's router solicitation was answered (else it waits ~13 s before asking for a script)
    assert "router advertisement (configures nothing) sent to fe80::" in server.log_text()
    dnsmasq_log = (server.state / "dnsmasq.log").read_text(errors="replace")
    sent = [Path(f).name for f in re.findall(r"dnsmasq-tftp\[\d+\]: sent (\S+) to ", dnsmasq_log)]
    if firmware == "uefi":  # OVMF's PXE took the UEFI binary over TFTP first
        assert sent and set(sent) == {"snponly.efi"}, sent
    else:  # the ROM is iPXE already: no TFTP
        assert sent == []
    ack = _dhcp_ack_time(server.state / "dnsmasq.log", mac, datetime.date.today().year)
    assert ack is not None
    figures = {
        "firmware": firmware,
        "qemu_start_to_dhcp_ack_s": round(ack - started_wall, 1),
        "qemu_start_to_chain_script_s": round(_seconds_since(started_wall, access[0]["time"]), 1),
        "qemu_start_to_initramfs_loaded_s": round(
            _seconds_since(started_wall, access[3]["time"]), 1
        ),
        "qemu_start_to_lookup_s": round(looked_up_at - started, 1),
        "dhcp_ack_to_lookup_s": round(started_wall + (looked_up_at - started) - ack, 1),
    }
    print(f"netboot figures: {json.dumps(figures, sort_keys=True)}")
