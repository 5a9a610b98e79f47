"""The on-disk corpus: a note table, a song table, metadata tables and a manifest.

Layout of a corpus directory::

    manifest.json    format, version, sources, counts, split fractions, failures, duplicates
    songs.arrow      one row per song (path, hash, collection, counts, duration, split, note range)
    notes/000000.arrow, 000001.arrow, ...
                     the note table in parts: one row per note (track, ticks and quarters,
                     pitch, velocity, program, is_drum), song after song
    tempos.arrow     song, tick, qpm
    timesigs.arrow   song, tick, numerator, denominator
    keysigs.arrow    song, tick, sharps, minor

All tables are Arrow IPC files (``pyarrow.ipc``; ``polars.read_ipc`` and
``pandas.read_feather`` open them too), read through a memory map.  The note
table is its parts read one after another; a song is its row range
``note_start:note_end``, which is also how ``Corpus.all_notes`` gives each note
its ``song``.

``prepare`` builds a corpus in resumable chunks under ``<out>.partial/`` and
renames the finished directory into place: a corpus is never half-written.
A chunk's notes are saved once, by the worker that parsed them, in their final
form; the corpus links that file in as a part (the parent process never copies
notes), so ingest speed grows with the number of workers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from notelm import notes as nt
from notelm.ingest import (
    FILE_TIMEOUT_S,
    Chunk,
    IngestPool,
    Job,
    chunk_saved,
    default_workers,
    read_chunk,
    write_notes_part,
)
from notelm.io import NotelmError, atomic_dir, hash_unit, printable, read_json, write_json
from notelm.sources import iter_files, read_sidecar

FORMAT = "notelm-corpus"
VERSION = 2
READS = (1, 2)  # version 1 kept the note table in one notes.arrow with a song column
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
CHUNK_FILES = 32  # files per resumable unit of work
LABELS = ("collection", "group")  # the song labels a model can be conditioned on

META_TABLES = nt.META_TABLES


def assign_split(sha: str, fractions=DEFAULT_SPLIT) -> str:
    """Song-level split from the content hash: the same file lands in the same split everywhere."""
    u = hash_unit(sha)
    if u < fractions[0]:
        return SPLITS[0]
    return SPLITS[1] if u < fractions[0] + fractions[1] else SPLITS[2]


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split("/")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or sum(parts) <= 0:
        raise NotelmError(f"--split {text!r}: expected three numbers like 80/10/10")
    total = sum(parts)
    return tuple(p / total for p in parts)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not (n >= 1 and 1 <= k <= n):
        raise NotelmError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return k, n


# --------------------------------------------------------------------------- reading

class Corpus:
    """A prepared corpus, memory-mapped.  ``songs`` is a dict of numpy columns."""

    def __init__(self, path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        songs = _read_table(self.path / "songs.arrow")
        _check_songs(self.path, songs)
        self.songs = {name: songs.column(name).to_numpy(zero_copy_only=False) for name in songs.column_names}
        for name, copied in OPTIONAL_SONG_COLUMNS.items():
            self.songs.setdefault(name, self.songs[copied])
        self._notes = read_notes(self.path)
        counted = int(np.sum(self.songs["n_notes"]))
        if self._notes.num_rows != counted:
            raise NotelmError(f"{self.path}: the note table holds {self._notes.num_rows:,} notes, the song table "
                              f"counts {counted:,}; prepare it again")
        # a few rows per song, written in many batches: one contiguous copy makes per-song lookups cheap
        self._meta = {name: _read_table(self.path / f"{name}.arrow").combine_chunks() for name in META_TABLES}
        for name, table in self._meta.items():
            ids = _column(table, "song") if "song" in table.column_names else None
            if ids is None or (len(ids) and (ids[0] < 0 or ids[-1] >= len(self) or (np.diff(ids) < 0).any())):
                raise NotelmError(f"{self.path / (name + '.arrow')}: its song column is missing, unsorted or "
                                  "out of range; prepare the corpus again")

    def __len__(self) -> int:
        return len(self.songs["song"])

    @property
    def num_notes(self) -> int:
        return self._notes.num_rows

    @property
    def collections(self) -> list[str]:
        return sorted(set(self.songs["collection"].tolist()))

    def labels(self, label: str = "collection") -> list[str]:
        """The sorted names of a song label: ``collection`` (as named on the command line) or ``group``
        (the folder under the source: composer, tune book)."""
        if label not in LABELS:
            raise NotelmError(f"unknown song label {label!r}; choose one of {', '.join(LABELS)}")
        return sorted(set(self.songs[label].tolist()))

    def split_ids(self, split: str = "all") -> np.ndarray:
        if split == "all":
            return self.songs["song"].astype(np.int64)
        if split not in SPLITS:
            raise NotelmError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
        return self.songs["song"][self.songs["split"] == split].astype(np.int64)

    def notes(self, song: int) -> nt.Notes:
        """The notes of one song (sorted by track, onset, pitch)."""
        start, end = int(self.songs["note_start"][song]), int(self.songs["note_end"][song])
        return _notes_of(self._notes.slice(start, end - start))

    def all_notes(self, columns: Iterable[str] | None = None) -> nt.Notes:
        """Whole note-table columns (plus ``song``), for vectorized work over the corpus."""
        names = list(columns) if columns is not None else ["song", *nt.NOTE_COLUMNS]
        out = {name: _column(self._notes, name) for name in names if name != "song"}
        if "song" in names:  # notes are stored song after song
            out["song"] = np.repeat(self.songs["song"].astype(np.int32), self.songs["n_notes"])
        return {name: out[name] for name in names}

    def meta(self, song: int) -> nt.SongMeta:
        rows = {}
        for table, columns in META_TABLES.items():
            t = self._meta[table]
            ids = _column(t, "song")
            lo, hi = np.searchsorted(ids, song), np.searchsorted(ids, song, side="right")
            rows[table] = {c: _column(t, c)[lo:hi] for c in columns}
        return nt.meta_from_tables(int(self.songs["tpq"][song]), rows)

    def song_index(self, key: str) -> int:
        """A song id from an id, a path suffix or a hash prefix."""
        if key.isdigit() and int(key) < len(self):
            return int(key)
        for name in ("sha", "path"):
            hits = [i for i, v in enumerate(self.songs[name])
                    if (v.startswith(key) if name == "sha" else v.endswith(key))]
            if len(hits) == 1:
                return hits[0]
        raise NotelmError(f"{self.path}: no single song matches {key!r}")


MAX_MANIFEST_BYTES = 1 << 30
# what a manifest must hold, and of which JSON type, for notelm to use it (other keys are free)
MANIFEST_FIELDS = {"format": str, "version": int, "split": dict, "counts": dict, "sources": list, "failures": list}


def read_manifest(path: Path) -> dict:
    """A corpus's manifest.json, checked; a one-line NotelmError naming the file otherwise."""
    file = Path(path) / "manifest.json"
    if not file.exists():
        raise NotelmError(f"{printable(path)}: not a notelm corpus (no manifest.json); make one with `notelm prepare`")
    manifest = read_json(file, MAX_MANIFEST_BYTES)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotelmError(f"{printable(file)}: not a notelm corpus manifest")
    if manifest.get("version") not in READS:
        raise NotelmError(f"{printable(path)}: corpus version {str(manifest.get('version'))[:20]} is not supported "
                          f"(notelm reads {', '.join(map(str, READS))}); prepare it again")
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise NotelmError(f"{printable(file)}: '{key}' is missing or not a JSON {kind.__name__}; prepare it again")
    split = list(manifest["split"].values())
    if len(split) != 3 or not all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in split):
        raise NotelmError(f"{printable(file)}: 'split' must hold three fractions; prepare it again")
    return manifest


def _check_songs(path: Path, songs: pa.Table) -> None:
    """The song table's columns and note ranges agree with each other (a tampered table would index
    the note table out of range).  Reads the numeric columns only: the table stays memory-mapped."""
    import pyarrow.compute as pc

    missing = [c for c in SONG_COLUMNS if c not in songs.column_names and c not in OPTIONAL_SONG_COLUMNS]
    if missing:
        raise NotelmError(f"{printable(path)}: songs.arrow lacks the columns {', '.join(missing)}; prepare it again")
    numbers = ("song", "note_start", "note_end", "n_notes")
    if not all(pa.types.is_integer(songs.schema.field(c).type) for c in numbers) or songs.column("split").null_count:
        raise NotelmError(f"{printable(path)}: songs.arrow holds other types than a notelm song table")
    ids, start, end, count = (songs.column(c).to_numpy().astype(np.int64, copy=False) for c in numbers)
    n = len(ids)
    ok = (ids == np.arange(n)).all() and (count >= 0).all() and (end - start == count).all()
    ok = ok and (n == 0 or (start[0] == 0 and (start[1:] == end[:-1]).all()))
    ok = ok and (n == 0 or pc.all(pc.is_in(songs.column("split"), value_set=pa.array(SPLITS))).as_py())
    if not ok:
        raise NotelmError(f"{printable(path)}: songs.arrow's ids, note ranges or splits are inconsistent; "
                          "prepare it again")


NOTES_SCHEMA = pa.schema([(k, pa.from_numpy_dtype(v)) for k, v in nt.NOTE_COLUMNS.items()])


def read_notes(path: Path) -> pa.Table:
    """A corpus's note table: its parts one after another, memory-mapped (one chunk per part)."""
    path = Path(path)
    if (path / "notes.arrow").exists():  # version 1: one file, with a song column
        return _read_table(path / "notes.arrow").select(list(nt.NOTE_COLUMNS))
    batches = []
    for part in sorted((path / "notes").glob("*.arrow"), key=lambda p: (len(p.stem), p.stem)):  # numbered in order
        table = _read_table(part)
        if table.schema != NOTES_SCHEMA:
            raise NotelmError(f"{part}: not a notelm note table (columns {', '.join(table.column_names)})")
        batches += table.to_batches()
    return pa.Table.from_batches(batches, NOTES_SCHEMA)


def _read_table(path: Path) -> pa.Table:
    try:
        with pa.memory_map(str(path), "r") as source:  # the table keeps the mapping; the file is closed
            return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise NotelmError(f"{path}: cannot read corpus table: {e}") from None


def _notes_of(table: pa.Table) -> nt.Notes:
    return {name: _column(table, name) for name in nt.NOTE_COLUMNS}


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if col.num_chunks == 1:
        return col.chunk(0).to_numpy(zero_copy_only=False)
    return col.to_numpy()


# --------------------------------------------------------------------------- writing

SONG_COLUMNS = ["song", "path", "sha", "source", "collection", "part", "split", "n_notes", "n_tracks", "tpq",
                "duration_q", "duration_s", "qpm", "time_signature", "key", "note_start", "note_end", "group"]
OPTIONAL_SONG_COLUMNS = {"group": "collection"}  # a corpus written before it existed: the column it copies
_STRING_COLUMNS = {"path", "sha", "source", "collection", "split", "time_signature", "key", "group"}
_FLOAT_COLUMNS = {"duration_q", "duration_s", "qpm"}
_SONG_TYPES = {k: pa.string() if k in _STRING_COLUMNS else pa.float64() if k in _FLOAT_COLUMNS else pa.int64()
               for k in SONG_COLUMNS}


class FirstSeen:
    """Content hash -> id of the first song with it, in about 40 bytes per song (a dict of strings
    takes some 200): the hashes of all but the latest songs are kept as sorted 128-bit numbers in
    numpy arrays, the latest (at most an eighth of them) in a dict, folded into the arrays when it
    grows past that, so folding costs O(n log n) over a whole run."""

    FOLD = 4096  # the dict may always hold this many

    def __init__(self):
        self.hi = np.zeros(0, np.uint64)
        self.lo = np.zeros(0, np.uint64)
        self.ids = np.zeros(0, np.int64)
        self.latest: dict[str, int] = {}

    @staticmethod
    def _key(sha: str) -> tuple[int, int]:
        digest = hashlib.blake2b(sha.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")

    def get(self, sha: str) -> int | None:
        if sha in self.latest:
            return self.latest[sha]
        hi, lo = self._key(sha)
        i = int(np.searchsorted(self.hi, np.uint64(hi)))
        while i < len(self.hi) and int(self.hi[i]) == hi:
            if int(self.lo[i]) == lo:
                return int(self.ids[i])
            i += 1
        return None

    def add(self, sha: str, song: int) -> None:
        self.latest[sha] = song
        if len(self.latest) >= max(self.FOLD, len(self.hi) // 8):
            n = len(self.latest)
            keys = np.fromiter((x for k in self.latest for x in self._key(k)), np.uint64, 2 * n).reshape(n, 2)
            hi, lo = np.concatenate([self.hi, keys[:, 0]]), np.concatenate([self.lo, keys[:, 1]])
            ids = np.concatenate([self.ids, np.fromiter(self.latest.values(), np.int64, n)])
            order = np.lexsort((lo, hi))
            self.hi, self.lo, self.ids, self.latest = hi[order], lo[order], ids[order], {}


class CorpusWriter:
    """Streams chunks of songs into a new corpus directory; duplicates (same hash) are kept once.

    Every table is written batch by batch as chunks arrive (a batch gathers up to
    ``BATCH_ROWS`` rows first: fewer, larger batches cost less to write and to read).  What
    stays in memory is one entry per distinct content hash (to find duplicates), running
    totals and those pending rows, so a corpus of millions of files does not need its song
    table in memory (``FirstSeen``: about 40 bytes a song).
    """

    BATCH_ROWS = {"songs": 1024, "tempos": 1 << 16, "timesigs": 1 << 16, "keysigs": 1 << 16}

    def __init__(self, out_dir: Path, split=DEFAULT_SPLIT):
        self.out_dir = Path(out_dir)
        self.split = split
        self.duplicates: list[dict] = []  # same_as holds the first song's id until close()
        self._first = FirstSeen()  # content hash -> song id
        self._n_songs = self._n_notes = 0
        self._seconds = 0.0
        self._splits = dict.fromkeys(SPLITS, 0)
        self._collections: dict[str, int] = {}
        self._groups: dict[str, dict[str, int]] = {}  # collection -> group -> songs
        self._n_parts = 0
        self._kept_files = 0
        self._song_batches: list[int] = []  # rows of each song batch written
        self._dropped = dict.fromkeys(nt.DROP_REASONS, 0)
        (self.out_dir / "notes").mkdir()
        schemas = {"songs": [(k, _SONG_TYPES[k]) for k in SONG_COLUMNS]}
        schemas.update({name: [("song", pa.int32())] + [(f, pa.from_numpy_dtype(np.dtype(t)))
                                                          for f, t in fields.items()]
                        for name, fields in META_TABLES.items()})
        self._writers = {name: pa.ipc.new_file(str(self.out_dir / f"{name}.arrow"), pa.schema(fields))
                         for name, fields in schemas.items()}
        self._pending = {name: [] for name in schemas}  # songs: row dicts; metadata: dicts of columns
        self._pending_rows = dict.fromkeys(schemas, 0)

    def _append(self, table: str, rows, n: int) -> None:
        self._pending[table] += rows
        self._pending_rows[table] += n
        if self._pending_rows[table] >= self.BATCH_ROWS[table]:
            self._flush(table)

    def _flush(self, table: str) -> None:
        pending, self._pending[table], self._pending_rows[table] = self._pending[table], [], 0
        if not pending:
            return
        if table == "songs":
            self._song_batches.append(len(pending))
            batch = pa.record_batch([pa.array([r.get(k, r.get(OPTIONAL_SONG_COLUMNS.get(k))) for r in pending],
                                              _SONG_TYPES[k]) for k in SONG_COLUMNS], names=SONG_COLUMNS)
        else:
            batch = pa.record_batch({c: np.concatenate([cols[c] for cols in pending]) for c in pending[0]})
        self._writers[table].write_batch(batch)

    def add(self, chunk: Chunk, notes_file: Path | None = None) -> None:
        """Append a chunk: its notes song after song, ``records[k]["n_notes"]`` rows each (as ingest
        makes them).  ``notes_file``, a saved chunk's note file, becomes a part of the note table as
        it is (a hard link: no copy), unless a duplicate song has to be left out of it."""
        self._kept_files += chunk.files_kept
        for reason, n in chunk.dropped.items():
            self._dropped[reason] = self._dropped.get(reason, 0) + int(n)
        new_id = np.full(len(chunk.records), -1, np.int64)  # chunk song -> corpus song (-1: duplicate)
        counts = np.array([rec["n_notes"] for rec in chunk.records], np.int64)
        start = self._n_notes
        rows = []
        for k, rec in enumerate(chunk.records):
            first = self._first.get(rec["sha"])
            if first is not None:
                self.duplicates.append({"path": rec["path"], "same_as": first})
                continue
            song = new_id[k] = self._n_songs + len(rows)
            self._first.add(rec["sha"], song)
            n = int(counts[k])
            split = rec.get("split") or assign_split(rec["sha"], self.split)  # a benchmark file brings its own
            rows.append(dict(rec, song=song, split=split, note_start=start, note_end=start + n))
            start += n
            self._seconds += rec["duration_s"]
            self._splits[rows[-1]["split"]] += 1
            self._collections[rec["collection"]] = self._collections.get(rec["collection"], 0) + 1
            group = rec.get("group", rec["collection"])
            groups = self._groups.setdefault(rec["collection"], {})
            groups[group] = groups.get(group, 0) + 1
        self._append("songs", rows, len(rows))
        self._n_songs += len(rows)
        kept = new_id >= 0
        if counts[kept].sum():
            part = self.out_dir / "notes" / f"{self._n_parts:06d}.arrow"
            self._n_parts += 1
            if notes_file is not None and kept.all():
                _link_or_copy(notes_file, part)
            else:
                keep = slice(None) if kept.all() else np.repeat(kept, counts)
                notes = chunk.notes or _notes_of(_read_table(notes_file))
                write_notes_part(part, {name: np.asarray(notes[name])[keep] for name in nt.NOTE_COLUMNS})
        self._n_notes = start
        for table, cols in chunk.meta.items():
            ids = new_id[cols["song"]]
            ok = ids >= 0
            if ok.any():
                rows = slice(None) if ok.all() else ok
                columns = {c: cols[c][rows].astype(t, copy=False) for c, t in META_TABLES[table].items()}
                self._append(table, [{"song": ids[rows].astype(np.int32), **columns}], int(ok.sum()))

    def _name_first_copies(self) -> None:
        """Give each duplicate the path of its first copy, reading back only the song batches that hold
        those (not the song table, nor a memory map of it: every page read would count as memory)."""
        if not self.duplicates:
            return
        starts = np.cumsum([0] + self._song_batches[:-1])
        batch_of = np.searchsorted(starts, [d["same_as"] for d in self.duplicates], side="right") - 1
        with pa.OSFile(str(self.out_dir / "songs.arrow")) as source:
            reader = pa.ipc.open_file(source)
            for k in np.unique(batch_of):
                paths = reader.get_batch(int(k)).column("path")
                for d, b in zip(self.duplicates, batch_of):
                    if b == k:
                        d["same_as"] = paths[d["same_as"] - int(starts[k])].as_py()

    def close(self, manifest: dict) -> dict:
        for name, writer in self._writers.items():
            self._flush(name)
            writer.close()
        self._name_first_copies()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "split": dict(zip(SPLITS, self.split)),
        }
        manifest["duplicates"] = manifest.get("duplicates", []) + self.duplicates  # merge: the inputs' first
        counts = manifest.get("counts", {})
        manifest["counts"] = {
            **counts,
            "kept_files": counts.get("kept_files", 0) + self._kept_files,  # files = kept_files + failed
            "songs": self._n_songs,
            "notes": self._n_notes,
            "hours": round(self._seconds / 3600, 3),
            "duplicates": len(manifest["duplicates"]),
            "note_parts": self._n_parts,
            **{f"{s}_songs": self._splits[s] for s in SPLITS},
        }
        manifest["collections"] = dict(sorted(self._collections.items()))
        manifest["groups"] = {c: dict(sorted(g.items())) for c, g in sorted(self._groups.items())}
        # every note read from a file but not stored, by reason (notes.DROP_REASONS)
        given = manifest.get("dropped_notes", {})
        manifest["dropped_notes"] = {r: int(given.get(r, 0)) + n for r, n in self._dropped.items()}
        write_json(self.out_dir / "manifest.json", manifest)
        return manifest


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------- prepare

def _chunks(files, shard):
    """Group the (optionally sharded) file stream into numbered chunks of CHUNK_FILES."""
    chunk, number = [], 0
    for i, f in enumerate(files):
        if shard and i % shard[1] != shard[0] - 1:
            continue
        chunk.append((i, f))
        if len(chunk) == CHUNK_FILES:
            yield number, chunk
            chunk, number = [], number + 1
    if chunk:
        yield number, chunk


def _chunk_id(chunk) -> str:
    h = hashlib.blake2b(digest_size=8)
    for _, f in chunk:  # names as the file system has them: bytes, whatever their encoding
        h.update(b"\0".join((os.fsencode(f.path), os.fsencode(f.collection), os.fsencode(f.source),
                              os.fsencode(f.group))) + b"\n")
    return h.hexdigest()


MAX_WORKERS = 1024  # more worker processes than this is a typo, not a machine


def check_prepare_options(workers: int | None, max_file_mb: float | None) -> None:
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise NotelmError(f"--workers {workers}: between 1 and {MAX_WORKERS} worker processes "
                          "(leave it out for one per core)")
    if max_file_mb is not None and not 0 < max_file_mb < float("inf"):
        raise NotelmError(f"--max-file-mb {max_file_mb:g}: a size in MB above 0")


def prepare(sources: list[str], out: Path, workers: int | None = None, shard: tuple[int, int] | None = None,
            split=DEFAULT_SPLIT, metadata_csv: str | None = None, max_file_mb: float | None = 64.0,
            force: bool = False, progress: bool = True, log=print, file_timeout: float | None = FILE_TIMEOUT_S) -> dict:
    """Build a corpus from sources; resumes from ``<out>.partial`` if a previous run was killed.

    Every file the walk finds ends up as a song, a duplicate or a failure with its reason
    (``counts``: files = kept_files + failed), also when files change while prepare runs.  A file
    whose parser runs longer than ``file_timeout`` seconds is given up (a failure).
    """
    out = Path(out)
    check_prepare_options(workers, max_file_mb)
    _check_output(out, force, "rebuild")
    if not sources:
        raise NotelmError("no sources given")
    started = time.perf_counter()
    overrides = read_sidecar(metadata_csv) if metadata_csv else {}
    max_bytes = None if max_file_mb is None else int(max_file_mb * 1024 * 1024)

    def stream(limit=max_file_mb):
        return iter_files(sources, max_file_mb=limit, overrides=overrides)

    # a first walk counts the files for the progress bar only (it needs no size check): what is
    # counted below is what the second walk finds, so a file that comes or goes in between is no matter
    expected = sum(1 for i, _ in enumerate(stream(None)) if not shard or i % shard[1] == shard[0] - 1)
    partial = out.with_name(out.name + ".partial")
    parts_dir = partial / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)

    def jobs():
        for number, chunk in _chunks(stream(), shard):
            chunk_id = _chunk_id(chunk)
            stem = parts_dir / f"{number:06d}"
            if chunk_saved(stem, chunk_id):
                yield (stem, chunk, True), None
            else:
                known = [{"index": i, "path": printable(f.path), "reason": f.error} for i, f in chunk if f.error]
                files = [(i, f.path, f.source, f.collection, f.group) for i, f in chunk if not f.error]
                yield (stem, chunk, False), Job(files, stem, chunk_id, known, max_bytes, file_timeout)

    with IngestPool(workers or default_workers()) as pool, atomic_dir(out) as tmp:
        manifest, resumed = _ingest(pool.map(jobs()), CorpusWriter(tmp, split), expected, progress, sources, shard)
        # before the rename: a run killed in between redoes the work, but never leaves a stale .partial
        shutil.rmtree(partial, ignore_errors=True)
    for f in manifest["failures"]:
        log(f"failed: {f['path']}: {f['reason']}")
    c = manifest["counts"]
    log(f"prepared {c['songs']} songs, {c['notes']:,} notes, {c['hours']:.1f} h from {c['files']} files "
        f"({c['failed']} failed, {c['duplicates']} duplicates{f', {resumed} resumed' if resumed else ''}"
        f"{_dropped_summary(manifest['dropped_notes'])}) in {time.perf_counter() - started:.1f} s -> {printable(out)}")
    return manifest


def _ingest(finished, writer: CorpusWriter, expected: int, progress: bool, sources, shard) -> tuple[dict, int]:
    """Add every finished chunk to the corpus; (manifest, files resumed from an earlier run)."""
    from tqdm import tqdm

    bar = tqdm(total=expected, unit="file", desc="prepare", disable=not progress, dynamic_ncols=True)
    resumed = files = 0
    failures: list[dict] = []
    for stem, chunk, resuming in finished:
        result = read_chunk(stem)
        files += len(chunk)
        resumed += len(chunk) if resuming else 0
        failures += [{"path": f["path"], "reason": f["reason"]} for f in result.failures]
        writer.add(result, stem.with_suffix(".arrow"))
        bar.update(len(chunk))
        bar.set_postfix(failed=len(failures), refresh=False)
    bar.close()
    manifest = writer.close({
        "sources": [printable(s) for s in sources],
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "counts": {"files": files, "failed": len(failures)},
        "failures": failures,
    })
    return manifest, resumed


def _dropped_summary(dropped: dict) -> str:
    total = sum(dropped.values())
    if not total:
        return ""
    reasons = ", ".join(f"{n:,} {nt.DROP_REASONS.get(reason, reason)}" for reason, n in dropped.items() if n)
    return f", {total:,} notes dropped: {reasons}"


def _check_output(out: Path, force: bool, verb: str) -> None:
    """Refuse to write a corpus over something that is not one (and over a corpus without --force)."""
    if (out / "manifest.json").exists() and not force:
        raise NotelmError(f"{out}: a corpus is already there; pass --force to {verb} it")
    if out.exists() and not (out / "manifest.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotelmError(f"{out}: exists and is not a notelm corpus; choose another -o")


REMAP_SONGS = 4096  # a memory-mapped page once read counts as the process's memory until unmapped


def _corpus_parts(path: Path) -> Iterator[tuple[Chunk, Path | None]]:
    """A corpus as a stream of (Chunk, note file): one per part of its note table, for merging.

    Nothing is read whole: the tables stay memory-mapped, a part's song rows and metadata are
    read when its turn comes, and its notes are left in its file, which ``CorpusWriter.add``
    links into the new corpus as it is (or reads, when a duplicate has to be left out).
    A version 1 corpus (one note file with a song column) is one part, its notes read.
    """
    songs = _read_table(path / "songs.arrow")
    _check_songs(path, songs)
    # copies, not views: a view would keep its mapping (and every page read through it) alive
    start = np.array(songs.column("note_start").to_numpy(), np.int64)
    total = int(songs.column("note_end").to_numpy()[-1]) if len(start) else 0
    meta = {name: _read_table(path / f"{name}.arrow") for name in META_TABLES}
    meta_song = {name: np.array(_column(t, "song")) for name, t in meta.items()}
    mapped_from = 0  # the tables are mapped again every REMAP_SONGS songs: pages read stop counting
    single = path / "notes.arrow"
    files = [single] if single.exists() else sorted((path / "notes").glob("*.arrow"),
                                                    key=lambda p: (len(p.stem), p.stem))
    lo, row = 0, 0
    for file in files:
        rows = _read_table(file).num_rows
        hi = int(np.searchsorted(start, row + rows))  # the songs that start inside this part
        whole = start[hi] == row + rows if hi < len(start) else total == row + rows
        if rows and (lo >= len(start) or start[lo] != row or not whole):
            raise NotelmError(f"{printable(file)}: the note parts do not hold whole songs; prepare the corpus again")
        chunk = Chunk(records=songs.slice(lo, hi - lo).to_pylist())
        for name, table in meta.items():
            i, j = np.searchsorted(meta_song[name], lo), np.searchsorted(meta_song[name], hi)
            chunk.meta[name] = {c: np.array(_column(table.slice(i, j - i), c)) for c in table.column_names}
            chunk.meta[name]["song"] = chunk.meta[name]["song"] - lo
        if file is single:  # its song column makes it no part of a version 2 note table: copy the notes
            chunk.notes = _notes_of(_read_table(file).slice(row, rows))
        yield chunk, (None if file is single else file)
        lo, row = hi, row + rows
        if lo - mapped_from >= REMAP_SONGS:
            songs, mapped_from = _read_table(path / "songs.arrow"), lo
            meta = {name: _read_table(path / f"{name}.arrow") for name in META_TABLES}
    if lo != len(start):
        raise NotelmError(f"{printable(path)}: the note table holds fewer songs than the song table; prepare it again")


def merge(inputs: list[Path], out: Path, force: bool = False, log=print) -> dict:
    """Join corpora (e.g. shards) into one; songs with the same hash are kept once."""
    out = Path(out)
    _check_output(out, force, "replace")
    if not inputs:
        raise NotelmError("no corpora to merge")
    inputs = [Path(p) for p in inputs]
    manifests = [read_manifest(p) for p in inputs]
    if any(out.resolve() == p.resolve() for p in inputs):
        raise NotelmError(f"{out}: is also one of the corpora to merge; choose another -o")
    splits = {tuple(m["split"].values()) for m in manifests}
    if len(splits) > 1:
        raise NotelmError("cannot merge corpora prepared with different --split fractions")
    started = time.perf_counter()
    with atomic_dir(out) as tmp:
        writer = CorpusWriter(tmp, splits.pop())
        for path in inputs:  # one corpus at a time, one part at a time: memory does not grow with them
            for chunk, notes_file in _corpus_parts(path):
                writer.add(chunk, notes_file)
        manifest = writer.close({
            "sources": [s for m in manifests for s in m["sources"]],
            "merged_from": [printable(p) for p in inputs],
            "counts": {k: sum(m["counts"].get(k, 0) for m in manifests) for k in ("files", "failed", "kept_files")},
            "failures": [f for m in manifests for f in m["failures"]],
            "duplicates": [d for m in manifests for d in m.get("duplicates", [])],
            "dropped_notes": {r: sum(m.get("dropped_notes", {}).get(r, 0) for m in manifests)
                              for r in nt.DROP_REASONS},
        })
    c = manifest["counts"]
    log(f"merged {len(inputs)} corpora: {c['songs']} songs, {c['notes']:,} notes "
        f"({c['duplicates']} duplicates) in {time.perf_counter() - started:.1f} s -> {printable(out)}")
    return manifest
