"""The lab's parts on their own: byte ranges, the subnet choice, the host plan, the BMCs'
notifications (our IPMI simulator driven by ipmitool, sushy-tools' external notifier with a
fixed power delay), the relay in a namespace this test makes, and the OS boot check on disk
images made with sgdisk."""

from __future__ import annotations

import http.server
import ipaddress
import itertools
import json
import os
import random
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.helpers import wait_for
from metal3.agent.configdrive import build_config_drive
from metal3.agent.partitions import prepare_config_drive_partition
from metal3.bmc.emulators import FakeSystem, IPMISimulator, SushyEmulator
from metal3.lab import network
from metal3.lab.config import LabConfig, LabConfigError, plan_hosts
from metal3.lab.images import parse_range
from metal3.lab.osboot import boot_from_disks, inspect_disk
from metal3.lab.relay import Relay

MiB = 1 << 20


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=999-", (999, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=500-5000", (500, 999)),
        ("bytes=1000-", "unsatisfiable"),
        ("bytes=1000-1001", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=5-1", None),  # malformed: the whole file
        ("bytes=0-1,5-9", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 1000) == expected


def test_subnet_overlaps_nothing_taken() -> None:
    taken = [ipaddress.IPv4Network("10.0.0.0/9"), ipaddress.IPv4Network("172.16.0.0/12")]
    rng = random.Random(7)
    for _ in range(200):
        subnet = network.choose_subnet(taken, rng)
        assert subnet.prefixlen == 24
        assert subnet.is_private
        assert not any(subnet.overlaps(t) for t in taken)
    everything = [
        ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    ]
    with pytest.raises(network.NetworkError):
        network.choose_subnet(everything, rng)


def test_root_networks_include_the_machines_routes() -> None:
    found = network.root_networks()
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "-4", "route"], capture_output=True, text=True, check=True
        ).stdout
    )
    for route in routes:
        if route["dst"] != "default":
            assert ipaddress.IPv4Network(route["dst"], strict=False) in found


def test_default_host_mix_and_stable_macs() -> None:
    def kinds(**kwargs: Any) -> list[str]:
        return [p.kind for p in plan_hosts(LabConfig(**kwargs))]

    assert kinds(hosts=1) == ["redfish"]
    assert kinds(hosts=2) == ["redfish", "redfish-virtualmedia"]
    assert kinds(hosts=4) == ["redfish", "redfish", "redfish-virtualmedia", "ipmi"]
    assert kinds(hosts=3, ipmi_hosts=2, virtual_media_hosts=0) == ["redfish", "ipmi", "ipmi"]
    plans = plan_hosts(LabConfig(hosts=2, unregistered=2))
    assert [(p.name, p.registered) for p in plans] == [
        ("host-0", True),
        ("host-1", True),
        ("spare-0", False),
        ("spare-1", False),
    ]
    assert plan_hosts(LabConfig(hosts=2, unregistered=2)) == plans  # same MACs, same UUIDs
    assert plans[1].macs() == ("02:6d:33:00:01:00", "02:6d:33:00:01:01")
    with pytest.raises(LabConfigError):
        plan_hosts(LabConfig(hosts=1, ipmi_hosts=1, virtual_media_hosts=1))


class _Receiver:
    """An HTTP server on 127.0.0.1 that records JSON bodies (method, path, body)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                receiver.seen.append((self.command, self.path, json.loads(self.rfile.read(length))))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self._record()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    try:
        yield server
    finally:
        server.close()


def test_ipmi_simulator_notifies_power_and_boot_changes(receiver: _Receiver) -> None:
    with IPMISimulator(users={"u": "pw-1"}, notify_url=receiver.url + "/ipmi/x") as sim:

        def ipmitool(*args: str) -> None:
            subprocess.run(
                ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(sim.port), "-U", "u",
                 "-E", *args],
                env={"IPMI_PASSWORD": "pw-1", "PATH": os.environ["PATH"]},
                capture_output=True,
                check=True,
                timeout=30,
            )  # fmt: skip

        ipmitool("chassis", "bootdev", "pxe")
        ipmitool("power", "on")
        ipmitool("power", "on")  # no change: no notification
        ipmitool("power", "reset")
        ipmitool("chassis", "bootdev", "disk", "options=persistent")
        ipmitool("power", "off")
    events = [
        (body["event"], body["power"], body["boot"]["device"]) for _, _, body in receiver.seen
    ]
    assert events == [
        ("boot-options", "off", "pxe"),
        ("power-on", "on", "pxe"),
        ("reset", "on", "pxe"),
        ("boot-options", "on", "disk"),
        ("power-off", "off", "disk"),
    ]
    assert {path for _, path, _ in receiver.seen} == {"/ipmi/x"}
    assert receiver.seen[3][2]["boot"]["persistent"] is True


def _redfish_caller(emulator: SushyEmulator, user: str, password: str) -> Any:
    """call(method, path, body=None): one request to the emulator, its JSON answer or None."""
    import base64

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            emulator.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": authorization},
        )
        with opener.open(request, timeout=30) as response:
            raw = response.read()
            return json.loads(raw) if raw else None

    return call


def test_sushy_notifies_and_applies_power_after_the_set_delay(receiver: _Receiver) -> None:
    system = FakeSystem(name="n", external_notifier=True)
    users = {"admin": "pw-2"}
    with SushyEmulator([system], users=users, notify_url=receiver.url, power_delay=2) as emulator:
        call = _redfish_caller(emulator, "admin", "pw-2")

        asked = time.time()
        call("POST", system.path + "/Actions/ComputerSystem.Reset", {"ResetType": "On"})
        answered = time.time()
        # notifications are sent by the emulator's sender thread, just after the change
        wait_for(lambda: receiver.seen, "the request's notification", 10)
        pending = receiver.seen[-1][2]["pending_power"]
        assert pending["power_state"] == "On"
        # the fake driver's apply time, int(now) + the delay, with now while the POST ran
        assert int(asked) + 2 <= pending["apply_time"] <= int(answered) + 2
        before_due = call("GET", system.path)["PowerState"]
        if time.time() < pending["apply_time"]:
            assert before_due == "Off"
        wait_for(lambda: call("GET", system.path)["PowerState"] == "On", "the change", 30)
        wait_for(
            lambda: receiver.seen[-1][2]["power_state"] == "On"
            and receiver.seen[-1][2].get("pending_power") is None,
            "the change's notification", 10,
        )  # fmt: skip


def test_sushy_applies_a_power_change_without_delay_in_its_own_request(
    receiver: _Receiver,
) -> None:
    """With a power delay of 0 the change is applied and reported before the request is
    answered (see metal3.bmc.sushy_ordered), as a BMC that acts on the request does: the lab
    boots the host on that report, with no read of the system needed first."""
    system = FakeSystem(name="n", external_notifier=True)
    with SushyEmulator(
        [system], users={"admin": "pw-7"}, notify_url=receiver.url, power_delay=0
    ) as emulator:
        call = _redfish_caller(emulator, "admin", "pw-7")
        for reset, state in (("On", "On"), ("ForceOff", "Off"), ("On", "On")):
            call("POST", system.path + "/Actions/ComputerSystem.Reset", {"ResetType": reset})
            last = receiver.seen[-1][2]  # already there: sent before the answer
            assert (last["power_state"], last.get("pending_power")) == (state, None)
        gets = emulator.log_path.read_text(errors="replace").count(f'"GET {system.path} ')
        assert gets == 0


def test_sushy_reports_concurrent_changes_in_the_order_they_happened(
    receiver: _Receiver,
) -> None:
    """Power requests, boot device changes and reads of one system from several threads at
    once (the lab's emulator serialises its fake driver; see metal3.bmc.sushy_ordered). The
    reports, in the order received, are one history: the power state changes only by applying
    the change the report before it announced as pending (a report sent late breaks that),
    and the last report is the state the system ends in."""
    import concurrent.futures

    system = FakeSystem(name="n", external_notifier=True)
    with SushyEmulator(
        [system], users={"admin": "pw-3"}, notify_url=receiver.url, power_delay=0
    ) as emulator:
        call = _redfish_caller(emulator, "admin", "pw-3")

        def worker(n: int) -> None:
            for i in range(30):
                kind = (n + i) % 3
                if kind == 0:
                    reset = "On" if i % 2 else "ForceOff"
                    call("POST", system.path + "/Actions/ComputerSystem.Reset",
                         {"ResetType": reset})  # fmt: skip
                elif kind == 1:
                    call("GET", system.path)
                else:
                    target = "Pxe" if (n + i) % 2 else "Cd"
                    call("PATCH", system.path, {"Boot": {"BootSourceOverrideTarget": target}})

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(worker, n) for n in range(8)]:
                future.result()
        final = call("GET", system.path)  # applies any change still pending (delay 0)
    reports = [body for _, _, body in receiver.seen]
    assert len(reports) > 20
    for before, after in itertools.pairwise(reports):
        if after["power_state"] != before["power_state"]:
            pending = before.get("pending_power") or {}
            assert pending.get("power_state") == after["power_state"], (before, after)
    last = reports[-1]
    assert last["power_state"] == final["PowerState"]
    assert last.get("pending_power") is None
    assert last["boot_device"] == final["Boot"]["BootSourceOverrideTarget"]


def test_sushy_remembers_only_passwords_that_passed(receiver: _Receiver) -> None:
    """The lab's emulator skips the bcrypt check for a user and password that passed before
    (see metal3.bmc.sushy_ordered); a wrong password is refused every time, also after the
    right one passed, and the right one still works after a wrong one. A change made through
    one request is read by the next (the store's one shared connection)."""
    import urllib.error

    system = FakeSystem(name="n", external_notifier=True)
    with SushyEmulator(
        [system], users={"admin": "pw-4"}, notify_url=receiver.url, power_delay=0
    ) as emulator:
        right = _redfish_caller(emulator, "admin", "pw-4")
        wrong = _redfish_caller(emulator, "admin", "pw-5")
        for _ in range(3):
            assert right("GET", system.path)["UUID"] == system.uuid
            with pytest.raises(urllib.error.HTTPError) as refused:
                wrong("GET", system.path)
            assert refused.value.code == 401
        for target in ("Pxe", "Cd", "Hdd"):
            right("PATCH", system.path, {"Boot": {"BootSourceOverrideTarget": target}})
            assert right("GET", system.path)["Boot"]["BootSourceOverrideTarget"] == target
        assert receiver.seen[-1][2]["boot_device"] == "Hdd"


def test_a_large_lab_spreads_its_redfish_hosts_over_emulators(
    tmp_path: Path, receiver: _Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More Redfish hosts than `SYSTEMS_PER_EMULATOR` get more than one emulator process;
    each host's address reaches its own system (with the shared lab user), whichever
    emulator serves it, and the lab's power poll reads it there."""
    from metal3.bmc.emulators import FakeDrive
    from metal3.lab import bmcs
    from metal3.lab.bmcs import BmcPlan, LabBmcs, poll_redfish_power

    monkeypatch.setattr(bmcs, "SYSTEMS_PER_EMULATOR", 2)
    plans = [
        BmcPlan(
            name=f"host-{i}",
            kind="redfish-virtualmedia" if i % 2 else "redfish",
            system_uuid=f"00000000-0000-4000-8000-{i:012d}",
            username="lab-admin",
            password="pw-6",
            nics=((f"02:00:00:00:00:{i:02x}", ""),),
            drives=(FakeDrive(id=f"host-{i}-disk0", name="disk", capacity_bytes=2**30),),
            power_on=i == 4,
        )
        for i in range(5)
    ]
    lab_bmcs = LabBmcs(tmp_path, plans, receiver.url, power_delay=0)
    try:
        lab_bmcs.start()
        emulators = [pid for what, pid in lab_bmcs.processes() if what.startswith("sushy")]
        assert len(emulators) == 3 and len(set(emulators)) == 3
        ports = set()
        for plan in plans:
            address = lab_bmcs.address(plan.name)
            scheme, _, url = address.partition("+")
            assert scheme == plan.kind
            base, _, path = url.partition("/redfish/v1/")
            assert base == lab_bmcs.redfish_url_of(plan.name)
            ports.add(base)
            emulator = next(e for e in lab_bmcs.sushy if e.url == base)
            call = _redfish_caller(emulator, plan.username, plan.password)
            assert call("GET", "/redfish/v1/" + path)["UUID"] == plan.system_uuid
            expected = "On" if plan.power_on else "Off"
            assert poll_redfish_power(base, plan.system_uuid, plan.username, "pw-6") == expected
        assert len(ports) == 3
    finally:
        lab_bmcs.stop()
    assert all(not os.path.exists(f"/proc/{pid}") for pid in emulators)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"m3test-relay-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_relay_copies_both_ways_and_refuses_without_upstream(namespace: str) -> None:
    upstream = socket.create_server(("127.0.0.1", 0))
    port = upstream.getsockname()[1]
    relay = Relay(
        network.listening_socket("127.0.0.1", port, namespace=namespace), ("127.0.0.1", port)
    ).start()
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = upstream.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk  # until the client's half close
            received.append(data)
            conn.sendall(b"got %d bytes" % len(data))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n"
        "s.sendall(b'x' * 1000000); s.shutdown(socket.SHUT_WR)\n"
        "print(s.recv(100).decode())\n"
    )
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, "python3", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "got 1000000 bytes"
        thread.join(timeout=10)
        assert received == [b"x" * 1000000]
        upstream.close()  # nothing listens on 127.0.0.1 any more
        refused = subprocess.run(
            ["ip", "netns", "exec", namespace, "python3", "-c",
             f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n"
             "print(repr(s.recv(10)))\n"],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        assert refused.stdout.strip() in ("b''", "") or "Connection reset" in refused.stderr
    finally:
        relay.stop()
        upstream.close()


def _gpt_image(path: Path, *, config_drive: bytes | None) -> None:
    with path.open("wb") as handle:
        handle.truncate(256 * MiB)
    subprocess.run(
        ["sgdisk", "-n", "1:2048:+32M", "-t", "1:8300", str(path)], capture_output=True, check=True
    )
    if config_drive is not None:
        partition = prepare_config_drive_partition(str(path))
        with path.open("r+b") as handle:
            handle.seek(partition.offset)
            handle.write(config_drive)


def test_os_boot_reads_the_config_drive_and_skips_bad_disks(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"\0" * MiB)
    plain = tmp_path / "plain"
    _gpt_image(plain, config_drive=None)
    drive = build_config_drive(meta_data={"uuid": "u-1", "name": "n1"}, user_data=b"hello")
    with_drive = tmp_path / "with-drive"
    _gpt_image(with_drive, config_drive=drive)

    assert inspect_disk(str(empty)) == {"disk": str(empty), "bootable": False,
                                        "reason": "no partition table"}  # fmt: skip
    plain_found = inspect_disk(str(plain))
    assert plain_found["bootable"] is True
    assert plain_found["config_drive"] is None

    result = boot_from_disks([str(empty), str(with_drive)])
    assert result["booted"] is True
    assert result["disk"] == str(with_drive)
    assert result["hostname"] == "n1"  # no hostname key: cloud-init uses the name
    digest = (
        subprocess.run(["sha256sum"], input=b"hello", capture_output=True, check=True)
        .stdout.split()[0]
        .decode()
    )
    assert result["user_data_sha256"] == digest
    assert [s["disk"] for s in result["skipped"]] == [str(empty)]

    # A GPT whose primary header is damaged fails sgdisk's check: that disk does not boot.
    with with_drive.open("r+b") as handle:
        handle.seek(512 + 16)  # the header's CRC32 field
        handle.write(b"\xde\xad\xbe\xef")
    broken = inspect_disk(str(with_drive))
    assert broken["bootable"] is False
    assert "GPT has problems" in broken["reason"]


def test_os_boot_accepts_a_partition_off_the_2048_sector_grid(tmp_path: Path) -> None:
    """sgdisk cautions about a partition that does not end on a 2048-sector boundary, and still
    finds no problem: firmware boots such a disk, and so does the lab."""
    disk = tmp_path / "unaligned"
    with disk.open("wb") as handle:
        handle.truncate(16 * MiB)
    subprocess.run(["sgdisk", "-n", "1:2048:+10000", str(disk)], capture_output=True, check=True)
    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True)
    assert "2048-sector boundary" in verify.stdout  # the caution is there
    assert inspect_disk(str(disk))["bootable"] is True
