"""Engine logs in a file, one per engine start; the terminal gets one line per start.

While an engine starts (and shuts down), file descriptors 1 and 2 point at the log: what vLLM,
torch and Triton print there, and whatever the spawned engine-core process prints for the rest
of its life (it inherits them), lands in the log. Python logging handlers that write to the
terminal streams are pointed at the log too, during generation as well; the terminal streams
themselves are left alone while generating, so the progress bar still reaches the terminal. Python
warnings raised meanwhile are written to the log as well.
With ``--tais-engine-log=terminal`` nothing is redirected.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Iterator

TAIL_LINES = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class EngineLog:
    """Where one engine start's output goes; ``path`` None: the terminal (nothing redirected)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._file: IO[str] | None = None

    @classmethod
    def for_start(cls, mode: str, folder: Path, arm: str, fingerprint_key: str) -> "EngineLog":
        """A log named by arm, fingerprint and start time under ``folder`` (created on first use)."""
        if mode == "terminal":
            return cls(None)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = _UNSAFE.sub("_", f"{arm}-{fingerprint_key[:16]}-{stamp}-{os.getpid()}")
        return cls(Path(folder) / f"{name}.log")

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "the terminal (--tais-engine-log=terminal)"

    def _open(self) -> IO[str] | None:
        if self.path is None:
            return None
        if self._file is None or self._file.closed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Append mode: the engine-core process writes through the same file description.
            self._file = open(self.path, "a", encoding="utf-8", errors="replace", buffering=1)
        return self._file

    @contextlib.contextmanager
    def capture(self, *, fds: bool) -> Iterator[None]:
        """Send logging handlers (and with ``fds`` file descriptors 1 and 2) to the log."""
        f = self._open()
        if f is None:
            yield
            return
        moved = _move_handlers(f)
        saved: list[tuple[int, int]] = []
        streams = (sys.stdout, sys.stderr)
        if fds:
            _flush()
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(f.fileno(), fd)
                except OSError:  # no such descriptor (a detached process): nothing to redirect
                    pass
            # pytest's capture may have replaced sys.stdout/err: Python-level prints follow the fds too.
            sys.stdout, sys.stderr = _fd_writer(1), _fd_writer(2)
        try:
            # Python warnings raised by the engine (in this process) go to the log, where they happen.
            with warnings.catch_warnings():
                warnings.showwarning = _warning_to(f)
                yield
        finally:
            if fds:
                _flush()
                sys.stdout, sys.stderr = streams
                for fd, copy in saved:
                    os.dup2(copy, fd)
                    os.close(copy)
            for handler, stream in moved:
                handler.setStream(stream)
            f.flush()

    def tail(self, n: int = TAIL_LINES) -> str:
        """The last ``n`` lines of the log, as a block for an error message ('' for the terminal)."""
        if self.path is None:
            return ""
        if self._file is not None and not self._file.closed:
            self._file.flush()
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            return f"\n(the engine log {self.path} cannot be read: {exc})"
        shown = "\n".join(line.rstrip("\r")[-500:] for line in lines[-n:]) if lines else "(empty)"
        return f"\n--- last {min(n, len(lines))} line(s) of the engine log {self.path} ---\n{shown}"

    def announce(self, what: str, seconds: float) -> None:
        """The one terminal line of an engine start."""
        stream = sys.stderr  # the generation step lets it through pytest's capture, as the progress bar
        try:
            stream.write(f"tais engine: {what} started in {seconds:.1f} s; log: {self.where}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


#: One writer per descriptor for the process's life: a library that keeps sys.stdout from inside a
#: start (vLLM's log handler) keeps a valid stream, which later generation steps point at the log.
_FD_WRITERS: dict[int, IO[str]] = {}


def _fd_writer(fd: int) -> IO[str]:
    if fd not in _FD_WRITERS:
        _FD_WRITERS[fd] = open(fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)
    return _FD_WRITERS[fd]


def _warning_to(f: IO[str]) -> Any:
    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        f.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


def _flush() -> None:
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, *_FD_WRITERS.values()):
        try:
            if s is not None:
                s.flush()
        except (OSError, ValueError):
            pass


def _move_handlers(f: IO[str]) -> list[tuple[logging.StreamHandler[Any], Any]]:
    """Point every logging handler that writes to a terminal stream at ``f``; return what to restore."""
    terminals = {
        id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, *_FD_WRITERS.values()) if s is not None
    }
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    moved = []
    seen: set[int] = set()
    for lg in loggers:
        for h in list(lg.handlers):
            if id(h) in seen or not _plain_stream_handler(h):
                continue
            seen.add(id(h))
            if id(getattr(h, "stream", None)) in terminals:
                try:
                    moved.append((h, h.setStream(f)))
                except AttributeError:  # a handler whose stream follows sys.stderr (logging's last resort)
                    continue
    return moved


def _plain_stream_handler(h: logging.Handler) -> bool:
    # Subclasses of StreamHandler that are not file handlers (vLLM's own handler class is one).
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
