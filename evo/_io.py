"""Writing files so a reader never sees half of one, and a failed write names its path.

Every write goes to a new ``NAME.tmp`` beside the file and is renamed over it (so a symbolic
link at ``NAME`` or ``NAME.tmp`` is replaced, never written through); a write that fails
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
    if path.exists() and not path.is_symlink() and not path.is_file() and not path.is_dir():
        # a device or a pipe (--out /dev/null): the rename would put a file in its place
        raise StorageError(f"{path} is not a regular file (a device or a pipe): evo writes a "
                           "file by replacing it, and will not replace that; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # A leftover NAME.tmp (a killed write, or a link planted there) is removed, never
            # written through: O_EXCL makes a new regular file or fails.
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            # The rename replaces a link at ``path`` itself, never the file it points to.
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
