"""Writing files so a reader never sees half of one, and a failed write names its path.

Every write goes to ``NAME.tmp`` beside the file and is renamed over it; a write that fails
(disk full, no permission, read-only filesystem, a folder in the way) removes its temporary file
and raises :class:`~evo.errors.StorageError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evo.errors import StorageError

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and run again",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "the filesystem is read-only",
    errno.EISDIR: "a folder is in the way",
    errno.ENOTDIR: "a file is in the way of a folder on the path",
}


def storage_error(path: str | os.PathLike[str], exc: OSError, doing: str = "write") -> StorageError:
    """``exc`` (an OS failure while writing ``path``) as one clear :class:`StorageError`."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or 0)
    err = StorageError(f"{path}: cannot {doing} ({reason})" + (f": {advice}" if advice else ""))
    err.path = str(path)  # (errno and filename stay unset: OSError would print them instead)
    return err


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename), making the parent
    folder if needed. Raises :class:`StorageError` naming ``path``; leaves no temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                if tmp.is_file() or tmp.is_symlink():
                    tmp.unlink()
            raise
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(path, exc) from exc
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, like :func:`write_bytes`."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically, like :func:`write_bytes`."""
    return write_bytes(path, json.dumps(payload, indent=indent, default=default).encode())
