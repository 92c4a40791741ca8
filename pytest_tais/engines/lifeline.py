"""Engine processes die with the process that started them, even after ``kill -9``.

vLLM starts its engine core (and, with the mp executor, its workers) as ``multiprocessing``
processes; killed hard, pytest leaves them running (gigabytes of memory, busy cores). While
:func:`engines_die_with_parent` is active, every process started through ``multiprocessing``
gets a target wrapper that, first thing in the child, asks the kernel for SIGKILL when its parent
dies (``PR_SET_PDEATHSIG``; elsewhere a watchdog thread polls the parent pid) and installs the same
hook there, so the engine's own children die with the engine. Works for spawn, fork and forkserver
(a fork server's child also watches the starter's pid: its parent is the server).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from multiprocessing import process as mp_process
from typing import Any, Callable, Iterator

_PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_depth = 0
_original_start: Callable[..., Any] | None = None


def die_with_parent(parent_pid: int) -> None:
    """In a child: be killed when ``parent_pid`` (the process that started us) goes away."""
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() == parent_pid:
        if not armed:
            threading.Thread(target=_watch, args=(parent_pid,), name="tais-parent-watchdog", daemon=True).start()
        return
    # Our parent is not the starter: a fork server started us (the signal above follows the server,
    # which exits when the starter does), or the starter died before the signal was armed.
    if not _alive(parent_pid):
        os._exit(1)
    threading.Thread(target=_watch_pid, args=(parent_pid,), name="tais-parent-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch(parent_pid: int) -> None:
    import time

    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _watch_pid(pid: int) -> None:
    import time

    while _alive(pid):
        time.sleep(0.5)
    os._exit(1)


class _DiesWithParent:
    """A process target that arms :func:`die_with_parent` before running the real one (picklable)."""

    def __init__(self, target: Callable[..., Any], parent_pid: int) -> None:
        self.target = target
        self.parent_pid = parent_pid

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        die_with_parent(self.parent_pid)
        _install()  # for the engine's own children: this process is an engine for the rest of its life
        return self.target(*args, **kwargs)


def _start(self: Any) -> None:
    if self._target is not None and not isinstance(self._target, _DiesWithParent):
        self._target = _DiesWithParent(self._target, os.getpid())
    assert _original_start is not None
    _original_start(self)


def _install() -> None:
    global _original_start
    if _original_start is None:
        _original_start = mp_process.BaseProcess.start
        mp_process.BaseProcess.start = _start  # type: ignore[method-assign]


def _uninstall() -> None:
    global _original_start
    if _original_start is not None:
        mp_process.BaseProcess.start = _original_start  # type: ignore[method-assign]
        _original_start = None


@contextlib.contextmanager
def engines_die_with_parent() -> Iterator[None]:
    """Processes started through multiprocessing inside this block die with this process.

    The signal follows the *thread* that started the child: start engines from a thread that
    lives as long as they do (pytest's main thread).
    """
    global _depth
    with _lock:
        _depth += 1
        _install()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()
