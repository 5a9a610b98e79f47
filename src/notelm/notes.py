"""Notes as a struct of numpy arrays: the one currency every stage of notelm trades in.

A *note table* is a ``dict[str, np.ndarray]`` whose columns all have the same
length (one row per note).  The columns and their dtypes are ``NOTE_COLUMNS``;
a song's notes leave ingest grouped by track and sorted by onset within each track.  Times exist twice:
in the file's ticks (exact) and in quarter notes (comparable across files).

Per-song metadata (tempo changes, time and key signatures) travels as
``SongMeta``.  ``from_score`` / ``to_score`` convert to and from symusic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from notelm.io import NotelmError

NOTE_COLUMNS: dict[str, np.dtype] = {
    "track": np.dtype(np.int16),
    "onset_tick": np.dtype(np.int64),
    "duration_tick": np.dtype(np.int32),
    "onset": np.dtype(np.float64),  # quarter notes
    "duration": np.dtype(np.float32),  # quarter notes
    "pitch": np.dtype(np.int16),
    "velocity": np.dtype(np.int16),
    "program": np.dtype(np.int16),
    "is_drum": np.dtype(np.bool_),
}

DEFAULT_QPM = 120.0
DEFAULT_TPQ = 480
# Every note ends before this many quarter notes (about 3 days at 120 qpm).  A later time is a
# corrupt one: an encoder would spend one rest event per few beats of the silence before it (a
# 40-byte file could ask for gigabytes), and a MIDI file at 480 ticks per quarter cannot hold it.
MAX_QUARTERS = 2**19
# Tempos notelm writes and renders at when it chooses the tempo (``--qpm``, a prompt's tempo): a MIDI
# file cannot store one below 3.58 qpm (16,777,215 microseconds per quarter), and a slow tempo makes
# audio long: one quarter note at 1 qpm is a minute of samples.  A file's own tempo map is kept as it is.
MIN_QPM, MAX_QPM = 10.0, 1000.0
MAX_MIDI_BYTES = 64 * 1024 * 1024  # the largest MIDI file read in-process (prompts, render, uploads)
# Why a note read from a file is not kept, counted per reason in a corpus's manifest (the words are
# prepare's summary): ``assemble`` finds the first four (a time before 0 is one that wrapped around,
# one past MAX_QUARTERS a corrupt one), the MusicXML/ABC/kern reader the last (a chord symbol is a
# harmony annotation above the staff, not a note anyone plays).
DROP_REASONS = {
    "zero_length": "of length 0",
    "pitch_out_of_range": "with a pitch outside 0-127",
    "before_start": "before time 0",
    "past_max_time": f"past {MAX_QUARTERS:,} quarter notes",
    "chord_symbol": "chord symbols",
}

Notes = dict  # dict[str, np.ndarray]; an alias so signatures read as what they carry


def empty_notes() -> Notes:
    return {name: np.zeros(0, dtype) for name, dtype in NOTE_COLUMNS.items()}


def make_notes(onset, duration, pitch, velocity=80, track=0, program=0, is_drum=False, tpq=DEFAULT_TPQ) -> Notes:
    """Build a note table from quarter-note onsets/durations (scalars broadcast)."""
    onset = np.asarray(onset, np.float64)
    n = onset.shape[0]
    duration = np.broadcast_to(np.asarray(duration, np.float64), (n,))
    notes = {
        "track": np.broadcast_to(np.asarray(track), (n,)),
        "onset_tick": np.round(onset * tpq),
        "duration_tick": np.round(duration * tpq),
        "onset": onset,
        "duration": duration,
        "pitch": np.broadcast_to(np.asarray(pitch), (n,)),
        "velocity": np.broadcast_to(np.asarray(velocity), (n,)),
        "program": np.broadcast_to(np.asarray(program), (n,)),
        "is_drum": np.broadcast_to(np.asarray(is_drum), (n,)),
    }
    return {k: np.ascontiguousarray(v, NOTE_COLUMNS[k]) for k, v in notes.items()}


def num_notes(notes: Notes) -> int:
    return int(len(notes["pitch"]))


def take(notes: Notes, index) -> Notes:
    """Rows of a note table selected by a boolean mask, index array or slice."""
    return {k: v[index] for k, v in notes.items()}


def concat(tables: list[Notes]) -> Notes:
    if not tables:
        return empty_notes()
    return {k: np.concatenate([t[k] for t in tables]).astype(NOTE_COLUMNS[k], copy=False) for k in NOTE_COLUMNS}


def check_qpm(qpm, name: str = "qpm") -> float:
    """``qpm`` as a float when notelm may write and render at that tempo; a one-line NotelmError otherwise.

    The one rule for a tempo notelm chooses (``--qpm``, a prompt's first tempo, a web request): finite
    and within ``MIN_QPM``..``MAX_QPM``, checked before anything is sampled, written or allocated.
    """
    try:
        value = float(qpm)
    except (TypeError, ValueError):
        raise NotelmError(f"{name} {qpm!r}: not a number of quarter notes per minute") from None
    if not MIN_QPM <= value <= MAX_QPM:  # NaN fails too
        raise NotelmError(f"{name} {value:g}: the tempo must be between {MIN_QPM:g} and {MAX_QPM:g} "
                          "quarter notes per minute")
    return value


@dataclass
class SongMeta:
    """Per-song timing and signatures; every ``*_tick`` array is in the song's ticks."""

    tpq: int = DEFAULT_TPQ
    tempo_tick: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tempo_qpm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    timesig_tick: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    timesig_num: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    timesig_den: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    key_tick: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    key_sharps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # -7..7
    key_minor: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))

    @property
    def first_qpm(self) -> float:
        return float(self.tempo_qpm[0]) if len(self.tempo_qpm) else DEFAULT_QPM

    @property
    def time_signature(self) -> str:
        return f"{self.timesig_num[0]}/{self.timesig_den[0]}" if len(self.timesig_num) else ""

    @property
    def key(self) -> str:
        if not len(self.key_sharps):
            return ""
        return key_name(int(self.key_sharps[0]), bool(self.key_minor[0]))


_MAJOR_BY_SHARPS = ["Cb", "Gb", "Db", "Ab", "Eb", "Bb", "F", "C", "G", "D", "A", "E", "B", "F#", "C#"]
_MINOR_BY_SHARPS = ["ab", "eb", "bb", "f", "c", "g", "d", "a", "e", "b", "f#", "c#", "g#", "d#", "a#"]


def key_name(sharps: int, minor: bool) -> str:
    """'D' for two sharps major, 'b' for two sharps minor (lower case = minor)."""
    sharps = min(max(int(sharps), -7), 7)
    return (_MINOR_BY_SHARPS if minor else _MAJOR_BY_SHARPS)[sharps + 7]


def seconds_at(song, tick, tempo_song, tempo_tick, tempo_qpm, tpq) -> np.ndarray:
    """Seconds at ``tick`` of ``song`` for many songs at once.

    ``tempo_*`` are the tempo changes of all songs (any order); ``tpq[s]`` is song s's
    resolution.  Every song starts at 120 qpm until its first tempo change.
    """
    n_songs = len(tpq)
    tempo_song, tempo_tick = np.asarray(tempo_song, np.int64), np.asarray(tempo_tick, np.float64)
    tempo_qpm = np.asarray(tempo_qpm, np.float64)
    if len(tempo_song) and ((np.diff(tempo_song) < 0) | ((np.diff(tempo_song) == 0) & (np.diff(tempo_tick) < 0))).any():
        order = np.lexsort((tempo_tick, tempo_song))
        tempo_song, tempo_tick, tempo_qpm = tempo_song[order], tempo_tick[order], tempo_qpm[order]
    # a default 120-qpm change at tick 0 of every song, in front of the song's own changes
    at = np.searchsorted(tempo_song, np.arange(n_songs))
    t_song = np.insert(tempo_song, at, np.arange(n_songs))
    t_tick = np.insert(tempo_tick, at, 0.0)
    t_qpm = np.insert(tempo_qpm, at, DEFAULT_QPM)
    spt = 60.0 / (np.where(t_qpm > 0, t_qpm, DEFAULT_QPM) * np.maximum(np.asarray(tpq, np.float64)[t_song], 1))
    step = np.diff(t_tick) * spt[:-1]
    step[np.diff(t_song) != 0] = 0.0
    cum = np.concatenate([[0.0], np.cumsum(step)])
    song = np.asarray(song, np.int64)
    first = (at + np.arange(n_songs))[song]  # each query's song's default change
    key = t_song * 2.0**40 + t_tick
    idx = np.searchsorted(key, song * 2.0**40 + np.asarray(tick, np.float64), side="right") - 1
    return cum[idx] - cum[first] + (np.asarray(tick, np.float64) - t_tick[idx]) * spt[idx]


META_TABLES: dict[str, dict[str, np.dtype]] = {  # per-song metadata: table -> column -> dtype (besides ``song``)
    "tempos": {"tick": np.dtype(np.int64), "qpm": np.dtype(np.float64)},
    "timesigs": {"tick": np.dtype(np.int64), "numerator": np.dtype(np.int16), "denominator": np.dtype(np.int16)},
    "keysigs": {"tick": np.dtype(np.int64), "sharps": np.dtype(np.int16), "minor": np.dtype(np.bool_)},
}
META_FIELDS = {  # table -> column -> SongMeta attribute
    "tempos": {"tick": "tempo_tick", "qpm": "tempo_qpm"},
    "timesigs": {"tick": "timesig_tick", "numerator": "timesig_num", "denominator": "timesig_den"},
    "keysigs": {"tick": "key_tick", "sharps": "key_sharps", "minor": "key_minor"},
}


def meta_from_tables(tpq: int, tables: dict) -> SongMeta:
    """One song's SongMeta from its rows of the metadata tables (``META_TABLES`` columns)."""
    return SongMeta(tpq, **{attr: np.asarray(tables[t][c], META_TABLES[t][c])
                            for t, cols in META_FIELDS.items() for c, attr in cols.items()})


@dataclass
class RawSong:
    """A parsed song before assembly: per-track note arrays in ticks plus metadata events.

    ``tracks`` holds ``(onset_tick, duration_tick, pitch, velocity, track, program, is_drum)``
    with array-valued first four entries.  ``events`` holds the metadata events as the
    file has them (table -> column -> array, the columns of ``META_TABLES``), not yet
    checked.  ``assemble`` and ``meta_tables`` turn many RawSongs into one note table and
    clean metadata tables in a handful of numpy calls, which is what keeps ingest fast:
    per-file work is only copying arrays out of the parser.  ``dropped`` counts the notes the
    parser read but did not put in ``tracks``, by reason (keys of ``DROP_REASONS``).
    """

    tpq: int
    events: dict
    tracks: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    split: str = ""  # the split the file itself assigns (a benchmark's .mat file); "": by content hash

    @property
    def meta(self) -> SongMeta:
        return meta_from_tables(self.tpq, meta_tables([self]))


_NO_TEMPOS = {"time": np.zeros(0, np.int32), "mspq": np.zeros(0, np.int32)}
_NO_SIGS = {"time": np.zeros(0, np.int32), "numerator": np.zeros(0, np.uint8), "denominator": np.zeros(0, np.uint8)}
_NO_KEYS = {"time": np.zeros(0, np.int32), "key": np.zeros(0, np.int8), "tonality": np.zeros(0, np.uint8)}


def raw_from_score(score) -> RawSong:
    """A symusic Score (tick time) -> RawSong; empty tracks are skipped but keep their index."""
    # .numpy() has a fixed cost of several microseconds: skip it for the empty lists many files have
    tempos = score.tempos.numpy() if len(score.tempos) else _NO_TEMPOS
    sigs = score.time_signatures.numpy() if len(score.time_signatures) else _NO_SIGS
    keys = score.key_signatures.numpy() if len(score.key_signatures) else _NO_KEYS
    mspq = tempos["mspq"]
    events = {
        "tempos": {"tick": tempos["time"], "qpm": 60_000_000.0 / np.where(mspq > 0, mspq, -1)},  # < 0: dropped
        "timesigs": {"tick": sigs["time"], "numerator": sigs["numerator"], "denominator": sigs["denominator"]},
        "keysigs": {"tick": keys["time"], "sharps": keys["key"], "minor": keys["tonality"]},
    }
    raw = RawSong(int(score.tpq), events)
    for index, track in enumerate(score.tracks):
        a = track.notes.numpy()
        if len(a["time"]):
            raw.tracks.append((a["time"], a["duration"], a["pitch"], a["velocity"], index, int(track.program),
                               bool(track.is_drum)))
    return raw


def meta_tables(raws: list[RawSong]) -> dict:
    """The metadata events of many RawSongs as clean tables (table -> column -> array, with a
    ``song`` column indexing ``raws``), rows of a song in file order.

    Events a file cannot mean are dropped, as if absent: a tempo of 0 microseconds per
    quarter, a time signature n/0, 0/d or with a denominator that is not a power of two, a
    key signature beyond 7 sharps or flats or of a mode other than major/minor, anything at
    a negative tick (a wrapped-around time).
    """
    out = {}
    for table, columns in META_TABLES.items():
        parts = [raw.events[table] for raw in raws]
        cols = {c: np.concatenate([p[c] for p in parts]).astype(np.int64 if dtype.kind in "ib" else dtype)
                for c, dtype in columns.items()}
        ok = cols["tick"] >= 0
        if table == "tempos":
            ok &= (cols["qpm"] > 0) & np.isfinite(cols["qpm"])
        elif table == "timesigs":
            num, den = cols["numerator"], cols["denominator"]
            ok &= (num > 0) & (num < 2**15) & (den > 0) & (den & (den - 1) == 0) & (den <= 2**14)  # int16 holds them
        else:
            ok &= (np.abs(cols["sharps"]) <= 7) & (cols["minor"] >= 0) & (cols["minor"] <= 1)
        cols["song"] = np.repeat(np.arange(len(raws), dtype=np.int32), [len(p["tick"]) for p in parts])
        out[table] = {c: (v if ok.all() else v[ok]).astype(META_TABLES[table].get(c, v.dtype), copy=False)
                      for c, v in cols.items()}
    return out


def assemble(raws: list[RawSong], dropped: dict | None = None) -> Notes:
    """Many RawSongs -> one note table with a ``song`` column (index into ``raws``).

    Rows are grouped by song, then track (file order), and sorted by onset within a
    track (simultaneous notes keep file order).  Notes no instrument can play
    (length <= 0, pitch outside 0-127, an onset below 0, an end beyond ``MAX_QUARTERS``)
    are dropped; ``dropped``, when given, adds their count by reason (``DROP_REASONS``).
    """
    tracks = [t for raw in raws for t in raw.tracks]
    if not tracks:
        return {"song": np.zeros(0, np.int32), **empty_notes()}
    lengths = np.array([len(t[0]) for t in tracks])
    song_of_track = np.repeat(np.arange(len(raws)), [len(raw.tracks) for raw in raws])
    tpq = np.array([max(raw.tpq, 1) for raw in raws], np.float64)
    song = np.repeat(song_of_track.astype(np.int32), lengths)
    onset_tick = np.concatenate([t[0] for t in tracks], dtype=np.int64)
    duration_tick = np.concatenate([t[1] for t in tracks], dtype=np.int32)
    pitch = np.concatenate([t[2] for t in tracks], dtype=np.int16)
    velocity = np.concatenate([t[3] for t in tracks], dtype=np.int16)
    per_note_tpq = tpq[0] if (tpq == tpq[0]).all() else tpq[song]  # one resolution: divide by a scalar
    onset = onset_tick / per_note_tpq
    duration = duration_tick / per_note_tpq
    notes = {
        "song": song,
        "track": np.repeat(np.array([t[4] for t in tracks], np.int16), lengths),
        "onset_tick": onset_tick,
        "duration_tick": duration_tick,
        "onset": onset,
        "duration": duration.astype(np.float32),
        "pitch": pitch,
        "velocity": np.clip(velocity, 1, 127, out=velocity),  # a stray byte: not 0..127
        "program": np.repeat(np.array([t[5] for t in tracks], np.int16), lengths),
        "is_drum": np.repeat(np.array([t[6] for t in tracks], np.bool_), lengths),
    }
    reasons = {"zero_length": duration_tick <= 0, "pitch_out_of_range": (pitch < 0) | (pitch > 127),
               "before_start": onset_tick < 0, "past_max_time": onset + notes["duration"] >= MAX_QUARTERS}
    ok = ~(reasons["zero_length"] | reasons["pitch_out_of_range"] | reasons["before_start"] | reasons["past_max_time"])
    if dropped is not None and not ok.all():
        counted = np.zeros(len(ok), bool)
        for reason, bad in reasons.items():  # a note with several faults counts once, under the first
            dropped[reason] = dropped.get(reason, 0) + int(np.count_nonzero(bad & ~counted))
            counted |= bad
    # Tracks arrive in (song, track) order and symusic keeps each track sorted by onset,
    # so a sort is needed only when some track is out of order (rare: music21 input).
    step = np.diff(onset_tick)
    step[np.cumsum(lengths)[:-1] - 1] = 0  # track boundaries may step back
    if (step < 0).any():
        piece = np.repeat(np.arange(len(tracks), dtype=np.int64), lengths)
        order = np.lexsort((onset_tick, piece))
        notes = {k: v[order] for k, v in notes.items()}
        ok = ok[order]
    return notes if ok.all() else {k: v[ok] for k, v in notes.items()}


def from_score(score) -> tuple[Notes, SongMeta]:
    """A symusic Score (tick time) -> (note table grouped by track, sorted by onset; metadata)."""
    raw = raw_from_score(score)
    notes = assemble([raw])
    del notes["song"]
    return notes, raw.meta


def to_score(notes: Notes, qpm: float = DEFAULT_QPM, tpq: int = DEFAULT_TPQ, meta: SongMeta | None = None):
    """A note table -> symusic Score, one track per (track, program, is_drum).

    Times come from the quarter-note columns, so tables from any tick resolution
    (or from a decoder that only knows quarters) write correctly.  ``meta``, when
    given, supplies tempo changes and signatures (already in ``tpq`` ticks).
    """
    import symusic

    if meta is None or not len(meta.tempo_qpm):
        qpm = check_qpm(qpm)
    score = symusic.Score(tpq)
    onset = np.round(np.asarray(notes["onset"], np.float64) * tpq).astype(np.int64)
    duration = np.maximum(np.round(np.asarray(notes["duration"], np.float64) * tpq).astype(np.int64), 1)
    keys = np.stack([notes[k].astype(np.int64) for k in ("track", "program", "is_drum")], 1)
    groups, which = np.unique(keys, axis=0, return_inverse=True) if len(onset) else (np.zeros((0, 3), np.int64), None)
    for g, (track, program, is_drum) in enumerate(groups):
        mask = which.reshape(-1) == g
        order = np.lexsort((notes["pitch"][mask], onset[mask]))
        name = "Drums" if is_drum else f"Track {track}"
        out = symusic.Track(name, program=int(program), is_drum=bool(is_drum))
        out.notes.extend(symusic.Note.from_numpy(
            time=onset[mask][order].astype(np.int32),
            duration=duration[mask][order].astype(np.int32),
            pitch=np.clip(notes["pitch"][mask][order], 0, 127).astype(np.int8),
            velocity=np.clip(notes["velocity"][mask][order], 1, 127).astype(np.int8),
        ))
        score.tracks.append(out)
    if meta is not None and len(meta.tempo_qpm):
        for tick, tempo in zip(meta.tempo_tick, meta.tempo_qpm):
            score.tempos.append(symusic.Tempo(int(tick), float(tempo)))
    else:
        score.tempos.append(symusic.Tempo(0, float(qpm)))
    if meta is not None:
        for tick, num, den in zip(meta.timesig_tick, meta.timesig_num, meta.timesig_den):
            score.time_signatures.append(symusic.TimeSignature(int(tick), int(num), int(den)))
        for tick, sharps, minor in zip(meta.key_tick, meta.key_sharps, meta.key_minor):
            score.key_signatures.append(symusic.KeySignature(int(tick), int(sharps), int(minor)))
    return score


def write_midi(notes: Notes, path, qpm: float = DEFAULT_QPM, tpq: int = DEFAULT_TPQ,
               meta: SongMeta | None = None) -> None:
    """Write a note table as a MIDI file, atomically (temp file, then rename)."""
    from notelm.io import atomic_path

    score = to_score(notes, qpm=qpm, tpq=tpq, meta=meta)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))


def read_midi(path, max_bytes: int = MAX_MIDI_BYTES) -> tuple[Notes, SongMeta]:
    """A MIDI file -> (note table, metadata); ValueError with the reason for a file notelm will not read.

    Only a regular file of at most ``max_bytes`` is read (``io.read_regular_file``), then ``parse_midi``.
    """
    from notelm.io import FileRefused, read_regular_file

    try:
        data = read_regular_file(path, max_bytes)
    except FileRefused as e:
        raise ValueError(str(e)) from None
    return parse_midi(data)


def parse_midi(data: bytes) -> tuple[Notes, SongMeta]:
    """MIDI bytes -> (note table, metadata), under the rules every reader shares (``midifile.midi_problem``:
    header, tick resolution, truncation, every event); ValueError with the reason otherwise."""
    import symusic

    from notelm.midifile import midi_problem

    problem = midi_problem(data)
    if problem:
        raise ValueError(problem)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError with its parser's message
        raise ValueError(f"unreadable MIDI: {' '.join(str(e).split())[:200]}") from None
    return from_score(score)
