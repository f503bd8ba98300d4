"""sushy-tools' fake driver made consistent, for emulators whose changes someone listens to.

Loaded by the emulator's config file (`metal3.bmc.emulators`, with a `notify_url`), inside the
emulator's process. As shipped, the fake driver keeps each system as a pickled copy in SQLite
and serves requests on concurrent threads, each sending its own change notification: two
requests on one system could each read it, change it and write it back (one change lost),
and their notifications could reach the listener in either order. The lab saw a soft power
off's report (still on, the change pending) arrive after the report of the change applied by
a read that raced it, and booted the host again behind its BMC's back.

`install` changes three things:

- every method of the driver holds its system's re-entrant lock while it runs (the methods
  call each other), so each read-change-write of a system is whole; the fake driver stores
  each system on its own (one row per system), so different systems need not wait for each
  other;
- a change's notification is taken under that lock with a ticket (its place in its system's
  history) and sent after the lock is let go, by the request's own thread, in ticket order:
  the listener gets each system's history in order, a slow listener holds up only that
  system's later changes, and a failed notification still fails the request (the driver
  answers 500, as shipped). One lock and one history for all systems, as first written, made
  fifty lab hosts' BMC changes wait for each other's notifications one by one;
- the SQLite state is written without an fsync per change (``synchronous=off``; it lives as
  long as the emulator): on a disk the lab's hosts were busy writing, each fsync took up to
  seconds, and under the lock every request waited for them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

_locks_guard = threading.Lock()
_locks: dict[str, threading.RLock] = {}  # per system (by uuid; "" for calls about none)
_turn = threading.Condition()
_tickets: dict[str, list[int]] = {}  # per system: [issued, sent]
_local = threading.local()  # depth: nesting of locked calls; outbox: notifications to send


def _outbox() -> list[tuple[str, int, Any, dict[str, Any]]]:
    outbox: list[tuple[str, int, Any, dict[str, Any]]] = _local.__dict__.setdefault("outbox", [])
    return outbox


def _system_of(args: tuple[Any, ...]) -> str:
    """The uuid of the system a driver call is about (its first argument: a uuid, a name or
    the system itself); "" when it names none."""
    if len(args) < 2:
        return ""
    target = args[1]
    if isinstance(target, dict):
        return str(target.get("uuid") or "")
    if isinstance(target, str):
        by_name: dict[str, str] = getattr(args[0], "_by_name", None) or {}
        if target in by_name:
            return by_name[target]
        # A uuid the emulator has; anything else (a request for no such system) shares the
        # lock of calls about none, so unknown names make no locks of their own.
        return target if target in by_name.values() else ""
    return ""


def _lock_for(system: str) -> threading.RLock:
    with _locks_guard:
        lock = _locks.get(system)
        if lock is None:
            lock = _locks[system] = threading.RLock()
        return lock


def _send_in_turn(send: Callable[[Any, dict[str, Any]], None]) -> None:
    """Send this thread's notifications, each once those of its system with earlier tickets
    are sent. Every ticket is passed on even when its send fails (or later ones would wait
    forever); the first failure is raised after, for the request to answer 500."""
    outbox = _outbox()
    failure: Exception | None = None
    while outbox:
        system_id, ticket, driver, system = outbox.pop(0)
        counters = _tickets[system_id]
        with _turn:
            _turn.wait_for(lambda: counters[1] == ticket)  # noqa: B023 (waited on here)
        try:
            send(driver, system)
        except Exception as exc:
            failure = failure or exc
        finally:
            with _turn:
                counters[1] += 1
                _turn.notify_all()
    if failure is not None:
        raise failure


def _one_at_a_time(
    method: Callable[..., Any], send: Callable[[Any, dict[str, Any]], None]
) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        depth: int = _local.__dict__.get("depth", 0)
        try:
            with _lock_for(_system_of(args)):
                _local.depth = depth + 1
                try:
                    return method(*args, **kwargs)
                finally:
                    _local.depth = depth
        finally:
            if depth == 0:  # the outermost call, the lock let go: its changes' notifications
                _send_in_turn(send)

    return call


def _take_notification(driver: Any, system: dict[str, Any]) -> None:
    """In place of the driver's send (called under the system's lock): a ticket and a copy."""
    system_id = str(system.get("uuid") or "")
    with _turn:
        counters = _tickets.setdefault(system_id, [0, 0])
        ticket = counters[0]
        counters[0] += 1
    _outbox().append((system_id, ticket, driver, copy.deepcopy(system)))


@contextlib.contextmanager
def _connection(self: Any) -> Iterator[sqlite3.Cursor]:
    if not self._dbpath:
        raise TypeError("Dict is not yet persistent")
    with sqlite3.connect(self._dbpath) as connection:
        connection.execute("pragma journal_mode=wal")
        connection.execute("pragma synchronous=off")
        yield connection.cursor()


def install() -> None:
    """Patch sushy-tools' fake driver and its state store (see the module doc)."""
    from sushy_tools.emulator import memoize
    from sushy_tools.emulator.resources.systems import fakedriver

    driver = fakedriver.FakeDriver
    send = driver._send_external_notification
    for name, method in list(vars(driver).items()):
        if callable(method) and not name.startswith("__") and name != "_send_external_notification":
            setattr(driver, name, _one_at_a_time(method, send))
    driver._send_external_notification = _take_notification
    memoize.PersistentDict.connection = _connection
