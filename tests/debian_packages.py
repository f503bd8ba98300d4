"""Debian packages unpacked next to the virtualenv instead of installed.

For tools the tests need in a version the system cannot install beside what it has: Debian's
kubectl 1.20 where another package owns /usr/bin/kubectl, qemu-img with its curl block driver
where a newer qemu-utils without that driver is installed. `apt-get download` + `dpkg-deb -x`
needs no root and leaves the system alone; the result is cached under `sys.prefix`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _apt_get(args: list[str], cwd: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, timeout=300)
    if done.returncode != 0 and os.geteuid() == 0:  # empty package lists: refresh once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        done = subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, timeout=300)
    return done


def unpacked(cache_name: str, packages: list[str], marker: str) -> Path:
    """The root where `packages` (apt names, optionally `name=version`) are unpacked.

    `marker` is a path inside that root which exists once unpacking is done; it is what makes
    the cache valid, so an interrupted unpack is redone.
    """
    cache = Path(sys.prefix) / cache_name
    if (cache / marker).exists():
        return cache
    with tempfile.TemporaryDirectory() as tmp:
        done = _apt_get(["download", *packages], tmp)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        debs = sorted(Path(tmp).glob("*.deb"))
        assert len(debs) == len(packages), f"apt-get download {packages} gave {debs}"
        cache.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache)], check=True, timeout=120)
    assert (cache / marker).exists(), f"{marker} not found in {packages}"
    return cache


def candidate_version(package: str) -> str:
    """The version apt would download for `package` (package lists refreshed once if empty)."""
    for attempt in range(2):
        out = subprocess.run(
            ["apt-cache", "policy", package], capture_output=True, text=True, timeout=60
        ).stdout
        for line in out.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Candidate" and value.strip() not in ("", "(none)"):
                return value.strip()
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
    raise AssertionError(f"apt has no candidate for {package}")
