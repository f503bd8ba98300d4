"""Admissions: the unknown systems allowed to send an inventory, and their discovery tokens.

A lookup that matches no host admits its system: the same system (same system UUID, same
serial, or a MAC in common with an admission) is admitted once, however many lookups it
makes; each lookup gets a fresh discovery token for it (the newest `MAX_TOKENS` stay valid,
only their SHA-256 is kept). At most ``per_minute`` new systems are admitted in any 60 s: past
that, `CapReached` says how long until the next would be. An admission lasts ``ttl`` seconds;
then its tokens are void and the system may be admitted again (counted again).

Everything is in memory, per operator process: an admission is only the right to send one
inventory, and the host it makes is what lasts (found again by `service`).
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metal3.agentapi.tokens import matches, new_token, token_hash, well_formed

WINDOW = 60.0
MAX_TOKENS = 4
MAX_MACS = 256  # per admission: MACs past it are not remembered (the first ones still match)


class CapReachedError(Exception):
    """No new system may be admitted for ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"discovery cap reached; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class Admission:
    id: int
    system_uuid: str | None
    serial: str | None
    macs: set[str]
    expires_at: float
    token_hashes: list[str] = field(default_factory=list)  # newest last
    # The host made from (or found for) this system's inventory: (namespace, name, uid).
    host: tuple[str, str, str] | None = None
    refused: str = ""  # why its inventory was refused for good (a host already existed)


class Admissions:
    def __init__(
        self,
        per_minute: int,
        *,
        ttl: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("discovery admits at least 1 host per minute")
        self.per_minute = per_minute
        self.ttl = ttl
        self._clock = clock
        self._ids = itertools.count(1)
        self._admissions: OrderedDict[int, Admission] = OrderedDict()  # oldest first
        self._recent: deque[float] = deque()  # admission times within the window
        self._by_uuid: dict[str, int] = {}
        self._by_serial: dict[str, int] = {}
        self._by_mac: dict[str, int] = {}
        self._by_token: dict[str, int] = {}
        self.admitted = 0  # new systems admitted, ever
        self.capped = 0  # lookups refused by the cap, ever

    def __len__(self) -> int:
        return len(self._admissions)

    def _purge(self, now: float) -> None:
        while self._recent and now - self._recent[0] >= WINDOW:
            self._recent.popleft()
        while self._admissions:
            oldest = next(iter(self._admissions.values()))
            if oldest.expires_at > now:
                break
            self._forget(oldest)

    def _forget(self, admission: Admission) -> None:
        del self._admissions[admission.id]
        for index, keys in (
            (self._by_uuid, [admission.system_uuid]),
            (self._by_serial, [admission.serial]),
            (self._by_mac, admission.macs),
            (self._by_token, admission.token_hashes),
        ):
            for key in keys:
                if key is not None and index.get(key) == admission.id:
                    del index[key]

    def find(
        self, system_uuid: str | None, serial: str | None, macs: Iterable[str]
    ) -> Admission | None:
        """The live admission of the system these identify, if any."""
        self._purge(self._clock())
        candidates = [self._by_uuid.get(system_uuid or ""), self._by_serial.get(serial or "")]
        candidates += [self._by_mac.get(mac) for mac in macs]
        for admission_id in candidates:
            if admission_id is not None and admission_id in self._admissions:
                return self._admissions[admission_id]
        return None

    def admit(
        self, system_uuid: str | None, serial: str | None, macs: Iterable[str]
    ) -> tuple[Admission, str]:
        """The system's admission (new, or the one it has) and a fresh token for it; raises
        `CapReachedError` when a new one would pass the cap."""
        now = self._clock()
        macs = list(macs)
        admission = self.find(system_uuid, serial, macs)
        if admission is None:
            if len(self._recent) >= self.per_minute:
                self.capped += 1
                raise CapReachedError(WINDOW - (now - self._recent[0]))
            admission = Admission(
                id=next(self._ids),
                system_uuid=None,
                serial=None,
                macs=set(),
                expires_at=now + self.ttl,
            )
            self._admissions[admission.id] = admission
            self._recent.append(now)
            self.admitted += 1
        self._merge(admission, system_uuid, serial, macs)
        token, digest = new_token()
        admission.token_hashes.append(digest)
        self._by_token[digest] = admission.id
        while len(admission.token_hashes) > MAX_TOKENS:
            old = admission.token_hashes.pop(0)
            self._by_token.pop(old, None)
        return admission, token

    def _merge(
        self, admission: Admission, system_uuid: str | None, serial: str | None, macs: list[str]
    ) -> None:
        """What a lookup says of the system, added to its admission (never replacing)."""
        if system_uuid and admission.system_uuid is None:
            admission.system_uuid = system_uuid
            self._by_uuid.setdefault(system_uuid, admission.id)
        if serial and admission.serial is None:
            admission.serial = serial
            self._by_serial.setdefault(serial, admission.id)
        for mac in macs:
            if len(admission.macs) >= MAX_MACS:
                break
            if mac not in admission.macs:
                admission.macs.add(mac)
                self._by_mac.setdefault(mac, admission.id)

    def by_token(self, token: str) -> Admission | None:
        """The live admission ``token`` was issued for (None: unknown, replaced or expired)."""
        self._purge(self._clock())
        if not well_formed(token):
            return None
        digest = token_hash(token)
        admission_id = self._by_token.get(digest)
        admission = self._admissions.get(admission_id) if admission_id is not None else None
        if admission is None or not any(matches(token, h) for h in admission.token_hashes):
            return None
        return admission
