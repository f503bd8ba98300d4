"""`metal3 demo`: the real lifecycle on a lab (the default) and the simulated one (`--fixture`),
their verdicts, and the pieces the real one judges with (its image, its disk checks).

The real demo runs as a process, as a user runs it: it needs root (loop devices, network
namespaces), as the whole suite does. Its failure is provoked through its session function with
an image maker that spoils the checksum file (a test seam, not an option of the command).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from metal3.cli.demo_checks import check_cleaned, check_image
from metal3.cli.demo_image import SUMS_NAME, build_demo_image

MiB = 1 << 20
CHECKS = (
    "inventory",
    "agent write",
    "os boot",
    "root device",
    "disk",
    "config drive",
    "other disks",
    "cleaned",
)


def demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metal3", "demo", "--plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sh(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


# --- the fixture demo ---------------------------------------------------------------------------


def test_fixture_demo_runs_every_example_host_through_its_lifecycle(repo_root: Path) -> None:
    result = demo("--fixture", "--examples", str(repo_root / "examples"))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for name in ("worker-0", "worker-1", "worker-2", "worker-3", "arm-0", "control-plane-0"):
        assert f"{name:<18} deleted" in out, name
    assert "worker-3           provisioned" in out
    assert "control-plane-0    externally provisioned" in out
    assert "missing-online.yaml" in out and "422 spec.online: Required value" in out
    assert (
        "simulated provisionings: 5 (fixture provisioner: nothing written), every host "
        "deleted: yes" in out
    )
    assert out.rstrip().endswith("demo: ok")


def test_fixture_demo_fails_when_an_invalid_example_is_accepted(
    repo_root: Path, tmp_path: Path
) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    fine = (examples / "ipmi.yaml").read_text().split("---\n", 1)[1].replace("worker-0", "x-0")
    (examples / "invalid" / "not-really-invalid.yaml").write_text(fine)
    result = demo("--fixture", "--examples", str(examples), "--timeout", "60")
    assert result.returncode == 1
    assert "not-really-invalid.yaml: ACCEPTED (wrongly)" in result.stdout
    assert "demo: FAILED" in result.stdout


def test_fixture_demo_fails_when_a_host_cannot_settle(repo_root: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(repo_root / "examples", examples)
    # A host whose credentials Secret is missing stays in a registration error.
    text = (examples / "redfish.yaml").read_text()
    (examples / "redfish.yaml").write_text(text.split("---\n", 1)[1])
    result = demo("--fixture", "--examples", str(examples), "--timeout", "4")
    assert result.returncode == 1
    assert "timed out" in result.stdout
    assert "demo: FAILED" in result.stdout


def test_options_that_belong_to_the_other_demo_are_refused() -> None:
    result = demo("--fixture", "--hosts", "5")
    assert result.returncode == 2
    assert "--hosts is for the lab demo, not --fixture" in result.stderr
    result = demo("--examples", "examples")
    assert result.returncode == 2
    assert "--examples goes with --fixture" in result.stderr
    result = demo("--fixture", "--vms")
    assert result.returncode == 2
    assert "--vms and --fixture are two different demos" in result.stderr
    result = demo("--vms", "--hosts", "3")
    assert result.returncode == 2
    assert "--vms makes two virtual machines; no --hosts" in result.stderr


# --- the real demo's image and checks -----------------------------------------------------------


def test_demo_image_is_a_qcow2_of_a_gpt_disk_with_real_files(tmp_path: Path) -> None:
    image = build_demo_image(tmp_path / "image")
    info = json.loads(sh("qemu-img", "info", "--output=json", image.path))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == image.virtual_size == 64 * MiB
    assert sh("sha256sum", "-c", SUMS_NAME, cwd=image.path.parent).strip() == f"{image.name}: OK"
    assert image.sha256 == sh("sha256sum", image.path).split()[0]
    # The reference is what qemu-img reads from the image.
    assert "Images are identical" in sh("qemu-img", "compare", image.path, image.reference)
    assert "No problems found" in sh("sgdisk", "--verify", image.reference)
    (part,) = json.loads(sh("sfdisk", "--json", image.reference))["partitiontable"]["partitions"]
    fs = tmp_path / "root.ext4"
    with image.reference.open("rb") as src, fs.open("wb") as dst:
        src.seek(int(part["start"]) * 512)
        dst.write(src.read(int(part["size"]) * 512))
    probe = sh("blkid", "-p", "-o", "export", fs).split()
    assert "TYPE=ext4" in probe and "LABEL=root" in probe
    for rel, content in image.files.items():
        assert sh("debugfs", "-R", f"cat /{rel}", fs).encode() == content, rel
    listing = sh("debugfs", "-R", "ls -l /var/lib/demo", fs)
    assert re.search(r"\b16777216\b.*random\.bin", listing), listing


def test_disk_check_compares_every_byte_with_the_reference(tmp_path: Path) -> None:
    image = build_demo_image(tmp_path / "image")
    disk = tmp_path / "disk"
    shutil.copyfile(image.reference, disk)
    assert check_image(str(disk), image.reference).ok
    at = 2048 * 512 + 12345  # inside the ext4 partition
    with disk.open("r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0xFF]))
    check = check_image(str(disk), image.reference)
    assert not check.ok
    assert f"differs from the reference at byte {at}" in check.detail


def test_cleaned_check_finds_signatures_left(tmp_path: Path) -> None:
    image = build_demo_image(tmp_path / "image")
    check = check_cleaned(str(image.reference), [2048 * 512])
    assert not check.ok
    assert " gpt" in check.detail and " PMBR" in check.detail  # wipefs: the table
    assert f"at {2048 * 512}: TYPE=ext4" in check.detail  # blkid -p: the root file system
    blank = tmp_path / "blank"
    with blank.open("wb") as handle:
        handle.truncate(64 * MiB)
    assert check_cleaned(str(blank), [2048 * 512]).ok


# --- the real demo ------------------------------------------------------------------------------


def assert_cleaned_up(out: str) -> None:
    """Nothing of the demo's lab is left: its network namespace, loop devices and folder."""
    namespace = re.search(r"network namespace (m3lab-\S+)", out)
    folder = re.search(r"work folder: (\S+)", out)
    assert namespace and folder, out
    assert namespace.group(1) not in sh("ip", "netns", "list")
    assert not Path(folder.group(1)).exists()
    loops = json.loads(sh("losetup", "--list", "--json") or '{"loopdevices": []}')
    backing = [d.get("back-file") or "" for d in loops.get("loopdevices", [])]
    assert not [b for b in backing if b.startswith(folder.group(1))]


def lab_hosts(out: str) -> dict[str, str]:
    """The lab's hosts and BMC kinds, from the set-up lines."""
    return dict(re.findall(r"^  (host-\d+) +(\S+) +profile ", out, re.MULTILINE))


def test_real_demo_provisions_every_host_and_checks_every_disk() -> None:
    assert os.geteuid() == 0, "the real demo needs root, as the suite does"
    result = demo(timeout=400)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-5000:]
    hosts = lab_hosts(out)
    assert len(hosts) == 4
    assert sorted(set(hosts.values())) == ["ipmi", "redfish", "redfish-virtualmedia"]
    for name in hosts:
        assert f"{name:<18} deleted" in out, name
        for check in CHECKS:
            assert f"  {name:<8} {check:<13} ok " in out, (name, check)
        assert f"  {name:<8} {'lifecycle':<13} ok     deleted" in out
        row = re.search(rf"^  {name} +(\S+)((?: +[\d.]+){{8}}) +(\d+) ", out, re.MULTILINE)
        assert row, name
        assert row.group(1) == hosts[name]
        assert int(row.group(3)) == 64 * MiB  # the image's bytes, as its agent wrote them
    assert f"image bytes written: {4 * 64 * MiB} " in out
    assert "kubectl get hardwaredata" in out
    assert re.search(r"lifecycle and checks of 4 hosts \(after set-up\): in [\d.]+ s", out)
    assert out.rstrip().endswith("demo: ok")
    assert_cleaned_up(out)


# Run the demo's session with an image whose checksum file names another digest.
WRONG_CHECKSUM = """
import sys
from metal3.cli.demo_image import build_demo_image
from metal3.cli.demo_lab import LabDemoOptions, run_lab_demo

def wrong_checksum(folder):
    image = build_demo_image(folder)
    image.sums.write_text("0" * 64 + "  " + image.name + "\\n")
    return image

sys.exit(run_lab_demo(LabDemoOptions(hosts=4, timeout=90, build_image=wrong_checksum)))
"""


def test_real_demo_fails_clearly_when_the_checksum_file_is_wrong() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WRONG_CHECKSUM], capture_output=True, text=True, timeout=400
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr[-5000:]
    hosts = lab_hosts(out)
    assert len(hosts) == 4
    for name in hosts:
        assert f"  {name:<8} {'lifecycle':<13} FAILED in provision" in out, name
        assert re.search(
            rf"^FAILED: {name}: provision: provisioning error .*sha256 checksum mismatch: "
            rf"expected 0{{64}}, got [0-9a-f]{{64}}",
            out,
            re.MULTILINE,
        ), name
    assert "image bytes written: 0 " in out
    assert out.rstrip().endswith("demo: FAILED")
    assert "the last" in result.stderr and "operator.log" in result.stderr  # logs shown
    assert_cleaned_up(out)


def test_real_demo_needs_root() -> None:
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "metal3", "demo", "--plain"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the real demo needs root" in result.stderr
    assert "metal3 demo --fixture" in result.stderr
