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
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from notelm import notes as nt
from notelm.ingest import Chunk, IngestPool, Job, chunk_saved, default_workers, read_chunk, write_notes_part
from notelm.io import NotelmError, atomic_dir, hash_unit, read_json, write_json
from notelm.sources import iter_files, read_sidecar

FORMAT = "notelm-corpus"
VERSION = 2
READS = (1, 2)  # version 1 kept the note table in one notes.arrow with a song column
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
CHUNK_FILES = 32  # files per resumable unit of work

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
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
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
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise NotelmError(f"{self.path}: not a notelm corpus (no manifest.json); make one with `notelm prepare`")
        self.manifest = read_json(manifest_path)
        if self.manifest.get("format") != FORMAT:
            raise NotelmError(f"{self.path}: manifest.json is not a notelm corpus manifest")
        if self.manifest.get("version") not in READS:
            raise NotelmError(f"{self.path}: corpus version {self.manifest.get('version')} is not supported "
                              f"(notelm reads {', '.join(map(str, READS))}); prepare it again")
        songs = _read_table(self.path / "songs.arrow")
        self.songs = {name: songs.column(name).to_numpy(zero_copy_only=False) for name in songs.column_names}
        self._notes = read_notes(self.path)
        counted = int(np.sum(self.songs["n_notes"]))
        if self._notes.num_rows != counted:
            raise NotelmError(f"{self.path}: the note table holds {self._notes.num_rows:,} notes, the song table "
                              f"counts {counted:,}; prepare it again")
        # a few rows per song, written in many batches: one contiguous copy makes per-song lookups cheap
        self._meta = {name: _read_table(self.path / f"{name}.arrow").combine_chunks() for name in META_TABLES}

    def __len__(self) -> int:
        return len(self.songs["song"])

    @property
    def num_notes(self) -> int:
        return self._notes.num_rows

    @property
    def collections(self) -> list[str]:
        return sorted(set(self.songs["collection"].tolist()))

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
            hits = [i for i, v in enumerate(self.songs[name]) if (v.startswith(key) if name == "sha" else v.endswith(key))]
            if len(hits) == 1:
                return hits[0]
        raise NotelmError(f"{self.path}: no single song matches {key!r}")


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
                "duration_q", "duration_s", "qpm", "time_signature", "key", "note_start", "note_end"]
_STRING_COLUMNS = {"path", "sha", "source", "collection", "split", "time_signature", "key"}
_FLOAT_COLUMNS = {"duration_q", "duration_s", "qpm"}
_SONG_TYPES = {k: pa.string() if k in _STRING_COLUMNS else pa.float64() if k in _FLOAT_COLUMNS else pa.int64()
               for k in SONG_COLUMNS}


class CorpusWriter:
    """Streams chunks of songs into a new corpus directory; duplicates (same hash) are kept once.

    Every table is written batch by batch as chunks arrive (a batch gathers up to
    ``BATCH_ROWS`` rows first: fewer, larger batches cost less to write and to read).  What
    stays in memory is one entry per distinct content hash (to find duplicates), running
    totals and those pending rows, so a corpus of millions of files does not need its song
    table in memory.
    """

    BATCH_ROWS = {"songs": 1024, "tempos": 1 << 16, "timesigs": 1 << 16, "keysigs": 1 << 16}

    def __init__(self, out_dir: Path, split=DEFAULT_SPLIT):
        self.out_dir = Path(out_dir)
        self.split = split
        self.duplicates: list[dict] = []  # same_as holds the first song's id until close()
        self._first: dict[str, int] = {}  # content hash -> song id
        self._n_songs = self._n_notes = 0
        self._seconds = 0.0
        self._splits = dict.fromkeys(SPLITS, 0)
        self._collections: dict[str, int] = {}
        self._n_parts = 0
        (self.out_dir / "notes").mkdir()
        schemas = {"songs": [(k, _SONG_TYPES[k]) for k in SONG_COLUMNS]}
        schemas.update({name: [("song", pa.int32())] + [(f, pa.from_numpy_dtype(np.dtype(t))) for f, t in fields.items()]
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
            batch = pa.record_batch([pa.array([r[k] for r in pending], _SONG_TYPES[k]) for k in SONG_COLUMNS], names=SONG_COLUMNS)
        else:
            batch = pa.record_batch({c: np.concatenate([cols[c] for cols in pending]) for c in pending[0]})
        self._writers[table].write_batch(batch)

    def add(self, chunk: Chunk, notes_file: Path | None = None) -> None:
        """Append a chunk: its notes song after song, ``records[k]["n_notes"]`` rows each (as ingest
        makes them).  ``notes_file``, a saved chunk's note file, becomes a part of the note table as
        it is (a hard link: no copy), unless a duplicate song has to be left out of it."""
        new_id = np.full(len(chunk.records), -1, np.int64)  # chunk song -> corpus song (-1: duplicate)
        counts = np.array([rec["n_notes"] for rec in chunk.records], np.int64)
        start = self._n_notes
        rows = []
        for k, rec in enumerate(chunk.records):
            if rec["sha"] in self._first:
                self.duplicates.append({"path": rec["path"], "same_as": self._first[rec["sha"]]})
                continue
            song = self._first[rec["sha"]] = new_id[k] = self._n_songs + len(rows)
            n = int(counts[k])
            rows.append(dict(rec, song=song, split=assign_split(rec["sha"], self.split), note_start=start, note_end=start + n))
            start += n
            self._seconds += rec["duration_s"]
            self._splits[rows[-1]["split"]] += 1
            self._collections[rec["collection"]] = self._collections.get(rec["collection"], 0) + 1
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
                self._append(table, [{"song": ids[rows].astype(np.int32),
                                      **{c: cols[c][rows].astype(t, copy=False) for c, t in META_TABLES[table].items()}}],
                             int(ok.sum()))

    def close(self, manifest: dict) -> dict:
        for name, writer in self._writers.items():
            self._flush(name)
            writer.close()
        if self.duplicates:  # name the first copy of each duplicate (read back: no song table in memory)
            paths = _read_table(self.out_dir / "songs.arrow").column("path")
            for d in self.duplicates:
                d["same_as"] = paths[d["same_as"]].as_py()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "split": dict(zip(SPLITS, self.split)),
        }
        manifest["counts"] = {
            **manifest.get("counts", {}),
            "songs": self._n_songs,
            "notes": self._n_notes,
            "hours": round(self._seconds / 3600, 3),
            "duplicates": len(self.duplicates),
            "note_parts": self._n_parts,
            **{f"{s}_songs": self._splits[s] for s in SPLITS},
        }
        manifest["collections"] = dict(sorted(self._collections.items()))
        manifest["duplicates"] = self.duplicates
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
    for _, f in chunk:
        h.update(f"{f.path}\0{f.collection}\0{f.source}\n".encode())
    return h.hexdigest()


def prepare(sources: list[str], out: Path, workers: int | None = None, shard: tuple[int, int] | None = None,
            split=DEFAULT_SPLIT, metadata_csv: str | None = None, max_file_mb: float | None = 64.0,
            force: bool = False, progress: bool = True, log=print) -> dict:
    """Build a corpus from sources; resumes from ``<out>.partial`` if a previous run was killed."""
    from tqdm import tqdm

    out = Path(out)
    if (out / "manifest.json").exists() and not force:
        raise NotelmError(f"{out}: a corpus is already there; pass --force to rebuild it")
    if out.exists() and not (out / "manifest.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotelmError(f"{out}: exists and is not a notelm corpus; choose another -o")
    if not sources:
        raise NotelmError("no sources given")
    started = time.perf_counter()
    overrides = read_sidecar(metadata_csv) if metadata_csv else {}
    stream = lambda limit=max_file_mb: iter_files(sources, max_file_mb=limit, overrides=overrides)  # noqa: E731
    # the count (for the progress bar) needs no per-file size check
    total = sum(1 for i, _ in enumerate(stream(None)) if not shard or i % shard[1] == shard[0] - 1)
    partial = out.with_name(out.name + ".partial")
    parts_dir = partial / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=total, unit="file", desc="prepare", disable=not progress, dynamic_ncols=True)
    resumed, failures = 0, []

    def jobs():
        for number, chunk in _chunks(stream(), shard):
            chunk_id = _chunk_id(chunk)
            stem = parts_dir / f"{number:06d}"
            if chunk_saved(stem, chunk_id):
                yield (stem, chunk, True), None
            else:
                known = [{"index": i, "path": f.path, "reason": f.error} for i, f in chunk if f.error]
                files = [(i, f.path, f.source, f.collection) for i, f in chunk if not f.error]
                yield (stem, chunk, False), Job(files, stem, chunk_id, known)

    with IngestPool(workers or default_workers()) as pool, atomic_dir(out) as tmp:
        writer = CorpusWriter(tmp, split)
        for stem, chunk, resuming in pool.map(jobs()):
            result = read_chunk(stem)
            resumed += len(chunk) if resuming else 0
            failures += [{"path": f["path"], "reason": f["reason"]} for f in result.failures]
            writer.add(result, stem.with_suffix(".arrow"))
            bar.update(len(chunk))
            bar.set_postfix(failed=len(failures), refresh=False)
        bar.close()
        manifest = writer.close({
            "sources": sources,
            "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "counts": {"files": total, "failed": len(failures)},
            "failures": failures,
        })
        # before the rename: a run killed in between redoes the work, but never leaves a stale .partial
        shutil.rmtree(partial, ignore_errors=True)
    c = manifest["counts"]
    elapsed = time.perf_counter() - started
    for f in failures:
        log(f"failed: {f['path']}: {f['reason']}")
    log(f"prepared {c['songs']} songs, {c['notes']:,} notes, {c['hours']:.1f} h from {total} files "
        f"({c['failed']} failed, {c['duplicates']} duplicates{f', {resumed} resumed' if resumed else ''}) "
        f"in {elapsed:.1f} s -> {out}")
    return manifest


def _corpus_chunks(corpus: Corpus, songs_per_chunk: int = 256) -> Iterator[Chunk]:
    """A corpus as a stream of Chunks, for merging."""
    notes = corpus.all_notes(nt.NOTE_COLUMNS)
    for lo in range(0, len(corpus), songs_per_chunk):
        hi = min(lo + songs_per_chunk, len(corpus))
        a, b = int(corpus.songs["note_start"][lo]), int(corpus.songs["note_end"][hi - 1])
        chunk = Chunk(records=[{k: _py(corpus.songs[k][s]) for k in SONG_COLUMNS} for s in range(lo, hi)])
        chunk.notes = {k: v[a:b] for k, v in notes.items()}
        for table in META_TABLES:
            t = corpus._meta[table]
            ids = _column(t, "song")
            i, j = np.searchsorted(ids, lo), np.searchsorted(ids, hi)
            chunk.meta[table] = {c: _column(t, c)[i:j] for c in t.column_names}
            chunk.meta[table]["song"] = chunk.meta[table]["song"] - lo
        yield chunk


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def merge(inputs: list[Path], out: Path, force: bool = False, log=print) -> dict:
    """Join corpora (e.g. shards) into one; songs with the same hash are kept once."""
    out = Path(out)
    if (out / "manifest.json").exists() and not force:
        raise NotelmError(f"{out}: a corpus is already there; pass --force to replace it")
    corpora = [Corpus(p) for p in inputs]
    splits = {tuple(c.manifest["split"].values()) for c in corpora}
    if len(splits) > 1:
        raise NotelmError("cannot merge corpora prepared with different --split fractions")
    started = time.perf_counter()
    with atomic_dir(out) as tmp:
        writer = CorpusWriter(tmp, splits.pop())
        for corpus in corpora:
            for chunk in _corpus_chunks(corpus):
                writer.add(chunk)
        manifest = writer.close({
            "sources": [s for c in corpora for s in c.manifest["sources"]],
            "merged_from": [str(p) for p in inputs],
            "counts": {"files": sum(c.manifest["counts"]["files"] for c in corpora),
                       "failed": sum(c.manifest["counts"]["failed"] for c in corpora)},
            "failures": [f for c in corpora for f in c.manifest["failures"]],
        })
    c = manifest["counts"]
    log(f"merged {len(inputs)} corpora: {c['songs']} songs, {c['notes']:,} notes "
        f"({c['duplicates']} duplicates dropped) in {time.perf_counter() - started:.1f} s -> {out}")
    return manifest
