"""Small file helpers shared by every stage: atomic writes, JSON, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


class NotelmError(Exception):
    """An error for the user: the CLI prints its message on one line and exits 1."""


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary file path beside ``path``; rename it over ``path`` on success.

    Readers see either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or (path.suffix + ".tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: int | None = 2) -> None:
    """``indent=None`` writes one line through json's C encoder (several times faster): for files only notelm reads."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _usual_modes(directory: Path) -> None:
    """mkdtemp makes 0700 and some writers 0600: give finished output the umask's modes."""
    os.chmod(directory, 0o777 & ~_UMASK)
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~_UMASK)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and removed only after the rename,
    so a crash leaves either the old directory or the new one in place.  The
    temporary name carries host and process id: a later write of the same ``path``
    removes what a killed writer on this machine left behind (kill -9, OOM kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()}-"
    _remove_dead_temporaries(path, owner)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _usual_modes(tmp)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_dead_temporaries(path: Path, owner: str) -> None:
    """Delete ``.NAME.<owner><pid>.*.tmp`` beside ``path`` whose process is gone."""
    start = f".{path.name}.{owner}"
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(start) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(start):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path.parent / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def content_hash(data: bytes) -> str:
    """The identity of a file's content: 32 hex digits of BLAKE2b."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def hash_unit(hex_digest: str) -> float:
    """Map a hex digest to a number in [0, 1) that is stable across runs and machines."""
    return int(hex_digest[:13], 16) / float(1 << 52)
