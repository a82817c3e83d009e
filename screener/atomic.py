"""Write files so that a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from screener.errors import ConfigError


def _temporary_beside(final: Path) -> Path:
    """Create an empty, uniquely named file next to `final` (0666 less the umask, unlike
    mkstemp's private 0600) and return its path."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return tmp


_TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (files a dead writer left can be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files in `folder` left by writers that were killed (their process
    is gone); return what was removed. Files of running writers are left alone."""
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY_NAME.match(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_writable(final: Path) -> None:
    """Raise ConfigError now if `final` could not be written later; touches nothing there."""
    if final.is_dir():
        raise ConfigError(f"{final} is a directory: pass a file path")
    try:
        _temporary_beside(final).unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write {final}: {exc.strerror}") from exc


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed onto `final`.

    On an exception the temporary file is removed and `final` is left as it was.
    """
    tmp = _temporary_beside(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write() names no file
            raise OSError(exc.errno, exc.strerror, str(final)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(final: Path, text: str) -> None:
    """Write `text` (UTF-8) to `final` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
