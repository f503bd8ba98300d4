"""The ramdisk builder's parts on real files: the content cache (digests checked on every use),
the source digest that keys the agent layer, cpio packing, the ISOLINUX configuration and the
ramdisk's shell scripts."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from metal3.ramdisk.archive import pack
from metal3.ramdisk.cache import Cache, digest
from metal3.ramdisk.iso import MAX_APPEND, isolinux_config
from metal3.ramdisk.payload import source_digest
from metal3.ramdisk.tools import RamdiskError


def _one_file(data: bytes) -> Callable[[Path], dict[str, object]]:
    def build(folder: Path) -> dict[str, object]:
        (folder / "data").write_bytes(data)
        return {}

    return build


def test_digest_parts_do_not_run_together() -> None:
    assert digest("ab", "c") != digest("a", "bc")
    assert digest("a", "b") == digest(b"a", b"b")


def test_cache_builds_once_then_serves_the_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls = []

    def build(folder: Path) -> dict[str, object]:
        calls.append(folder)
        (folder / "data").write_bytes(b"layer")
        return {"size": 5}

    entry, cached = cache.fetch("stage", "k1", build)
    assert (cached, entry.meta, entry.path("data").read_bytes()) == (False, {"size": 5}, b"layer")
    again, cached = cache.fetch("stage", "k1", build)
    assert cached
    assert again.files == entry.files
    assert len(calls) == 1


def test_cache_drops_an_entry_whose_file_changed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.make("stage", "k1", _one_file(b"layer"))
    entry.path("data").write_bytes(b"layeR")
    assert cache.get("stage", "k1") is None
    assert not entry.folder.exists()
    rebuilt, cached = cache.fetch("stage", "k1", _one_file(b"x"))
    assert not cached
    assert rebuilt.path("data").read_bytes() == b"x"


def test_cache_drops_an_entry_without_manifest(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    entry = cache.make("stage", "k1", _one_file(b"layer"))
    (entry.folder / "manifest.json").unlink()
    assert cache.get("stage", "k1") is None


def test_cache_keeps_the_newest_entries_of_a_stage(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    for key in ("a", "b", "c", "d"):
        cache.make("stage", key, _one_file(b"x"))
    cache.make("other", "a", _one_file(b"x"))
    kept = sorted(p.name for p in cache.root.iterdir() if not p.name.startswith("."))
    assert kept == ["other-a", "stage-b", "stage-c", "stage-d"]


def _checkout(root: Path) -> Path:
    (root / "python/metal3/agent").mkdir(parents=True)
    (root / "rust/native/src").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\n")
    (root / "python/metal3/agent/runner.py").write_text("x = 1\n")
    (root / "rust/native/src/lib.rs").write_text("fn main() {}\n")
    return root


def test_source_digest_follows_the_sources_only(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    first = source_digest(root)
    (root / "python/metal3/agent/__pycache__").mkdir()
    (root / "python/metal3/agent/__pycache__/runner.cpython-311.pyc").write_bytes(b"\0")
    (root / "python/metal3/_native.abi3.so").write_bytes(b"\0")
    (root / "rust/target").mkdir()
    (root / "rust/target/out").write_bytes(b"\0")
    (root / "tests").mkdir()
    (root / "tests/test_x.py").write_text("")
    assert source_digest(root) == first
    (root / "rust/native/src/lib.rs").write_text("fn main() { }\n")
    second = source_digest(root)
    assert second != first
    (root / "python/metal3/agent/runner.py").rename(root / "python/metal3/agent/run.py")
    assert source_digest(root) not in (first, second)


def _listing(archive: Path) -> list[str]:
    raw = subprocess.run(["zstd", "-dc", archive], capture_output=True, check=True).stdout
    listed = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=raw, capture_output=True, check=True
    ).stdout.decode()
    return listed.splitlines()


def test_pack_is_sorted_root_owned_and_reproducible(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "b/inner").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "b/inner/c.txt").write_text("c")
    (tree / "link").symlink_to("a.txt")
    pack(tree, tmp_path / "one.cpio.zst")
    pack(tree, tmp_path / "two.cpio.zst")
    assert (tmp_path / "one.cpio.zst").read_bytes() == (tmp_path / "two.cpio.zst").read_bytes()
    lines = _listing(tmp_path / "one.cpio.zst")
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines]
    assert names == ["a.txt", "b", "b/inner", "b/inner/c.txt", "link"]
    assert all(line.split()[2:4] == ["root", "root"] for line in lines), lines


def test_pack_fails_loudly_on_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises((RamdiskError, OSError)):
        pack(tmp_path / "absent", tmp_path / "out.cpio.zst")


def test_isolinux_config_boots_the_kernel_with_the_arguments() -> None:
    config = isolinux_config("console=ttyS0 metal3.agent_api=https://192.0.2.1:9443")
    assert "  KERNEL /boot/vmlinuz\n" in config
    assert "  INITRD /boot/initramfs.img\n" in config
    assert "  APPEND console=ttyS0 metal3.agent_api=https://192.0.2.1:9443\n" in config
    with pytest.raises(RamdiskError):
        isolinux_config("a\nb")
    with pytest.raises(RamdiskError):
        isolinux_config("x" * (MAX_APPEND + 1))


@pytest.mark.parametrize("name", ["init", "udhcpc.script", "power"])
def test_ramdisk_scripts_parse_in_dash(name: str) -> None:
    script = resources.files("metal3.ramdisk").joinpath("files", name).read_text()
    done = subprocess.run(["dash", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert script.startswith("#!/bin/sh\n")
