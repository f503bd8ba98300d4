"""What both demos show while they run: the hosts' states, fed by a watch on the API server.

A `Board` keeps each BareMetalHost as last seen. On a terminal it is a table redrawn in place;
otherwise (`--plain`, a pipe) it prints one line per change of state or power, so the output
is a log that tests and CI can read. Subclasses choose the table's columns (`row`) and may add
notes (`note`): shown under the table on a terminal, as lines otherwise.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from metal3.kube.client import KubeClient
from metal3.kube.resources import BAREMETALHOSTS

JsonObject = dict[str, Any]
LIVE_NOTES = 12  # notes kept under the live table


def host_state(obj: JsonObject | None) -> str:
    return str((((obj or {}).get("status") or {}).get("provisioning") or {}).get("state") or "")


def host_power(obj: JsonObject | None) -> str:
    if not obj or "status" not in obj:
        return "-"
    return "on" if obj["status"].get("poweredOn") else "off"


class Board:
    """The hosts' current states, shown live (terminal) or as a log of changes (plain)."""

    header = f"{'HOST':<18} {'STATE':<24} {'POWER':<6} {'CONSUMER/IMAGE':<34} ERROR"

    def __init__(self, live: bool) -> None:
        self.live = live
        self.hosts: dict[str, JsonObject] = {}
        self.started = time.monotonic()
        self.phase = ""
        self.notes: list[str] = []
        self._drawn_lines = 0
        self._waiters: list[anyio.Event] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def changed(self) -> None:
        """Return after the next update."""
        waiter = anyio.Event()
        self._waiters.append(waiter)
        await waiter.wait()

    def update(self, name: str, obj: JsonObject | None) -> None:
        for waiter in self._waiters:
            waiter.set()
        self._waiters.clear()
        before = self.hosts.get(name)
        if obj is None:
            self.hosts.pop(name, None)
            if before is not None and not self.live:
                self._line(f"{name:<18} deleted")
        else:
            self.hosts[name] = obj
            old = (host_state(before), host_power(before)) if before else None
            new = (host_state(obj), host_power(obj))
            if not self.live and old != new:
                error = (obj.get("status") or {}).get("errorType") or ""
                self._line(f"{name:<18} {new[0] or 'new':<24} power {new[1]:<4} {error}")
        if self.live:
            self.draw()

    def note(self, text: str) -> None:
        """Something the demo found or did (a line in plain mode; under the table live)."""
        if self.live:
            self.notes.append(f"[{self.elapsed():6.2f}s] {text}")
            del self.notes[:-LIVE_NOTES]
            self.draw()
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        print(f"[{self.elapsed():6.2f}s] {text}", flush=True)

    def row(self, name: str, obj: JsonObject) -> str:
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        image = (spec.get("image") or {}).get("url", "") or (spec.get("customDeploy") or {}).get(
            "method", ""
        )
        return (
            f"{name:<18} {host_state(obj) or '-':<24} {host_power(obj):<6} "
            f"{image.rsplit('/', 1)[-1][:34]:<34} {status.get('errorType', '')}"
        )

    def draw(self) -> None:
        rows = [self.header]
        rows += [self.row(name, self.hosts[name]) for name in sorted(self.hosts)]
        rows.append(f"-- {self.phase}  ({self.elapsed():5.1f}s)")
        rows += self.notes
        # One terminal line per row, or the cursor moves below would miss wrapped lines.
        width = max(20, shutil.get_terminal_size().columns - 1)
        rows = [row[:width] for row in rows]
        out = sys.stdout
        if self._drawn_lines:
            out.write(f"\x1b[{self._drawn_lines}F\x1b[J")
        out.write("\n".join(rows) + "\n")
        out.flush()
        self._drawn_lines = len(rows)

    def announce(self, phase: str) -> None:
        self.phase = phase
        if self.live:
            self._drawn_lines = 0
            self.notes = []
            print(f"\n== {phase}", flush=True)
            self.draw()
        else:
            print(f"\n== {phase}", flush=True)

    def finish(self) -> None:
        """Stop drawing in place: what is on the terminal stays, later output goes below."""
        self._drawn_lines = 0


async def follow(client: KubeClient, namespace: str, board: Board) -> None:
    """Feed the board from a watch on the hosts, forever."""
    items, version = await client.list(BAREMETALHOSTS, namespace)
    for obj in items:
        board.update(obj["metadata"]["name"], obj)
    while True:
        async for event in client.watch(BAREMETALHOSTS, namespace, resource_version=version):
            version = event.object.get("metadata", {}).get("resourceVersion", version)
            if event.type == "BOOKMARK":
                continue
            name = event.object["metadata"]["name"]
            board.update(name, None if event.type == "DELETED" else event.object)


async def wait_until(
    board: Board, done: Callable[[dict[str, JsonObject]], bool], seconds: float
) -> bool:
    with anyio.move_on_after(seconds):
        while not done(board.hosts):
            await board.changed()
        return True
    return False
