"""The test OS image, booted the way the end-to-end tests will boot it.

The image is built once (`metal3 lab os-image`, cached under the user's cache folder, so a
re-run only checks its digest), written onto loop-device disks by `metal3 agent deploy` (one
with a config drive, one without), and each disk is booted in a TCG virtual machine (never
KVM) with no NIC. What counts is the serial console: the image's report line
(`metal3.lab.osimage.read_report`) and the marker the user data prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopdev import attached, make_backing
from metal3.lab.osimage import (
    REPORT_PREFIX,
    OsImage,
    OsReport,
    build_os_image,
    read_report,
)
from metal3.lab.osimage.build import IMAGE, MANIFEST, cached

MiB = 1 << 20
DISK_SIZE = 1024 * MiB
BOOT_TIMEOUT = 900.0  # seconds; TCG on a loaded two-core machine is slow, never fail on time
MARKER = f"metal3-user-data-marker-{uuid.uuid4().hex[:12]}"
HOSTNAME = "osimage-e2e"
HOST_UUID = str(uuid.uuid4())
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3N4lWt1hLzK9JvXcQ2oMsbXq6bH1v0pVnZqL0cZ8r metal3-test"
)
USER_DATA = f"#cloud-config\nruncmd:\n  - [echo, {MARKER}]\n".encode()


def metal3(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "metal3", *args], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"metal3 {' '.join(args)}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def os_image() -> OsImage:
    """The image from the default cache (built there on the first run)."""
    image = build_os_image()
    print(
        f"\nos-image: {'cached' if image.from_cache else 'built'} in {image.seconds:.1f} s, "
        f"{image.file_size / MiB:.1f} MiB qcow2, virtual {image.virtual_size / MiB:.0f} MiB, "
        f"build steps {image.meta.get('seconds')}"
    )
    return image


def test_second_build_comes_from_the_cache_and_the_cli_copies_it(
    os_image: OsImage, tmp_path: Path
) -> None:
    out = tmp_path / "os.qcow2"
    done = metal3("lab", "os-image", "--output", str(out), "--json")
    doc = json.loads(done.stdout)
    print(f"\nos-image from the cache: {doc['seconds']} s")
    assert doc["from_cache"] is True
    assert doc["sha256"] == os_image.sha256
    assert hashlib.sha256(out.read_bytes()).hexdigest() == os_image.sha256
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert info["virtual-size"] == os_image.virtual_size


def test_a_cache_entry_that_does_not_match_its_digest_is_not_used(
    os_image: OsImage, tmp_path: Path
) -> None:
    entry = tmp_path / "os-image" / os_image.key
    entry.mkdir(parents=True)
    shutil.copyfile(os_image.path, entry / IMAGE)
    shutil.copyfile(os_image.path.parent / MANIFEST, entry / MANIFEST)
    hit = cached(tmp_path, os_image.key)
    assert hit is not None and hit[0] == entry / IMAGE
    with (entry / IMAGE).open("r+b") as handle:
        handle.seek(os_image.file_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert cached(tmp_path, os_image.key) is None
    assert not entry.exists()


def test_the_image_keeps_only_the_drivers_it_needs(os_image: OsImage) -> None:
    modules = os_image.meta["kernel_modules"]
    for driver in ("fs/ext4/ext4.ko", "block/virtio_blk.ko", "fs/isofs/isofs.ko"):
        assert any(path.endswith(driver) for path in modules), driver
    assert len(modules) < 80  # of the kernel's ~4000
    assert "cloud-init" in os_image.meta["packages"]


def test_read_report_takes_the_last_report_line() -> None:
    console = (
        f"noise\r\n[ 70.1] metal3-os-report[260]: {REPORT_PREFIX} status=running x=1\r\n"
        f"{REPORT_PREFIX} status=done hostname=h datasource=ConfigDrive\r\nlogin: "
    )
    report = read_report(console)
    assert report is not None
    assert (report.status, report.hostname, report.datasource) == ("done", "h", "ConfigDrive")
    assert report.user_data_sha256 == "-"
    assert read_report("no report here") is None


@contextlib.contextmanager
def _vm(disk: Path, console: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A TCG virtual machine booting ``disk`` (virtio) from its BIOS, no NIC, serial to
    ``console``; killed on exit."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-nodefaults",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nic",
        "none",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-drive",
        f"file={disk},format=raw,if=virtio",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


def _wait_for_report(
    vms: dict[str, tuple[subprocess.Popen[bytes], Path]], started: float
) -> dict[str, tuple[OsReport, float]]:
    """Each VM's report and the seconds from its start until it appeared."""
    found: dict[str, tuple[OsReport, float]] = {}
    while len(found) < len(vms):
        for name, (proc, console) in vms.items():
            if name in found:
                continue
            text = console.read_text(errors="replace") if console.exists() else ""
            report = read_report(text)
            if report is not None:
                found[name] = (report, time.monotonic() - started)
                continue
            assert proc.poll() is None, (
                f"{name}: qemu exited ({proc.returncode}) without a report: "
                f"{proc.stderr.read().decode() if proc.stderr else ''}\n{text[-3000:]}"
            )
            assert time.monotonic() - started < BOOT_TIMEOUT, (
                f"{name}: no report after {BOOT_TIMEOUT:.0f} s:\n{text[-3000:]}"
            )
        time.sleep(1)
    return found


def test_the_written_os_boots_and_cloud_init_applies_the_config_drive(
    os_image: OsImage, tmp_path: Path
) -> None:
    meta = tmp_path / "meta_data.json"
    meta.write_text(json.dumps({"hostname": HOSTNAME, "public_keys": {"default": PUBLIC_KEY}}))
    user_data = tmp_path / "user_data"
    user_data.write_bytes(USER_DATA)
    disks = {
        "configured": make_backing(tmp_path / "configured.disk", DISK_SIZE),
        "bare": make_backing(tmp_path / "bare.disk", DISK_SIZE),
    }
    common = ["agent", "deploy", "--image", str(os_image.path), "--checksum", os_image.sha256]
    drive = [
        *("--meta-data", str(meta), "--user-data", str(user_data)),
        *("--host-uuid", HOST_UUID, "--host-name", "host-0", "--host-namespace", "lab"),
    ]
    for name, backing in disks.items():
        with attached(backing) as dev:
            done = metal3(
                *common, "--disk", str(dev.path), *(drive if name == "configured" else [])
            )
            result = json.loads(done.stdout)
            assert result["verified"] is True
            assert (result["configdrive_partition"] is not None) == (name == "configured")

    consoles = {name: tmp_path / f"{name}.console.log" for name in disks}
    with contextlib.ExitStack() as stack:
        for backing in disks.values():  # 1 GiB files: pytest keeps the last runs' folders
            stack.callback(backing.unlink, missing_ok=True)
        started = time.monotonic()
        vms = {
            name: (stack.enter_context(_vm(disks[name], consoles[name])), consoles[name])
            for name in disks
        }
        reports = _wait_for_report(vms, started)

    report, seconds = reports["configured"]
    console = consoles["configured"].read_text(errors="replace")
    print(
        f"\nboot to cloud-init done (TCG, two VMs at once): configured {seconds:.0f} s "
        f"(uptime {report.get('uptime')} s), bare {reports['bare'][1]:.0f} s "
        f"(uptime {reports['bare'][0].get('uptime')} s)"
    )
    assert report.status == "done", console[-3000:]
    assert report.datasource == "ConfigDrive"
    assert report.hostname == HOSTNAME
    assert report.get("instance-id") == HOST_UUID
    assert report.user_data_sha256 == hashlib.sha256(USER_DATA).hexdigest()
    assert report.get("ssh-keys") == "1"
    assert report.get("errors") == "0"
    assert report.get("source").startswith("/dev/vda")
    assert MARKER in console
    assert f"{HOSTNAME} login:" in console  # the getty started after cloud-init set the name

    bare, _ = reports["bare"]
    bare_console = consoles["bare"].read_text(errors="replace")
    assert bare.status == "done", bare_console[-3000:]
    assert bare.datasource == "None"
    assert bare.hostname == "metal3-os"
    assert bare.user_data_sha256 == "-"
    assert MARKER not in bare_console
