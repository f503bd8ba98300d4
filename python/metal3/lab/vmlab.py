"""The virtual-machine side of a lab (`metal3 lab up --vms N`): the lab's libvirt daemons, one
domain per host, and their BMCs, made in that order and taken down in reverse.

The supervisor makes the lab namespace and bridge first (the VMs' taps land on it, because
libvirtd runs in that namespace), journals every process this starts, and asks for
`LabHost`s to describe in `lab.json`. Hosts start shut off; only their BMCs power them on.

With a ramdisk (`--ramdisk DIR`, what `metal3 ramdisk build` writes) the lab also runs the
boot server (`metal3 bootserver`) inside the lab namespace on the bridge and the gateway
address, answering every VM (`--unknown-hosts discover`) with DHCP from `.200`-`.239`, iPXE
and the ramdisk, whose agent finds the agent API at the gateway (the lab's relay); and the
lab's `images/agent.iso` (what BMCs insert as virtual media) becomes that ramdisk behind
ISOLINUX with the same kernel arguments.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from metal3.lab import vms
from metal3.lab.config import HostPlan
from metal3.lab.layout import LabPaths
from metal3.lab.libvirtd import LabLibvirt, LibvirtError
from metal3.lab.network import BRIDGE, LabNetwork, in_namespace
from metal3.lab.state import LabHost, VmInfo
from metal3.lab.vmbmcs import MEDIA_POOL, VmBmcPlan, VmBmcs

log = logging.getLogger(__name__)

BMC_USER = "lab-admin"


class BootServerError(RuntimeError):
    """The lab's boot server did not start."""


class VmLab:
    def __init__(self, paths: LabPaths, network: LabNetwork) -> None:
        self.paths = paths
        self.network = network
        self.libvirt = LabLibvirt(paths.libvirt, network.namespace)
        self.bmcs: VmBmcs | None = None
        self.specs: dict[str, vms.VmSpec] = {}
        self.boot_server: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return self.libvirt.uri

    def start(self, plans: Sequence[HostPlan], record: Callable[[str, int], None]) -> list[LabHost]:
        """Daemons, disks, domains and BMCs; `record(what, pid)` for every process started.
        The hosts, for lab.json."""
        recorded: set[int] = set()

        def record_new(found: Sequence[tuple[str, int]]) -> None:
            for what, pid in found:
                if pid not in recorded:
                    recorded.add(pid)
                    record(what, pid)

        self.libvirt.prepare()
        redfish_password = secrets.token_urlsafe(12)
        self.bmcs = VmBmcs(
            self.paths.bmc,
            [
                VmBmcPlan(
                    name=plan.name,
                    kind=plan.kind,
                    system_uuid=plan.system_uuid,
                    username=BMC_USER,
                    password=secrets.token_urlsafe(12) if plan.kind == "ipmi" else redfish_password,
                )
                for plan in plans
            ],
            self.uri,
        )
        # Everything starts side by side (Python's imports in the BMCs take seconds under
        # load); the BMCs reach libvirt only when asked, and are asked once all is defined.
        try:
            self.libvirt.launch()
            self.bmcs.launch()
        finally:
            record_new([(what, p.pid) for what, p in self.libvirt.processes.items()])
            record_new(self.bmcs.processes())
        self.libvirt.wait_ready()
        self.libvirt.define_dir_pool(MEDIA_POOL, self.paths.bmc / "media")
        for plan in plans:
            folder = self.paths.host(plan.name)
            folder.root.mkdir(parents=True, exist_ok=True)
            folder.console_log.touch()
            spec = vms.VmSpec(
                name=plan.name,
                uuid=plan.system_uuid,
                memory_mib=plan.profile.memory_mib,
                cpus=plan.profile.cpus,
                mac=plan.macs()[0],
                bridge=BRIDGE,
                disks=tuple(
                    (folder.disk(index), disk.size) for index, disk in enumerate(plan.profile.disks)
                ),
                console_log=folder.console_log,
                boot_disk=plan.profile.boot_disk,
            )
            vms.make_disks(spec)
            vms.define(self.uri, spec, folder.domain_xml)
            self.specs[plan.name] = spec
        try:
            self.bmcs.wait_ready()
        finally:
            record_new(self.bmcs.processes())  # now with vbmcd's per-VM servers
        return [self._lab_host(plan) for plan in plans]

    def _lab_host(self, plan: HostPlan) -> LabHost:
        assert self.bmcs is not None
        spec = self.specs[plan.name]
        bmc = self.bmcs.plans[plan.name]
        return LabHost(
            name=plan.name,
            namespace=self.network.namespace,
            kind=plan.kind,
            bmc_address=self.bmcs.address(plan.name),
            username=bmc.username,
            password=bmc.password,
            boot_mac=spec.mac,
            macs=(spec.mac,),
            ip=self.network.host_ip(plan.index),
            profile=plan.profile.name,
            disks=tuple(str(path) for path, _ in spec.disks),
            loop_devices=(),
            registered=plan.registered,
            manifest=str(self.paths.manifests / f"{plan.name}.yaml"),
            vm=VmInfo(
                domain=spec.name,
                console_log=str(spec.console_log),
                memory_mib=spec.memory_mib,
                disk_sizes=tuple(size for _, size in spec.disks),
                boot_disk=spec.boot_disk,
            ),
        )

    def start_boot_server(
        self, ramdisk: Path, agent_api: str, ca_file: Path, record: Callable[[str, int], None]
    ) -> str:
        """`metal3 bootserver` in the lab namespace for every VM; its HTTP base URL."""
        gateway = self.network.gateway
        base = self.network.subnet.network_address

        def free_port() -> int:
            with socket.socket() as sock:
                sock.bind((gateway, 0))
                port: int = sock.getsockname()[1]
                return port

        port = in_namespace(self.network.namespace, free_port)
        state = self.paths.root / "bootserver"
        state.mkdir(parents=True, exist_ok=True)
        log_path = state / "bootserver.log"
        argv = [
            "ip", "netns", "exec", self.network.namespace,
            sys.executable, "-m", "metal3", "bootserver",
            "--interface", BRIDGE, "--listen", gateway,
            "--dhcp-range", f"{base + 200},{base + 239}",
            "--state-dir", str(state), "--ramdisk", str(ramdisk.resolve()),
            "--agent-api", agent_api, "--agent-ca-file", str(ca_file),
            "--http-port", str(port), "--unknown-hosts", "discover",
        ]  # fmt: skip
        with log_path.open("ab") as out:
            self.boot_server = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        record("bootserver", self.boot_server.pid)
        deadline = time.monotonic() + 60
        while "boot server on" not in log_path.read_text(errors="replace"):
            if self.boot_server.poll() is not None or time.monotonic() > deadline:
                raise BootServerError(f"the boot server did not start: see {log_path}")
            time.sleep(0.1)
        return f"http://{gateway}:{port}"

    def write_agent_iso(self, ramdisk: Path, kernel_args: str, output: Path) -> None:
        """`output`: the ramdisk's kernel and initramfs behind ISOLINUX with `kernel_args`."""
        import tempfile

        from metal3.ramdisk.iso import make_iso

        with tempfile.TemporaryDirectory(dir=self.paths.root, prefix=".iso-") as work:
            partial = Path(work) / "agent.iso"
            make_iso(
                partial,
                kernel=ramdisk / "vmlinuz",
                initramfs=ramdisk / "initramfs.img",
                kernel_args=kernel_args,
                workdir=Path(work),
            )
            os.replace(partial, output)

    @property
    def redfish_url(self) -> str:
        return self.bmcs.redfish_url if self.bmcs is not None else ""

    def stop(self) -> None:
        """Power every VM off, stop the BMCs, the boot server, then the daemons."""
        if self.libvirt.processes:
            try:
                for name in vms.destroy_all(self.uri):
                    log.info("%s: powered off (lab going down)", name)
            except LibvirtError as exc:
                log.warning("powering the VMs off failed: %s", exc)
        if self.bmcs is not None:
            self.bmcs.stop()
        if self.boot_server is not None and self.boot_server.poll() is None:
            self.boot_server.terminate()
            try:
                self.boot_server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.boot_server.kill()
        self.libvirt.stop()
