"""Small file helpers shared by every stage: atomic writes, JSON, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import unicodedata
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


class NotelmError(Exception):
    """An error for the user: the CLI prints its message on one line and exits 1."""


class FileRefused(NotelmError):
    """A file notelm will not read (not a regular file, too large, unreadable); the message is the reason."""


# --------------------------------------------------------------------------- reading untrusted files

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _not_regular(mode: int) -> str:
    return "" if stat.S_ISREG(mode) else f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'a special file')})"


def read_regular_file(path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, never more than ``max_bytes``; ``FileRefused`` with the reason otherwise.

    A FIFO named ``.mid`` would block a plain ``open`` forever and a link to /dev/zero would read until
    memory runs out: the path is checked before opening (opening some devices has effects), opened
    without blocking, checked again on the descriptor (the path may have been swapped in between),
    and read only up to the limit (a file may grow while it is read).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror or e}") from None
    if _not_regular(mode):
        raise FileRefused(_not_regular(mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if _not_regular(st.st_mode):
            raise FileRefused(_not_regular(st.st_mode))
        limit = sys.maxsize - 1 if max_bytes is None else int(max_bytes)
        if st.st_size > limit:
            raise FileRefused(f"file is {_megabytes(st.st_size)}, over the limit of {_megabytes(limit)}")
        parts, total, step = [], 0, min(st.st_size, limit) + 1  # + 1: the read that finds the end
        while True:
            part = os.read(fd, min(step, limit + 1 - total))
            if not part:
                return b"".join(parts)
            parts.append(part)
            total += len(part)
            if total > limit:
                raise FileRefused(f"file grew past the limit of {_megabytes(limit)} while it was read")
            step = 1 << 20  # it grew while being read: go on in 1 MB pieces
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _megabytes(n: int) -> str:
    return f"{n / 1048576:.1f} MB" if n >= 104858 else f"{n:,} bytes"


# --------------------------------------------------------------------------- showing names

def printable(text) -> str:
    """``text`` safe to print on one line: every character Python calls unprintable but a space is
    escaped (control characters as ``\\n`` or ``\\x1b``; line separators and the bidirectional controls
    that can make one name read as another, as ``\\u2028``), and the bytes of a file name that are not
    UTF-8 (Python keeps them as lone surrogates) as ``\\xNN``.

    A file named ``a.mid\\nfailed: b.mid`` then prints as one line and can forge nothing, and a name
    that is not UTF-8 can be printed, stored in Arrow and written to JSON.
    """
    text = str(text)
    if text.isprintable():  # C speed: almost every name
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: one undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable() or unicodedata.category(ch) == "Zs":  # spaces other than " " are not "printable"
        return ch
    escaped = ch.encode("unicode_escape", "backslashreplace").decode("ascii")
    return escaped if escaped != ch else f"\\u{code:04x}"


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary file path beside ``path``; rename it over ``path`` on success.

    Readers see either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    with _named(path):  # a full or read-only disk names the file the user asked for, not the temporary
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or (path.suffix + ".tmp"), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _named(path, tmp):
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


MAX_JSON_BYTES = 1 << 30  # a manifest of millions of files stays far below; a bigger file is no notelm file


def read_json(path, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file (a manifest, a model's config.json, a run's run.json, ...), or a one-line NotelmError
    naming the file: missing, not a regular file (a FIFO would block forever), too large, not UTF-8, not
    JSON, or nested too deep for the parser (a RecursionError traceback otherwise)."""
    return _parse_json(read_text(path, max_bytes, "not readable JSON"), path)


def read_jsonl(path, max_bytes: int = MAX_JSON_BYTES) -> list:
    """The records of a JSON-lines file (``metrics.jsonl``), one per non-empty line.  A last line without
    its newline that does not parse is a write in progress (or cut short by a kill) and is left out; any
    other line that does not parse is a one-line NotelmError naming the file and the line."""
    text = read_text(path, max_bytes, "not readable JSON")
    lines = text.split("\n")
    torn = not text.endswith("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_parse_json(line, path, number))
        except NotelmError:
            if torn and number == len(lines):
                break
            raise
    return records


def read_text(path, max_bytes: int | None = None, what: str = "not readable text") -> str:
    """A UTF-8 text file, read by ``read_regular_file``; a one-line NotelmError naming the file otherwise
    (``what``: how a file that is not UTF-8 is described)."""
    try:
        data = read_regular_file(path, max_bytes)
    except FileRefused as e:
        raise NotelmError(f"{printable(path)}: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotelmError(f"{printable(path)}: {what} (not UTF-8 at byte {e.start})") from None


def _parse_json(text: str, path, line: int | None = None):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, or an integer of 100,000 digits
        where = f"{printable(path)}" + (f" line {line}" if line else "")
        why = "nested too deep" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
        raise NotelmError(f"{where}: not readable JSON ({why})") from None


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
    owner = f"{socket.gethostname()}-"
    with _named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temporaries(path, owner)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner}{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        with _named(path, tmp):
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


@contextlib.contextmanager
def _named(path: Path, tmp: Path | None = None):
    """A full or read-only disk met inside names ``path``, the file the user asked for: an error that
    names no file (a full disk, met by a write) or the hidden temporary would only puzzle."""
    try:
        yield
    except OSError as e:
        name = None if e.filename is None else str(e.filename)
        ours = tmp is None or name is None or name.startswith(str(tmp)) or name == str(path.parent)
        if e.errno is None or not ours:
            raise  # about another file: let it name that one
        raise OSError(e.errno, os.strerror(e.errno), str(path)) from None  # OSError picks the subclass


def sweep_dead_temporaries(directory) -> None:
    """Delete every ``.NAME.<host>-<pid>.*.tmp`` in ``directory`` that a writer on this machine left behind
    when it was killed (a resumed run cleans up after the run that died)."""
    owner = f"{socket.gethostname()}-"
    try:
        names = {n.split(f".{owner}", 1)[0][1:] for n in os.listdir(directory)
                 if n.startswith(".") and n.endswith(".tmp") and f".{owner}" in n}
    except OSError:
        return
    for name in names:
        _remove_dead_temporaries(Path(directory) / name, owner)


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
