"""`metal3 agent` as a user runs it: each action in a fresh process, judged by its exit code,
its JSON and reference tools (`sgdisk`, `wipefs`, `blkid`, `bsdtar`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from loopdev import LoopDevices

MiB = 1 << 20
ENV = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}
DISKS = [
    {"name": "/dev/sda", "model": "ST4000NM0035", "size": 4000787030016, "rotational": True,
     "serial": "ZC1A2B3C", "vendor": "ATA", "wwn": "0x5000c500a1b2c3d4", "hctl": "0:0:0:0"},
    {"name": "/dev/nvme0n1", "model": "SAMSUNG MZ1LB960", "size": 960197124096,
     "rotational": False, "serial": "S4EMNX0R123456", "vendor": None, "wwn": None,
     "hctl": None},
]  # fmt: skip


def metal3(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "metal3", "agent", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def tool(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=120, check=check
    )


def test_root_device_from_an_inventory_file(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"disks": DISKS}))
    chosen = json.loads(
        metal3("root-device", "--inventory", inventory, "--hints", '{"rotational": false}').stdout
    )
    assert chosen["name"] == "/dev/nvme0n1"
    by_size = metal3(
        "root-device", "--inventory", inventory, "--hints", '{"minSizeGigabytes": 1000}'
    )
    assert json.loads(by_size.stdout)["name"] == "/dev/sda"


def test_root_device_that_matches_nothing_fails_naming_the_hints(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"disks": DISKS}))
    done = metal3(
        "root-device", "--inventory", inventory, "--hints", '{"serialNumber": "NOPE"}', check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "NOPE" in done.stderr and "serialNumber" in done.stderr


def test_inventory_lists_an_attached_loop_device(loop_devices: LoopDevices) -> None:
    disk = loop_devices.new(48 * MiB)
    inventory: dict[str, Any] = json.loads(metal3("inventory").stdout)
    sizes = {d["name"]: d["size"] for d in inventory["disks"]}
    assert sizes[str(disk.path)] == 48 * MiB
    assert inventory["cpu"]["count"] == os.cpu_count()


def test_clean_erases_a_gpt_disk(loop_devices: LoopDevices) -> None:
    disk = loop_devices.new(64 * MiB)
    tool("sgdisk", "-n", "1:2048:+16M", "-t", "1:8300", disk.path, check=True)
    assert tool("wipefs", "--no-act", disk.path).stdout.strip()
    result = json.loads(metal3("clean", disk.path).stdout)
    assert result["mode"] == "metadata"
    assert tool("wipefs", "--no-act", disk.path).stdout.strip() == ""
    assert tool("blkid", "-p", disk.path).returncode == 2  # nothing found


def test_clean_disabled_touches_nothing(loop_devices: LoopDevices) -> None:
    disk = loop_devices.new(32 * MiB)
    tool("sgdisk", "-n", "1:2048:+8M", disk.path, check=True)
    before = hashlib.sha256(disk.path.read_bytes()).hexdigest()
    metal3("clean", disk.path, "--mode", "disabled")
    assert hashlib.sha256(disk.path.read_bytes()).hexdigest() == before


def test_deploy_a_local_raw_image_with_a_config_drive(
    loop_devices: LoopDevices, tmp_path: Path
) -> None:
    image = tmp_path / "disk.raw"
    with image.open("wb") as f:
        f.truncate(40 * MiB)
    tool("sgdisk", "-n", "1:2048:0", "-t", "1:8300", image, check=True)
    digest = tool("sha256sum", image, check=True).stdout.split()[0]
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\nhostname: from-cli\n")
    disk = loop_devices.new(128 * MiB)
    done = metal3(
        "deploy", "--image", image, "--checksum", digest, "--disk", disk.path,
        "--user-data", user_data, "--host-uuid", "0e1c2d3b-aaaa-4bbb-8ccc-123456789abc",
        "--host-name", "node-cli",
    )  # fmt: skip
    result = json.loads(done.stdout)
    assert result["verified"] is True
    assert set(result["timings"]) >= {"write_verify", "configdrive", "sync", "total"}
    assert "No problems found" in tool("sgdisk", "-v", disk.path).stdout
    partition = result["configdrive_partition"]
    iso = tmp_path / "configdrive.iso"
    with disk.path.open("rb") as f:
        f.seek(partition["offset"])
        iso.write_bytes(f.read(partition["size"]))
    assert 'LABEL="config-2"' in tool("blkid", "-p", iso).stdout
    extracted = tool("bsdtar", "-xOf", iso, "openstack/latest/user_data", check=True)
    assert extracted.stdout.encode() == user_data.read_bytes()


def test_deploy_with_a_wrong_checksum_fails(loop_devices: LoopDevices, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4 * MiB))
    disk = loop_devices.new(32 * MiB)
    done = metal3(
        "deploy", "--image", image, "--checksum", "0" * 64, "--disk", disk.path, check=False
    )
    assert done.returncode == 1
    assert "checksum" in done.stderr.lower()
    with disk.path.open("rb") as f:
        assert f.read(MiB) == bytes(MiB)
