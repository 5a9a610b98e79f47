"""The form of a piece on paper: meter, key, tempo, and its parts with their instruments.

A generated piece is more than notes: a jig is in 6/8, a chorale has four voices,
a pop song a melody, a bridge and a piano.  This module holds what the rest of
notelm needs to keep that form:

* ``part_ranks``: a note's part is the rank of its track within its song (the
  ``events`` representation's optional ``part`` stream);
* ``corpus_forms``: for every condition (collection, group) of a corpus, the most
  common time signature, key and tempo of its training songs and the most common
  program of each part; stored in a model's vocabulary (``Vocab.form``) so that
  ``generate`` can write a piece in a style with that style's form;
* ``piece_meta``: the ``SongMeta`` a generated piece is written with: the prompt's
  meter, key and tempo where there is a prompt, else the style's, else the
  defaults, and ``--meter`` / ``--qpm`` above them all.
"""

from __future__ import annotations

import numpy as np

from notelm import notes as nt
from notelm.io import NotelmError

ALL = ""  # the key of the whole corpus's form in ``corpus_forms`` (used when no condition is given)
DEFAULT_METER = (4, 4)
MAX_PARTS_IN_FORM = 64


def part_ranks(song: np.ndarray, track: np.ndarray, parts: int) -> np.ndarray:
    """Each note's part: the rank of its track among its song's tracks (0 = lowest track index), capped at
    ``parts - 1``.  Vectorized: one ``np.unique`` over (song, track) keys."""
    if not len(track):
        return np.zeros(0, np.int16)
    key = (np.asarray(song, np.int64) << 16) | (np.asarray(track, np.int64) & 0xFFFF)
    pairs, which = np.unique(key, return_inverse=True)
    pair_song = pairs >> 16
    rank = np.arange(len(pairs)) - np.searchsorted(pair_song, pair_song)  # minus the first pair of the same song
    return np.minimum(rank, parts - 1).astype(np.int16)[which.reshape(-1)]


# --------------------------------------------------------------------------- meters and keys

def parse_meter(text: str) -> tuple[int, int]:
    """'6/8' -> (6, 8); a one-line NotelmError for anything a MIDI file cannot hold."""
    try:
        num, den = (int(x) for x in str(text).split("/"))
    except ValueError:
        num = den = 0
    if not (1 <= num <= 64 and den in (1, 2, 4, 8, 16, 32)):
        raise NotelmError(f"--meter {text!r}: expected a time signature like 4/4, 3/4 or 6/8")
    return num, den


_KEYS = {**{nt.key_name(s, False): (s, False) for s in range(-7, 8)},
         **{nt.key_name(s, True): (s, True) for s in range(-7, 8)}}


def parse_key(name: str) -> tuple[int, bool]:
    """A key name as notelm writes it ('D' major, 'b' minor: lower case) -> (sharps, minor)."""
    if name not in _KEYS:
        raise NotelmError(f"--key {name!r}: expected a key like C, G, Bb, F# (major) or a, e, c# (minor, lower case)")
    return _KEYS[name]


def beats_per_bar(meta: nt.SongMeta | None) -> float:
    """Quarter notes per bar of the first time signature (4 when there is none)."""
    if meta is not None and len(meta.timesig_num):
        return float(meta.timesig_num[0]) * 4.0 / float(meta.timesig_den[0])
    return 4.0


# --------------------------------------------------------------------------- the form of each style

def _most_common(values: np.ndarray, weights: np.ndarray | None = None):
    """The most common non-empty value (None when there is none)."""
    values = np.asarray(values)
    keep = values != "" if values.dtype.kind in "OUS" else np.ones(len(values), bool)
    if not keep.any():
        return None
    names, which = np.unique(values[keep].astype(str) if values.dtype.kind in "OUS" else values[keep],
                             return_inverse=True)
    counts = np.bincount(which.reshape(-1), weights=None if weights is None else np.asarray(weights)[keep])
    return names[int(np.argmax(counts))]


def corpus_forms(corpus, label: str, parts: int) -> dict[str, dict]:
    """``{condition name: form, ALL: form}`` of a corpus's training songs (all songs where a condition has
    none in the train split).  A form: ``time_signature`` ('6/8' or ''; the most common of the songs' meters,
    ``song_meters``, leaving out 1/N, which marks beats rather than bars: most POP909 files are written in
    1/4 throughout), ``key`` ('D', 'b' or ''), ``qpm``
    (the median first tempo), ``parts`` (the most common number of parts a song has, at most ``parts``) and
    ``programs`` (the most common General MIDI program of each part, 0..parts-1)."""
    songs = corpus.songs
    names = np.asarray(songs[label]).astype(str) if label != "none" else np.full(len(corpus), ALL)
    train = np.asarray(songs["split"]).astype(str) == "train"
    notes = corpus.all_notes(["song", "track", "program", "is_drum"])
    n_parts = max(int(parts), 1)
    part = part_ranks(notes["song"], notes["track"], n_parts)
    program = np.where(notes["is_drum"], 0, notes["program"]).astype(np.int64)
    # songs' number of parts: the highest part rank + 1 of each song
    song_parts = np.zeros(len(corpus), np.int64)
    np.maximum.at(song_parts, notes["song"], part.astype(np.int64) + 1)
    meters = song_meters(corpus)
    forms = {}
    for name in [ALL, *sorted(set(names.tolist()) - {ALL})]:
        mine = np.ones(len(corpus), bool) if name == ALL else names == name
        chosen = mine & train if (mine & train).any() else mine
        note_rows = chosen[notes["song"]]
        programs = []
        for k in range(min(n_parts, MAX_PARTS_IN_FORM)):
            found = _most_common(program[note_rows & (part == k)])
            programs.append(int(found) if found is not None else (programs[-1] if programs else 0))
        qpm = np.asarray(songs["qpm"], np.float64)[chosen]
        bars = meters[chosen]
        bars = bars[[not m.startswith("1/") for m in bars]] if any(not m.startswith("1/") for m in bars) else bars
        forms[name] = {"time_signature": str(_most_common(bars) or ""),
                       "key": str(_most_common(np.asarray(songs["key"])[chosen]) or ""),
                       "qpm": round(float(np.median(qpm)), 1) if len(qpm) else nt.DEFAULT_QPM,
                       "parts": int(_most_common(song_parts[chosen]) or 1), "programs": programs}
    return forms


def song_meters(corpus) -> np.ndarray:
    """Each song's meter: the time signature that lasts longest in it ('' without one).  Not simply the first:
    many POP909 files open with a 1/4 bar before the song's 4/4."""
    table = corpus._meta["timesigs"]
    song = np.asarray(table.column("song").to_numpy(), np.int64)
    tick = np.asarray(table.column("tick").to_numpy(), np.float64)
    num = np.asarray(table.column("numerator").to_numpy(), np.int64)
    den = np.asarray(table.column("denominator").to_numpy(), np.int64)
    out = np.full(len(corpus), "", dtype=object)
    if not len(song):
        return out
    end = np.asarray(corpus.songs["duration_q"], np.float64)[song] * np.asarray(corpus.songs["tpq"])[song]
    following = np.append(tick[1:], np.inf)
    last = np.append(song[1:] != song[:-1], True)
    span = np.maximum(np.where(last, end, following) - tick, 0.0)
    order = np.lexsort((-span, song))  # per song, the longest first
    first = order[np.searchsorted(song[order], np.unique(song))]
    out[song[first]] = [f"{n}/{d}" for n, d in zip(num[first], den[first])]
    return out


# --------------------------------------------------------------------------- the form of one piece

def piece_meta(prompt_meta: nt.SongMeta | None, form: dict | None, meter: str | None = None,
               key: str | None = None, qpm: float | None = None) -> nt.SongMeta:
    """The tempo, time signature and key a generated piece is written with, all at its start.

    Each comes from the first of: the explicit option (``meter``, ``key``, ``qpm``), the prompt,
    the style's form, the default (4/4, no key signature, 120 qpm).
    """
    meta = nt.SongMeta(tpq=nt.DEFAULT_TPQ)
    form = form or {}
    tempo = qpm or (prompt_meta.first_qpm if prompt_meta is not None and len(prompt_meta.tempo_qpm) else None) \
        or form.get("qpm") or nt.DEFAULT_QPM
    meta.tempo_tick, meta.tempo_qpm = np.zeros(1, np.int64), np.array([nt.check_qpm(tempo, "--qpm")], np.float64)
    if meter:
        num, den = parse_meter(meter)
    elif prompt_meta is not None and len(prompt_meta.timesig_num):
        num, den = int(prompt_meta.timesig_num[0]), int(prompt_meta.timesig_den[0])
    elif form.get("time_signature"):
        num, den = parse_meter(form["time_signature"])
    else:
        num, den = DEFAULT_METER
    meta.timesig_tick, meta.timesig_num, meta.timesig_den = (np.zeros(1, np.int64), np.array([num], np.int16),
                                                             np.array([den], np.int16))
    if key:
        sharps, minor = parse_key(key)
    elif prompt_meta is not None and len(prompt_meta.key_sharps):
        sharps, minor = int(prompt_meta.key_sharps[0]), bool(prompt_meta.key_minor[0])
    elif form.get("key"):
        sharps, minor = parse_key(form["key"])
    else:
        return meta
    meta.key_tick, meta.key_sharps, meta.key_minor = (np.zeros(1, np.int64), np.array([sharps], np.int16),
                                                      np.array([minor], np.bool_))
    return meta


def part_programs(prompt_notes: nt.Notes | None, form: dict | None, parts: int) -> np.ndarray:
    """The program of each part (0..parts-1) of a generated piece: the prompt's tracks' where it has them,
    else the style's, else piano (0)."""
    n = max(int(parts), 1)
    programs = np.zeros(n, np.int64)
    known = list((form or {}).get("programs", []))[:n]
    programs[:len(known)] = known
    if prompt_notes is not None and nt.num_notes(prompt_notes):
        part = part_ranks(np.zeros(nt.num_notes(prompt_notes), np.int64), prompt_notes["track"], n)
        for k in np.unique(part):
            programs[k] = int(np.asarray(prompt_notes["program"])[part == k][0])
    return programs
