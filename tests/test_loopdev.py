"""The loop-device helper the disk tests stand on: real devices of the asked size and mode,
always detached, and a clear error instead of a plain file when a device cannot be made."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loopdev import LoopDeviceError, LoopDevices, attached, make_backing


def associated(backing: Path) -> str:
    """What `losetup --associated` (an independent reader) lists for `backing`."""
    done = subprocess.run(
        ["losetup", "--associated", str(backing)], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def test_new_device_has_the_size_mode_and_content_asked_for(loop_devices: LoopDevices) -> None:
    dev = loop_devices.new(3 << 20, fill=0x5C, direct_io=True)
    assert dev.path.is_block_device()
    assert dev.size == 3 << 20
    assert (Path("/sys/block") / dev.path.name / "loop" / "dio").read_text().strip() == "1"
    assert dev.path.read_bytes() == b"\x5c" * (3 << 20)
    assert str(dev.path) in associated(dev.backing)
    sparse = loop_devices.new(1 << 20)
    assert (Path("/sys/block") / sparse.path.name / "loop" / "dio").read_text().strip() == "0"
    assert sparse.path.read_bytes() == bytes(1 << 20)
    assert sparse.backing.stat().st_blocks == 0, "the backing file of a new device is sparse"


def test_device_is_detached_when_the_block_fails(tmp_path: Path) -> None:
    backing = make_backing(tmp_path / "disk", 1 << 20)
    seen: list[str] = []

    def fail_inside() -> None:
        with attached(backing) as dev:
            seen.append(associated(backing))
            raise RuntimeError(f"the test failed while {dev.path} was attached")

    with pytest.raises(RuntimeError, match="the test failed"):
        fail_inside()
    assert seen and "/dev/loop" in seen[0]
    assert associated(backing) == ""


def test_fixture_detaches_every_device(tmp_path: Path) -> None:
    devices = LoopDevices(tmp_path)
    first = devices.new(1 << 20)
    second = devices.new(1 << 20, direct_io=True)
    assert first.path != second.path
    devices.close()
    assert associated(first.backing) == ""
    assert associated(second.backing) == ""


def test_refusal_is_an_error_not_a_plain_file(tmp_path: Path) -> None:
    with (
        pytest.raises(LoopDeviceError, match=r"cannot attach .*missing.*No such file"),
        attached(tmp_path / "missing"),
    ):
        pass
    with pytest.raises(ValueError, match="multiple of 512"):
        LoopDevices(tmp_path).new(1000)


def test_missing_losetup_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with (
        pytest.raises(LoopDeviceError, match=r"losetup \(util-linux\) is not installed"),
        attached(make_backing(tmp_path / "disk", 1 << 20)),
    ):
        pass
