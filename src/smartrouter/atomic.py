"""Writing files so that a reader sees the old content or the new, never half of it; file checksums.

Every run record, report, registry pointer, encoder spec and model artifact is written through
here: a temporary file in the same folder, flushed and fsynced, then ``os.replace``d.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Atomically replace ``path`` with ``data`` (parent folders created; mode set before the swap)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; records and reports are read by other users and tools
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False,
               trailing_newline: bool = True) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON (non-JSON values via ``str``)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str)
    return write_text(path, text + ("\n" if trailing_newline else ""))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
