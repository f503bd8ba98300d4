"""sushy-tools' fake driver made consistent (and cheaper), for emulators whose changes someone
listens to.

Loaded by the emulator's config file (`metal3.bmc.emulators`, with a `notify_url`), inside the
emulator's process. As shipped, the fake driver keeps each system as a pickled copy in SQLite
and serves requests on concurrent threads, each sending its own change notification: two
requests on one system could each read it, change it and write it back (one change lost),
and their notifications could reach the listener in either order. The lab saw a soft power
off's report (still on, the change pending) arrive after the report of the change applied by
a read that raced it, and booted the host again behind its BMC's back.

`install` changes three things:

- every method of the driver holds one re-entrant lock while it runs (the methods call each
  other), so each read-change-write of a system is whole;
- a change's notification is taken under that lock with a ticket (its place in the history)
  and sent after the lock is let go, by the request's own thread, in ticket order: the
  listener gets the history in order, a slow listener holds up only the changes after it,
  and a failed notification still fails the request (the driver answers 500, as shipped);
- the SQLite state is written without an fsync per change (``synchronous=off``; it lives as
  long as the emulator): on a disk the lab's hosts were busy writing, each fsync took up to
  seconds, and under the lock every request waited for them; and it goes through one
  connection per process (`_connection`), not a new one per access.

A power change whose delay is 0 is applied in its own request (`_apply_when_due`), not at
the next read of the system.

Two costs per request go as well: notifications share one HTTP session, and a user's password,
once it passed the bcrypt check, is not checked again (`_remember_passwords`). Measured one
request at a time, a read of a system took 5.9 ms of the emulator's CPU before these three
changes and 1.7 ms after; a boot device change 5.2 and 2.7 ms; a reset 5.1 and 3.3 ms.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

_driver_lock = threading.RLock()
_turn = threading.Condition()
_tickets = {"issued": 0, "sent": 0}
_local = threading.local()  # depth: nesting of locked calls; outbox: notifications to send


def _outbox() -> list[tuple[int, Any, dict[str, Any]]]:
    outbox: list[tuple[int, Any, dict[str, Any]]] = _local.__dict__.setdefault("outbox", [])
    return outbox


def _send_in_turn(send: Callable[[Any, dict[str, Any]], None]) -> None:
    """Send this thread's notifications, each once those with earlier tickets are sent. Every
    ticket is passed on even when its send fails (or later ones would wait forever); the first
    failure is raised after, for the request to answer 500."""
    outbox = _outbox()
    failure: Exception | None = None
    while outbox:
        ticket, driver, system = outbox.pop(0)
        with _turn:
            _turn.wait_for(lambda: _tickets["sent"] == ticket)  # noqa: B023 (waited on here)
        try:
            send(driver, system)
        except Exception as exc:
            failure = failure or exc
        finally:
            with _turn:
                _tickets["sent"] += 1
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
            with _driver_lock:
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
    """In place of the driver's send (called under the lock): a ticket and a copy."""
    ticket = _tickets["issued"]
    _tickets["issued"] += 1
    _outbox().append((ticket, driver, copy.deepcopy(system)))


_connections: dict[str, sqlite3.Connection] = {}  # database path -> this process's connection
_connections_lock = threading.RLock()  # one user of the connections at a time


@contextlib.contextmanager
def _connection(self: Any) -> Iterator[sqlite3.Cursor]:
    """A cursor on the process's one connection to the store, used by one thread at a time.

    As shipped, every read of a system opened a new connection and set its journal mode (a
    read of one system reads the store about fifteen times): a quarter of the emulator's CPU
    per request went there."""
    if not self._dbpath:
        raise TypeError("Dict is not yet persistent")
    with _connections_lock:
        connection = _connections.get(self._dbpath)
        if connection is None:
            connection = sqlite3.connect(self._dbpath, check_same_thread=False)
            connection.execute("pragma journal_mode=wal")
            connection.execute("pragma synchronous=off")
            _connections[self._dbpath] = connection
        with connection:  # commits on the way out
            yield connection.cursor()


class _Notifier:
    """Stands in for the `requests` module in the fake driver, whose only use of it is one
    `put` per notification: through one session, not a new one (and its connection pool) per
    change."""

    def __init__(self) -> None:
        import requests

        self._session = requests.Session()

    def put(self, url: str, **kwargs: Any) -> Any:
        return self._session.put(url, **kwargs)


def _remember_passwords(check: Callable[[str, bytes], Any]) -> Callable[[str, bytes], Any]:
    """sushy-tools' check of a password against one htpasswd entry, remembering the pairs
    that passed: a bcrypt check per request was a sixth of the emulator's CPU for a read. A
    pair that failed is checked again each time, and a changed entry is a new pair."""
    passed: dict[tuple[str, bytes], Any] = {}

    @functools.wraps(check)
    def auth_entry(entry: str, password: bytes) -> Any:
        key = (entry, password)
        if key not in passed:
            result = check(entry, password)  # raises for a wrong password
            if len(passed) < 1024:
                passed[key] = result
            return result
        return dict(passed[key])

    return auth_entry


def _apply_when_due(set_power_state: Callable[..., Any]) -> Callable[..., Any]:
    """The driver's power request, then a read of the system: a change already due (a power
    delay of 0) is applied and reported at once, as a BMC that acts on the request does. As
    shipped it waited for the next read of the system, which a listener had to make."""

    @functools.wraps(set_power_state)
    def call(self: Any, identity: str, state: str) -> None:
        set_power_state(self, identity, state)
        self._get(identity)

    return call


def install() -> None:
    """Patch sushy-tools' fake driver, its state store and its password check (see the
    module doc)."""
    from sushy_tools.emulator import auth_basic, memoize
    from sushy_tools.emulator.resources.systems import fakedriver

    auth_basic.auth_entry = _remember_passwords(auth_basic.auth_entry)
    fakedriver.requests = _Notifier()

    driver = fakedriver.FakeDriver
    driver.set_power_state = _apply_when_due(driver.set_power_state)  # locked whole, below
    send = driver._send_external_notification
    for name, method in list(vars(driver).items()):
        if callable(method) and not name.startswith("__") and name != "_send_external_notification":
            setattr(driver, name, _one_at_a_time(method, send))
    driver._send_external_notification = _take_notification
    memoize.PersistentDict.connection = _connection
