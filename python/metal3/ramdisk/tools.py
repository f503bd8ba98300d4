"""Running the build's external tools (debootstrap, cpio, zstd, depmod, xorriso, maturin, pip)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


class RamdiskError(RuntimeError):
    """A ramdisk build step failed (the message says which, and what the tool said)."""


def require(*tools: str) -> None:
    """Fail at once, naming every missing tool, rather than half way through a build."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise RamdiskError(
            f"missing tools: {', '.join(missing)} (./dev setup installs them from "
            "system-packages.txt)"
        )


def run(argv: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 1800) -> str:
    """Run a tool; its stdout. RamdiskError with the end of its output when it fails."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RamdiskError(f"`{' '.join(args[:4])} ...` could not run: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise RamdiskError(f"`{' '.join(args[:6])} ...` failed ({done.returncode}): {said}")
    return done.stdout
