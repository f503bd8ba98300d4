"""The fixture provisioner: simulated hardware, in memory, deterministic.

It gives the state machine real provisioner semantics without hardware: operations take a
configurable number of calls ("steps") to finish, can be made to fail, are idempotent (provisioning
a host that already runs the image is a no-op, as with a real provisioner), and it keeps counters
so tests can tell that a host was provisioned exactly once.

Per-host behaviour comes from annotations ``fixture.metal3.io/<operation>`` (or the
``behaviours`` given by host name) with values ``ok``, ``fail`` (always), ``fail:N`` (the first N
attempts fail) or ``steps:N`` (N extra calls before the operation completes). Operations:
register, inspect, prepare, provision, deprovision, power, detach, delete.

The simulated hardware (a :class:`FixtureWorld`) can be saved to a JSON file, so a standalone
operator restarted on the same data directory finds its hosts as it left them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from metal3.api.baremetalhost import BareMetalHost
from metal3.api.hardware import (
    BIOS,
    CPU,
    NIC,
    Firmware,
    HardwareDetails,
    HardwareSystemVendor,
    Storage,
)
from metal3.provisioner.base import (
    DONE,
    InspectionResult,
    ManagementAccessData,
    PowerState,
    PrepareData,
    ProvisionData,
    ProvisionerServices,
    Result,
    failed,
    in_progress,
)

ANNOTATION_PREFIX = "fixture.metal3.io/"
OPERATIONS = (
    "register",
    "inspect",
    "prepare",
    "provision",
    "deprovision",
    "power",
    "detach",
    "delete",
)


@dataclass
class Behaviour:
    steps: int = 0
    fail_always: bool = False
    fail_first: int = 0

    @classmethod
    def parse(cls, text: str) -> Behaviour:
        kind, _, count = text.strip().partition(":")
        if kind == "ok":
            return cls()
        if kind == "fail":
            return cls(fail_always=not count, fail_first=int(count) if count else 0)
        if kind == "steps":
            return cls(steps=int(count or 0))
        raise ValueError(f"fixture behaviour {text!r}: expected ok, fail, fail:N or steps:N")


@dataclass
class HostRecord:
    """What the simulated hardware remembers about one host."""

    registered: bool = False
    credentials_user: str = ""
    inspected: bool = False
    prepared: str = ""  # the settings last applied, as JSON
    workload: str = ""  # image URL or custom deploy method now on the disk
    powered_on: bool = False
    detached: bool = False
    operation: str = ""  # the operation in progress
    steps_left: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # completed operations


class FixtureWorld:
    """Every simulated host, by the host's UID (so a re-created host is a new machine)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.hosts: dict[str, HostRecord] = {}
        if path is not None and path.exists():
            raw = json.loads(path.read_text())
            self.hosts = {uid: HostRecord(**record) for uid, record in raw.items()}

    def record(self, uid: str) -> HostRecord:
        record = self.hosts.get(uid)
        if record is None:
            record = self.hosts[uid] = HostRecord()
        return record

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({uid: asdict(r) for uid, r in self.hosts.items()}))
        os.replace(tmp, self.path)

    def count(self, uid: str, operation: str) -> int:
        record = self.hosts.get(uid)
        return record.counts.get(operation, 0) if record else 0


def fake_inventory(name: str) -> HardwareDetails:
    """A plausible, deterministic inventory for a host."""
    seed = sum(name.encode()) % 200
    return HardwareDetails(
        hostname=name,
        ram_mebibytes=65536,
        system_vendor=HardwareSystemVendor(
            manufacturer="Fixture Inc.",
            product_name="Simulated Server",
            serial_number=f"SIM{seed:04d}",
        ),
        firmware=Firmware(bios=BIOS(vendor="Fixture", version="1.0", date="01/01/2026")),
        cpu=CPU(arch="x86_64", model="Simulated CPU", clock_megahertz=2600, count=32),
        nics=[
            NIC(name="eth0", mac=f"52:54:00:00:{seed:02x}:01", ip=f"192.0.2.{seed + 1}", pxe=True)
        ],
        storage=[
            Storage(name="/dev/sda", type="SSD", rotational=False, size_bytes=480 * 10**9),
            Storage(name="/dev/sdb", type="HDD", rotational=True, size_bytes=4 * 10**12),
        ],
    )


class FixtureProvisioner:
    def __init__(
        self, world: FixtureWorld, host: BareMetalHost, behaviours: dict[str, Behaviour]
    ) -> None:
        assert host.metadata is not None
        self.world = world
        self.name = host.metadata.name or ""
        self.uid = host.metadata.uid or f"{host.metadata.namespace}/{self.name}"
        self.record = world.record(self.uid)
        self.behaviours = behaviours

    @property
    def provisioning_id(self) -> str | None:
        """None: simulated hardware has no identifier of its own to record."""
        return None

    def _run(self, operation: str, on_complete: str | None = None) -> Result:
        """One call of a multi-step operation; returns its progress."""
        record = self.record
        behaviour = self.behaviours.get(operation, Behaviour())
        if record.operation != operation:
            record.operation = operation
            record.steps_left = behaviour.steps
            record.attempts[operation] = record.attempts.get(operation, 0) + 1
            if behaviour.steps:
                self.world.save()
                return in_progress()
        elif record.steps_left > 0:
            record.steps_left -= 1
            if record.steps_left:
                self.world.save()
                return in_progress()
        record.operation = ""
        attempt = record.attempts.get(operation, 1)
        if behaviour.fail_always or attempt <= behaviour.fail_first:
            self.world.save()
            return failed(f"fixture: {operation} failed (attempt {attempt})")
        record.counts[on_complete or operation] = record.counts.get(on_complete or operation, 0) + 1
        return DONE

    def _finish(self, result: Result) -> Result:
        self.world.save()
        return result

    async def register(self, data: ManagementAccessData, *, force: bool) -> Result:
        record = self.record
        if record.registered and not force and record.credentials_user == data.credentials.username:
            return DONE
        result = self._run("register")
        if result.complete:
            record.registered = True
            record.credentials_user = data.credentials.username
        return self._finish(result)

    async def inspect(self, *, force: bool) -> InspectionResult:
        result = self._run("inspect")
        if result.complete:
            self.record.inspected = True
            self._finish(result)
            return InspectionResult(result, fake_inventory(self.name))
        return InspectionResult(self._finish(result))

    async def prepare(self, data: PrepareData, *, force: bool) -> Result:
        settings = json.dumps(
            {
                "raid": data.raid.to_json() if data.raid else None,
                "hints": data.root_device_hints.to_json() if data.root_device_hints else None,
                "firmware": data.firmware.to_json() if data.firmware else None,
                "clean": data.automated_cleaning,
            },
            sort_keys=True,
        )
        if self.record.prepared == settings and not force and self.record.operation != "prepare":
            return DONE
        result = self._run("prepare")
        if result.complete:
            self.record.prepared = settings
        return self._finish(result)

    @staticmethod
    def _workload(data: ProvisionData) -> str:
        if data.custom_deploy and data.custom_deploy.method:
            return f"custom:{data.custom_deploy.method}"
        return data.image.url or "" if data.image else ""

    async def adopt(self, data: ProvisionData) -> Result:
        self.record.workload = self._workload(data)
        return self._finish(DONE)

    async def provision(self, data: ProvisionData) -> Result:
        workload = self._workload(data)
        record = self.record
        if record.workload == workload and record.operation != "provision":
            return DONE  # already running this image: nothing to write
        result = self._run("provision")
        if result.complete:
            record.workload = workload
            record.powered_on = True
        return self._finish(result)

    async def deprovision(self, *, automated_cleaning: bool) -> Result:
        record = self.record
        if not record.workload and record.operation != "deprovision":
            return DONE
        result = self._run("deprovision")
        if result.complete:
            record.workload = ""
            record.powered_on = False
        return self._finish(result)

    async def power_on(self, *, force: bool) -> Result:
        if self.record.powered_on and self.record.operation != "power":
            return DONE
        result = self._run("power", "power_on")
        if result.complete:
            self.record.powered_on = True
        return self._finish(result)

    async def power_off(self, *, hard: bool) -> Result:
        if not self.record.powered_on and self.record.operation != "power":
            return DONE
        result = self._run("power", "power_off")
        if result.complete:
            self.record.powered_on = False
        return self._finish(result)

    async def power_state(self) -> PowerState:
        return PowerState(self.record.powered_on)

    async def detach(self, *, force: bool) -> Result:
        result = self._run("detach")
        if result.complete:
            self.record.detached = True
        return self._finish(result)

    async def delete(self) -> Result:
        result = self._run("delete")
        if result.complete:
            self.record.registered = False
            self.record.detached = False
        return self._finish(result)


class FixtureProvisionerFactory:
    def __init__(
        self,
        world: FixtureWorld | None = None,
        behaviours: dict[str, dict[str, Behaviour]] | None = None,
    ) -> None:
        self.world = world or FixtureWorld()
        self.behaviours_by_name = behaviours or {}

    def behaviours(self, host: BareMetalHost) -> dict[str, Behaviour]:
        assert host.metadata is not None
        chosen = dict(self.behaviours_by_name.get(host.metadata.name or "", {}))
        for key, value in (host.metadata.annotations or {}).items():
            if key.startswith(ANNOTATION_PREFIX):
                operation = key.removeprefix(ANNOTATION_PREFIX)
                if operation in OPERATIONS:
                    chosen[operation] = Behaviour.parse(value)
        return chosen

    def for_host(self, host: BareMetalHost) -> FixtureProvisioner:
        return FixtureProvisioner(self.world, host, self.behaviours(host))

    def forget(self, uid: str) -> None:
        """Nothing to free: the simulated hardware stays (tests count what was done to it)."""

    async def run(
        self,
        services: ProvisionerServices,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """No background work: the simulated hardware answers every call at once."""
        task_status.started()
        await anyio.sleep_forever()
