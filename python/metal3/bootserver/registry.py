"""The provisioner's side of the boot server: which MACs may boot the agent, one file each.

`BootServer(DIR).allow(mac)` writes `DIR/hosts/<mac>.json` (atomically: a temporary file then
a rename), `forget(mac)` removes it. The boot server process (`metal3 bootserver --state-dir
DIR`) watches the folder and reloads dnsmasq when it changes, so writer and server need to
share only the folder (a volume), never a process or a socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")
_FILE = re.compile(r"^[0-9a-f]{2}(-[0-9a-f]{2}){5}\.json$")


class BootServerError(ValueError):
    """A MAC or a host file that cannot be used."""


def normalize_mac(mac: str) -> str:
    """`aa:bb:cc:dd:ee:ff`, lower case; BootServerError for anything that is not a MAC."""
    text = mac.strip().lower()
    if not _MAC.match(text):
        raise BootServerError(f"not a MAC address: {mac!r}")
    return text.replace("-", ":")


@dataclass(frozen=True)
class HostEntry:
    """A MAC allowed to boot, with what its boot adds to the kernel command line."""

    mac: str
    name: str = ""
    kernel_args: str = ""

    def to_json(self) -> dict[str, str]:
        return {"mac": self.mac, "name": self.name, "kernel_args": self.kernel_args}


class BootServer:
    """The registry of MACs the boot server boots, kept in ``directory``/hosts."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hosts_dir = self.directory / "hosts"

    def _path(self, mac: str) -> Path:
        return self.hosts_dir / (normalize_mac(mac).replace(":", "-") + ".json")

    def allow(self, mac: str, *, name: str = "", kernel_args: str = "") -> HostEntry:
        """Let ``mac`` get an address and boot the agent (idempotent)."""
        if "\n" in kernel_args:
            raise BootServerError("kernel arguments are one line")
        entry = HostEntry(normalize_mac(mac), name, kernel_args)
        path = self._path(mac)
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(entry.to_json(), sort_keys=True) + "\n"
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == data:
                return entry  # unchanged: no reload for the server
        fd, temporary = tempfile.mkstemp(dir=self.hosts_dir, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return entry

    def forget(self, mac: str) -> bool:
        """Stop booting ``mac``; False when it was not allowed."""
        try:
            self._path(mac).unlink()
        except FileNotFoundError:
            return False
        return True

    def allowed(self) -> dict[str, HostEntry]:
        """Every MAC allowed now (a malformed file is skipped: a writer's crash must not stop
        the others from booting)."""
        found: dict[str, HostEntry] = {}
        try:
            names = sorted(os.listdir(self.hosts_dir))
        except FileNotFoundError:
            return found
        for name in names:
            if not _FILE.match(name):
                continue
            try:
                raw = json.loads((self.hosts_dir / name).read_text())
                entry = HostEntry(
                    normalize_mac(str(raw["mac"])),
                    str(raw.get("name", "")),
                    str(raw.get("kernel_args", "")),
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if entry.mac.replace(":", "-") + ".json" == name:
                found[entry.mac] = entry
        return found

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever the set of files or any of them changes (cheap to poll)."""
        try:
            entries = sorted(os.scandir(self.hosts_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return ()
        stamp: list[int] = []
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                info = entry.stat()
                stamp += [hash(entry.name), info.st_mtime_ns, info.st_size, info.st_ino]
        return tuple(stamp)
