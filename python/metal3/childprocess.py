"""Child processes that must not outlive their parent (emulators, lab agents, the standalone
API server): a parent killed with SIGKILL runs no cleanup, so the kernel must do it."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
# Looked up in the parent: between fork and exec the child only calls it (no dlopen there).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """For `preexec_fn` (in the child, before exec): the kernel sends SIGKILL when the
    *thread* that started this process ends, so start such children from a thread that
    lives as long as the parent (the main thread, not a worker pool's)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
