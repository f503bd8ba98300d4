"""What `metal3 demo` runs: the real lifecycle of emulated hosts, checked with reference tools.

In a temporary folder: `metal3 lab up` (hosts with Redfish, Redfish virtual-media and IPMI
BMCs, loop-device disks, each host in its own network namespace), an OS image made here
(`metal3.cli.demo_image`) put in the lab's image folder, and standalone mode in this process
with the direct provisioner wired to the lab as `metal3 standalone --lab DIR` wires it. The
lab's manifests are applied, each host with its own userData and metaData Secrets, and each
host goes, on its own, through: register, inspect (its HardwareData checked against the lab's
profile), prepare (metadata cleaning), provision (the agent writes the image, verified against
the checksum file), boot (the lab "boots the OS" from disk and records what its config drive
held), then the disks are checked (`metal3.cli.demo_checks`), then deprovision (image removed,
online false: metadata cleaning again, checked) and delete.

The output: the hosts' states as they change (a live table on a terminal, lines otherwise),
then per host the checks, the per-phase timings and the image bytes written, and a verdict;
exit status 1 when anything failed. The lab is taken down (`lab down`) and the folder
removed at the end, also after a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.abc
import yaml

import metal3
from metal3.agentapi.records import AgentRecord, record_name
from metal3.agentapi.server import AgentApiOptions
from metal3.api.manifests import iter_folder
from metal3.cli.demo_board import Board, follow, host_power, host_state
from metal3.cli.demo_checks import (
    Check,
    check_cleaned,
    check_config_drive,
    check_image,
    check_untouched,
    partitions,
)
from metal3.cli.demo_image import SUMS_NAME, DemoImage, ImageBuildError, build_demo_image
from metal3.controllers.baremetalhost import Settings
from metal3.kube.client import ApiError, KubeClient
from metal3.kube.resources import BAREMETALHOSTS, HARDWAREDATA, NAMESPACES, SECRETS
from metal3.lab.config import LabConfig
from metal3.lab.control import LabError, down, up
from metal3.lab.layout import LabPaths
from metal3.lab.state import LabHost, LabInfo, read_json
from metal3.operator import OperatorOptions
from metal3.provisioner.direct.lab import LabConfig as ProvisionerLab
from metal3.provisioner.direct.settings import DirectSettings
from metal3.standalone import Standalone, StandaloneOptions

JsonObject = dict[str, Any]
NAMESPACE = "metal3-demo"
PHASES = ("register", "inspect", "prepare", "provision", "boot", "deprovision", "delete")
# The tools that make the image and check the disks.
TOOLS = (
    "qemu-img", "sgdisk", "sfdisk", "mke2fs", "sha256sum", "bsdtar", "wipefs", "blkid", "blockdev"
)  # fmt: skip
MiB = 1 << 20
GiB = 1 << 30
# The operator's policy, quicker than `metal3 standalone`'s defaults where a demo would
# otherwise sit idle: polls of an operation under way every 0.5 s (default 1 s), power state
# every 2 s (default 60 s), BMC polls during power changes every 0.5 s (default 2 s).
OPERATOR_SETTINGS = Settings(
    in_progress_poll=0.5, power_poll_interval=2.0, error_backoff_unit=1.0, delayed_retry=1.0
)
AGENT_TIMEOUT = 120.0  # seconds for an agent to report, from its boot (default 1800)


class DemoFailure(Exception):
    """A host did not do what the demo expected; the message says what and where."""


@dataclass
class LabDemoOptions:
    hosts: int = 4
    timeout: float = 120.0  # seconds per phase of a host
    live: bool = False
    power_delay: int = 1  # the lab's Redfish emulator's power change delay
    # How the image is made. A test seam (not a command-line option): tests hand in a maker
    # that spoils what it makes, to see the demo fail as it should.
    build_image: Callable[[Path], DemoImage] = build_demo_image


@dataclass
class DemoHost:
    lab: LabHost
    user_data: bytes
    hostname: str
    step: str = "waiting"
    uid: str = ""
    disk: str = ""
    bytes_written: int = 0
    write_seconds: float | None = None
    written_at: str = ""  # when the agent's deploy result was recorded (RFC 3339)
    partition_offsets: list[int] = field(default_factory=list)  # on `disk`, once provisioned
    timings: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    failure: str | None = None

    @property
    def name(self) -> str:
        return self.lab.name


class LabBoard(Board):
    header = f"{'HOST':<8} {'BMC':<21} {'STATE':<22} {'POWER':<6} {'DEMO STEP':<22} ERROR"

    def __init__(self, live: bool, hosts: dict[str, DemoHost]) -> None:
        super().__init__(live)
        self.demo_hosts = hosts

    def row(self, name: str, obj: JsonObject) -> str:
        host = self.demo_hosts.get(name)
        kind, step = (host.lab.kind, host.step) if host else ("", "")
        error = (obj.get("status") or {}).get("errorType", "")
        return (
            f"{name:<8} {kind:<21} {host_state(obj) or '-':<22} {host_power(obj):<6} "
            f"{step[:22]:<22} {error}"
        )

    def step(self, host: DemoHost, step: str) -> None:
        host.step = step
        if self.live:
            self.draw()


@dataclass
class Setup:
    workdir: Path
    info: LabInfo
    lab_dir: Path
    image: DemoImage
    seconds: dict[str, float]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def user_data_for(host: LabHost) -> bytes:
    return (
        "#cloud-config\n"
        f"# for {host.name}, a {host.kind} host of profile {host.profile}\n"
        "write_files:\n"
        "  - path: /etc/motd\n"
        f'    content: "{host.name}: provisioned by metal3 demo\\n"\n'
    ).encode()


def demo_secret(name: str, data: dict[str, bytes], namespace: str = NAMESPACE) -> JsonObject:
    """An Opaque Secret of `data` (the demos' user data and meta data)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


class Session:
    """One run of the lifecycle, on the set-up lab (see the module docstring)."""

    def __init__(self, setup: Setup, options: LabDemoOptions) -> None:
        self.setup = setup
        self.options = options
        self.hosts = {
            h.name: DemoHost(h, user_data_for(h), f"{h.name}.demo.metal3.lab")
            for h in setup.info.hosts
            if h.registered
        }
        self.board = LabBoard(options.live, self.hosts)
        self.manifests: dict[str, JsonObject] = {}  # the lab's BareMetalHosts, by name
        self.inspected: set[str] = set()
        self.interrupted = False
        self.kubeconfig: Path | None = None
        self.lifecycle_seconds = 0.0

    # --- the standalone process, in-process ---------------------------------------------

    def standalone(self) -> Standalone:
        lab = ProvisionerLab.load(self.setup.lab_dir)  # as `metal3 standalone --lab DIR`
        operator = OperatorOptions(
            provisioner="direct",
            settings=OPERATOR_SETTINGS,
            direct=DirectSettings(
                media=lab.boot_media,
                agent_timeout=AGENT_TIMEOUT,
                poll_interval=0.5,
                agent_poll_interval=5.0,
            ),
            agent_api=AgentApiOptions(
                listen=lab.agent_listen,
                cert_file=lab.cert_file,
                key_file=lab.key_file,
                ca_file=lab.ca_file,
            ),
            health_address=None,
            grace_period=5.0,
        )
        return Standalone(
            StandaloneOptions(data_dir=self.setup.workdir / "standalone", operator=operator)
        )

    async def run(self) -> list[str]:
        """The lifecycle of every host; the failures (empty: all went well)."""
        standalone = self.standalone()
        stop = anyio.Event()
        failures: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(standalone.run, stop)
            try:
                with anyio.fail_after(60):
                    await standalone.ready.wait()
                # From here the signals are the demo's (the API server took them while it
                # started): the lifecycles end, and standalone stops as it should.
                work = anyio.CancelScope()
                signals = await tg.start(self._on_signals, work, tg.cancel_scope)
                with work:
                    failures = await self._announced(standalone)
                signals.cancel()
            finally:
                stop.set()
        return failures + (["interrupted"] if self.interrupted else [])

    async def _announced(self, standalone: Standalone) -> list[str]:
        info = self.setup.info
        print(
            f"standalone: API server at {standalone.url}; agent API on "
            f"{info.agent_api_listen}, which the lab's hosts reach at "
            f"{info.agent_api_lab_address} (the lab's relay)"
        )
        print(
            f"  kubectl --kubeconfig {standalone.kubeconfig} get bmh,hardwaredata "
            f"-n {NAMESPACE}   (while it runs)"
        )
        self.kubeconfig = standalone.kubeconfig
        async with await KubeClient.connect(str(standalone.kubeconfig)) as client:
            return await self._lifecycles(client)

    async def _on_signals(
        self,
        work: anyio.CancelScope,
        everything: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope],
    ) -> None:
        """SIGINT or SIGTERM ends the lifecycles (`work`); a second one, everything."""
        with (
            anyio.CancelScope() as scope,
            anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received,
        ):
            task_status.started(scope)
            async for _ in received:
                if self.interrupted:
                    everything.cancel()
                    return
                self.interrupted = True
                self.board.finish()
                print("\ninterrupted: stopping (again to force)", flush=True)
                work.cancel()

    async def _lifecycles(self, client: KubeClient) -> list[str]:
        await self._apply_manifests(client)
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(follow, client, NAMESPACE, self.board)
            self.board.announce(
                "lifecycle: register, inspect, prepare (clean), provision, boot, verify, "
                "deprovision (clean), delete"
            )
            started = time.monotonic()
            try:
                async with anyio.create_task_group() as hosts:
                    for host in self.hosts.values():
                        hosts.start_soon(self._lifecycle, client, host)
            finally:
                self.lifecycle_seconds = time.monotonic() - started
            watchers.cancel_scope.cancel()
        self.board.finish()
        return [f"{h.name}: {h.failure}" for h in self.hosts.values() if h.failure]

    async def _apply_manifests(self, client: KubeClient) -> None:
        """What `kubectl apply -f DIR/manifests/` does, but the BareMetalHosts, which each
        host's lifecycle creates (registration starts then); plus each host's own userData
        and metaData Secrets."""
        await client.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        for _, obj in iter_folder(LabPaths(self.setup.lab_dir).manifests):
            if obj["kind"] == "Secret":
                await client.create(SECRETS, obj)
            elif obj["kind"] == "BareMetalHost":
                self.manifests[obj["metadata"]["name"]] = obj
        for host in self.hosts.values():
            await client.create(
                SECRETS, demo_secret(f"{host.name}-user-data", {"userData": host.user_data})
            )
            meta = yaml.safe_dump({"hostname": host.hostname}).encode()
            await client.create(SECRETS, demo_secret(f"{host.name}-meta-data", {"metaData": meta}))

    # --- one host --------------------------------------------------------------------------

    async def _lifecycle(self, client: KubeClient, host: DemoHost) -> None:
        try:
            await self._steps(client, host)
        except DemoFailure as exc:
            host.failure = f"{host.step}: {exc}"
        except ApiError as exc:
            host.failure = f"{host.step}: the API server said {exc.status}: {exc.message}"
        if host.failure:
            self.board.note(f"{host.name}: FAILED in {host.failure}")
            self.board.step(host, f"FAILED in {host.step}")

    async def _steps(self, client: KubeClient, host: DemoHost) -> None:
        name = host.name
        mark = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal mark
            now = time.monotonic()
            host.timings[phase] = now - mark
            mark = now

        self.board.step(host, "register")
        bmh = json.loads(json.dumps(self.manifests[name]))
        bmh["spec"]["automatedCleaningMode"] = "metadata"
        await client.create(BAREMETALHOSTS, bmh)
        await self._wait(host, "registered", lambda o: host_state(o) not in ("", "registering"))
        lap("register")

        self.board.step(host, "inspect")
        obj = await self._wait(host, "inspected", lambda o: host_state(o) not in ("inspecting",))
        lap("inspect")
        host.uid = str(obj["metadata"]["uid"])

        self.board.step(host, "prepare (clean)")
        await self._wait(
            host,
            "available and off",
            lambda o: host_state(o) == "available" and host_power(o) == "off",
        )
        lap("prepare")
        hardware = await client.get(HARDWAREDATA, NAMESPACE, name)
        self._record(host, self._check_inventory(host, hardware))
        self.inspected.add(name)
        if len(self.inspected) == len(self.hosts):
            await self._kubectl_hardwaredata()

        self.board.step(host, "provision")
        base = self.setup.info.images_url
        provision_started = _now()
        await client.patch(
            BAREMETALHOSTS,
            NAMESPACE,
            name,
            {
                "spec": {
                    "online": True,
                    "image": {
                        "url": base + self.setup.image.name,
                        "checksum": base + SUMS_NAME,
                        "checksumType": "sha256",
                        "format": "qcow2",
                    },
                    "userData": {"name": f"{name}-user-data"},
                    "metaData": {"name": f"{name}-meta-data"},
                }
            },
        )
        await self._wait(
            host,
            "provisioned and on",
            lambda o: host_state(o) == "provisioned" and host_power(o) == "on",
        )
        provisioned_at = _now()
        self.board.step(host, "boot (OS from disk)")
        booted = await self._os_boot(host, provision_started)
        record = await client.get(SECRETS, NAMESPACE, record_name(name))
        self._record(host, self._check_write(host, record))
        self._record(host, self._check_boot(host, booted))
        # provision: until the agent's verified write is recorded; boot: from there until
        # the host runs its OS (provisioned and on, the lab's disk boot recorded).
        written_at = _parse_time(host.written_at)
        booted_at = max(provisioned_at, _parse_time(booted.get("time")))
        host.timings["provision"] = (written_at - provision_started).total_seconds()
        host.timings["boot"] = (booted_at - written_at).total_seconds()

        self.board.step(host, "verify disks")
        for check in await anyio.to_thread.run_sync(self._check_disks, host):
            self._record(host, check)
        mark = time.monotonic()  # the checks are no phase of the host's

        self.board.step(host, "deprovision (clean)")
        await client.patch(
            BAREMETALHOSTS,
            NAMESPACE,
            name,
            {"spec": {"online": False, "image": None, "userData": None, "metaData": None}},
        )
        await self._wait(
            host,
            "deprovisioned, available and off",
            lambda o: host_state(o) == "available" and host_power(o) == "off",
        )
        lap("deprovision")
        cleaned = await anyio.to_thread.run_sync(check_cleaned, host.disk, host.partition_offsets)
        self._record(host, cleaned)

        self.board.step(host, "delete")
        await client.delete(BAREMETALHOSTS, NAMESPACE, name)
        await self._wait(host, "deleted", lambda o: o is None)
        lap("delete")
        for suffix in ("user-data", "meta-data"):
            await client.delete(SECRETS, NAMESPACE, f"{name}-{suffix}")
        self.board.step(host, "deleted")

    async def _kubectl_hardwaredata(self) -> None:
        """What `kubectl get hardwaredata` shows once every host is inspected (a snapshot:
        the hosts go on meanwhile)."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.board.note("kubectl is not installed: no `kubectl get hardwaredata` shown")
            return
        columns = (
            "NAME:.metadata.name,CPUS:.spec.hardware.cpu.count,"
            "RAM_MIB:.spec.hardware.ramMebibytes,DISKS:.spec.hardware.storage[*].name,"
            "NIC_MACS:.spec.hardware.nics[*].mac"
        )
        argv = [kubectl, "--kubeconfig", str(self.kubeconfig), "get", "hardwaredata"]
        argv += ["-n", NAMESPACE, "-o", f"custom-columns={columns}"]
        output = b"kubectl did not answer in 30 s"
        with anyio.move_on_after(30):
            done = await anyio.run_process(argv, check=False)
            self.board.note(f"kubectl get hardwaredata -n {NAMESPACE} (custom columns):")
            output = done.stdout or done.stderr
        for line in output.decode(errors="replace").splitlines():
            self.board.note("  " + line)

    async def _wait(
        self, host: DemoHost, what: str, done: Callable[[JsonObject | None], bool]
    ) -> JsonObject:
        """Until `done` holds for the host as last seen; a host error or the timeout is a
        failure."""
        obj: JsonObject | None = None
        with anyio.move_on_after(self.options.timeout):
            while True:
                obj = self.board.hosts.get(host.name)
                if done(obj):
                    return obj or {}
                status = (obj or {}).get("status") or {}
                if status.get("errorType"):
                    raise DemoFailure(
                        f"{status['errorType']} while waiting for {what}: "
                        f"{status.get('errorMessage', '')}"
                    )
                await self.board.changed()
        raise DemoFailure(
            f"not {what} after {self.options.timeout:.0f} s (state {host_state(obj) or 'new'!r})"
        )

    async def _os_boot(self, host: DemoHost, since: datetime.datetime) -> JsonObject:
        """What the lab found when the host booted from its disk after `since` (os.json)."""
        path = LabPaths(self.setup.lab_dir).host(host.name).os
        with anyio.move_on_after(self.options.timeout):
            while True:
                found = read_json(path)
                if isinstance(found, dict) and _after(found.get("time"), since):
                    return found
                await anyio.sleep(0.1)
        raise DemoFailure(f"the lab saw no boot from disk in {self.options.timeout:.0f} s")

    def _record(self, host: DemoHost, check: Check) -> None:
        host.checks.append(check)
        self.board.note(
            f"{host.name}: {check.name} {'ok' if check.ok else 'FAILED'}: {check.detail}"
        )
        if not check.ok:
            raise DemoFailure(f"{check.name}: {check.detail}")

    # --- the checks --------------------------------------------------------------------------

    def _check_inventory(self, host: DemoHost, hardware_data: JsonObject) -> Check:
        """HardwareData against the lab's own description of the host (its profile, its loop
        devices, its boot MAC)."""
        hw = (hardware_data.get("spec") or {}).get("hardware") or {}
        profile = read_json(LabPaths(self.setup.lab_dir).host(host.name).profile) or {}
        storage = {s.get("name"): s for s in hw.get("storage") or []}
        macs = {n.get("mac") for n in hw.get("nics") or []}
        problems = []
        if set(storage) != set(host.lab.loop_devices):
            problems.append(f"disks {sorted(storage)} are not the lab's {host.lab.loop_devices}")
        sizes = [d["size"] for d in profile.get("disks") or []]
        got = [int(storage.get(dev, {}).get("sizeBytes") or 0) for dev in host.lab.loop_devices]
        if got != sizes:
            problems.append(f"disk sizes {got}, the profile's {sizes}")
        if host.lab.boot_mac not in macs:
            problems.append(f"no NIC with the boot MAC {host.lab.boot_mac}")
        cpus = (hw.get("cpu") or {}).get("count")
        if cpus != (profile.get("cpu") or {}).get("count"):
            problems.append(f"{cpus} CPUs, the profile's {(profile.get('cpu') or {}).get('count')}")
        if hw.get("ramMebibytes") != profile.get("memory_mib"):
            problems.append(
                f"{hw.get('ramMebibytes')} MiB RAM, the profile's {profile.get('memory_mib')}"
            )
        if problems:
            return Check("inventory", False, "; ".join(problems))
        disks = ", ".join(
            f"{dev.removeprefix('/dev/')} {storage[dev].get('sizeBytes', 0) / GiB:.0f} GiB "
            f"{storage[dev].get('type', '?')}"
            for dev in host.lab.loop_devices
        )
        return Check(
            "inventory",
            True,
            f"HardwareData {host.name}: {cpus} CPUs ({(hw.get('cpu') or {}).get('model')}), "
            f"{hw.get('ramMebibytes', 0) // 1024} GiB, disks {disks}, NICs {len(macs)}: as the "
            f"lab's profile {host.lab.profile}",
        )

    def _check_write(self, host: DemoHost, record_secret: JsonObject) -> Check:
        """The agent's own report of its deploy (in the host's agent record Secret)."""
        latest = AgentRecord.from_secret(record_secret, host.uid).latest("deploy")
        if latest is None or latest[1].status != "succeeded" or latest[1].result is None:
            return Check("agent write", False, "the agent record holds no successful deploy")
        result = latest[1].result
        host.written_at = latest[1].recorded_at
        host.disk = str(result.get("disk") or "")
        host.bytes_written = int(result.get("image_bytes_written") or 0)
        host.write_seconds = (result.get("timings") or {}).get("write_verify")
        image = self.setup.image
        if not result.get("verified") or result.get("digest") != image.sha256:
            return Check(
                "agent write",
                False,
                f"verified {result.get('verified')}, digest {result.get('digest')}, "
                f"sha256sum says {image.sha256}",
            )
        if host.disk not in host.lab.loop_devices:
            return Check("agent write", False, f"{host.disk} is not one of the host's disks")
        return Check(
            "agent write",
            True,
            f"{host.bytes_written} bytes onto {host.disk} in {host.write_seconds or 0:.2f} s, "
            f"verified sha256 {image.sha256[:16]}... (= sha256sum's)",
        )

    def _check_boot(self, host: DemoHost, booted: JsonObject) -> Check:
        """The lab's record of the OS boot: the host name and user data it found."""
        digest = hashlib.sha256(host.user_data).hexdigest()
        if not booted.get("booted"):
            return Check("os boot", False, f"nothing booted: {booted.get('reason')}")
        if booted.get("hostname") != host.hostname or booted.get("user_data_sha256") != digest:
            return Check(
                "os boot",
                False,
                f"the lab found hostname {booted.get('hostname')!r}, user data sha256 "
                f"{booted.get('user_data_sha256')}; sent {host.hostname!r}, {digest}",
            )
        return Check(
            "os boot",
            True,
            f"booted {booted.get('disk')}: hostname {host.hostname}, user-data sha256 "
            f"{digest[:16]}... as sent",
        )

    def _check_disks(self, host: DemoHost) -> list[Check]:
        others = [d for d in host.lab.loop_devices if d != host.disk]
        expected = _default_root_device(list(host.lab.loop_devices))
        checks = []
        if host.disk != expected:
            checks.append(
                Check("root device", False, f"wrote {host.disk}; with no hints: {expected}")
            )
        else:
            checks.append(
                Check(
                    "root device",
                    True,
                    f"{host.disk}: the smallest disk of at least 4 GiB (no root-device hints)",
                )
            )
        checks.append(check_image(host.disk, self.setup.image.reference))
        checks.append(
            check_config_drive(
                host.disk,
                user_data=host.user_data,
                hostname=host.hostname,
                uuid=host.uid,
                workdir=self.setup.workdir,
            )
        )
        checks.append(check_untouched(others))
        host.partition_offsets = [int(p["start"]) * 512 for p in partitions(host.disk)]
        return checks


def _default_root_device(devices: list[str]) -> str:
    """The smallest disk of at least 4 GiB (`blockdev --getsize64`): Ironic's choice with no
    root-device hints."""
    sizes = {
        dev: int(subprocess.run(["blockdev", "--getsize64", dev], capture_output=True,
                                text=True, check=True).stdout)
        for dev in devices
    }  # fmt: skip
    fitting = [dev for dev, size in sizes.items() if size >= 4 * GiB]
    return min(fitting, key=lambda dev: (sizes[dev], dev)) if fitting else ""


def _parse_time(stamp: Any) -> datetime.datetime:
    """An RFC 3339 time as the lab and the agent API write them; raises DemoFailure."""
    try:
        parsed = datetime.datetime.fromisoformat(str(stamp))
    except ValueError:
        raise DemoFailure(f"not a time: {stamp!r}") from None
    if parsed.tzinfo is None:
        raise DemoFailure(f"a time without a zone: {stamp!r}")
    return parsed


def _after(stamp: Any, since: datetime.datetime) -> bool:
    try:
        return _parse_time(stamp) >= since
    except DemoFailure:
        return False


# --- set-up, report, clean-up -------------------------------------------------------------------


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _describe_setup(setup: Setup) -> None:
    info, image = setup.info, setup.image
    seconds = setup.seconds
    print(
        f"lab up in {seconds['lab up']:.1f} s: network namespace {info.namespace} "
        f"({info.subnet}), {len(info.hosts)} hosts"
    )
    for host in info.hosts:
        disks = ", ".join(d.removeprefix("/dev/") for d in host.loop_devices)
        print(f"  {host.name:<8} {host.kind:<21} profile {host.profile:<8} disks {disks}")
    file_size = image.path.stat().st_size
    print(
        f"image made in {seconds['image']:.1f} s: {image.name}, qcow2 (qemu-img convert) of a "
        f"{image.virtual_size // MiB} MiB GPT disk whose ext4 file system (mke2fs -d) holds "
        f"/{', /'.join(image.files)} and 16 MiB of random bytes; {file_size / MiB:.1f} MiB, "
        f"sha256 {image.sha256}"
    )
    sums = _fetch(info.images_local_url + SUMS_NAME).decode(errors="replace").strip()
    print(
        f"served by the lab's image server from {info.images_dir}/ (with {SUMS_NAME}):\n"
        f"  on 127.0.0.1 (this machine): {info.images_local_url}{image.name}; "
        f"{info.images_local_url}{SUMS_NAME} fetched here: {sums!r}\n"
        f"  to the lab's hosts (their network namespaces reach the lab's gateway, not "
        f"127.0.0.1): {info.images_url}{image.name}, checksum {info.images_url}{SUMS_NAME}"
    )


def _report(session: Session, failures: list[str]) -> None:
    hosts = list(session.hosts.values())
    print("\n== checks (reference tools: qemu-img, sfdisk, sgdisk, bsdtar, blkid, wipefs)")
    for host in hosts:
        for check in host.checks:
            verdict = "ok" if check.ok else "FAILED"
            print(f"  {host.name:<8} {check.name:<13} {verdict:<6} {check.detail}")
        if host.failure:
            print(f"  {host.name:<8} {'lifecycle':<13} FAILED in {host.failure.split(':')[0]}")
        else:
            print(f"  {host.name:<8} {'lifecycle':<13} ok     deleted")
    print("\n== timings per host (seconds) and image bytes written")
    print(
        "  provision: from spec.image set to the agent's verified write recorded; boot: from "
        "there to provisioned, on and the OS boot recorded by the lab; agent write: the "
        "agent's own download-verify-write time"
    )
    head = "".join(f"{p:>12}" for p in PHASES)
    print(f"  {'HOST':<8} {'BMC':<21}{head}{'total':>9}{'written':>13}{'agent write':>13}")
    for host in hosts:
        cells = "".join(
            f"{host.timings[p]:>12.1f}" if p in host.timings else f"{'-':>12}" for p in PHASES
        )
        total = sum(host.timings.values())
        write = f"{host.write_seconds:.2f} s" if host.write_seconds is not None else "-"
        print(
            f"  {host.name:<8} {host.lab.kind:<21}{cells}{total:>9.1f}"
            f"{host.bytes_written:>13}{write:>13}"
        )
    written = sum(h.bytes_written for h in hosts)
    print(
        f"  image bytes written: {written} ({written / MiB:.1f} MiB) onto "
        f"{sum(1 for h in hosts if h.bytes_written)} disks, as the agents reported"
    )
    image = session.setup.image
    log = LabPaths(session.setup.lab_dir).access_log
    requests = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    gets = [r for r in requests if r.get("listener") == "lab" and r.get("method") == "GET"]
    of_image = [r for r in gets if r.get("path") == "/" + image.name]
    whole = [r for r in of_image if r.get("bytes") == image.path.stat().st_size]
    sums = [r for r in gets if r.get("path") == "/" + SUMS_NAME]
    print(
        f"  image server (access.log): the lab's hosts made {len(of_image)} GETs of "
        f"{image.name} ({len(whole)} sent the whole file) and {len(sums)} of {SUMS_NAME}"
    )
    ended = "interrupted after" if session.interrupted else "in"
    print(
        f"  lifecycle and checks of {len(hosts)} hosts (after set-up): {ended} "
        f"{session.lifecycle_seconds:.1f} s"
    )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does (the lab is still taken down)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Clean-up runs to its end: Ctrl-C and SIGTERM are ignored meanwhile."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def preflight(hosts: int) -> str | None:
    """Why the real demo cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return (
            "the real demo needs root (it makes loop devices and network namespaces): run it "
            "as root, or `metal3 demo --fixture` for the simulated lifecycle"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the real demo needs {', '.join(missing)} (not found on PATH)"
    if hosts < 3:
        return "the real demo needs at least 3 hosts (Redfish, Redfish virtual media, IPMI)"
    return None


def run_lab_demo(options: LabDemoOptions) -> int:
    """The whole demo: set-up, the lifecycle, the report, clean-up; the exit status."""
    problem = preflight(options.hosts)
    if problem is not None:
        print(f"metal3 demo: {problem}", file=sys.stderr)
        return 2
    print(
        f"metal3 {metal3.__version__} demo: {options.hosts} emulated hosts (metal3 lab) through "
        "their real lifecycle, by the operator's direct provisioner and the metal3 agent"
    )
    return run_in_workdir("metal3-demo-", lambda workdir, lab_dir: _run(options, workdir, lab_dir))


def run_in_workdir(prefix: str, run: Callable[[Path, Path], list[str]]) -> int:
    """`run(workdir, lab_dir)` in a new temporary folder, the operator's log in it; whatever
    happens (a failure, Ctrl-C, SIGTERM), the lab in `lab_dir` is taken down and the folder
    removed after. Prints the failures and the verdict; the exit status."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    lab_dir = workdir / "lab"
    failures: list[str] = []
    print(f"work folder: {workdir} (removed at the end; the operator's log: operator.log)")
    try:
        with _operator_log(workdir / "operator.log"), _sigterm_as_interrupt():
            try:
                failures = run(workdir, lab_dir)
            except KeyboardInterrupt:
                failures.append("interrupted")
                print("\ninterrupted: cleaning up", flush=True)
            except Exception as exc:  # reported, and the lab is still taken down
                traceback.print_exc()
                failures.append(f"unexpected error: {exc!r}")
    finally:
        with _uninterrupted():
            if any(failure != "interrupted" for failure in failures):
                _print_logs(workdir, lab_dir)
            failures += _take_down(lab_dir)
            shutil.rmtree(workdir, ignore_errors=True)
    for failure in failures:
        print(f"FAILED: {failure}")
    print("demo: ok" if not failures else "demo: FAILED", flush=True)
    return 0 if not failures else 1


def _take_down(lab_dir: Path) -> list[str]:
    """`lab down`; the failures."""
    started = time.monotonic()
    try:
        result = down(lab_dir)
    except LabError as exc:
        print(f"lab down FAILED: {exc}")
        return [f"lab down: {exc}"]
    left = f"; removed what was left: {', '.join(result.removed)}" if result.removed else ""
    print(
        f"lab down in {time.monotonic() - started:.1f} s: no namespace, loop device or process "
        f"of the lab is left{left}"
    )
    return []


@contextlib.contextmanager
def _operator_log(path: Path) -> Iterator[None]:
    """The in-process operator's log (and the libraries') goes to `path`, not the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _print_logs(workdir: Path, lab_dir: Path, lines: int = 30) -> None:
    """The end of the operator's and the agents' logs, for a failed run (to stderr)."""
    logs = [workdir / "operator.log", *sorted(LabPaths(lab_dir).hosts.glob("*/agent.log"))]
    for log in logs:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"--- the last {len(tail)} lines of {log}", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def _run(options: LabDemoOptions, workdir: Path, lab_dir: Path) -> list[str]:
    print("\n== set-up", flush=True)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    config = LabConfig(hosts=options.hosts, power_delay=options.power_delay, namespace=NAMESPACE)
    try:
        info = up(lab_dir, config).info
    except LabError as exc:
        return [f"lab up: {exc}"]
    seconds["lab up"] = time.monotonic() - started
    started = time.monotonic()
    try:
        image = options.build_image(workdir / "image")
    except ImageBuildError as exc:
        return [f"making the image: {exc}"]
    images = Path(info.images_dir)
    for file in (image.path, image.sums):
        shutil.copyfile(file, images / file.name)
    seconds["image"] = time.monotonic() - started
    setup = Setup(workdir, info, lab_dir, image, seconds)
    _describe_setup(setup)
    session = Session(setup, options)
    failures = anyio.run(session.run)
    _report(session, failures)
    return failures
