"""Durable object storage in SQLite (WAL) with one global, monotonically increasing
resourceVersion and a bounded history of changes for watches, kept in memory and persisted
beside the objects so that watches resume across a restart (as etcd's history allows).

Two lookups keep garbage collection independent of the number of objects: an owner index
(owner uid -> dependents, a table written in the same transaction as each object) and a uid
map (uid -> object, in memory, derived from the objects as they load and change).

Everything runs on the event loop's thread: a handler that checks a precondition and then
writes does so without awaiting in between, so writes are serialised without locks. All
objects are also kept in memory (the store is sized for one site's hosts, not a cluster).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from metal3.apiserver.errors import ApiError

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write, as watches see it."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: str  # resource type key (group/plural)
    obj: Obj
    old: Obj | None


Listener = Callable[[Change], None]


class ExpiredError(Exception):
    """The requested resourceVersion is older than the retained history."""


LOCK_WAIT = 5.0  # seconds a new store waits for the one before it on the same file to go


def _lock(path: Path, wait: float) -> int:
    """An exclusive lock on `path` (held while the returned descriptor is open; the kernel
    drops it when the process ends, however it ends). Waits up to `wait` seconds: a server
    killed with its parent (`metal3 standalone`) may still be exiting when the next starts."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise OSError(
                    errno.EBUSY, f"another API server is using {path.with_suffix('')}"
                ) from None
            time.sleep(0.05)


class Store:
    def __init__(self, path: Path, history: int = 10_000, lock_wait: float = LOCK_WAIT) -> None:
        # One server per database: two would each count resourceVersions from what they read
        # at start, and one's writes would overwrite the other's.
        self._lock_fd = _lock(path.with_name(path.name + ".lock"), lock_wait)
        try:
            self._open(path, history)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, path: Path, history: int) -> None:
        # Secrets are stored as they are in etcd (base64, not encrypted): owner-only access.
        # SQLite gives the -wal and -shm files the database file's permissions.
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, namespace TEXT NOT NULL,"
            " name TEXT NOT NULL, rv INTEGER NOT NULL, data BLOB NOT NULL,"
            " PRIMARY KEY (kind, namespace, name))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS changes (rv INTEGER PRIMARY KEY, type TEXT NOT NULL,"
            " kind TEXT NOT NULL, data BLOB NOT NULL, old BLOB)"
        )
        # One row per (owner uid, dependent): the ownerReferences of every stored object.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS owners (owner_uid TEXT NOT NULL, kind TEXT NOT NULL,"
            " namespace TEXT NOT NULL, name TEXT NOT NULL,"
            " PRIMARY KEY (owner_uid, kind, namespace, name)) WITHOUT ROWID"
        )
        row = self._db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        self.rv: int = int(row[0]) if row else 0
        self._objects: dict[str, dict[ObjKey, Obj]] = {}
        self._uids: dict[str, tuple[str, ObjKey]] = {}
        for kind, namespace, name, data in self._db.execute(
            "SELECT kind, namespace, name, data FROM objects"
        ):
            obj = orjson.loads(data)
            self._objects.setdefault(kind, {})[(namespace, name)] = obj
            self._track_uid(kind, (namespace, name), None, obj)
        if self._db.execute("SELECT 1 FROM meta WHERE key = 'owners'").fetchone() is None:
            self._build_owner_index()
        self._history: deque[Change] = deque(maxlen=max(1, history))
        rows = self._db.execute(
            "SELECT rv, type, kind, data, old FROM changes ORDER BY rv DESC LIMIT ?",
            (self._history.maxlen,),
        ).fetchall()
        for rv, kind_of_change, kind, data, old in reversed(rows):
            self._history.append(
                Change(
                    rv,
                    kind_of_change,
                    kind,
                    orjson.loads(data),
                    orjson.loads(old) if old is not None else None,
                )
            )
        # Watches may start from any resourceVersion >= horizon: every later change is retained.
        self.horizon = self._history[0].rv - 1 if self._history else self.rv
        self._writes = 0
        self._listeners: list[Listener] = []
        self._closed = False

    def close(self) -> None:
        """Close the database; a write after this is refused with a 503 (a request that
        outlived the server's shutdown), never an sqlite3 error."""
        self._closed = True
        self._db.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- reads -------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def items(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Objects of a type in key order (namespace, name), optionally in one namespace."""
        objects = self._objects.get(kind, {})
        keys = sorted(objects)
        if namespace is not None:
            keys = [k for k in keys if k[0] == namespace]
        return [objects[k] for k in keys]

    def count(self, kind: str) -> int:
        return len(self._objects.get(kind, {}))

    def by_uid(self, uid: str) -> tuple[str, Obj] | None:
        """The object with this uid and its type key, if it is stored."""
        found = self._uids.get(uid)
        if found is None:
            return None
        kind, key = found
        return kind, self._objects[kind][key]

    def dependents(self, owner_uid: str) -> list[tuple[str, Obj]]:
        """Objects with an ownerReference to `owner_uid` (type key, object), in key order."""
        rows = self._db.execute(
            "SELECT kind, namespace, name FROM owners WHERE owner_uid = ?"
            " ORDER BY kind, namespace, name",
            (owner_uid,),
        ).fetchall()
        found: list[tuple[str, Obj]] = []
        for kind, namespace, name in rows:
            obj = self._objects.get(kind, {}).get((namespace, name))
            if obj is not None:
                found.append((kind, obj))
        return found

    # -- writes ------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put(self, kind: str, obj: Obj, old: Obj | None) -> Obj:
        """Create (old is None) or replace an object; stamps and returns it."""
        meta = obj["metadata"]
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        namespace, name = meta.get("namespace", ""), meta["name"]
        data = orjson.dumps(obj)
        change = Change(rv, "ADDED" if old is None else "MODIFIED", kind, obj, old)
        # What the table holds now (the caller's `old` is only what watchers are told).
        stored = self._objects.get(kind, {}).get((namespace, name))

        def write() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, rv, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, namespace, name, rv, data),
            )
            self._index_owners(kind, namespace, name, _owner_uids(stored), _owner_uids(obj))

        self._commit(write, change, data)
        self._objects.setdefault(kind, {})[(namespace, name)] = obj
        self._track_uid(kind, (namespace, name), stored, obj)
        self._emit(change)
        return obj

    def remove(self, kind: str, obj: Obj) -> Obj:
        """Delete an object; the DELETED event carries it with a new resourceVersion."""
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        rv = self._next_rv()
        gone = {**obj, "metadata": {**meta, "resourceVersion": str(rv)}}
        change = Change(rv, "DELETED", kind, gone, obj)
        stored = self._objects.get(kind, {}).get((namespace, name))

        def write() -> None:
            self._db.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                (kind, namespace, name),
            )
            self._index_owners(kind, namespace, name, _owner_uids(stored), set())

        self._commit(write, change, orjson.dumps(gone))
        self._objects.get(kind, {}).pop((namespace, name), None)
        self._track_uid(kind, (namespace, name), stored, None)
        self._emit(change)
        return gone

    def _commit(self, write: Callable[[], None], change: Change, data: bytes) -> None:
        """One write with its change-log entry and the new resourceVersion, in one transaction;
        on failure nothing is kept and the resourceVersion is handed back."""
        if self._closed:
            self.rv -= 1
            raise ApiError(503, "the API server is shutting down", "ServiceUnavailable")
        self._db.execute("BEGIN")
        try:
            write()
            self._log(change, data)
            self._save_rv(change.rv)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self.rv -= 1
            raise

    def _log(self, change: Change, data: bytes) -> None:
        """Persist a change; trim the log to the history size every so often."""
        old = orjson.dumps(change.old) if change.old is not None else None
        self._db.execute(
            "INSERT OR REPLACE INTO changes (rv, type, kind, data, old) VALUES (?, ?, ?, ?, ?)",
            (change.rv, change.type, change.key, data, old),
        )
        self._writes += 1
        limit = self._history.maxlen or 1
        if self._writes >= max(64, limit // 8):
            self._writes = 0
            self._db.execute("DELETE FROM changes WHERE rv <= ?", (change.rv - limit,))

    # -- owner index and uid map -------------------------------------------------------------

    def _index_owners(
        self, kind: str, namespace: str, name: str, before: set[str], after: set[str]
    ) -> None:
        """Bring one object's rows of the owner index from `before` to `after` owner uids."""
        gone = [(uid, kind, namespace, name) for uid in before - after]
        added = [(uid, kind, namespace, name) for uid in after - before]
        if gone:
            self._db.executemany(
                "DELETE FROM owners WHERE owner_uid = ? AND kind = ? AND namespace = ?"
                " AND name = ?",
                gone,
            )
        if added:
            self._db.executemany(
                "INSERT OR IGNORE INTO owners (owner_uid, kind, namespace, name)"
                " VALUES (?, ?, ?, ?)",
                added,
            )

    def _build_owner_index(self) -> None:
        """Fill the owner index from the objects, once, for a database written before it
        existed; the marker in `meta` says it is complete."""
        rows = [
            (uid, kind, namespace, name)
            for kind, objects in self._objects.items()
            for (namespace, name), obj in objects.items()
            for uid in _owner_uids(obj)
        ]
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM owners")
            self._db.executemany(
                "INSERT OR IGNORE INTO owners (owner_uid, kind, namespace, name)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            self._db.execute("INSERT INTO meta (key, value) VALUES ('owners', 1)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _track_uid(self, kind: str, key: ObjKey, before: Obj | None, after: Obj | None) -> None:
        old_uid = _uid(before)
        new_uid = _uid(after)
        if old_uid is not None and old_uid != new_uid and self._uids.get(old_uid) == (kind, key):
            del self._uids[old_uid]
        if new_uid is not None:
            self._uids[new_uid] = (kind, key)

    def _save_rv(self, rv: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('rv', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (rv,),
        )

    # -- watch support -----------------------------------------------------------------------

    def _emit(self, change: Change) -> None:
        if len(self._history) == self._history.maxlen:
            self.horizon = self._history[0].rv
        self._history.append(change)
        for listener in list(self._listeners):
            listener(change)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def since(self, rv: int) -> list[Change]:
        """Every retained change after `rv`; raises Expired if some were dropped."""
        if rv < self.horizon:
            raise ExpiredError(rv)
        if rv >= self.rv:
            return []
        changes: list[Change] = []
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            changes.append(change)
        changes.reverse()
        return changes


def _uid(obj: Obj | None) -> str | None:
    uid = obj["metadata"].get("uid") if obj is not None else None
    return uid if isinstance(uid, str) else None


def _owner_uids(obj: Obj | None) -> set[str]:
    """The owner uids an object's ownerReferences name (entries without a string uid own
    nothing)."""
    if obj is None:
        return set()
    refs = obj["metadata"].get("ownerReferences")
    if not isinstance(refs, list):
        return set()
    return {ref["uid"] for ref in refs if isinstance(ref, dict) and isinstance(ref.get("uid"), str)}
