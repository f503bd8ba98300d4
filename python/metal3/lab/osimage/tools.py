"""Running the OS image build's external tools, and the one error a failed build raises."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class OsImageError(RuntimeError):
    """The test OS image could not be built (the message says which step, and what the tool
    said)."""


def require(*tools: str) -> None:
    """Fail at once, naming every missing tool, rather than half way through a build."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise OsImageError(
            f"missing tools: {', '.join(missing)} (./dev setup installs them from "
            "system-packages.txt)"
        )


def run(
    argv: Sequence[str | Path],
    *,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    check: bool = True,
) -> str:
    """Run a tool; its stdout. OsImageError with the end of its output when it fails (unless
    ``check`` is false: then the failure is only logged)."""
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            input=input_text,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OsImageError(f"`{' '.join(args[:4])} ...` could not run: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip())[-2000:]
        if not check:
            log.info("`%s` failed (%d): %s", " ".join(args[:6]), done.returncode, said)
            return done.stdout
        raise OsImageError(f"`{' '.join(args[:6])} ...` failed ({done.returncode}): {said}")
    return done.stdout
