"""`metal3 demo --vms`: two virtual machines, booted and provisioned the way a data centre runs
servers, shown live with each VM's serial console beside the host table.

In a temporary folder: the agent ramdisk (`metal3 ramdisk build`) and the test OS image
(`metal3 lab os-image`), both from the cache after their first build; `metal3 lab up --vms 2
--ramdisk`: vm-0 with a Redfish BMC (sushy-tools' libvirt driver; the agent boots from the ISO
inserted as virtual media), vm-1 with an IPMI BMC (virtualbmc; the agent boots from the lab's
boot server by DHCP, iPXE and HTTP); standalone mode in this process with the direct
provisioner wired to the lab as `metal3 standalone --lab DIR` wires it.

Each VM: registered with its image, user data and meta data set from the start, it is inspected,
cleaned and provisioned (the image goes to the disk the root-device hints name), boots its
written OS from disk, where cloud-init applies the config drive and the OS prints its report
on the serial console (`metal3.lab.osimage`), which the demo checks (hostname and user data);
then it is deprovisioned (cleaned) and deleted. The per-phase times end the output. TCG
emulation on a small machine: about 3 to 6 minutes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

import metal3
from metal3.cli.demo_board import Board, follow, host_power, host_state
from metal3.cli.demo_lab import OPERATOR_SETTINGS, DemoFailure, demo_secret, run_in_workdir
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, NAMESPACES, SECRETS
from metal3.lab import vms
from metal3.lab.config import LabConfig
from metal3.lab.control import LabError, up
from metal3.lab.layout import LabPaths
from metal3.lab.profiles import disk_serial
from metal3.lab.state import LabHost, LabInfo
from metal3.operator import OperatorOptions
from metal3.provisioner.direct.lab import LabConfig as ProvisionerLab
from metal3.provisioner.direct.settings import DirectSettings
from metal3.standalone import Standalone, StandaloneOptions

JsonObject = dict[str, Any]
NAMESPACE = "metal3-vm-demo"
TOOLS = ("qemu-system-x86_64", "qemu-img", "virsh", "dnsmasq", "debootstrap", "blkid")
# TCG on a small machine: an agent boot takes 20-60 s, the written OS's boot 50-110 s.
AGENT_TIMEOUT = 420.0
OS_BOOT_TIMEOUT = 420.0
CONSOLE_WIDTH = 70


@dataclass
class VmDemoHost:
    lab: LabHost
    hostname: str
    user_data: bytes
    step: str = "waiting"
    times: dict[str, float] = field(default_factory=dict)
    report: dict[str, str] | None = None
    failure: str | None = None

    @property
    def name(self) -> str:
        return self.lab.name

    @property
    def console(self) -> Path:
        assert self.lab.vm is not None
        return Path(self.lab.vm.console_log)

    @property
    def boot_disk(self) -> int:
        """The disk (index) the VM's BIOS boots."""
        assert self.lab.vm is not None
        return self.lab.vm.boot_disk


class VmBoard(Board):
    header = f"{'HOST':<6} {'BMC':<21} {'STATE':<14} {'POWER':<6} {'STEP':<20} SERIAL CONSOLE"

    def __init__(self, live: bool, hosts: dict[str, VmDemoHost]) -> None:
        super().__init__(live)
        self.demo_hosts = hosts
        self.console_lines: dict[str, str] = {}

    def row(self, name: str, obj: JsonObject) -> str:
        host = self.demo_hosts.get(name)
        kind, step = (host.lab.kind, host.step) if host else ("", "")
        line = self.console_lines.get(name, "")[:CONSOLE_WIDTH]
        return (
            f"{name:<6} {kind:<21} {host_state(obj) or '-':<14} {host_power(obj):<6} "
            f"{step[:20]:<20} | {line}"
        )

    def console_line(self, host: VmDemoHost, line: str) -> None:
        """The VM's newest console line: in its row (live), or as a line of its own."""
        if self.console_lines.get(host.name) == line:
            return
        self.console_lines[host.name] = line
        if self.live:
            self.draw()
        else:
            print(f"[{self.elapsed():6.2f}s] {host.name} console | {line}", flush=True)

    def step(self, host: VmDemoHost, step: str) -> None:
        host.step = step
        self.note(f"{host.name}: {step}")


@dataclass(frozen=True)
class VmDemoOptions:
    timeout: float = 600.0  # seconds per phase of a VM
    live: bool = False


class VmSession:
    def __init__(self, workdir: Path, lab_dir: Path, info: LabInfo, image_url: str,
                 image_sha256: str, options: VmDemoOptions) -> None:  # fmt: skip
        self.workdir, self.lab_dir, self.info = workdir, lab_dir, info
        self.image_url, self.image_sha256 = image_url, image_sha256
        self.options = options
        self.hosts = {
            h.name: VmDemoHost(
                h, f"{h.name}-os", f"#cloud-config\nruncmd:\n  - [echo, "
                f"metal3-vm-demo-{h.name}-user-data-ran]\n".encode(),
            )
            for h in info.hosts
            if h.registered
        }  # fmt: skip
        self.board = VmBoard(options.live, self.hosts)
        self.manifests: dict[str, JsonObject] = {}  # the lab's BareMetalHosts, by name

    def standalone(self) -> Standalone:
        lab = ProvisionerLab.load(self.lab_dir)  # as `metal3 standalone --lab DIR`
        from metal3.agentapi.server import AgentApiOptions

        operator = OperatorOptions(
            provisioner="direct",
            settings=OPERATOR_SETTINGS,
            direct=DirectSettings(
                media=lab.boot_media, agent_timeout=AGENT_TIMEOUT, poll_interval=1.0,
                agent_poll_interval=5.0, bmc_call_timeout=60.0,
            ),
            agent_api=AgentApiOptions(
                listen=lab.agent_listen, cert_file=lab.cert_file, key_file=lab.key_file,
                ca_file=lab.ca_file,
            ),
            health_address=None,
            grace_period=5.0,
        )  # fmt: skip
        return Standalone(
            StandaloneOptions(data_dir=self.workdir / "standalone", operator=operator)
        )

    async def run(self) -> list[str]:
        standalone = self.standalone()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(standalone.run, stop)
            try:
                with anyio.fail_after(60):
                    await standalone.ready.wait()
                print(
                    f"standalone: API server at {standalone.url}; "
                    f"kubectl --kubeconfig {standalone.kubeconfig} get bmh -n {NAMESPACE}"
                )
                async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
                    await self._apply(client)
                    async with anyio.create_task_group() as watchers:
                        watchers.start_soon(follow, client, NAMESPACE, self.board)
                        watchers.start_soon(self._consoles)
                        self.board.announce(
                            "lifecycle: register, inspect, clean, provision, boot the OS "
                            "(cloud-init), deprovision (clean), delete"
                        )
                        async with anyio.create_task_group() as lifecycles:
                            for host in self.hosts.values():
                                lifecycles.start_soon(self._lifecycle, client, host)
                        watchers.cancel_scope.cancel()
                    self.board.finish()
            finally:
                stop.set()
        return [f"{h.name}: {h.failure}" for h in self.hosts.values() if h.failure]

    async def _consoles(self) -> None:
        """Each VM's newest console line, once a second (the board shows it)."""
        while True:
            for host in self.hosts.values():
                tail = vms.console_tail(host.console, lines=1, complete=True)
                if tail:
                    self.board.console_line(host, tail[-1])
            await anyio.sleep(1)

    async def _apply(self, client: KubeClient) -> None:
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        for host in self.hosts.values():
            documents = yaml.safe_load_all(
                (LabPaths(self.lab_dir).manifests / f"{host.name}.yaml").read_text()
            )
            for document in documents:
                if document and document["kind"] == "Secret":
                    await client.create(SECRETS, document)
                elif document and document["kind"] == "BareMetalHost":
                    self.manifests[host.name] = document
            meta = yaml.safe_dump({"hostname": host.hostname}).encode()
            user_data = demo_secret(f"{host.name}-user-data", {"value": host.user_data}, NAMESPACE)
            await client.create(SECRETS, user_data)
            meta_data = demo_secret(f"{host.name}-meta-data", {"value": meta}, NAMESPACE)
            await client.create(SECRETS, meta_data)

    def _manifest(self, host: VmDemoHost) -> JsonObject:
        """The lab's BareMetalHost for `host` (read by `_apply`) with the demo's workload."""
        manifest = self.manifests[host.name]
        manifest["spec"].update(
            online=True,
            # The disk this VM's BIOS boots (its second), where Ironic's default root device
            # would be the first, smaller one.
            rootDeviceHints={"serialNumber": disk_serial(host.name, host.boot_disk)},
            image={"url": self.image_url, "checksum": self.image_sha256,
                   "checksumType": "sha256", "format": "qcow2"},
            userData={"name": f"{host.name}-user-data", "namespace": NAMESPACE},
            metaData={"name": f"{host.name}-meta-data", "namespace": NAMESPACE},
        )  # fmt: skip
        return manifest

    async def _lifecycle(self, client: KubeClient, host: VmDemoHost) -> None:
        try:
            await self._steps(client, host)
        except DemoFailure as exc:
            host.failure = f"{host.step}: {exc}"
        except ApiError as exc:
            host.failure = f"{host.step}: the API server said {exc.status}: {exc.message}"
        if host.failure:
            self.board.step(host, f"FAILED ({host.failure})")

    async def _steps(self, client: KubeClient, host: VmDemoHost) -> None:
        mark = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal mark
            now = time.monotonic()
            host.times[phase] = now - mark
            mark = now

        self.board.step(host, "registering")
        await client.create(BAREMETALHOSTS, self._manifest(host))
        await self._wait(client, host, "provisioned")
        lap("register, inspect, clean, write the image")
        self.board.step(host, "booting its OS")
        since = host.console.stat().st_size if host.console.exists() else 0
        with anyio.move_on_after(OS_BOOT_TIMEOUT):
            while host.report is None:
                await anyio.sleep(1)
                report = vms.os_report(host.console)
                if report is not None and host.console.stat().st_size > since:
                    host.report = report
        if host.report is None:
            raise DemoFailure(f"no OS report on {host.console} after {OS_BOOT_TIMEOUT:.0f} s")
        lap("reboot to cloud-init done")
        expected = hashlib.sha256(host.user_data).hexdigest()
        seen = (host.report.get("hostname"), host.report.get("user-data-sha256"))
        if host.report.get("datasource") != "ConfigDrive" or seen != (host.hostname, expected):
            raise DemoFailure(f"cloud-init did not apply the config drive: {host.report}")
        self.board.note(
            f"{host.name}: its OS is up; cloud-init read the config drive: hostname "
            f"{host.hostname}, user data sha256 {expected[:16]}..."
        )
        self.board.step(host, "deprovisioning")
        await client.patch(BAREMETALHOSTS, NAMESPACE, host.name, {"spec": {"image": None}})
        await self._wait(client, host, "available")
        lap("deprovision (clean)")
        self.board.step(host, "deleting")
        await client.delete(BAREMETALHOSTS, NAMESPACE, host.name)
        await self._wait(client, host, None)
        lap("delete")
        self.board.step(host, "done")

    async def _wait(self, client: KubeClient, host: VmDemoHost, wanted: str | None) -> None:
        deadline = time.monotonic() + self.options.timeout
        while True:
            try:
                obj: JsonObject | None = await client.get(BAREMETALHOSTS, NAMESPACE, host.name)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                obj = None
            if obj is None and wanted is None:
                return
            if obj is not None:
                status = obj.get("status") or {}
                if status.get("errorMessage"):
                    raise DemoFailure(status["errorMessage"])
                if wanted is not None and host_state(obj) == wanted:
                    return
            if time.monotonic() > deadline:
                raise DemoFailure(f"not {wanted or 'deleted'} after {self.options.timeout:.0f} s")
            await anyio.sleep(0.5)


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "the VM demo needs root (network namespaces, libvirt, debootstrap)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the VM demo needs {', '.join(missing)} (not found on PATH; `./dev` installs them)"
    return None


def run_vm_demo(options: VmDemoOptions) -> int:
    problem = preflight()
    if problem is not None:
        print(f"metal3 demo --vms: {problem}", file=sys.stderr)
        return 2
    print(
        f"metal3 {metal3.__version__} demo --vms: two virtual machines (TCG) booted through "
        "their BMCs into the agent ramdisk, provisioned with an OS that boots from disk"
    )
    return run_in_workdir(
        "metal3-vm-demo-", lambda workdir, lab_dir: _run(options, workdir, lab_dir)
    )


def _run(options: VmDemoOptions, workdir: Path, lab_dir: Path) -> list[str]:
    from metal3.lab.osimage import OsImageError, build_os_image
    from metal3.ramdisk import build as ramdisk_build
    from metal3.ramdisk.cache import default_cache_dir
    from metal3.ramdisk.tools import RamdiskError

    print("\n== set-up", flush=True)
    started = time.monotonic()
    try:
        ramdisk = ramdisk_build.build(
            ramdisk_build.BuildOptions(
                output=workdir / "ramdisk", cache_dir=default_cache_dir(),
                source=ramdisk_build.default_source(),
            )
        )  # fmt: skip
    except RamdiskError as exc:
        return [f"building the agent ramdisk: {exc}"]
    cached = all(ramdisk.cached.values())
    print(f"agent ramdisk: {time.monotonic() - started:.1f} s ({'cache' if cached else 'built'})")
    started = time.monotonic()
    try:
        up_result = up(
            lab_dir,
            LabConfig(hosts=0, vms=2, virtual_media_hosts=1, ipmi_hosts=1,
                      ramdisk=str(workdir / "ramdisk"), namespace=NAMESPACE),
            timeout=300,
        )  # fmt: skip
    except LabError as exc:
        return [f"lab up: {exc}"]
    info = up_result.info
    print(f"lab up --vms 2: {time.monotonic() - started:.1f} s, network {info.subnet} in "
          f"namespace {info.namespace}")  # fmt: skip
    started = time.monotonic()
    image = Path(info.images_dir) / "test-os.qcow2"
    try:
        built = build_os_image(image)
    except OsImageError as exc:
        return [f"the test OS image: {exc}"]
    size = image.stat().st_size >> 20
    print(f"test OS image: {time.monotonic() - started:.1f} s, {size} MiB qcow2")
    url = f"{info.images_url.rstrip('/')}/{image.name}"
    session = VmSession(workdir, lab_dir, info, url, built.sha256, options)
    failures = anyio.run(session.run)
    print("\n== per-phase times")
    for host in session.hosts.values():
        print(f"{host.name} ({host.lab.kind}):")
        for phase, seconds in host.times.items():
            print(f"  {phase}: {seconds:.1f} s")
    return failures
