"""File -> notes: symusic for MIDI, music21 for MusicXML / kern / ABC; a crash-proof worker pool.

Per file, ``load_file`` does only the parse (one file may hold several pieces)
and raises ``IngestError`` with a one-line reason for anything it will not
keep.  ``load_chunk`` then assembles a whole run of files into one note table
with a few numpy calls: the per-file Python work stays tiny, which is what
keeps ingest close to symusic's raw parsing speed.

``IngestPool`` runs chunks in worker processes.  When a parser takes its
whole process down, the pool is rebuilt and the files of the broken chunks are
retried one by one, so only the file that crashed is lost.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from notelm import notes as nt
from notelm.io import atomic_path, content_hash, read_json, write_json
from notelm.sources import is_midi

MUSIC21_TPQ = 480  # divisible by 3, 4 and 5: music21's tuplets land on whole ticks


class IngestError(Exception):
    """A file that cannot be kept; the message is the one-line reason."""


def load_file(path: str, check_events: bool = True) -> tuple[str, list[nt.RawSong]]:
    """(content hash, parsed pieces) of one file.

    ``check_events`` walks every MIDI event before symusic parses the file (see
    ``notes.midi_event_problem``: malformed bytes can crash symusic's process).  Only
    ``IngestPool`` workers turn it off: there a crash costs one file, and the walk would
    cost more than the parse.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise IngestError(f"cannot read: {e.strerror or e}") from None
    if not data:
        raise IngestError("empty file (0 bytes)")
    sha = content_hash(data)
    raws = [_load_midi(data, check_events)] if is_midi(path) else _load_music21(path)
    if not any(raw.tracks for raw in raws):
        raise IngestError("no notes")
    return sha, raws


def _load_midi(data: bytes, check_events: bool = True) -> nt.RawSong:
    import symusic

    if data[:4] != b"MThd":
        raise IngestError("not a MIDI file (no MThd header)")
    _check_chunks(data)
    problem = nt.midi_event_problem(data) if check_events else ""
    if problem:
        raise IngestError(problem)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError with its parser's message
        raise IngestError(f"unreadable MIDI: {_one_line(e)}") from None
    if score.tpq <= 0:
        raise IngestError(f"invalid ticks per quarter note ({score.tpq})")
    return nt.raw_from_score(score)


def _check_chunks(data: bytes) -> None:
    """Reject truncated files (symusic quietly keeps whatever part of a cut file it can read)
    and formats other than 0 and 1 (symusic would play format 2's independent sequences at once)."""
    if len(data) < 14:
        raise IngestError(f"truncated MIDI: {len(data)} bytes, shorter than a MIDI header")
    fmt, n_tracks = int.from_bytes(data[8:10], "big"), int.from_bytes(data[10:12], "big")
    if fmt > 2:
        raise IngestError(f"unknown MIDI format {fmt} (the standard has 0, 1 and 2)")
    if fmt == 2 and n_tracks > 1:
        raise IngestError(f"MIDI format 2 ({n_tracks} independent sequences) is not supported")
    pos, found = 8 + int.from_bytes(data[4:8], "big"), 0
    while found < n_tracks:
        if pos + 8 > len(data):
            raise IngestError(f"truncated MIDI: header announces {n_tracks} tracks, the file ends after {found}")
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + length > len(data):
            raise IngestError(f"truncated MIDI: chunk {found + 1} announces {length} bytes, only {len(data) - pos - 8} present")
        found += data[pos:pos + 4] == b"MTrk"
        pos += 8 + length


def _load_music21(path: str) -> list[nt.RawSong]:
    import music21

    warnings.simplefilter("ignore")
    try:
        parsed = music21.converter.parse(path, forceSource=True)
    except Exception as e:
        raise IngestError(f"music21 could not parse it: {_one_line(e)}") from None
    scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
    return [_music21_song(score) for score in scores]


def _music21_song(score) -> nt.RawSong:
    """A music21 score -> RawSong; ties are merged first so a tied note is one note."""
    import music21

    def ticks(offsets):
        return np.round(np.asarray(offsets, np.float64) * MUSIC21_TPQ).astype(np.int64)

    score = score.stripTies(inPlace=False)
    flat = score.flatten()
    tempos = [(float(m.getOffsetInHierarchy(score)), m.getQuarterBPM()) for m in flat.getElementsByClass(music21.tempo.MetronomeMark)]
    tempos = [(o, q) for o, q in tempos if q]
    sigs = list(flat.getElementsByClass(music21.meter.TimeSignature))
    keys = list(flat.getElementsByClass(music21.key.KeySignature))
    events = {
        "tempos": {"tick": ticks([o for o, _ in tempos]), "qpm": np.array([q for _, q in tempos], np.float64)},
        "timesigs": {"tick": ticks([float(s.getOffsetInHierarchy(score)) for s in sigs]),
                     "numerator": np.array([s.numerator for s in sigs], np.int64),
                     "denominator": np.array([s.denominator for s in sigs], np.int64)},
        "keysigs": {"tick": ticks([float(k.getOffsetInHierarchy(score)) for k in keys]),
                    "sharps": np.array([k.sharps for k in keys], np.int64),
                    "minor": np.array([getattr(k, "mode", "major") == "minor" for k in keys], np.int64)},
    }

    raw = nt.RawSong(MUSIC21_TPQ, events)
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    for index, part in enumerate(parts):
        instrument = part.getInstrument(returnDefault=True)
        program = instrument.midiProgram if instrument is not None and instrument.midiProgram is not None else 0
        onset, duration, pitch, velocity = [], [], [], []
        for element in part.recurse().notes:  # music21 has no array API: one step per note or chord
            o = float(element.getOffsetInHierarchy(score))
            d = float(element.duration.quarterLength)
            v = element.volume.velocity if element.volume.velocity is not None else 64
            for p in element.pitches:
                onset.append(o)
                duration.append(d)
                pitch.append(p.midi)
                velocity.append(v)
        if pitch:
            raw.tracks.append((ticks(onset), ticks(duration), np.array(pitch, np.int64), np.round(velocity).astype(np.int64), index,
                               int(program), False))
    return raw


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


# --------------------------------------------------------------------------- chunks

@dataclass
class Chunk:
    """The songs of a run of files.  ``notes`` holds their notes song after song, in
    ``records`` order (``records[k]["n_notes"]`` rows each; no song column); every ``meta``
    table carries a ``song`` column indexing ``records`` (song-table rows, without corpus-wide
    ids and split)."""

    records: list[dict] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # table -> column -> array
    failures: list[dict] = field(default_factory=list)


def load_chunk(files: list[tuple[int, str, str, str]], check_events: bool = True) -> Chunk:
    """Load (index, path, source, collection) files into one Chunk; failures are recorded."""
    out = Chunk()
    raws, info = [], []  # info: (index, path, source, collection, sha, part) per piece
    for index, path, source, collection in files:
        try:
            sha, pieces = load_file(path, check_events)
        except IngestError as e:
            out.failures.append({"index": index, "path": path, "reason": str(e)})
            continue
        except Exception as e:  # a parser bug must cost one file, not the run
            out.failures.append({"index": index, "path": path, "reason": f"parser error: {type(e).__name__}: {_one_line(e)}"})
            continue
        for part, raw in enumerate(pieces):
            raws.append(raw)
            info.append((index, path, source, collection, sha if len(pieces) == 1 else f"{sha}#{part}", part))
    if not raws:
        return out

    notes = nt.assemble(raws)
    song = notes.pop("song")
    counts = np.bincount(song, minlength=len(raws))
    kept = np.flatnonzero(counts > 0)  # a piece whose every note was unplayable is dropped
    if len(kept) < len(raws):
        lost = {info[k][0] for k in range(len(raws))} - {info[k][0] for k in kept}
        for index in sorted(lost):
            out.failures.append({"index": index, "path": next(i[1] for i in info if i[0] == index), "reason": "no playable notes"})
        raws, info, counts = [raws[k] for k in kept], [info[k] for k in kept], counts[kept]
    if not raws:  # every file of the chunk failed
        return out

    out.notes, out.meta = notes, nt.meta_tables(raws)

    # per-song figures, vectorized over the chunk (notes are grouped by song)
    tempos, sigs, keys = out.meta["tempos"], out.meta["timesigs"], out.meta["keysigs"]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    end_tick = np.maximum.reduceat(notes["onset_tick"] + notes["duration_tick"], starts)
    end_q = np.maximum.reduceat(notes["onset"] + notes["duration"], starts)
    seconds = nt.seconds_at(np.arange(len(raws)), end_tick, tempos["song"], tempos["tick"], tempos["qpm"],
                            np.array([r.tpq for r in raws]))
    first_tempo, first_sig, first_key = (_first_rows(t, len(raws)) for t in (tempos, sigs, keys))
    for k, (raw, (index, path, source, collection, sha, part)) in enumerate(zip(raws, info)):
        tempo, sig, key = first_tempo[k], first_sig[k], first_key[k]
        out.records.append({
            "path": f"{path}#{part}" if "#" in sha else path,
            "sha": sha, "source": source, "collection": collection, "part": part, "tpq": raw.tpq,
            "n_notes": int(counts[k]), "n_tracks": len({t[4] for t in raw.tracks}),
            "duration_q": float(end_q[k]), "duration_s": float(seconds[k]),
            "qpm": float(tempos["qpm"][tempo]) if tempo >= 0 else nt.DEFAULT_QPM,
            "time_signature": f"{sigs['numerator'][sig]}/{sigs['denominator'][sig]}" if sig >= 0 else "",
            "key": nt.key_name(int(keys["sharps"][key]), bool(keys["minor"][key])) if key >= 0 else "",
        })
    return out


def _first_rows(table: dict, n_songs: int) -> np.ndarray:
    """Each song's first row in a metadata table (rows grouped by song), -1 where it has none."""
    first = np.searchsorted(table["song"], np.arange(n_songs))
    found = first < len(table["song"])
    found[found] = table["song"][first[found]] == np.flatnonzero(found)
    return np.where(found, first, -1)


def save_chunk(chunk: Chunk, stem: Path, chunk_id: str) -> None:
    """Store a finished chunk: ``stem.arrow`` (its notes, an Arrow IPC file), ``stem.meta``
    (its metadata arrays, raw bytes at 8-byte aligned offsets), then ``stem.json`` (records,
    failures, the layout of ``stem.meta``), which commits it."""
    write_notes_part(stem.with_suffix(".arrow"), chunk.notes or nt.empty_notes())
    layout = []
    with atomic_path(stem.with_suffix(".meta")) as tmp:
        with open(tmp, "wb") as fh:
            for table, cols in chunk.meta.items():
                for column, array in cols.items():
                    array = np.ascontiguousarray(array)
                    layout.append([f"{table}.{column}", array.dtype.str, len(array)])
                    fh.write(array.tobytes() + bytes(-array.nbytes % 8))
    write_json(stem.with_suffix(".json"), {"chunk": chunk_id, "meta": layout, "records": chunk.records,
                                            "failures": chunk.failures}, indent=None)


def write_notes_part(path: Path, notes: nt.Notes) -> None:
    """A note table as one Arrow IPC file with the columns of ``NOTE_COLUMNS`` (a corpus's
    ``notes/`` holds these; a saved chunk's ``.arrow`` is one, ready to be linked in)."""
    import pyarrow as pa

    batch = pa.record_batch([np.asarray(notes[k], dtype) for k, dtype in nt.NOTE_COLUMNS.items()], names=list(nt.NOTE_COLUMNS))
    with atomic_path(path) as tmp:
        with pa.ipc.new_file(str(tmp), batch.schema) as writer:
            writer.write_batch(batch)


def read_chunk(stem: Path) -> Chunk:
    """A saved chunk's records, failures and metadata; its notes stay in ``stem.arrow``, the
    file that becomes a part of the corpus's note table (``CorpusWriter.add``)."""
    info = read_json(stem.with_suffix(".json"))
    chunk = Chunk(records=info["records"], failures=info["failures"])
    data, offset = np.fromfile(stem.with_suffix(".meta"), np.uint8), 0
    for key, dtype, length in info["meta"]:
        table, column = key.split(".")
        array = np.frombuffer(data, np.dtype(dtype), length, offset)
        chunk.meta.setdefault(table, {})[column] = array
        offset += -(-array.nbytes // 8) * 8
    return chunk


def chunk_saved(stem: Path, chunk_id: str) -> bool:
    """Whether ``stem`` holds a complete chunk made from exactly the same files."""
    if not (stem.with_suffix(".meta").exists() and stem.with_suffix(".arrow").exists()):
        return False
    try:
        return read_json(stem.with_suffix(".json")).get("chunk") == chunk_id
    except (OSError, ValueError):
        return False


@dataclass
class Job:
    """A chunk of work: files to load, failures already known, and where to save the result."""

    files: list  # (index, path, source, collection)
    stem: Path
    chunk_id: str
    known_failures: list = field(default_factory=list)


def run_job(job: Job) -> None:
    """Load a chunk and save it where the job says (the parent reads it back from disk:
    cheaper than sending it through a pipe, and the same path as a resumed chunk)."""
    _finish(job, load_chunk(job.files, check_events=False))  # a crash here costs one file (IngestPool)


def _finish(job: Job, chunk: Chunk) -> None:
    chunk.failures = sorted(job.known_failures + chunk.failures, key=lambda f: f["index"])
    save_chunk(chunk, job.stem, job.chunk_id)


def join_chunks(chunks: list[Chunk]) -> Chunk:
    """One Chunk from several (song indices shifted so they stay unique)."""
    out = Chunk()
    notes, metas = [], {t: [] for t in nt.META_TABLES}
    for c in chunks:
        offset = len(out.records)
        out.records += c.records
        out.failures += c.failures
        if c.notes:
            notes.append(c.notes)
        for t, cols in c.meta.items():
            metas[t].append({**cols, "song": cols["song"] + offset})
    out.notes = {k: np.concatenate([n[k] for n in notes]) for k in notes[0]} if notes else {}
    out.meta = {t: {c: np.concatenate([r[c] for r in rows]) for c in rows[0]} for t, rows in metas.items() if rows}
    return out


# --------------------------------------------------------------------------- the pool

class IngestPool:
    """Runs ``run_job`` in worker processes, reporting finished jobs in submission order."""

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self._ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self._pool = None

    def __enter__(self):
        self._start()  # fork the workers now: they start up while the parent lists the first files
        return self

    def __exit__(self, *exc):
        self._shutdown()

    def _shutdown(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _start(self):
        if self._pool is None:
            if self._ctx.get_start_method() == "fork":
                # imported once here and inherited, not once per worker on its first file: symusic (0.1 s),
                # numpy.ma (50 ms; numpy loads it lazily, pyarrow asks for it when it converts arrays)
                import numpy.ma  # noqa: F401
                import symusic  # noqa: F401
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=_die_with_parent,
                                                initargs=(os.getpid(),))
            self._pool.submit(int)  # the first submit starts every worker

    def _submit(self, job: Job):
        self._start()
        return self._pool.submit(run_job, job)

    def map(self, jobs: Iterable[tuple[object, Job | None]]) -> Iterator[object]:
        """Run every ``(key, job)`` and yield its key once its chunk is saved, in order,
        with a bounded number in flight.  A ``None`` job (already saved) is not run."""
        pending: deque = deque()
        jobs = iter(jobs)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                try:
                    key, job = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((key, job, None if job is None else self._submit(job)))
            if not pending:
                return
            key, job, future = pending.popleft()
            try:
                if future is not None:
                    future.result()
                yield key
            except cf.process.BrokenProcessPool:
                # A worker died (segfault, abort, OOM kill) and took every chunk in flight
                # with it; redo each of their files alone so only the culprit is reported.
                self._shutdown()
                redo = [(key, job)] + [(k, j) for k, j, _ in pending]
                pending.clear()
                for k, j in redo:
                    if j is not None:
                        _finish(j, join_chunks([self._isolated(item) for item in j.files]))
                    yield k

    def _isolated(self, item) -> Chunk:
        with cf.ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            try:
                return pool.submit(load_chunk, [item], False).result()
            except cf.process.BrokenProcessPool:
                return Chunk(failures=[{"index": item[0], "path": item[1], "reason": "the parser crashed its process on this file"}])


def _die_with_parent(parent: int) -> None:
    """Worker start-up: die when prepare dies (kill -9 included).  Otherwise a worker outlives it,
    blocked forever on the job queue, or still writing a chunk into the work folder of a resumed run."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG; Linux only
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
