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
import contextlib
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notelm import notes as nt
from notelm.io import (
    FileRefused,
    NotelmError,
    atomic_path,
    content_hash,
    printable,
    read_json,
    read_regular_file,
    write_json,
)
from notelm.midifile import midi_problem
from notelm.sources import is_midi

MUSIC21_TPQ = 480  # divisible by 3, 4 and 5: music21's tuplets land on whole ticks
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # prepare's --max-file-mb default
# In a worker, a file whose parsing takes longer is given up and reported: a parser caught in a loop
# held its worker forever.  music21 takes seconds, rarely minutes, on a large score.
FILE_TIMEOUT_S = 600.0


class IngestError(Exception):
    """A file that cannot be kept; the message is the one-line reason."""


def load_file(path: str, check_events: bool = True,
              max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[str, list[nt.RawSong]]:
    """(content hash, parsed pieces) of one file.

    Only a regular file of at most ``max_bytes`` is read, and only once (``io.read_regular_file``):
    the parsers see those bytes, never the path, so what is hashed is what is parsed.
    ``check_events`` walks every MIDI event before symusic parses the file (see
    ``midifile.midi_problem``: malformed bytes can crash symusic's process).  Only
    ``IngestPool`` workers turn it off: there a crash costs one file, and the walk would
    cost more than the parse.
    """
    try:
        data = read_regular_file(path, max_bytes)
    except FileRefused as e:
        raise IngestError(str(e)) from None
    if not data:
        raise IngestError("empty file (0 bytes)")
    sha = content_hash(data)
    if path.lower().endswith(".mat"):
        raws = _load_mat(data)
    else:
        raws = [_load_midi(data, check_events)] if is_midi(path) else _load_music21(path, data)
    if not any(raw.tracks for raw in raws):
        raise IngestError("no notes")
    return sha, raws


def _load_midi(data: bytes, check_events: bool = True) -> nt.RawSong:
    import symusic

    problem = midi_problem(data, walk_events=check_events)  # the rule every MIDI reader shares
    if problem:
        raise IngestError(problem)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError with its parser's message
        raise IngestError(f"unreadable MIDI: {_one_line(e)}") from None
    return nt.raw_from_score(score)


def _load_mat(data: bytes) -> list[nt.RawSong]:
    from notelm.pianoroll import RollError, load_mat  # a late import: pianoroll stands on encoding, which on ingest

    try:
        return load_mat(data)
    except RollError as e:
        raise IngestError(str(e)) from None


# A compressed MusicXML (.mxl) is a zip: music21 unpacks it in memory.  A few kilobytes can unpack to
# gigabytes, so the sizes its directory announces are checked first (at most this many times the file).
MXL_MAX_RATIO = 100
MXL_MAX_BYTES = 1 << 30


def _load_music21(path: str, data: bytes) -> list[nt.RawSong]:
    import music21

    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".mxl":
        _check_zip(data)
    warnings.simplefilter("ignore")
    # music21 parses a path: give it a private copy of the bytes already read (never the user's path,
    # which may since have become a FIFO or another file)
    with tempfile.TemporaryDirectory(prefix="notelm-") as tmp:
        copy = os.path.join(tmp, "score" + suffix)
        with open(copy, "wb") as fh:
            fh.write(data)
        try:
            parsed = music21.converter.parse(copy, forceSource=True)
        except Exception as e:
            raise IngestError(f"music21 could not parse it: {_one_line(e)}") from None
    scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
    return [_music21_song(score) for score in scores]


def _check_zip(data: bytes) -> None:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            unpacked = sum(max(info.file_size, 0) for info in z.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise IngestError(f"not a readable compressed MusicXML (.mxl) file: {_one_line(e)}") from None
    limit = min(MXL_MAX_BYTES, MXL_MAX_RATIO * max(len(data), 1 << 20))
    if unpacked > limit:
        raise IngestError(f"compressed MusicXML unpacks to {unpacked / 1048576:,.0f} MB, "
                          f"over the limit of {limit / 1048576:,.0f} MB")


# Grace notes: music21 gives them no length (quarterLength 0) and the onset of the note they lead to.
# Its own MIDI export (music21 10.5.1, midi.translate.noteToMidiEvents with durationToMidiTicks)
# writes one as a note-on and a note-off at the same tick, which MIDI readers drop, so it gives no
# length to copy: notelm keeps a grace note with the length of a 32nd note, at music21's onset.
GRACE_QUARTERS = 0.125
# Unpitched percussion: music21's MIDI export (midi.translate._get_unpitched_pitch_value) plays the
# instrument's General MIDI drum key (percMapPitch) and key 60 when it knows none; notelm does the
# same, looking the part's name up in music21's instrument list first (a part named "Triangle" -> 81).
UNPITCHED_FALLBACK_KEY = 60


def _music21_song(score) -> nt.RawSong:
    """A music21 score -> RawSong; ties are merged first so a tied note is one note.

    Every note music21 reads becomes a note, grace notes and unpitched percussion (a drum track)
    included; chord symbols (harmony annotations) are counted in ``dropped``.
    """
    score = score.stripTies(inPlace=False)
    raw = nt.RawSong(MUSIC21_TPQ, _music21_events(score))
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    for index, part in enumerate(parts):
        pitched, drums, dropped = _music21_part_notes(part, score)
        for reason, n in dropped.items():
            raw.dropped[reason] = raw.dropped.get(reason, 0) + n
        for rows, is_drum in ((pitched, False), (drums, True)):
            if rows:
                onset, duration, pitch, velocity = (np.array(column, np.float64) for column in zip(*rows))
                raw.tracks.append((_ticks(onset), _ticks(duration), pitch.astype(np.int64),
                                   np.round(velocity).astype(np.int64), index, _program(part), is_drum))
    return raw


def _ticks(offsets) -> np.ndarray:
    return np.round(np.asarray(offsets, np.float64) * MUSIC21_TPQ).astype(np.int64)


def _music21_events(score) -> dict:
    import music21

    flat = score.flatten()
    tempos = [(float(m.getOffsetInHierarchy(score)), m.getQuarterBPM())
              for m in flat.getElementsByClass(music21.tempo.MetronomeMark)]
    tempos = [(o, q) for o, q in tempos if q]
    sigs = list(flat.getElementsByClass(music21.meter.TimeSignature))
    keys = list(flat.getElementsByClass(music21.key.KeySignature))
    return {
        "tempos": {"tick": _ticks([o for o, _ in tempos]), "qpm": np.array([q for _, q in tempos], np.float64)},
        "timesigs": {"tick": _ticks([float(s.getOffsetInHierarchy(score)) for s in sigs]),
                     "numerator": np.array([s.numerator for s in sigs], np.int64),
                     "denominator": np.array([s.denominator for s in sigs], np.int64)},
        "keysigs": {"tick": _ticks([float(k.getOffsetInHierarchy(score)) for k in keys]),
                    "sharps": np.array([k.sharps for k in keys], np.int64),
                    "minor": np.array([getattr(k, "mode", "major") == "minor" for k in keys], np.int64)},
    }


def _program(part) -> int:
    instrument = part.getInstrument(returnDefault=True)
    program = instrument.midiProgram if instrument is not None else None
    return int(program) if program is not None else 0


def _music21_part_notes(part, score) -> tuple[list, list, dict]:
    """(pitched rows, drum rows, dropped counts) of a part; a row is (onset, duration, pitch, velocity)."""
    import music21

    pitched, drums, dropped = [], [], {}
    drum_key = None  # the part's drum key, looked up at its first unpitched note
    for element in part.recurse().notes:  # music21 has no array API: one step per note or chord
        if isinstance(element, music21.harmony.Harmony):
            dropped["chord_symbol"] = dropped.get("chord_symbol", 0) + 1
            continue
        onset = float(element.getOffsetInHierarchy(score))
        duration = float(element.duration.quarterLength)
        if duration == 0 and element.duration.isGrace:
            duration = GRACE_QUARTERS
        members = element.notes if isinstance(element, music21.chord.ChordBase) else [element]
        for member in members:
            velocity = member.volume.velocity if member.volume.velocity is not None else element.volume.velocity
            velocity = 64 if velocity is None else velocity
            if isinstance(member, music21.note.Unpitched):
                if drum_key is None:
                    drum_key = _drum_key(part)
                drums.append((onset, duration, _unpitched_key(member, drum_key), velocity))
            else:
                pitched.append((onset, duration, member.pitch.midi, velocity))
    return pitched, drums, dropped


def _unpitched_key(note, part_key: int) -> int:
    instrument = note.storedInstrument
    key = getattr(instrument, "percMapPitch", None)
    return int(key) if key is not None else part_key


def _drum_key(part) -> int:
    """The General MIDI drum key of a percussion part: its instrument's, else one music21 knows by the
    part's name, else ``UNPITCHED_FALLBACK_KEY`` (as music21's export)."""
    import music21

    instrument = part.getInstrument(returnDefault=True)
    key = getattr(instrument, "percMapPitch", None)
    for name in (getattr(instrument, "instrumentName", None), getattr(instrument, "partName", None), part.partName):
        if key is not None:
            break
        try:
            key = getattr(music21.instrument.fromString(name), "percMapPitch", None) if name else None
        except Exception:  # music21 knows no such instrument
            continue
    return int(key) if key is not None else UNPITCHED_FALLBACK_KEY


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


# --------------------------------------------------------------------------- chunks

@dataclass
class Chunk:
    """The songs of a run of files.  ``notes`` holds their notes song after song, in
    ``records`` order (``records[k]["n_notes"]`` rows each; no song column); every ``meta``
    table carries a ``song`` column indexing ``records`` (song-table rows, without corpus-wide
    ids and split).  ``dropped`` counts the notes read but not kept, by reason
    (``notes.DROP_REASONS``); ``files_kept`` the files that gave at least one song.  Paths,
    sources and collections are stored as ``io.printable`` shows them."""

    records: list[dict] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # table -> column -> array
    failures: list[dict] = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    files_kept: int = 0


def load_chunk(files: list[tuple[int, str, str, str]], check_events: bool = True,
               max_bytes: int | None = DEFAULT_MAX_BYTES, timeout: float | None = None) -> Chunk:
    """Load (index, path, source, collection[, group]) files into one Chunk; failures are recorded.  ``timeout``
    gives up a file after that many seconds (worker processes only: it takes over SIGALRM)."""
    out = Chunk()
    raws, info = _parse_files(files, check_events, max_bytes, out.failures, timeout)
    if not raws:
        return out
    notes = nt.assemble(raws, out.dropped)
    for raw in raws:
        for reason, n in raw.dropped.items():
            out.dropped[reason] = out.dropped.get(reason, 0) + n
    song = notes.pop("song")
    counts = np.bincount(song, minlength=len(raws))
    kept = np.flatnonzero(counts > 0)  # a piece whose every note was unplayable is dropped
    if len(kept) < len(raws):
        lost = {info[k][0] for k in range(len(raws))} - {info[k][0] for k in kept}
        for index in sorted(lost):
            path = next(i[1] for i in info if i[0] == index)
            out.failures.append({"index": index, "path": printable(path), "reason": "no playable notes"})
        raws, info, counts = [raws[k] for k in kept], [info[k] for k in kept], counts[kept]
    out.files_kept = len({i[0] for i in info})
    if not raws:  # every file of the chunk failed
        return out
    out.notes, out.meta = notes, nt.meta_tables(raws)
    out.records = _records(raws, info, notes, counts, out.meta)
    return out


def _parse_files(files, check_events: bool, max_bytes: int | None, failures: list,
                 timeout: float | None = None) -> tuple[list, list]:
    """(pieces, (index, path, source, collection, sha, part, group) per piece); failed files go to ``failures``."""
    raws, info = [], []
    for index, path, source, collection, *group in files:
        try:
            with _time_limit(timeout):
                sha, pieces = load_file(path, check_events, max_bytes)
        except _TimedOut:
            failures.append({"index": index, "path": printable(path),
                             "reason": f"gave up after {timeout:g} s: the parser did not finish"})
            continue
        except IngestError as e:
            failures.append({"index": index, "path": printable(path), "reason": _one_line(e)})
            continue
        except Exception as e:  # a parser bug must cost one file, not the run
            reason = f"parser error: {type(e).__name__}: {_one_line(e)}"
            failures.append({"index": index, "path": printable(path), "reason": reason})
            continue
        for part, raw in enumerate(pieces):
            raws.append(raw)
            info.append((index, path, source, collection, sha if len(pieces) == 1 else f"{sha}#{part}", part,
                         group[0] if group else collection))
    return raws, info


class _TimedOut(BaseException):
    """Raised by the timer inside a parser; a BaseException, so no ``except Exception`` in a parser eats it."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the body after ``seconds`` (SIGALRM: Python code only; a loop inside C runs on)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(*_):
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _records(raws, info, notes, counts, meta) -> list[dict]:
    """Song-table rows of the pieces, their figures computed for all at once (notes are grouped by song)."""
    tempos, sigs, keys = meta["tempos"], meta["timesigs"], meta["keysigs"]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    end_tick = np.maximum.reduceat(notes["onset_tick"] + notes["duration_tick"], starts)
    end_q = np.maximum.reduceat(notes["onset"] + notes["duration"], starts)
    seconds = nt.seconds_at(np.arange(len(raws)), end_tick, tempos["song"], tempos["tick"], tempos["qpm"],
                            np.array([r.tpq for r in raws]))
    first_tempo, first_sig, first_key = (_first_rows(t, len(raws)) for t in (tempos, sigs, keys))
    records = []
    for k, (raw, (_index, path, source, collection, sha, part, group)) in enumerate(zip(raws, info)):
        tempo, sig, key = first_tempo[k], first_sig[k], first_key[k]
        records.append({
            "path": printable(f"{path}#{part}" if "#" in sha else path),
            "sha": sha, "source": printable(source), "collection": printable(collection), "part": part,
            **({"split": raw.split} if raw.split else {}),
            "group": printable(group),
            "tpq": raw.tpq, "n_notes": int(counts[k]), "n_tracks": len({t[4] for t in raw.tracks}),
            "duration_q": float(end_q[k]), "duration_s": float(seconds[k]),
            "qpm": float(tempos["qpm"][tempo]) if tempo >= 0 else nt.DEFAULT_QPM,
            "time_signature": f"{sigs['numerator'][sig]}/{sigs['denominator'][sig]}" if sig >= 0 else "",
            "key": nt.key_name(int(keys["sharps"][key]), bool(keys["minor"][key])) if key >= 0 else "",
        })
    return records


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
                                            "failures": chunk.failures, "dropped": chunk.dropped,
                                            "files_kept": chunk.files_kept}, indent=None)


def write_notes_part(path: Path, notes: nt.Notes) -> None:
    """A note table as one Arrow IPC file with the columns of ``NOTE_COLUMNS`` (a corpus's
    ``notes/`` holds these; a saved chunk's ``.arrow`` is one, ready to be linked in)."""
    import pyarrow as pa

    batch = pa.record_batch([np.asarray(notes[k], dtype) for k, dtype in nt.NOTE_COLUMNS.items()],
                            names=list(nt.NOTE_COLUMNS))
    with atomic_path(path) as tmp:
        with pa.ipc.new_file(str(tmp), batch.schema) as writer:
            writer.write_batch(batch)


def read_chunk(stem: Path) -> Chunk:
    """A saved chunk's records, failures and metadata; its notes stay in ``stem.arrow``, the
    file that becomes a part of the corpus's note table (``CorpusWriter.add``)."""
    info = read_json(stem.with_suffix(".json"))
    chunk = Chunk(records=info["records"], failures=info["failures"], dropped=info.get("dropped", {}),
                  files_kept=info.get("files_kept", 0))
    data, offset = np.fromfile(stem.with_suffix(".meta"), np.uint8), 0
    for key, dtype, length in info["meta"]:
        table, column = key.split(".")
        array = np.frombuffer(data, np.dtype(dtype), length, offset)
        chunk.meta.setdefault(table, {})[column] = array
        offset += -(-array.nbytes // 8) * 8
    return chunk


def chunk_saved(stem: Path, chunk_id: str) -> bool:
    """Whether ``stem`` holds a complete chunk made from exactly the same files (and by this version:
    a chunk saved before notes dropped were counted is made again)."""
    try:
        info = read_json(stem.with_suffix(".json"))
        meta_size = stem.with_suffix(".meta").stat().st_size
        stem.with_suffix(".arrow").stat()
    except (OSError, ValueError, NotelmError):
        return False
    if not isinstance(info, dict) or info.get("chunk") != chunk_id or "dropped" not in info:
        return False
    try:
        return meta_size == sum(-(-np.dtype(dtype).itemsize * length // 8) * 8 for _, dtype, length in info["meta"])
    except (TypeError, ValueError):
        return False


@dataclass
class Job:
    """A chunk of work: files to load, failures already known, and where to save the result."""

    files: list  # (index, path, source, collection, group)
    stem: Path
    chunk_id: str
    known_failures: list = field(default_factory=list)
    max_bytes: int | None = DEFAULT_MAX_BYTES
    timeout: float | None = FILE_TIMEOUT_S


def run_job(job: Job) -> None:
    """Load a chunk and save it where the job says (the parent reads it back from disk:
    cheaper than sending it through a pipe, and the same path as a resumed chunk)."""
    _finish(job, load_chunk(job.files, False, job.max_bytes, job.timeout))  # a crash costs one file (IngestPool)


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
        out.files_kept += c.files_kept
        for reason, n in c.dropped.items():
            out.dropped[reason] = out.dropped.get(reason, 0) + n
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
        try:
            return self._pool.submit(run_job, job)
        except cf.process.BrokenProcessPool as e:
            # a worker died after the last result was read: fail this job's future too, so that ``map``
            # redoes it with the others in flight (raising here would end prepare)
            future = cf.Future()
            future.set_exception(e)
            return future

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
                        _finish(j, join_chunks([self._isolated(item, j) for item in j.files]))
                    yield k

    def _isolated(self, item, job: Job) -> Chunk:
        with cf.ProcessPoolExecutor(1, mp_context=self._ctx, initializer=_die_with_parent,
                                    initargs=(os.getpid(),)) as pool:
            try:
                return pool.submit(load_chunk, [item], False, job.max_bytes, job.timeout).result()
            except cf.process.BrokenProcessPool:
                return Chunk(failures=[{"index": item[0], "path": printable(item[1]),
                                        "reason": "the parser crashed its process on this file"}])


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
