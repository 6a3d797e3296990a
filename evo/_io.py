"""Writing files so a reader never sees half of one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(path: str | Path, payload: Any, *, indent: int = 2,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (a temporary file, then a rename), making
    the parent folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent, default=default))
    tmp.replace(path)
    return path
