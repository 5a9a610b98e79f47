"""Where music comes from: files, folders (recursive), globs and ``music21:NAME``.

``iter_files`` streams ``SourceFile`` records in a deterministic order (sorted
within every folder) without building the whole list first, so a folder of
100k files costs memory for one folder's listing at a time.  Problems met on
the way (unreadable folder, symlink loop, file over the size limit) come out
as records with ``error`` set, so prepare can report them like parse failures.

Every file carries two labels: its ``collection`` and its ``group``.  The group is
the first folder under the source root (a composer, a tune book), else the root's
own name; a CSV sidecar may set it per file.  A source written ``SOURCE=NAME``
(``music21:bach=bach``, ``data/nottingham=folk``) names the collection of all its
files; without a name the collection is the group, as before.
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from notelm.io import FileRefused, NotelmError, printable, read_regular_file

MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".smf"}
MUSIC21_SUFFIXES = {".mxl", ".musicxml", ".xml", ".krn", ".abc"}
PIANOROLL_SUFFIXES = {".mat"}  # the piano-roll benchmark's MATLAB files (pianoroll.py)
SUFFIXES = MIDI_SUFFIXES | MUSIC21_SUFFIXES | PIANOROLL_SUFFIXES
MAX_SIDECAR_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute path on disk
    source: str  # the source argument it came from
    collection: str  # the name given as SOURCE=NAME, else the group
    error: str = ""  # set when the file cannot even be queued
    group: str = ""  # the first folder under the source root (composer / tune book), or the sidecar's value


def split_source(text: str) -> tuple[str, str | None]:
    """``SOURCE=NAME`` -> (SOURCE, NAME); a source without ``=NAME`` (or an existing path holding '=') -> (it, None).

    The name is what follows the last '='; it may not hold a path separator, so a folder named
    ``a=b/`` stays a folder.
    """
    if "=" not in text or os.path.exists(text):
        return text, None
    source, name = text.rsplit("=", 1)
    if not source or not name.strip() or "/" in name or os.sep in name:
        raise NotelmError(f"{text}: expected SOURCE=NAME with a collection name after '=' (no '/' in the name)")
    return source, name.strip()


def is_midi(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in MIDI_SUFFIXES


def music21_corpus_paths(name: str) -> tuple[Path, list[Path]]:
    """Files of a collection in music21's bundled corpus (offline, ships with the wheel)."""
    from music21 import corpus

    paths = [Path(p) for p in corpus.getComposer(name) if Path(p).suffix.lower() in SUFFIXES]
    if not paths:
        root = Path(corpus.__file__).parent
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        raise NotelmError(f"music21:{name}: no such collection in music21's corpus; try one of: {', '.join(known)}")
    return Path(corpus.__file__).parent / name, sorted(paths)


def _walk(root: str, seen: set) -> Iterator[tuple[str, str]]:
    """Depth-first, sorted, symlink-loop-safe walk yielding (file, error).  Plain strings
    and os.scandir: this runs once per file, so pathlib's overhead would show.  An explicit
    stack of folder listings, not recursion: folders may be nested thousands deep."""
    entries, error = _list(root, seen)
    if error:
        yield root, error
        return
    stack = [iter(entries)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:  # this folder is done
            stack.pop()
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks; loops are caught by `seen`
        except OSError as e:
            yield entry.path, f"cannot stat: {e.strerror or e}"
            continue
        if is_dir:
            entries, error = _list(entry.path, seen)
            if error:
                yield entry.path, error
            else:
                stack.append(iter(entries))
        elif os.path.splitext(entry.name)[1].lower() in SUFFIXES:
            yield entry.path, ""


def _list(folder: str, seen: set) -> tuple[list, str]:
    """(the folder's entries sorted by name, '') or ([], why it cannot be walked)."""
    try:
        st = os.stat(folder)
    except OSError as e:
        return [], f"cannot read folder: {e.strerror or e}"
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return [], "symlink loop: folder already visited"
    seen.add(key)
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name), ""
    except OSError as e:
        return [], f"cannot read folder: {e.strerror or e}"


def iter_files(sources: list[str], max_file_mb: float | None = None,
               overrides: dict[str, str] | None = None) -> Iterator[SourceFile]:
    """Stream every music file named by ``sources``, in a stable order."""
    overrides = overrides or {}
    seen_dirs: set = set()
    limit = None if max_file_mb is None else max_file_mb * 1024 * 1024
    for named in sources:
        source, name = split_source(named)
        fixed_collection = None
        if source.startswith("music21:"):
            name = source.split(":", 1)[1]
            root, paths = music21_corpus_paths(name)
            root, items, fixed_collection = str(root), ((str(p), "") for p in paths), name
        elif any(ch in source for ch in "*?["):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise NotelmError(f"{source}: the pattern matches no files")
            root = os.path.abspath(_glob_root(source))
            # anything but a folder is queued: ingest refuses what is not a regular file, with its reason
            items = ((os.path.abspath(m), "") for m in matches
                     if os.path.splitext(m)[1].lower() in SUFFIXES and not os.path.isdir(m))
        else:
            if not os.path.exists(source):
                raise NotelmError(f"{source}: no such file or folder")
            path = os.path.abspath(source)
            if os.path.isdir(path):
                root, items = path, _walk(path, seen_dirs)
            else:
                root, items = os.path.dirname(path), iter([(path, "")])
        prefix = root.rstrip(os.sep) + os.sep
        root_name = os.path.basename(root.rstrip(os.sep))
        for path, error in items:
            rel = path[len(prefix):] if path.startswith(prefix) else path
            # the first folder under the source root, else the root's own name
            if os.path.splitext(path)[1].lower() in PIANOROLL_SUFFIXES:
                group = os.path.splitext(os.path.basename(path))[0]  # a benchmark file holds one dataset
            else:
                group = fixed_collection or (rel.split(os.sep, 1)[0] if os.sep in rel else root_name)
            if overrides:
                group = (overrides.get(rel.replace(os.sep, "/")) or overrides.get(path)
                         or overrides.get(os.path.basename(path)) or group)
            if not error and limit is not None:
                try:
                    size = os.stat(path).st_size
                except OSError as e:
                    error = f"cannot stat: {e.strerror or e}"
                else:
                    if size > limit:
                        error = f"file is {size / 1048576:.1f} MB, over the --max-file-mb limit of {max_file_mb:g} MB"
            yield SourceFile(path, source, name or group, error, group)


def _glob_root(pattern: str) -> str:
    parts = []
    for part in Path(pattern).parts:
        if any(ch in part for ch in "*?["):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


def read_sidecar(path) -> dict[str, str]:
    """A CSV with columns ``path`` and ``collection``: per-file collection overrides.

    ``path`` may be relative to the source root, absolute, or a bare file name.
    """
    path = Path(path)
    try:
        text = read_regular_file(path, MAX_SIDECAR_BYTES).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except FileRefused as e:
        raise NotelmError(f"{printable(path)}: cannot read metadata CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise NotelmError(f"{printable(path)}: metadata CSV is not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise NotelmError(f"{printable(path)}: not a readable CSV: {e}") from None
    if rows and not {"path", "collection"} <= set(rows[0]):
        found = ", ".join(printable(k) for k in rows[0] if k is not None)
        raise NotelmError(f"{printable(path)}: metadata CSV needs the columns 'path' and 'collection' "
                          f"(found: {found})")
    return {row["path"]: row["collection"] for row in rows if row.get("path") and row.get("collection")}
