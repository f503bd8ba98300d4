"""The hosts as the agent API sees them: found by MAC address or uid, and woken on change.

The API keeps its own informer on BareMetalHosts rather than sharing the controller's: the
reconciler writes its own updates into the shared cache, and a watch event for a version
already cached is not passed on, so a handler there would miss every status change the
operator makes itself (exactly the ones a waiting agent is waiting for). Its own informer sees
each change once, and sets the host's change event for the long polls.
"""

from __future__ import annotations

import re
from typing import Any

import anyio

from metal3.kube.client import KubeClient
from metal3.kube.informer import Informer, ObjectKey, object_key
from metal3.kube.resources import BAREMETALHOSTS

JsonObject = dict[str, Any]

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def normalize_mac(text: str) -> str | None:
    """``aa:bb:cc:dd:ee:ff`` for any case and ``-``/``:`` separators; None if not a MAC."""
    mac = text.strip().lower()
    if not _MAC.match(mac):
        return None
    return mac.replace("-", ":")


def macs_of(obj: JsonObject) -> set[str]:
    """The host's MACs: ``spec.bootMACAddress`` and every NIC found by inspection."""
    found: set[str] = set()
    boot = (obj.get("spec") or {}).get("bootMACAddress")
    candidates = [boot] if isinstance(boot, str) else []
    hardware = (obj.get("status") or {}).get("hardware") or {}
    for nic in hardware.get("nics") or []:
        if isinstance(nic, dict) and isinstance(nic.get("mac"), str):
            candidates.append(nic["mac"])
    for candidate in candidates:
        mac = normalize_mac(candidate)
        if mac is not None:
            found.add(mac)
    return found


class HostIndex:
    def __init__(self, client: KubeClient, namespace: str | None = None) -> None:
        self.informer = Informer(client, BAREMETALHOSTS, namespace)
        self.informer.add_handler(self._on_host)
        self._by_mac: dict[str, set[ObjectKey]] = {}
        self._macs: dict[ObjectKey, set[str]] = {}
        self._by_uid: dict[str, ObjectKey] = {}
        self._changed: dict[ObjectKey, anyio.Event] = {}

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

    async def run(self) -> None:
        """Keep the index current until cancelled."""
        await self.informer.run()

    def _on_host(self, kind: str, obj: JsonObject) -> None:
        key = object_key(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        macs = set() if kind == "DELETED" else macs_of(obj)
        for mac in self._macs.pop(key, set()) - macs:
            holders = self._by_mac.get(mac)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._by_mac[mac]
        for mac in macs:
            self._by_mac.setdefault(mac, set()).add(key)
        if macs:
            self._macs[key] = macs
        if kind == "DELETED":
            if self._by_uid.get(uid) == key:
                del self._by_uid[uid]
        elif uid:
            self._by_uid[uid] = key
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    def find_by_macs(self, macs: set[str]) -> list[JsonObject]:
        """Every host with one of ``macs`` (normalized), sorted by namespace and name."""
        keys: set[ObjectKey] = set()
        for mac in macs:
            keys |= self._by_mac.get(mac, set())
        found = [self.informer.store.get(*key) for key in sorted(keys)]
        return [obj for obj in found if obj is not None]

    def by_uid(self, uid: str) -> JsonObject | None:
        key = self._by_uid.get(uid)
        return self.informer.store.get(*key) if key is not None else None

    @property
    def count(self) -> int:
        return len(self.informer.store)

    def wake_all(self) -> None:
        """Set every pending change event (shutdown: no one should wait any longer)."""
        events, self._changed = self._changed, {}
        for event in events.values():
            event.set()

    def changed(self, obj: JsonObject) -> anyio.Event:
        """An event set at the host's next change (shared by everyone waiting on it)."""
        key = object_key(obj)
        event = self._changed.get(key)
        if event is None:
            event = self._changed[key] = anyio.Event()
        return event
