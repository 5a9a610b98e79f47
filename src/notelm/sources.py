"""Where music comes from: files, folders (recursive), globs and ``music21:NAME``.

``iter_files`` streams ``SourceFile`` records in a deterministic order (sorted
within every folder) without building the whole list first, so a folder of
100k files costs memory for one folder's listing at a time.  Problems met on
the way (unreadable folder, symlink loop, file over the size limit) come out
as records with ``error`` set, so prepare can report them like parse failures.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from notelm.io import NotelmError

MIDI_SUFFIXES = {".mid", ".midi", ".kar", ".smf"}
MUSIC21_SUFFIXES = {".mxl", ".musicxml", ".xml", ".krn", ".abc"}
SUFFIXES = MIDI_SUFFIXES | MUSIC21_SUFFIXES


@dataclass(frozen=True)
class SourceFile:
    path: str  # absolute path on disk
    source: str  # the source argument it came from
    collection: str  # composer / collection / tune book
    error: str = ""  # set when the file cannot even be queued


def is_midi(path: str) -> bool:
    return Path(path).suffix.lower() in MIDI_SUFFIXES


def music21_corpus_paths(name: str) -> tuple[Path, list[Path]]:
    """Files of a collection in music21's bundled corpus (offline, ships with the wheel)."""
    from music21 import corpus

    paths = [Path(p) for p in corpus.getComposer(name) if Path(p).suffix.lower() in SUFFIXES]
    if not paths:
        root = Path(corpus.__file__).parent
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        raise NotelmError(f"music21:{name}: no such collection in music21's corpus; try one of: {', '.join(known)}")
    return Path(corpus.__file__).parent / name, sorted(paths)


def _walk(root: Path, seen: set) -> Iterator[tuple[Path, str]]:
    """Depth-first, sorted, symlink-loop-safe walk yielding (file, error)."""
    try:
        st = root.stat()
    except OSError as e:
        yield root, f"cannot read folder: {e.strerror or e}"
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        yield root, "symlink loop: folder already visited"
        return
    seen.add(key)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield root, f"cannot read folder: {e.strerror or e}"
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows symlinks; loops are caught by `seen`
        except OSError as e:
            yield path, f"cannot stat: {e.strerror or e}"
            continue
        if is_dir:
            yield from _walk(path, seen)
        elif path.suffix.lower() in SUFFIXES:
            yield path, ""


def _collection(path: Path, root: Path) -> str:
    """The first folder under the source root, else the root's own name."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = ()
    return parts[0] if len(parts) > 1 else (root.name or path.parent.name)


def iter_files(sources: list[str], max_file_mb: float | None = None,
               overrides: dict[str, str] | None = None) -> Iterator[SourceFile]:
    """Stream every music file named by ``sources``, in a stable order."""
    overrides = overrides or {}
    seen_dirs: set = set()
    for source in sources:
        if source.startswith("music21:"):
            name = source.split(":", 1)[1]
            root, paths = music21_corpus_paths(name)
            items = ((p, "") for p in paths)
            fixed_collection = name
        elif any(ch in source for ch in "*?["):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise NotelmError(f"{source}: the pattern matches no files")
            root = Path(_glob_root(source)).resolve()
            items = ((Path(m).resolve(), "") for m in matches if Path(m).suffix.lower() in SUFFIXES and Path(m).is_file())
            fixed_collection = None
        else:
            path = Path(source)
            if not path.exists():
                raise NotelmError(f"{source}: no such file or folder")
            path = path.resolve()
            if path.is_dir():
                root, items = path, _walk(path, seen_dirs)
            else:
                root, items = path.parent, iter([(path, "")])
            fixed_collection = None
        for path, error in items:
            collection = fixed_collection or _collection(path, root)
            rel = _relative(path, root)
            collection = overrides.get(rel) or overrides.get(str(path)) or overrides.get(path.name) or collection
            if not error and max_file_mb is not None:
                try:
                    size = path.stat().st_size
                except OSError as e:
                    error = f"cannot stat: {e.strerror or e}"
                else:
                    if size > max_file_mb * 1024 * 1024:
                        error = f"file is {size / 1048576:.1f} MB, over the --max-file-mb limit of {max_file_mb:g} MB"
            yield SourceFile(str(path), source, collection, error)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


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
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise NotelmError(f"{path}: cannot read metadata CSV: {e.strerror or e}") from e
    if rows and not {"path", "collection"} <= set(rows[0]):
        raise NotelmError(f"{path}: metadata CSV needs the columns 'path' and 'collection' (found: {', '.join(rows[0])})")
    return {row["path"]: row["collection"] for row in rows if row.get("path") and row.get("collection")}
