"""One error root for everything a user can cause or fix: :class:`EvoError`.

The CLI answers an :class:`EvoError` with one line (``evo: ...``) and exit status 2; anything
else is a bug in evo and keeps its traceback, so a bug never looks like a user mistake. Each
subclass is raised where the bad input enters and names what is wrong and where (file, row,
field; run directory; model and endpoint).

::

    EvoError
    ├── DataError            bad rows or data files (evo.data)
    ├── ConfigError          bad flags, parameters or program files
    ├── DamagedFileError     a file evo wrote earlier is unreadable or of the wrong shape
    ├── RunMismatchError     the run directory holds another run (evo.runs.store)
    ├── RunInUseError        another process has the run directory open (evo.runs.store)
    ├── UnsafeRunDirError    a run directory evo did not create, or a filesystem root / home
    ├── StorageError         the disk is full or a path cannot be written (names the path)
    ├── RunFailedError       most cells failed: the result means nothing
    └── LMUnavailableError   the LM cannot be used at all (evo.lm.base)

The built-in bases (``ValueError``, ``OSError``) are kept where older code caught them.
"""

from __future__ import annotations


class EvoError(Exception):
    """A user-facing error: bad input, bad configuration, an unusable LM or file."""


class ConfigError(EvoError, ValueError):
    """Bad flags, optimizer parameters or program files."""


class DamagedFileError(EvoError):
    """A file evo reads (cache, journal, checkpoint, run file, program JSON) is damaged,
    truncated or of the wrong shape. The message names the file and what is wrong."""

    def __init__(self, path: object, problem: str, *, hint: str = "") -> None:
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))
        self.path, self.problem = str(path), problem


class UnsafeRunDirError(EvoError, ValueError):
    """evo writes only into run directories it created itself."""


class StorageError(EvoError, OSError):
    """A file could not be written (disk full, permissions); the message names the path."""


class RunFailedError(EvoError):
    """The run finished but most of its cells failed, so its scores mean nothing."""


def config_error(exc: Exception, what: str) -> ConfigError:
    """A :class:`ConfigError` from pydantic's ``ValidationError`` ``exc``: one line, each bad
    field with what is wrong and the value given (no documentation URL).

    >>> # raise config_error(exc, "optimizer 'gepa'") from None
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return ConfigError(f"{what}: {exc}")
    def one(e: dict) -> str:
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        loc = ".".join(map(str, e.get("loc", ())))
        return f"{loc}: {msg} (got {e.get('input')!r})" if loc else msg  # (a whole-object check)

    return ConfigError(f"{what}: {'; '.join(one(e) for e in errors())}")
