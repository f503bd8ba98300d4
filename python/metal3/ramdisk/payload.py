"""The ramdisk's agent layer: this project's wheel, the agent's runtime dependencies, the init.

The wheel is built from a checkout with maturin (the agent needs `metal3._native`), or given.
Only what `metal3 agent` imports is installed beside it (`AGENT_REQUIREMENTS`, at the versions
this interpreter has): the operator's dependencies (Kubernetes clients, HTTP servers, BMC
libraries) stay out of the ramdisk. Debian's python3 in the ramdisk is the same minor version
as the interpreter that builds it (bookworm: 3.11), which byte-compiles the layer with the
paths it has in the ramdisk; the native module is abi3.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from metal3.ramdisk.archive import pack
from metal3.ramdisk.cache import digest, file_sha256
from metal3.ramdisk.debian import COMPILE_OPTIONS
from metal3.ramdisk.tools import RamdiskError, run

log = logging.getLogger(__name__)

LAYER_VERSION = "2"  # changed whenever this module's output changes for the same inputs
LAYER_FILE = "agent.cpio.zst"
AGENT_REQUIREMENTS = ("orjson", "pycdlib")
RAMDISK_PYTHON = (3, 11)  # Debian bookworm's python3
SITE_PACKAGES = "usr/lib/python3/dist-packages"  # on Debian's python3 path
# (file in metal3/ramdisk/files, path in the ramdisk, mode)
INIT_FILES = (
    ("init", "init", 0o755),
    ("udhcpc.script", "etc/metal3/udhcpc.script", 0o755),
    ("power", "usr/local/sbin/poweroff", 0o755),
    ("power", "usr/local/sbin/reboot", 0o755),
)
# What goes into the wheel: a change to any of these makes a new agent layer.
SOURCE_FILES = ("pyproject.toml", "Cargo.toml", "Cargo.lock", "README.md")
SOURCE_TREES = ("python/metal3", "rust")
SOURCE_SKIP = {"__pycache__", "target", ".mypy_cache", ".ruff_cache"}
SOURCE_SKIP_SUFFIXES = (".pyc", ".so")


def pinned_requirements() -> list[str]:
    """The agent's dependencies at the versions installed here (what the tests ran with)."""
    pins = []
    for name in AGENT_REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise RamdiskError(f"{name} is not installed here; the agent needs it") from None
    return pins


def init_files_digest() -> str:
    folder = resources.files("metal3.ramdisk").joinpath("files")
    return digest(*(f"{src}:{dst}:{mode:o}:" + folder.joinpath(src).read_text()
                    for src, dst, mode in INIT_FILES))  # fmt: skip


def source_digest(source: Path) -> str:
    """sha256 over the checkout's files that make the wheel (paths and contents)."""
    paths: list[Path] = [source / name for name in SOURCE_FILES if (source / name).is_file()]
    for tree in SOURCE_TREES:
        for folder, dirs, files in os.walk(source / tree):
            dirs[:] = sorted(d for d in dirs if d not in SOURCE_SKIP)
            paths += [
                Path(folder, name) for name in files if not name.endswith(SOURCE_SKIP_SUFFIXES)
            ]
    parts: list[str | bytes] = []
    for path in sorted(paths):
        parts += [str(path.relative_to(source)), path.read_bytes()]
    return digest("source", *parts)


def layer_key(wheel_or_source: str) -> str:
    """`wheel_or_source`: the wheel's sha256, or the checkout's `source_digest`."""
    return digest(
        "agent-layer",
        LAYER_VERSION,
        wheel_or_source,
        *pinned_requirements(),
        init_files_digest(),
        f"python{sys.version_info.major}.{sys.version_info.minor}",
    )


def build_wheel(source: Path, output: Path) -> Path:
    """`maturin build --release` of the checkout into ``output``; the wheel's path."""
    maturin = shutil.which("maturin") or str(Path(sys.executable).with_name("maturin"))
    if not Path(maturin).exists():
        raise RamdiskError("maturin is not installed (pip install maturin, or ./dev setup)")
    log.info("ramdisk: building the wheel from %s", source)
    run(
        [
            maturin,
            "build",
            "--release",
            "--quiet",
            "--auditwheel",
            "skip",  # the native module links Debian's liblzma, which the ramdisk has
            "--compatibility",
            "linux",
            "--interpreter",
            sys.executable,
            "--out",
            output,
        ],
        cwd=source,
        timeout=3600,
    )
    wheels = sorted(output.glob("metal3-*.whl"))
    if len(wheels) != 1:
        raise RamdiskError(f"maturin left {len(wheels)} wheels in {output}")
    return wheels[0]


def build_layer(folder: Path, *, wheel: Path, workdir: Path) -> dict[str, Any]:
    """Write `agent.cpio.zst` into ``folder``; what to record about it."""
    if sys.version_info[:2] != RAMDISK_PYTHON:
        want = ".".join(map(str, RAMDISK_PYTHON))
        have = ".".join(map(str, sys.version_info[:2]))
        raise RamdiskError(f"the ramdisk's python3 is {want}: build it with {want}, not {have}")
    stage = workdir / "agent"
    site = stage / SITE_PACKAGES
    pins = pinned_requirements()
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--no-deps",
            "--prefer-binary",
            "--target",
            site,
            wheel,
            *pins,
        ],
        timeout=900,
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # scripts that name this machine's python
    for cache in sorted(site.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    # Byte-compiled here, as the ramdisk's python3 (same minor version) would, with the paths
    # the files have in the ramdisk: compiling at every boot is slow under emulation.
    run(
        [sys.executable, "-m", "compileall", *COMPILE_OPTIONS,
         "-s", site, "-p", f"/{SITE_PACKAGES}", site]
    )  # fmt: skip
    for native in site.rglob("*.so"):
        run(["strip", "--strip-unneeded", native])
    files = resources.files("metal3.ramdisk").joinpath("files")
    for src, dst, mode in INIT_FILES:
        target = stage / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files.joinpath(src).read_bytes())
        target.chmod(mode)
    pack(stage, folder / LAYER_FILE)
    return {
        "wheel": wheel.name,
        "wheel_sha256": file_sha256(wheel),
        "requirements": pins,
        "unpacked_bytes": sum(p.stat().st_size for p in stage.rglob("*") if p.is_file()),
    }
