"""Deploy onto real loop devices from a real HTTP server on 127.0.0.1, judged by reference
tools: `qemu-img convert -O raw` for the image region, `sha256sum` for the checksum, `sgdisk -v`
and `sfdisk --verify` for the tables, `blkid -p` for the config drive's label and `bsdtar`
(libarchive: an ISO 9660 reader that shares nothing with pycdlib) for its files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagestream.conftest import _serve  # the Range-capable server of the imagestream tests
from imagestream.imagestream_support import Server
from loopdev import LoopDevice, LoopDevices, make_backing
from metal3.agent.deploy import (
    ConfigDriveWriteError,
    DeployError,
    DeployRequest,
    DeployResult,
    DiskError,
    HostIdentity,
    ImageChecksumMismatchError,
    ImageFetchError,
    InvalidDeployRequestError,
    deploy,
)
from metal3.agent.runner import at_nice

MiB = 1 << 20
SECTOR = 512
GPT_HEAD = 34 * SECTOR  # protective MBR, primary header, 32 sectors of entries
HOST = HostIdentity(uuid="5d6e7f80-1111-4222-8333-444455556666", namespace="lab", name="node-3")
USER_DATA = b"#cloud-config\n" + bytes(range(256)) * 2 + b"\r\n\x00binary tail\xff"
NETWORK_DATA = {
    "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:aa:bb:cc"}],
    "networks": [{"id": "n0", "link": "eth0", "type": "ipv4_dhcp"}],
    "services": [],
}
META_DATA = {"public_keys": {"default": "ssh-ed25519 AAAAC3Nza test@lab"}, "hostname": "n3.lab"}
EXPECTED_META = {
    "uuid": HOST.uuid,
    "name": "node-3",
    "hostname": "n3.lab",
    "metal3-namespace": "lab",
    "metal3-name": "node-3",
    "local-hostname": "node-3",
    "local_hostname": "node-3",
    "public_keys": {"default": "ssh-ed25519 AAAAC3Nza test@lab"},
}
ENV = {**os.environ, "LC_ALL": "C", "BLKID_FILE": "/dev/null"}


def sh(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run([str(a) for a in args], capture_output=True, env=ENV, timeout=300)
    if check:
        assert done.returncode == 0, f"{args}: {done.stderr.decode(errors='replace')}"
    return done


@dataclass(frozen=True)
class Served:
    """An image on the test server with its reference raw bytes (`qemu-img convert -O raw`)
    and its file's digest (`sha256sum`)."""

    name: str
    reference: Path
    sha256: str


@dataclass
class Images:
    server: Server
    images: dict[str, Served]

    def url(self, key: str) -> str:
        return self.server.url(self.images[key].name)


def _ext4(root: Path, name: str, size: int) -> bytes:
    tree = root / f"{name}-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "random.bin").write_bytes(os.urandom(5 * MiB))
    (tree / "etc" / "os-release").write_text(f'NAME="{name}"\n')
    fs = make_backing(root / f"{name}.ext4", size)
    sh("mkfs.ext4", "-q", "-F", "-d", tree, fs)
    return fs.read_bytes()


def _put(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _start_sector(image: Path, number: int) -> int:
    table = json.loads(sh("sfdisk", "--json", image).stdout)["partitiontable"]
    parts = [p for p in table["partitions"] if p["node"] == f"{image}{number}"]
    return int(parts[0]["start"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """A 64 MiB GPT disk image (an ESP-like partition of random bytes, an ext4 root), the
    same as qcow2, a 32 MiB MBR image and a bare ext4 file system with no table."""
    root = tmp_path_factory.mktemp("deploy-images")
    gpt = make_backing(root / "gpt.raw", 64 * MiB)
    sh("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", "-t2:8300", "-c2:root", gpt)
    _put(gpt, 2048 * SECTOR, os.urandom(MiB))
    _put(gpt, _start_sector(gpt, 2) * SECTOR, _ext4(root, "gpt-root", 40 * MiB))
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", gpt, root / "gpt.qcow2")

    mbr = make_backing(root / "mbr.raw", 32 * MiB)
    done = subprocess.run(
        ["sfdisk", "--quiet", str(mbr)], input=b"label: dos\nstart=2048, type=83\n", check=False
    )
    assert done.returncode == 0
    _put(mbr, 2048 * SECTOR, _ext4(root, "mbr-root", 24 * MiB))

    bare = root / "bare.raw"
    bare.write_bytes(_ext4(root, "bare", 16 * MiB))

    served: dict[str, Served] = {}
    for key, path in [("qcow2", "gpt.qcow2"), ("raw", "gpt.raw"), ("mbr", "mbr.raw")]:
        served[key] = _reference(root, path)
    served["bare"] = _reference(root, "bare.raw")
    for s in served.values():  # checksum files, as `sha256sum` writes them
        (root / f"{s.name}.sha256sum").write_text(f"{s.sha256}  {s.name}\n")
    for server in _serve(root, ranges=True):
        yield Images(server, served)


def _reference(root: Path, name: str) -> Served:
    reference = root / f"{name}.reference"
    sh("qemu-img", "convert", "-O", "raw", root / name, reference)
    digest = sh("sha256sum", root / name).stdout.decode().split()[0]
    return Served(name, reference, digest)


def _partition_nodes(disk: Path) -> list[Path]:
    return sorted(
        Path("/dev") / p.name for p in Path("/sys/block", disk.name).glob(f"{disk.name}p*")
    )


@pytest.fixture
def new_disk(loop_devices: LoopDevices) -> Iterator[Callable[..., LoopDevice]]:
    """Loop devices with no partitions known to the kernel, before and after: the kernel keeps
    a loop device's partitions (which the deploy's `partx -u` makes) after it is detached."""
    made: list[LoopDevice] = []

    def new(size: int = 256 * MiB, fill: int | None = None) -> LoopDevice:
        disk = loop_devices.new(size, fill=fill)
        if _partition_nodes(disk.path):
            sh("partx", "--delete", disk.path)
        assert _partition_nodes(disk.path) == []
        made.append(disk)
        return disk

    yield new
    for disk in made:
        if _partition_nodes(disk.path):
            sh("partx", "--delete", disk.path)


def _read(disk: LoopDevice, offset: int, size: int) -> bytes:
    with disk.path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _request(images: Images, key: str, disk: LoopDevice, **kwargs: Any) -> DeployRequest:
    fields: dict[str, Any] = {
        "image_url": images.url(key),
        "checksum": images.images[key].sha256,
        "disk": str(disk.path),
        "user_data": USER_DATA,
        "network_data": NETWORK_DATA,
        "meta_data": META_DATA,
        "host": HOST,
    }
    fields.update(kwargs)
    return DeployRequest(**fields)


def _assert_config_drive(node: Path) -> None:
    probe = sh("blkid", "--probe", "--output=export", node).stdout.decode().split("\n")
    assert "LABEL=config-2" in probe
    assert "TYPE=iso9660" in probe

    def member(name: str) -> bytes:
        return sh("bsdtar", "-xOf", node, f"openstack/latest/{name}").stdout

    assert member("user_data") == USER_DATA
    assert json.loads(member("meta_data.json")) == EXPECTED_META
    assert json.loads(member("network_data.json")) == NETWORK_DATA


@pytest.mark.parametrize(("key", "checksum_from"), [("qcow2", "digest"), ("raw", "file")])
def test_deploy_writes_the_image_and_a_config_drive(
    images: Images, new_disk: Callable[..., LoopDevice], key: str, checksum_from: str
) -> None:
    disk = new_disk(fill=0x5A)  # stale bytes everywhere: nothing may show through
    served = images.images[key]
    ref = served.reference.read_bytes()
    checksum = served.sha256 if checksum_from == "digest" else images.url(key) + ".sha256sum"

    result = deploy(_request(images, key, disk, checksum=checksum))

    assert result.verified
    assert (result.checksum_algorithm, result.digest) == ("sha256", served.sha256)
    assert result.image_size == len(ref) == 64 * MiB
    assert result.disk == str(disk.path)
    # The image region is the reference image, but for the GPT head (protective MBR, primary
    # header and entries), which now describes the whole disk and the config drive.
    region = _read(disk, 0, len(ref))
    assert region[GPT_HEAD:] == ref[GPT_HEAD:]
    assert region[:446] == ref[:446]  # boot code
    assert region[2 * SECTOR : 2 * SECTOR + 2 * 128] == ref[2 * SECTOR : 2 * SECTOR + 2 * 128]
    verify = sh("sgdisk", "--verify", disk.path).stdout.decode()
    assert "No problems found" in verify, verify

    part = result.configdrive_partition
    assert part is not None
    assert (part.table, part.number, part.created) == ("gpt", 3, True)
    assert part.offset >= len(ref)
    info = sh("sgdisk", "--info=3", disk.path).stdout.decode()
    assert "Partition name: 'config-2'" in info
    assert f"First sector: {part.offset // SECTOR} " in info
    node = Path(f"{disk.path}p3")
    assert node in _partition_nodes(disk.path)  # the deploy told the kernel
    _assert_config_drive(node)
    # An independent reader on the raw disk bytes as well (no kernel partition involved).
    iso = _read(disk, part.offset, part.size)
    iso_file = served.reference.parent / f"cd-{key}.iso"
    iso_file.write_bytes(iso)
    assert sh("bsdtar", "-xOf", iso_file, "openstack/latest/user_data").stdout == USER_DATA

    timings = result.timings
    assert set(timings) == {"write_verify", "configdrive", "sync", "total"}
    assert all(t > 0 for t in timings.values())
    phases = timings["write_verify"] + timings["configdrive"] + timings["sync"]
    assert timings["total"] >= phases
    as_json = json.loads(json.dumps(result.to_json()))
    assert as_json["timings"] == timings
    assert as_json["configdrive_partition"]["number"] == 3
    assert as_json["digest"] == served.sha256


def test_mbr_image_gets_its_config_drive_in_a_primary_partition(
    images: Images, new_disk: Callable[..., LoopDevice]
) -> None:
    disk = new_disk(size=128 * MiB)
    ref = images.images["mbr"].reference.read_bytes()

    result = deploy(_request(images, "mbr", disk))

    region = _read(disk, 0, len(ref))
    assert region[:446] == ref[:446]
    assert region[512:] == ref[512:]  # only the MBR sector changes
    assert "No errors detected" in sh("sfdisk", "--verify", disk.path).stdout.decode()
    part = result.configdrive_partition
    assert part is not None
    assert (part.table, part.number, part.offset + part.size) == ("dos", 2, disk.size)
    dump = sh("sfdisk", "--dump", disk.path).stdout.decode()
    start, size = part.offset // SECTOR, part.size // SECTOR
    assert f"{disk.path}p2 : start={start:>12}, size={size:>12}, type=83" in dump
    _assert_config_drive(Path(f"{disk.path}p2"))


def test_without_config_drive_data_the_whole_image_region_is_the_image(
    images: Images, new_disk: Callable[..., LoopDevice]
) -> None:
    disk = new_disk(fill=0xC3)
    ref = images.images["bare"].reference.read_bytes()

    result = deploy(
        _request(images, "bare", disk, user_data=None, network_data=None, meta_data=None)
    )

    assert result.verified
    assert result.configdrive_partition is None
    assert _read(disk, 0, len(ref)) == ref
    assert result.to_json()["configdrive_partition"] is None


def test_without_config_drive_data_a_gpt_still_spans_the_disk(
    images: Images, new_disk: Callable[..., LoopDevice]
) -> None:
    disk = new_disk()
    ref = images.images["raw"].reference.read_bytes()

    result = deploy(
        _request(images, "raw", disk, user_data=None, network_data=None, meta_data=None)
    )

    assert result.configdrive_partition is None
    region = _read(disk, 0, len(ref))
    assert region[GPT_HEAD:] == ref[GPT_HEAD:]
    assert region[2 * SECTOR : 3 * SECTOR] == ref[2 * SECTOR : 3 * SECTOR]  # the entries
    verify = sh("sgdisk", "--verify", disk.path).stdout.decode()
    assert "No problems found" in verify, verify
    table = json.loads(sh("sfdisk", "--json", disk.path).stdout)["partitiontable"]
    assert len(table["partitions"]) == 2
    assert table["lastlba"] == disk.size // SECTOR - 34


def _assert_unbootable(disk: LoopDevice, image_size: int) -> None:
    assert _read(disk, 0, MiB) == bytes(MiB)
    assert _read(disk, image_size - MiB, MiB) == bytes(MiB)  # where the GPT backup was
    assert _read(disk, disk.size - MiB, MiB) == bytes(MiB)
    probe = sh("blkid", "--probe", "--output=export", disk.path, check=False)
    assert "PTTYPE" not in probe.stdout.decode()
    assert sh("sfdisk", "--json", disk.path, check=False).returncode != 0
    verify = sh("sgdisk", "--verify", disk.path).stdout.decode()
    assert "Creating new GPT entries" in verify, verify  # sgdisk found no GPT, main or backup


@pytest.mark.parametrize("key", ["qcow2", "raw"])
def test_wrong_checksum_leaves_the_disk_unbootable(
    images: Images, new_disk: Callable[..., LoopDevice], key: str
) -> None:
    disk = new_disk()
    ref = images.images[key].reference.read_bytes()
    wrong = "0" * 63 + "1"

    with pytest.raises(ImageChecksumMismatchError, match="checksum mismatch") as caught:
        deploy(_request(images, key, disk, checksum=wrong))

    assert caught.value.disk_wiped
    assert "zeroed" in str(caught.value)
    assert images.images[key].sha256 in str(caught.value)  # the digest it got
    _assert_unbootable(disk, len(ref))
    # The image was written (the root file system is there) but nothing boots it.
    root = _start_sector(images.images[key].reference, 2) * SECTOR
    assert _read(disk, root, 8 * MiB) == ref[root : root + 8 * MiB]
    assert _partition_nodes(disk.path) == []


def test_an_image_without_a_table_cannot_take_a_config_drive(
    images: Images, new_disk: Callable[..., LoopDevice]
) -> None:
    disk = new_disk()
    ref = images.images["bare"].reference.read_bytes()

    with pytest.raises(ConfigDriveWriteError, match="no partition table") as caught:
        deploy(_request(images, "bare", disk))

    assert caught.value.disk_wiped
    _assert_unbootable(disk, len(ref))


def _refusals(images: Images, disk: LoopDevice) -> dict[str, tuple[DeployRequest, type]]:
    return {
        "too small for image and config drive": (
            _request(images, "qcow2", disk),
            DiskError,
        ),
        "missing image": (
            _request(images, "qcow2", disk, image_url=images.server.url("nope.qcow2")),
            ImageFetchError,
        ),
        "no checksum": (_request(images, "qcow2", disk, checksum=" "), InvalidDeployRequestError),
        "meta data without uuid": (
            _request(images, "qcow2", disk, host=None, meta_data={"name": "x"}),
            InvalidDeployRequestError,
        ),
        "unusable checksum": (
            _request(
                images,
                "mbr",
                disk,
                checksum="not-hex",
                user_data=None,
                network_data=None,
                meta_data=None,
            ),
            InvalidDeployRequestError,
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "too small for image and config drive",
        "missing image",
        "no checksum",
        "meta data without uuid",
        "unusable checksum",
    ],
)
def test_refusals_leave_the_disk_as_it_was(
    images: Images, new_disk: Callable[..., LoopDevice], case: str
) -> None:
    disk = new_disk(size=96 * MiB, fill=0xA5)  # holds the 64 MiB image, not the config drive
    request, kind = _refusals(images, disk)[case]

    with pytest.raises(kind) as caught:
        deploy(request)

    assert isinstance(caught.value, DeployError)
    assert not caught.value.disk_wiped
    with disk.path.open("rb") as f:
        while block := f.read(4 * MiB):
            assert block == b"\xa5" * len(block)


def test_a_file_is_not_a_disk(images: Images, tmp_path: Path) -> None:
    file = make_backing(tmp_path / "file", 4 * MiB, fill=0x11)
    request = DeployRequest(image_url=images.url("raw"), checksum="0" * 64, disk=str(file))

    with pytest.raises(DiskError, match="not a block device"):
        deploy(request)

    assert file.read_bytes() == b"\x11" * (4 * MiB)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pa55@images.example:8443/d.qcow2?X-Sig=abc#f", "https://images.example:8443/d.qcow2"),
        ("http://[fd00::1]/img.raw?token=t", "http://[fd00::1]/img.raw"),
        ("http://images.example/img.raw", "http://images.example/img.raw"),
        ("/srv/images/local.raw", "/srv/images/local.raw"),
    ],
)  # fmt: skip
def test_messages_show_image_urls_without_credentials(url: str, shown: str) -> None:
    from metal3.agent.deploy import shown_url

    assert shown_url(url) == shown


def _nice_of(tid: int | str) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


def test_a_write_at_a_work_nice_runs_all_its_threads_at_it(
    images: Images, new_disk: Callable[..., LoopDevice]
) -> None:
    """`at_nice` (the agent's --work-nice) lowers the whole write: the thread that calls
    imagestream and every pipeline thread it starts (read, hash, write), seen while they run
    by a sampler thread; the calling thread keeps its priority."""
    disk = new_disk()
    ours = _nice_of(threading.get_native_id())
    seen: dict[str, set[int]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError, IndexError):
                    name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                    if name.startswith("imgst-"):
                        seen.setdefault(name, set()).add(_nice_of(tid))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:

        def work() -> DeployResult:
            seen["caller"] = {_nice_of(threading.get_native_id())}
            return deploy(_request(images, "qcow2", disk))

        result = at_nice(19, work)
    finally:
        done.set()
        sampler.join()

    assert result.verified
    assert {"caller", "imgst-read", "imgst-hash", "imgst-write"} <= seen.keys(), seen
    assert all(nices == {19} for nices in seen.values()), seen
    assert _nice_of(threading.get_native_id()) == ours != 19
