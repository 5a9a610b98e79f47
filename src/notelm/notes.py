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


def sort_by_track(notes: Notes) -> Notes:
    """Ingest order: track, then onset, then pitch (parts one after another)."""
    return take(notes, np.lexsort((notes["pitch"], notes["onset_tick"], notes["track"])))


def sort_by_onset(notes: Notes) -> Notes:
    """Time order: onset, then pitch, then track (chords low to high)."""
    return take(notes, np.lexsort((notes["track"], notes["pitch"], notes["onset_tick"])))


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
    sharps = int(np.clip(sharps, -7, 7))
    return (_MINOR_BY_SHARPS if minor else _MAJOR_BY_SHARPS)[sharps + 7]


def ticks_to_seconds(ticks: np.ndarray, meta: SongMeta) -> np.ndarray:
    """Seconds at each tick, through the song's tempo map (120 qpm before the first tempo)."""
    ticks = np.asarray(ticks)
    return seconds_at(np.zeros(len(ticks), np.int64), ticks, np.zeros(len(meta.tempo_tick), np.int64),
                      meta.tempo_tick, meta.tempo_qpm, np.array([meta.tpq]))


def seconds_at(song, tick, tempo_song, tempo_tick, tempo_qpm, tpq) -> np.ndarray:
    """Seconds at ``tick`` of ``song`` for many songs at once.

    ``tempo_*`` are the tempo changes of all songs (any order); ``tpq[s]`` is song s's
    resolution.  Every song starts at 120 qpm until its first tempo change.
    """
    n_songs = len(tpq)
    # a default 120-qpm change at tick 0 of every song, placed before the song's own changes
    t_song = np.concatenate([np.arange(n_songs), np.asarray(tempo_song, np.int64)])
    t_tick = np.concatenate([np.zeros(n_songs), np.asarray(tempo_tick, np.float64)])
    t_qpm = np.concatenate([np.full(n_songs, DEFAULT_QPM), np.asarray(tempo_qpm, np.float64)])
    t_own = np.concatenate([np.zeros(n_songs), np.ones(len(tempo_tick))])
    if len(tempo_song) and ((np.diff(tempo_song) < 0) | ((np.diff(tempo_song) == 0) & (np.diff(tempo_tick) < 0))).any():
        order = np.lexsort((t_own, t_tick, t_song))
    else:  # already sorted within songs: merge the defaults in front of each song's changes
        order = np.argsort(t_song, kind="stable")
    t_song, t_tick, t_qpm = t_song[order], t_tick[order], t_qpm[order]
    spt = 60.0 / (np.where(t_qpm > 0, t_qpm, DEFAULT_QPM) * np.maximum(np.asarray(tpq, np.float64)[t_song], 1))
    step = np.diff(t_tick) * spt[:-1]
    step[np.diff(t_song) != 0] = 0.0
    cum = np.concatenate([[0.0], np.cumsum(step)])
    first = np.searchsorted(t_song, t_song)  # index of each song's first change
    at_change = cum - cum[first]
    key = t_song * 2.0**40 + t_tick
    idx = np.searchsorted(key, np.asarray(song, np.float64) * 2.0**40 + np.asarray(tick, np.float64), side="right") - 1
    return at_change[idx] + (np.asarray(tick, np.float64) - t_tick[idx]) * spt[idx]


@dataclass
class RawSong:
    """A parsed song before assembly: per-track note arrays in ticks plus metadata.

    ``tracks`` holds ``(onset_tick, duration_tick, pitch, velocity, track, program, is_drum)``
    with array-valued first four entries.  ``assemble`` turns many RawSongs into one
    note table in a handful of numpy calls, which is what keeps ingest fast.
    """

    meta: SongMeta
    tracks: list = field(default_factory=list)


def raw_from_score(score) -> RawSong:
    """A symusic Score (tick time) -> RawSong; empty tracks are skipped but keep their index."""
    tempos = score.tempos.numpy()
    sigs = score.time_signatures.numpy()
    keys = score.key_signatures.numpy()
    meta = SongMeta(
        tpq=int(score.tpq),
        tempo_tick=tempos["time"].astype(np.int64),
        tempo_qpm=60_000_000.0 / np.maximum(tempos["mspq"].astype(np.float64), 1.0),
        timesig_tick=sigs["time"].astype(np.int64),
        timesig_num=sigs["numerator"].astype(np.int16),
        timesig_den=sigs["denominator"].astype(np.int16),
        key_tick=keys["time"].astype(np.int64),
        key_sharps=keys["key"].astype(np.int16),
        key_minor=keys["tonality"].astype(np.bool_),
    )
    raw = RawSong(meta)
    for index, track in enumerate(score.tracks):
        a = track.notes.numpy()
        if len(a["time"]):
            raw.tracks.append((a["time"], a["duration"], a["pitch"], a["velocity"], index, int(track.program), bool(track.is_drum)))
    return raw


def assemble(raws: list[RawSong]) -> Notes:
    """Many RawSongs -> one note table with a ``song`` column (index into ``raws``).

    Rows are grouped by song, then track (file order), and sorted by onset within a
    track (simultaneous notes keep file order).  Notes no instrument can play
    (length <= 0, pitch outside 0-127, negative onset) are dropped.
    """
    tracks = [t for raw in raws for t in raw.tracks]
    if not tracks:
        return {"song": np.zeros(0, np.int32), **empty_notes()}
    lengths = np.array([len(t[0]) for t in tracks])
    song_of_track = np.repeat(np.arange(len(raws)), [len(raw.tracks) for raw in raws])
    tpq = np.array([max(raw.meta.tpq, 1) for raw in raws], np.float64)
    song = np.repeat(song_of_track, lengths).astype(np.int32)
    onset_tick = np.concatenate([t[0] for t in tracks]).astype(np.int64)
    duration_tick = np.concatenate([t[1] for t in tracks]).astype(np.int32)
    pitch = np.concatenate([t[2] for t in tracks]).astype(np.int16)
    notes = {
        "song": song,
        "track": np.repeat(np.array([t[4] for t in tracks], np.int16), lengths),
        "onset_tick": onset_tick,
        "duration_tick": duration_tick,
        "onset": onset_tick / tpq[song],
        "duration": (duration_tick / tpq[song]).astype(np.float32),
        "pitch": pitch,
        "velocity": np.concatenate([t[3] for t in tracks]).astype(np.int16),
        "program": np.repeat(np.array([t[5] for t in tracks], np.int16), lengths),
        "is_drum": np.repeat(np.array([t[6] for t in tracks], np.bool_), lengths),
    }
    ok = (duration_tick > 0) & (pitch >= 0) & (pitch <= 127) & (onset_tick >= 0)
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

    score = symusic.Score(tpq)
    onset = np.round(np.asarray(notes["onset"], np.float64) * tpq).astype(np.int64)
    duration = np.maximum(np.round(np.asarray(notes["duration"], np.float64) * tpq).astype(np.int64), 1)
    keys = np.stack([notes["track"].astype(np.int64), notes["program"].astype(np.int64), notes["is_drum"].astype(np.int64)], 1)
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


def write_midi(notes: Notes, path, qpm: float = DEFAULT_QPM, tpq: int = DEFAULT_TPQ, meta: SongMeta | None = None) -> None:
    """Write a note table as a MIDI file, atomically (temp file, then rename)."""
    from notelm.io import atomic_path

    score = to_score(notes, qpm=qpm, tpq=tpq, meta=meta)
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))


def read_midi(path) -> tuple[Notes, SongMeta]:
    import symusic

    return from_score(symusic.Score(str(path)))
