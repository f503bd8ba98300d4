"""Run pyghmi's IPMI client in a pool of worker processes, one call at a time per process.

pyghmi's client shares sessions, sockets and a login table between all threads of a process,
and while one thread's login to a dead BMC is failing, other threads' logins can trip over it
(a session left "in progress" forever, or broken without an error) and hang. Inside a worker
process pyghmi runs single-threaded, the way it works reliably; the caller waits on a pipe with
a deadline, and a worker that misses it is killed, taking any half-made session with it. So a
dead or hung BMC costs its caller the deadline and one process restart, nobody else anything.

Cipher suites: pyghmi proposes suite 17 (SHA-256) and moves to suite 3 (SHA-1) only when the
BMC refuses the proposal. Some BMCs (virtualbmc, which is pyghmi's own server, and some real
ones) accept 17 and then answer RAKP with SHA-1, and pyghmi's login crashes (`struct.error`).
A worker reports such a login as kind "cipher" and is then replaced (the crash leaves pyghmi's
login table half-done), so the caller can ask again with `cipher_suite=SUITE_SHA1`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

#: upper bound of worker processes (the global IPMI concurrency)
DEFAULT_POOL_SIZE = 16
#: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128: pyghmi's first proposal
SUITE_SHA256 = 17
#: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128
SUITE_SHA1 = 3


@dataclass(frozen=True)
class IPMIRequest:
    """One operation on one BMC, sent to a worker (credentials as bytes, see pyghmi notes)."""

    host: str
    port: int
    user: bytes
    password: bytes
    privilege: int
    operation: str
    args: tuple[Any, ...] = ()
    #: SUITE_SHA256: pyghmi's default (falls back to SHA-1 if the BMC refuses SHA-256);
    #: SUITE_SHA1: propose only SHA-1
    cipher_suite: int = SUITE_SHA256


@dataclass(frozen=True)
class IPMIReply:
    """An operation's result and the cipher suite its session logged in with (0: unknown)."""

    value: Any
    cipher_suite: int


class WorkerFailure(Exception):
    """A pyghmi error, carried back from the worker as its kind, text and IPMI code."""

    def __init__(self, kind: str, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code


class WorkerTimeout(Exception):
    """No worker answered before the deadline (the busy one was killed)."""


class _CipherMismatch(Exception):
    """The SHA-256 login failed in RAKP the way a BMC answering with SHA-1 makes it fail."""


# -- worker side (runs in the child process) -----------------------------------------------------

# (host, port) of the BMCs this worker logs in to with cipher suite 3 only
_sha1_only: set[tuple[str, int]] = set()


def _install_suite_choice() -> None:
    """Make pyghmi's client log in to the BMCs in `_sha1_only` with cipher suite 3 only.

    pyghmi's client has no public way to choose the cipher suite. Each login (also its
    re-logins and privilege downgrades) starts in `Session._initsession`, which sets
    `attemptedhash = 256` (propose SHA-256); `attemptedhash = 1` is the state pyghmi itself
    moves to when a BMC refuses SHA-256. This wraps that one method and is, with
    `_suite_logged_in`, the only use of pyghmi internals here (as of pyghmi 1.6.19).
    """
    from pyghmi.ipmi.private import session as pyghmi_session

    original = pyghmi_session.Session._initsession
    if getattr(original, "_metal3_suite_choice", False):
        return

    def _initsession(self: Any) -> None:
        original(self)
        if (self.bmc, self.port) in _sha1_only:
            self.attemptedhash = 1

    _initsession._metal3_suite_choice = True  # type: ignore[attr-defined]
    pyghmi_session.Session._initsession = _initsession


def _suite_logged_in(command: Any) -> int:
    """The cipher suite of a logged-in pyghmi client (its `integrityalgo`: 256 or 1)."""
    algo = getattr(command.ipmi_session, "integrityalgo", None)
    return {256: SUITE_SHA256, 1: SUITE_SHA1}.get(algo, 0) if isinstance(algo, int) else 0


def _login(request: IPMIRequest) -> Any:
    from pyghmi import exceptions as pyghmi_exc
    from pyghmi.ipmi import command as ipmi_command

    _install_suite_choice()
    key = (request.host, request.port)
    if request.cipher_suite == SUITE_SHA1:
        _sha1_only.add(key)
    else:
        _sha1_only.discard(key)
    try:
        return ipmi_command.Command(
            bmc=request.host,
            userid=request.user,
            password=request.password,
            port=request.port,
            privlevel=request.privilege,
        )
    except struct.error as exc:  # RAKP 2 or 4 shorter than a SHA-256 one
        if request.cipher_suite == SUITE_SHA256:
            raise _CipherMismatch(str(exc)) from exc
        raise
    except pyghmi_exc.IpmiException as exc:
        # A wrong password is not retried (lockouts); a RAKP 4 that fails its integrity
        # check after RAKP 2 proved the password means the BMC hashes with something else.
        if request.cipher_suite == SUITE_SHA256 and "RAKP4 integrity" in str(exc):
            raise _CipherMismatch(str(exc)) from exc
        raise


def _perform(request: IPMIRequest) -> tuple[Any, int]:
    """(result, cipher suite); plain tuples, as the worker's classes live in its `__main__`."""
    session = _login(request)
    return _operate(session, request), _suite_logged_in(session)


def _operate(session: Any, request: IPMIRequest) -> Any:
    operation, args = request.operation, request.args
    if operation == "raw":
        netfn, command = args
        return bytes(session.xraw_command(netfn=netfn, command=command)["data"])
    if operation == "set_power":
        session.set_power(args[0], wait=False)
        return None
    if operation == "set_bootdev":
        name, persist, uefi = args
        session.set_bootdev(name, persist=persist, uefiboot=uefi)
        return None
    if operation == "get_bootdev":
        return dict(session.get_bootdev())
    raise ValueError(f"unknown IPMI operation {operation!r}")


def ipmi_failure(exc: Exception) -> tuple[str, str, str, int]:
    """The error reply for a pyghmi IpmiException. pyghmi raises some with no text at all
    (its message is None: a session marked broken without a reason, as when logins time out
    under load), which used to reach the host's status as "...: None"; those say what is
    known instead: the completion code, or a session that broke (kind "session")."""
    code = int(getattr(exc, "ipmicode", 0) or 0)
    text = str(exc) if exc.args and exc.args[0] is not None else ""
    if text.strip():
        return ("error", "ipmi", text, code)
    if code:
        return ("error", "ipmi", f"the BMC answered with completion code 0x{code:02x}", code)
    return (
        "error",
        "session",
        "the IPMI session broke without a reason from pyghmi (no answer from the BMC in time)",
        0,
    )


def worker_main(conn: Connection) -> None:
    """Serve requests until the parent closes the pipe."""
    from pyghmi import exceptions as pyghmi_exc

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", *_perform(request))
        except _CipherMismatch as exc:
            reply = ("error", "cipher", str(exc), 0)
        except pyghmi_exc.IpmiException as exc:
            reply = ipmi_failure(exc)
        except pyghmi_exc.InvalidParameterValue as exc:
            reply = ("error", "invalid", str(exc), 0)
        except OSError as exc:
            reply = ("error", "os", exc.strerror or str(exc), 0)
        except Exception as exc:  # reported to the caller, who maps it
            reply = ("error", "other", f"{type(exc).__name__}: {exc}", 0)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


# -- parent side -------------------------------------------------------------------------------


class _Worker:
    """`python -m metal3.bmc.ipmiworkers FD`, talking pickles over a socket pair.

    A plain subprocess rather than multiprocessing: nothing of the caller's `__main__` is
    re-imported, and pyghmi's occasional prints to stdout cannot corrupt the channel.
    """

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "metal3.bmc.ipmiworkers", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class WorkerPool:
    """Up to `size` worker processes, started on demand and reused; thread-safe."""

    def __init__(self, size: int = DEFAULT_POOL_SIZE) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()

    def _acquire(self, deadline: float) -> _Worker:
        with self._cond:
            while not self._idle and self._count >= self.size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise WorkerTimeout("all IPMI workers are busy")
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker()
        except BaseException:
            self._dispose(None)
            raise

    def _release(self, worker: _Worker) -> None:
        with self._cond:
            self._idle.append(worker)
            self._cond.notify()

    def _dispose(self, worker: _Worker | None) -> None:
        if worker is not None:
            worker.kill()
        with self._cond:
            self._count -= 1
            self._cond.notify()

    def call(self, request: IPMIRequest, deadline: float) -> IPMIReply:
        """Blocking: run `request` in a worker; WorkerTimeout at `deadline` (monotonic)."""
        worker = self._acquire(deadline)
        try:
            worker.conn.send(request)
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerTimeout("no answer before the deadline")
            reply = worker.conn.recv()
        except BaseException:
            self._dispose(worker)  # killed: its half-made session dies with it
            raise
        if reply[0] == "ok":
            self._release(worker)
            return IPMIReply(reply[1], int(reply[2]))
        _, kind, message, code = reply
        if kind == "cipher":
            self._dispose(worker)  # pyghmi's login table still holds the crashed login
        else:
            self._release(worker)
        raise WorkerFailure(kind, message, code)

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for worker in idle:
            worker.kill()


_default_pool: WorkerPool | None = None
_default_guard = threading.Lock()


def default_pool() -> WorkerPool:
    global _default_pool
    with _default_guard:
        if _default_pool is None:
            _default_pool = WorkerPool()
        return _default_pool


if __name__ == "__main__":
    worker_main(Connection(int(sys.argv[1])))
