"""Atomic file writes: the one place bort writes a file.

Every writer puts the content in a temporary file in the target's directory, flushes it to disk,
renames it over the target and syncs the directory, so a crash or Ctrl-C leaves either the old
file or the new one, never half of one. The rename replaces a symlink at the target rather than
writing through it, and the file gets the usual permissions (0666 less the umask).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "run" / "result.json"
    >>> write_json(path, {"accuracy": 0.83}).read_text()
    '{\\n "accuracy": 0.83\\n}\\n'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["append_line", "copy_file", "fsync_dir", "save_safetensors", "write_bytes", "write_json",
           "write_text"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process' umask, read once at import: reading it means setting it, which would race with
#: another thread's file creation if done per write.
_UMASK = _read_umask()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or new file in ``directory`` durable (a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def append_line(path: str | Path, line: str) -> Path:
    """Append ``line`` and a newline to the journal at ``path`` and flush it to disk. A crash can
    only cut the last line short: readers skip a line that does not parse."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON (one trailing newline) atomically. Values JSON lacks (paths,
    numpy scalars) are written as their ``str``."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy the bytes of ``source`` to ``path`` atomically."""
    return write_bytes(path, Path(source).read_bytes())


def save_safetensors(tensors: Mapping[str, Any], path: str | Path,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write torch tensors or numpy arrays (not a mix) as one safetensors file, atomically.
    Torch tensors are detached, made contiguous and moved to the CPU first."""
    values = list(tensors.values())
    if values and all(isinstance(v, np.ndarray) for v in values):
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        meta = dict(metadata or {})
    else:
        from safetensors.torch import save_file

        arrays = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {"format": "pt", **(metadata or {})}
    return _atomic(path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))
