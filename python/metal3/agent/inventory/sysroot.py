"""Where the inventory reads from: files under a root directory, and tools or their recordings.

On the host itself the root is `/`: procfs, sysfs and /dev are read in place and the tools
(`lsblk`, `udevadm`, `ip`, `ethtool`, `dmidecode`, `ipmitool`) are run. Under any other root
(a recorded or hand-made tree for tests) the files are read relative to that root and a tool
cannot be run against it, so its output is read from a file recorded in `ROOT/.tools/`:

| tool run on the host | recorded output in the tree |
|---|---|
| `lsblk -bia --json -o <DISK_COLUMNS>` | `.tools/lsblk.json` |
| `udevadm info --query=property --name=/dev/KNAME` | `.tools/udevadm/KNAME.txt` |
| `ip -d -j addr show` | `.tools/ip-addr.json` |
| `ethtool -i IFACE` | `.tools/ethtool-i/IFACE.txt` |
| `dmidecode --type 17` | `.tools/dmidecode-t17.txt` |
| `ipmitool lan print CH` | `.tools/ipmitool/lan-print-CH.txt` |
| `ipmitool lan6 print CH` | `.tools/ipmitool/lan6-print-CH.txt` |

Nothing here raises for a missing file or tool: the caller gets None (or an empty list) and
the reason is logged, so each inventory field can be left out on its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from metal3.agent.blockdev import ToolError, run_tool

log = logging.getLogger(__name__)

RECORDINGS = ".tools"
TOOL_TIMEOUT = 30.0  # seconds; these tools answer in milliseconds unless the machine is wedged


class SysRoot:
    """The machine an inventory describes, seen through `root` (`/` for this host)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self.live = root.resolve() == Path("/")
        self._unavailable: set[str] = set()

    def path(self, rel: str) -> Path:
        """`rel` (e.g. "proc/cpuinfo") under the root."""
        return self.root / rel

    def read(self, rel: str) -> str | None:
        """The text of the file `rel`, or None when it is missing or unreadable.

        Some sysfs attributes refuse reads in some states (`carrier` and `speed` of a link
        that is down give EINVAL): that is an absent value, not an error.
        """
        try:
            return self.path(rel).read_text(errors="replace")
        except OSError as exc:
            log.debug("cannot read %s: %s", self.path(rel), exc.strerror or exc)
            return None

    def attr(self, rel: str) -> str | None:
        """A one-line attribute file, stripped; None when missing, unreadable or empty."""
        text = self.read(rel)
        if text is None:
            return None
        return text.strip() or None

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def is_dir(self, rel: str) -> bool:
        return self.path(rel).is_dir()

    def listdir(self, rel: str) -> list[str]:
        """The names in directory `rel`, sorted; empty when it is missing."""
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError:
            return []

    def readlink(self, rel: str) -> str | None:
        """The target of the symlink `rel` as written in the link, or None."""
        try:
            return os.readlink(self.path(rel))
        except OSError:
            return None

    def tool(self, argv: Sequence[str], recording: str, *, quiet: bool = False) -> str | None:
        """The standard output of `argv` on this host, or its recording `.tools/RECORDING`
        under another root; None (with the reason logged) when neither can be had.

        `quiet` is for calls that are expected to fail (probing IPMI channels that may not
        exist): their failures are logged at debug level, but a tool that is not installed
        is still reported.
        """
        level = logging.DEBUG if quiet else logging.WARNING
        if not self.live:
            recorded = self.path(f"{RECORDINGS}/{recording}")
            try:
                return recorded.read_text()
            except OSError:
                log.log(
                    level,
                    "%s: no recorded output %s under %s; its facts are left out",
                    argv[0],
                    f"{RECORDINGS}/{recording}",
                    self.root,
                )
                return None
        if argv[0] in self._unavailable:
            return None
        try:
            return run_tool(argv, timeout=TOOL_TIMEOUT).stdout
        except ToolError as exc:
            # A tool that cannot be run (not installed, or hung) is reported once, then skipped.
            if exc.returncode is None:
                self._unavailable.add(argv[0])
                level = logging.WARNING
            log.log(level, "%s; the facts it gives are left out", exc)
            return None
