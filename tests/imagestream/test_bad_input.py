"""Bad input gets its own clear error, never a panic, and never a write past the virtual size."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest
from imagestream_support import ImageSet, Server, run

from metal3 import imagestream

L2_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00


class Qcow2:
    """Just enough qcow2 reading to aim corruptions at the right bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray(path.read_bytes())
        self.cluster_bits = struct.unpack_from(">I", self.data, 20)[0]
        self.cluster_size = 1 << self.cluster_bits
        self.l1_offset = struct.unpack_from(">Q", self.data, 40)[0]

    def l1(self, i: int) -> int:
        return int(struct.unpack_from(">Q", self.data, self.l1_offset + 8 * i)[0])

    def set_u64(self, at: int, value: int) -> None:
        struct.pack_into(">Q", self.data, at, value)

    def l2_entries(self) -> list[tuple[int, int]]:
        """(position of the entry in the file, entry) for the first L2 table."""
        l2 = self.l1(0) & L2_OFFSET_MASK
        return [
            (l2 + 8 * j, int(struct.unpack_from(">Q", self.data, l2 + 8 * j)[0]))
            for j in range(self.cluster_size // 8)
        ]

    def save(self, path: Path) -> Path:
        path.write_bytes(bytes(self.data))
        return path


@pytest.fixture
def v3(images: ImageSet) -> Qcow2:
    return Qcow2(images.images["qcow2-v3"].path)


def write_expecting(
    exc: type[Exception], match: str, image: Path, tmp_path: Path, **kwargs: object
) -> None:
    """The write fails as expected and a pre-filled target keeps its size."""
    target = tmp_path / "target"
    size = 64 << 20
    target.write_bytes(b"\x5c" * size)
    with pytest.raises(exc, match=match):
        imagestream.write(str(image), target, **kwargs)  # type: ignore[arg-type]
    assert target.stat().st_size == size


def test_corrupt_header_cluster_bits(v3: Qcow2, tmp_path: Path) -> None:
    struct.pack_into(">I", v3.data, 20, 40)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "cluster_bits", bad, tmp_path)
    target = tmp_path / "target"
    assert target.read_bytes() == b"\x5c" * (64 << 20), "header errors must write nothing"


def test_absurd_virtual_size(v3: Qcow2, tmp_path: Path) -> None:
    v3.set_u64(24, 1 << 62)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "absurd virtual size", bad, tmp_path)


def test_l1_too_small_for_virtual_size(v3: Qcow2, tmp_path: Path) -> None:
    v3.set_u64(24, 1 << 40)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "cannot map the virtual size", bad, tmp_path)


def test_forced_qcow2_on_raw(images: ImageSet, tmp_path: Path) -> None:
    write_expecting(
        imagestream.CorruptImageError, "not a qcow2", images.raw, tmp_path, format="qcow2"
    )


def test_l1_entry_past_end(v3: Qcow2, tmp_path: Path) -> None:
    past = (len(v3.data) + (1 << 20)) & ~(v3.cluster_size - 1)
    v3.set_u64(v3.l1_offset, past)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "past the end", bad, tmp_path)


def test_l2_entry_past_end(v3: Qcow2, tmp_path: Path) -> None:
    at, entry = next((a, e) for a, e in v3.l2_entries() if e & L2_OFFSET_MASK)
    v3.set_u64(at, (entry & ~L2_OFFSET_MASK) | (len(v3.data) + (4 << 20)))
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "past the end", bad, tmp_path)


def test_l2_entry_overlapping_metadata(v3: Qcow2, tmp_path: Path) -> None:
    at, entry = next((a, e) for a, e in v3.l2_entries() if e & L2_OFFSET_MASK)
    v3.set_u64(at, (entry & ~L2_OFFSET_MASK) | v3.l1_offset)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "overlaps metadata", bad, tmp_path)


def test_l1_entry_pointing_at_the_l1_table(v3: Qcow2, tmp_path: Path) -> None:
    v3.set_u64(v3.l1_offset, v3.l1_offset)  # the L2 table "is" the L1 table
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.CorruptImageError, "overlaps other metadata", bad, tmp_path)


def test_unknown_incompatible_feature(v3: Qcow2, tmp_path: Path) -> None:
    v3.set_u64(72, 1 << 9)
    bad = v3.save(tmp_path / "bad.qcow2")
    write_expecting(imagestream.UnsupportedImageError, "unknown incompatible", bad, tmp_path)


def test_compressed_cluster_inflating_past_its_cluster(images: ImageSet, tmp_path: Path) -> None:
    img = Qcow2(images.images["qcow2-zlib"].path)
    shift = 62 - (img.cluster_bits - 8)
    bomb = zlib.compressobj(wbits=-12)
    payload = bomb.compress(b"A" * (img.cluster_size + 4096)) + bomb.flush()
    for _, entry in img.l2_entries():
        if not entry >> 62 & 1:
            continue
        coff = entry & ((1 << shift) - 1)
        sectors = ((entry >> shift) & ((1 << (img.cluster_bits - 8)) - 1)) + 1
        if sectors * 512 - (coff & 511) >= len(payload):
            img.data[coff : coff + len(payload)] = payload
            break
    else:
        pytest.fail("no compressed cluster large enough to hold the payload")
    bad = img.save(tmp_path / "bomb.qcow2")
    write_expecting(
        imagestream.CorruptImageError, "inflates past its cluster", bad, tmp_path, workers=1
    )


def test_truncated_file(images: ImageSet, tmp_path: Path) -> None:
    data = images.images["qcow2-v3"].path.read_bytes()
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(data[: len(data) // 2])
    # The file's length is known, so the tables are caught pointing past its end.
    write_expecting(imagestream.CorruptImageError, "past the end", cut, tmp_path)


def test_truncated_http_stream(images: ImageSet, http_server: Server, tmp_path: Path) -> None:
    name = images.images["qcow2-zstd"].path.name
    with pytest.raises(imagestream.TruncatedImageError):
        imagestream.write(http_server.url(f"truncated/{name}"), tmp_path / "t")


@pytest.mark.parametrize("name", ["raw-gz", "raw-xz", "raw-zst"])
def test_truncated_compressed_raw(images: ImageSet, tmp_path: Path, name: str) -> None:
    data = images.images[name].path.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises((imagestream.TruncatedImageError, imagestream.CorruptImageError)):
        imagestream.write(str(cut), tmp_path / "t")


@pytest.fixture(scope="module")
def refused(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refused")
    create = ["qemu-img", "create", "-f", "qcow2"]
    run(*create, "-b", images.images["qcow2-v3"].path, "-F", "qcow2", root / "backing.qcow2")
    run(
        *create,
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        root / "luks.qcow2",
        "1M",
    )
    run(*create, "-o", f"data_file={root / 'external.data'}", root / "external.qcow2", "1M")
    for fmt in ("vmdk", "vdi"):
        run("qemu-img", "convert", "-O", fmt, images.images["qcow2-512"].path, root / f"d.{fmt}")
    return {
        "backing file": root / "backing.qcow2",
        "encrypted": root / "luks.qcow2",
        "external data file": root / "external.qcow2",
        "VMDK": root / "d.vmdk",
        "VDI": root / "d.vdi",
    }


@pytest.mark.parametrize("what", ["backing file", "encrypted", "external data file", "VMDK", "VDI"])
def test_refused_images(refused: dict[str, Path], tmp_path: Path, what: str) -> None:
    write_expecting(imagestream.UnsupportedImageError, what, refused[what], tmp_path)


def test_copy_is_untouched_by_failure(images: ImageSet, tmp_path: Path) -> None:
    """A failed write never modifies the source."""
    src = tmp_path / "src.qcow2"
    shutil.copy(images.images["qcow2-v3"].path, src)
    before = src.read_bytes()
    with pytest.raises(imagestream.ChecksumMismatchError):
        imagestream.write(str(src), tmp_path / "t", checksum="0" * 64)
    assert src.read_bytes() == before
