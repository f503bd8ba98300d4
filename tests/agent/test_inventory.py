"""The inventory, checked on this machine against /proc and the reference tools (`lscpu`,
`lsmem`, `lsblk`, `losetup`, `blockdev`, `ip`, `ethtool`) run in the same test, with a loop
device among the disks; in a network namespace holding only a veth (a lab host); with tools
missing; and on recorded trees: one recorded from this machine (its facts typed from the
tools' output), one typed by hand for a UEFI server with DMI data, two NICs and two disks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.sysroot_recorder import record
from loopdev import LoopDevices
from metal3.agent.inventory import collect_inventory

DATA = Path(__file__).parent / "data"
MiB = 1 << 20
ENV = {**os.environ, "LC_ALL": "C"}


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, check=True).stdout


def colon_fields(text: str) -> dict[str, str]:
    """'Key:   value' lines (lscpu, lsmem, ethtool), first occurrence of each key."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def proc_cpuinfo() -> list[dict[str, str]]:
    blocks = Path("/proc/cpuinfo").read_text().strip().split("\n\n")
    return [colon_fields(block) for block in blocks if block.startswith("processor")]


def lsblk_disks() -> dict[str, dict[str, Any]]:
    """Whole disks by kernel name, from `lsblk`: as IPA keeps them (type disk, not a RAM
    disk, not empty) plus the loop devices `losetup` lists with a backing file."""
    backed = {Path(d["name"]).name for d in json.loads(sh("losetup", "-J", "-l"))["loopdevices"]}
    out = json.loads(sh("lsblk", "-J", "-b", "-o", "KNAME,TYPE,SIZE,ROTA,LOG-SEC,PHY-SEC"))
    found = {}
    pending = list(out["blockdevices"])
    while pending:
        dev = pending.pop()
        pending.extend(dev.get("children") or [])
        name = dev["kname"]
        wanted = dev["type"] == "disk" and not name.startswith(("ram", "zram", "fd"))
        if (wanted or (dev["type"] == "loop" and name in backed)) and int(dev["size"]) > 0:
            found[name] = dev
    return found


def first_global(link: dict[str, Any], family: str) -> str | None:
    for info in link["addr_info"]:
        if info["family"] == family and info["scope"] == "global":
            return str(info["local"])
    return None


def ethtool_speed(name: str, *, netns: str | None = None) -> int | None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    speed = colon_fields(sh(*prefix, "ethtool", name)).get("Speed", "")
    return int(speed.removesuffix("Mb/s")) if speed.endswith("Mb/s") else None


def test_cpu_matches_proc_cpuinfo_and_lscpu() -> None:
    cpu = collect_inventory()["cpu"]
    processors = proc_cpuinfo()
    lscpu = colon_fields(sh("lscpu"))
    assert cpu["count"] == len(processors) == int(lscpu["CPU(s)"])
    assert cpu["model_name"] == processors[0]["model name"] == lscpu["Model name"]
    assert cpu["flags"] == processors[0]["flags"].split() == lscpu["Flags"].split()
    assert cpu["architecture"] == lscpu["Architecture"] == os.uname().machine
    sockets = {p["physical id"] for p in processors}
    assert cpu["socket_count"] == len(sockets) == int(lscpu["Socket(s)"])
    if "CPU max MHz" in lscpu:
        assert float(cpu["frequency"]) == float(lscpu["CPU max MHz"])
    else:  # no cpufreq (a VM): /proc/cpuinfo's figure, as older lscpu printed it
        assert cpu["frequency"] == processors[0]["cpu MHz"]


def test_memory_matches_proc_meminfo_and_lsmem() -> None:
    memory = collect_inventory()["memory"]
    meminfo = colon_fields(Path("/proc/meminfo").read_text())
    assert memory["total"] == int(meminfo["MemTotal"].removesuffix(" kB")) * 1024
    assert memory["physical_mb"] * MiB >= memory["total"]
    if not Path("/sys/firmware/dmi/tables").exists():  # no DIMM list: the online memory
        online = colon_fields(sh("lsmem", "-b", "--summary=only"))["Total online memory"]
        assert memory["physical_mb"] == int(online) // MiB


def test_disks_match_lsblk_with_a_loop_device_listed(loop_devices: LoopDevices) -> None:
    loop = loop_devices.new(96 * MiB)
    before = lsblk_disks()
    disks = {disk["name"]: disk for disk in collect_inventory()["disks"]}
    after = lsblk_disks()

    mine = disks[str(loop.path)]
    assert mine["size"] == loop.size == 96 * MiB
    assert mine["logical_sectors"] == int(sh("blockdev", "--getss", str(loop.path)))
    assert mine["physical_sectors"] == int(sh("blockdev", "--getpbsz", str(loop.path)))
    assert mine["hctl"] is None
    assert mine["by_path"] is None
    # Other tests attach and detach loop devices meanwhile: judge the disks lsblk showed
    # both before and after, and list nothing lsblk never showed.
    stable = before.keys() & after.keys()
    assert loop.path.name in stable
    for name in stable:
        disk = disks[f"/dev/{name}"]
        assert disk["size"] == int(before[name]["size"])
        assert disk["rotational"] == (before[name]["rota"] in (True, "1"))
        assert disk["logical_sectors"] == int(before[name]["log-sec"])
        assert disk["physical_sectors"] == int(before[name]["phy-sec"])
    assert {name.removeprefix("/dev/") for name in disks} <= before.keys() | after.keys()


def test_interfaces_match_ip() -> None:
    interfaces = collect_inventory()["interfaces"]
    links = {link["ifname"]: link for link in json.loads(sh("ip", "-j", "addr"))}
    physical = {
        name
        for name in links
        if Path("/sys/class/net", name, "device").exists() or name.partition(".")[2].isdigit()
    }
    assert physical, "this machine has a network interface backed by a device"
    assert [i["name"] for i in interfaces] == sorted(physical)
    for interface in interfaces:
        link = links[interface["name"]]
        assert interface["mac_address"] == link["address"]
        assert interface["ipv4_address"] == first_global(link, "inet")
        assert interface["ipv6_address"] == first_global(link, "inet6")
        assert interface["has_carrier"] == ("LOWER_UP" in link["flags"])
        assert interface["speed_mbps"] == ethtool_speed(interface["name"])
        driver = Path("/sys/class/net", interface["name"], "device", "driver")
        assert interface["driver"] == (driver.resolve().name if driver.exists() else None)
        assert interface["pxe_enabled"] is False  # this machine did not network-boot
        assert interface["lldp"] is None
        assert interface["client_id"] is None


def test_boot_system_bmc_and_hostname_of_this_machine() -> None:
    inventory = collect_inventory()
    efi = Path("/sys/firmware/efi").is_dir()
    bootif = [a for a in Path("/proc/cmdline").read_text().split() if a.startswith("BOOTIF=")]
    assert inventory["boot"] == {
        "current_boot_mode": "uefi" if efi else "bios",
        "pxe_interface": bootif[-1].removeprefix("BOOTIF=") if bootif else None,
    }
    assert inventory["hostname"] == socket.gethostname()
    if not Path("/sys/class/dmi/id").is_dir():
        assert inventory["system_vendor"] == {
            "product_name": "",
            "serial_number": "",
            "manufacturer": "",
            "firmware": {"vendor": "", "version": "", "build_date": ""},
        }
    else:
        vendor = inventory["system_vendor"]
        assert vendor["product_name"] == sh("dmidecode", "-s", "system-product-name").strip()
        assert vendor["manufacturer"] == sh("dmidecode", "-s", "system-manufacturer").strip()
        assert vendor["firmware"]["version"] == sh("dmidecode", "-s", "bios-version").strip()
    if not any(Path(p).exists() for p in ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")):
        assert inventory["bmc_address"] == "0.0.0.0"
        assert inventory["bmc_v6address"] == "::/0"
        assert inventory["bmc_mac"] is None
    else:
        lan = colon_fields(sh("ipmitool", "lan", "print", "1"))
        assert inventory["bmc_address"] == lan["IP Address"]
    assert json.loads(json.dumps(inventory)) == inventory


def test_a_missing_tool_leaves_its_fields_out_with_a_logged_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a PATH that has no lsblk (nor udevadm; both live in /usr/bin only), the disks
    are left out and the reason logged; what needs no such tool is still there."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    caplog.set_level(logging.WARNING)
    inventory = collect_inventory()
    assert "disks" not in inventory
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("lsblk" in w and "not installed" in w for w in warnings), warnings
    assert any("disks section is left out" in w for w in warnings), warnings
    assert inventory["cpu"]["count"] == len(proc_cpuinfo())
    assert inventory["hostname"] == socket.gethostname()


def test_an_empty_root_gives_no_facts_and_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert collect_inventory(tmp_path) == {
        "interfaces": [],
        "bmc_address": "0.0.0.0",
        "bmc_v6address": "::/0",
        "system_vendor": {
            "product_name": "",
            "serial_number": "",
            "manufacturer": "",
            "firmware": {"vendor": "", "version": "", "build_date": ""},
        },
        "boot": {"current_boot_mode": "bios", "pxe_interface": None},
        "bmc_mac": None,
    }
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for reason in ("cpuinfo", "MemTotal", ".tools/lsblk.json", "hostname", "cmdline"):
        assert reason in warnings


def test_a_recorded_tree_reads_back_as_the_live_inventory(
    tmp_path: Path, loop_devices: LoopDevices
) -> None:
    loop = loop_devices.new(8 * MiB)
    live = record(tmp_path / "tree")
    assert str(loop.path) in [disk["name"] for disk in live["disks"]]
    assert collect_inventory(tmp_path / "tree") == live


# Facts of this project's VM when sysroot-vm was recorded, typed from `lscpu`, /proc/meminfo,
# `lsmem`, `lsblk -b`, `ip -j addr` and `hostname` run at that time.
VM_FLAGS_LINE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
    "nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic "
    "movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm "
    "3dnowprefetch cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm "
    "avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw "
    "avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 arat avx512vbmi umip "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid "
    "cldemote movdiri movdir64b fsrm serialize tsxldtrk avx512_fp16 arch_capabilities"
)
VM_FLAGS = VM_FLAGS_LINE.split()

EMPTY_VENDOR = {
    "product_name": "",
    "serial_number": "",
    "manufacturer": "",
    "firmware": {"vendor": "", "version": "", "build_date": ""},
}


def test_the_recorded_vm_tree() -> None:
    assert collect_inventory(DATA / "sysroot-vm") == {
        "interfaces": [
            {
                "name": "eth0",
                "mac_address": "02:fc:00:00:00:01",
                "ipv4_address": "192.0.2.2",
                "ipv6_address": "fd00::2",
                "has_carrier": True,
                "lldp": None,
                "vendor": "0x1af4",
                "product": "0x0001",
                "client_id": None,
                "biosdevname": None,
                "speed_mbps": None,
                "driver": "virtio_net",
                "pxe_enabled": False,
            }
        ],
        "cpu": {
            "model_name": "Intel(R) Xeon(R) Processor",
            "frequency": "2300.000",
            "count": 2,
            "architecture": "x86_64",
            "flags": VM_FLAGS,
            "socket_count": 1,
        },
        "disks": [
            {
                "name": "/dev/vda",
                "model": "",
                "size": 274877906944,
                "rotational": True,
                "wwn": None,
                "serial": None,
                "vendor": "0x1af4",
                "wwn_with_extension": None,
                "wwn_vendor_extension": None,
                "hctl": None,
                "by_path": None,
                "uuid": None,
                "logical_sectors": 512,
                "physical_sectors": 4096,
                "tran": None,
            }
        ],
        "memory": {"total": 24683584 * 1024, "physical_mb": 24576},
        "bmc_address": "0.0.0.0",
        "bmc_v6address": "::/0",
        "system_vendor": EMPTY_VENDOR,
        "boot": {"current_boot_mode": "bios", "pxe_interface": None},
        "hostname": "vm",
        "bmc_mac": None,
    }


SERVER_FLAGS_LINE = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts "
    "acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc "
    "arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni "
    "pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid "
    "dca sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm "
    "3dnowprefetch avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
)
SERVER_FLAGS = SERVER_FLAGS_LINE.split()


def nic(name: str, mac: str, **fields: Any) -> dict[str, Any]:
    base = {
        "name": name,
        "mac_address": mac,
        "ipv4_address": None,
        "ipv6_address": None,
        "has_carrier": False,
        "lldp": None,
        "vendor": None,
        "product": None,
        "client_id": None,
        "biosdevname": None,
        "speed_mbps": None,
        "driver": None,
        "pxe_enabled": False,
    }
    return {**base, **fields}


def test_the_hand_made_server_tree() -> None:
    """A UEFI server booted from eno1 (BOOTIF), with DMI strings, two DIMMs, a SATA HDD and
    an NVMe disk, and a BMC. Not listed: the CD-ROM, the partitions, the loop device
    without backing file, the bridge and lo. Facts as typed into the tree (see data/README)."""
    assert collect_inventory(DATA / "sysroot-server") == {
        "interfaces": [
            nic(
                "eno1",
                "3c:fd:fe:a1:b2:c0",
                ipv4_address="10.10.0.21",
                ipv6_address="2001:db8:10::21",
                has_carrier=True,
                vendor="0x8086",
                product="0x1521",
                speed_mbps=1000,
                driver="igb",
                pxe_enabled=True,
            ),
            nic(
                "eno1.100",
                "3c:fd:fe:a1:b2:c0",
                ipv4_address="10.100.0.21",
                has_carrier=True,
                speed_mbps=1000,
                driver="802.1Q VLAN Support",
            ),
            nic(
                "eno2",
                "3c:fd:fe:a1:b2:c1",
                vendor="0x8086",
                product="0x1521",
                driver="igb",
            ),
        ],
        "cpu": {
            "model_name": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz",
            "frequency": "3700.0000",
            "count": 4,
            "architecture": "x86_64",
            "flags": SERVER_FLAGS,
            "socket_count": 2,
        },
        "disks": [
            {
                "name": "/dev/sda",
                "model": "ST1000NM0055-1V4",
                "size": 1000204886016,
                "rotational": True,
                "wwn": "0x5000c500a1b2c3d4",
                "serial": "ZBS0ABCD",
                "vendor": "ATA",
                "wwn_with_extension": "0x5000c500a1b2c3d4",
                "wwn_vendor_extension": None,
                "hctl": "0:0:0:0",
                "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-1",
                "uuid": None,
                "logical_sectors": 512,
                "physical_sectors": 4096,
                "tran": "sata",
            },
            {
                "name": "/dev/nvme0n1",
                "model": "Dell Express Flash PM1725b 1.6TB SFF",
                "size": 1600321314816,
                "rotational": False,
                "wwn": "eui.36344630528021840025384500000001",
                "serial": "S4F6NE0M123456",
                "vendor": None,
                "wwn_with_extension": None,
                "wwn_vendor_extension": None,
                "hctl": None,
                "by_path": "/dev/disk/by-path/pci-0000:3b:00.0-nvme-1",
                "uuid": None,
                "logical_sectors": 512,
                "physical_sectors": 512,
                "tran": "nvme",
            },
        ],
        "memory": {"total": 32617148 * 1024, "physical_mb": 2 * 16 * 1024},
        "bmc_address": "10.10.0.5",
        "bmc_v6address": "2001:db8:10::5",
        "system_vendor": {
            "product_name": "PowerEdge R640",
            "serial_number": "7XK2Q53",
            "manufacturer": "Dell Inc.",
            "firmware": {"vendor": "Dell Inc.", "version": "2.11.2", "build_date": "10/21/2021"},
        },
        "boot": {"current_boot_mode": "uefi", "pxe_interface": "01-3c-fd-fe-a1-b2-c0"},
        "hostname": "server-01",
        "bmc_mac": "3c:fd:fe:a1:b2:c8",
    }


def test_infiniband_mac_and_client_id_as_ipa_makes_them(tmp_path: Path) -> None:
    """The example of IPA's Mellanox hardware manager: port GUID 7c:fe:90:03:00:29:26:52."""
    net = tmp_path / "sys/class/net/ib0"
    (net / "device").mkdir(parents=True)
    (net / "address").write_text("a0:00:00:27:fe:80:00:00:00:00:00:00:7c:fe:90:03:00:29:26:52\n")
    (net / "type").write_text("32\n")
    (net / "device/vendor").write_text("0x15b3\n")
    (net / "device/uevent").write_text("DRIVER=mlx5_core\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOTIF=01-7c-fe-90-29-26-52\n")
    [ib0] = collect_inventory(tmp_path)["interfaces"]
    assert ib0["mac_address"] == "7c:fe:90:29:26:52"
    assert ib0["client_id"] == "ff:00:00:00:00:00:02:00:00:02:c9:00:7c:fe:90:03:00:29:26:52"
    assert ib0["driver"] == "mlx5_core"
    assert ib0["pxe_enabled"] is True


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 that overlaps no route of this machine."""
    routes = [
        ipaddress.ip_network(route["dst"], strict=False)
        for route in json.loads(sh("ip", "-j", "route", "show", "table", "all"))
        if route.get("dst", "default") != "default" and ":" not in route["dst"]
    ]
    for third in range(1, 255):
        candidate = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(route) for route in routes):
            return candidate
    raise AssertionError("no free 10.213.x.0/24 subnet on this machine")


COLLECT = (
    "import json, sys; from metal3.agent.inventory import collect_inventory; "
    "print(json.dumps(collect_inventory(veth=sys.argv[1])))"
)


def test_a_lab_host_in_a_network_namespace_lists_its_veth() -> None:
    """A lab host: a network namespace whose only interface is one end of a veth pair (the
    other end in a second namespace, so nothing touches this machine's interfaces). With
    no device-backed NIC the veth is listed ("auto"); "exclude" leaves it out."""
    host, switch = f"inv-host-{uuid.uuid4().hex[:8]}", f"inv-sw-{uuid.uuid4().hex[:8]}"
    address = str(next(free_subnet().hosts()))
    try:
        sh("ip", "netns", "add", host)
        sh("ip", "netns", "add", switch)
        sh("ip", "-n", host, "link", "add", "lab0", "type", "veth", "peer", "sw0", "netns", switch)
        sh("ip", "-n", host, "addr", "add", f"{address}/24", "dev", "lab0")
        sh("ip", "-n", host, "addr", "add", "fd42:213:1::10/64", "dev", "lab0", "nodad")
        for netns, name in ((host, "lab0"), (switch, "sw0"), (host, "lo")):
            sh("ip", "-n", netns, "link", "set", name, "up")
        auto = json.loads(sh("ip", "netns", "exec", host, sys.executable, "-c", COLLECT, "auto"))
        excluded = json.loads(
            sh("ip", "netns", "exec", host, sys.executable, "-c", COLLECT, "exclude")
        )
        [link] = json.loads(sh("ip", "-n", host, "-j", "link", "show", "lab0"))
        speed = ethtool_speed("lab0", netns=host)
    finally:
        for netns in (host, switch):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    assert auto["interfaces"] == [
        nic(
            "lab0",
            link["address"],
            ipv4_address=address,
            ipv6_address="fd42:213:1::10",
            has_carrier="LOWER_UP" in link["flags"],
            speed_mbps=speed,
            driver="veth",
        )
    ]
    assert auto["interfaces"][0]["has_carrier"] is True
    assert excluded["interfaces"] == []


def test_a_bmc_device_without_answers_leaves_the_addresses_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """/dev/ipmi0 exists but ipmitool answered nothing (no recording): the addresses are
    unknown, so left out, not reported as "no BMC" (0.0.0.0)."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ipmi0").write_text("")
    caplog.set_level(logging.WARNING)
    inventory = collect_inventory(tmp_path)
    assert "bmc_address" not in inventory
    assert "bmc_v6address" not in inventory
    assert inventory["bmc_mac"] is None
    assert "ipmitool answered for no LAN channel" in caplog.text


def test_a_bmc_without_a_configured_channel_reports_none(tmp_path: Path) -> None:
    """Channel 1 answers with 0.0.0.0 and IPv6 disabled: IPA's "no BMC address" values."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ipmi0").write_text("")
    recordings = tmp_path / ".tools/ipmitool"
    recordings.mkdir(parents=True)
    (recordings / "lan-print-1.txt").write_text(
        "IP Address Source       : DHCP Address\nIP Address              : 0.0.0.0\n"
        "MAC Address             : 3c:fd:fe:a1:b2:c8\n"
    )
    (recordings / "lan6-print-1.txt").write_text("IPv6/IPv4 Addressing Enables:   ipv4\n")
    inventory = collect_inventory(tmp_path)
    assert inventory["bmc_address"] == "0.0.0.0"
    assert inventory["bmc_v6address"] == "::/0"
    assert inventory["bmc_mac"] is None
