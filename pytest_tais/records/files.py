"""File I/O shared by the stages: UTF-8 reading with messages that name the line, JSON lines,
atomic writes, checksums, and the collector pauses that loading many records needs."""

from __future__ import annotations

import codecs
import contextlib
import gc
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

try:  # the `fast` extra: about 3x faster on long answers; json stays the reference
    import orjson

    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
    _FAST_ERROR: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads, _FAST_ERROR = None, ValueError


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: loading a large replay allocates several objects a
    record and frees none, so the collector's passes over the growing heap are wasted (a third of
    the load time on 48,072 pairs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_frozen = False


def freeze_long_lived() -> None:
    """Take every object alive now out of the collector's passes (``gc.freeze``).

    Called once a replay is loaded, at configure time: its records, and pytest's and the plugin's
    own objects, live until the run ends, and every later full collection would walk them again
    (about 0.9 s of a 48,072-pair run). Objects still free as usual by reference count; only a
    reference cycle among them would wait for :func:`unfreeze_long_lived`, which the plugin calls
    when the run ends, before pytest's own final collection. A process that froze objects of its
    own is left alone. (An in-process vLLM engine, a model judge's, unfreezes everything when it
    closes: the records are then walked again, which costs time, not correctness.)
    """
    global _frozen
    if not _frozen and gc.get_freeze_count() == 0:
        gc.freeze()
        _frozen = True


def unfreeze_long_lived() -> None:
    global _frozen
    if _frozen:
        gc.unfreeze()
        _frozen = False


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff) is text only as half of a valid pair.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_utf8(path: Any, lineno: int, line: bytes, at: int, fix: str = "save the file as UTF-8") -> str:
    return f"{path}:{lineno}: not UTF-8 text (byte 0x{line[at]:02x} at byte {at + 1} of the line); {fix}"


def _unreadable(path: Any, exc: OSError) -> str:
    """A file that cannot be opened: no read permission, or a folder where a file was expected."""
    if isinstance(exc, IsADirectoryError):
        return f"{os.fspath(path)}: is a folder, not a file; point the option at a file"
    return f"{os.fspath(path)}: cannot be read ({exc.strerror or exc}); make it readable (chmod) or point the option at another file"


def read_text(
    path: str | os.PathLike[str], error: type[Exception], prefix: str = "", fix: str = "save the file as UTF-8"
) -> str:
    """A whole file as text (a leading byte-order mark dropped); bytes that are not UTF-8 raise
    ``error`` naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise  # the callers name a missing file in their own words
    except OSError as exc:
        raise error(prefix + _unreadable(path, exc)) from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = skip + exc.start
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        lineno = data.count(b"\n", 0, start) + 1
        raise error(
            prefix + _not_utf8(path, lineno, data[start : end if end >= 0 else len(data)], at - start, fix)
        ) from None


def check_text(obj: Any, where: str, error: type[Exception], prefix: str = "") -> None:
    """Every string in ``obj`` must be encodable as UTF-8 (a JSON escape can make a lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise error(
            f"{prefix}{where}: a \\u escape stands for a lone UTF-16 surrogate, which is not text; "
            "fix the escape (a pair such as \\ud83d\\ude00 is fine) or write the file again"
        ) from None


def iter_json_lines(
    path: str | os.PathLike[str], error: type[Exception], prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """Yield ``("FILE:LINE", object)`` for each non-blank line; a bad line raises ``error`` naming it.

    orjson parses where it is installed; a line it rejects (bad UTF-8, a lone surrogate escape, NaN,
    huge integers) is parsed again by ``json``, so both accept the same files and fail the same way.
    """
    name = os.fspath(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise  # the callers name a missing file in their own words
    except OSError as exc:
        raise error(prefix + _unreadable(path, exc)) from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if _fast_loads is not None:
                try:
                    yield f"{name}:{lineno}", _fast_loads(raw)
                    continue
                except _FAST_ERROR:
                    pass
            where = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(prefix + _not_utf8(path, lineno, raw, exc.start)) from None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{prefix}{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
            if _SURROGATE_ESCAPE.search(line):
                check_text(obj, where, error, prefix)
            yield where, obj


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (model weights do not fit a read_bytes())."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
