"""What every representation shares: settings, the song frame (BOS ... EOS) and the corpus loop.

A representation turns a note table into one integer stream per event attribute
and back.  Each one is a small class over ``Representation``:

* ``defaults`` / ``choices``: its settings; ``Representation(config)`` checks
  them (unknown key, wrong type, value out of range -> one-line NotelmError) and
  keeps the complete, resolved settings in ``self.config``, which is saved in
  the ``Vocab`` so a model always knows how its data was encoded.
* ``vocab(conditions)``: the streams and their token names.
* ``encode_events(notes, n_songs)``: the vectorized core.  ``notes`` holds many
  songs at once (a ``song`` column, 0..n_songs-1, rows grouped by song); it
  returns the events of all songs, song-major, without BOS/EOS.
* ``decode(streams)``: one song's streams -> a note table.

``encode_song`` and ``encode_corpus`` are the same core seen from one song or
from a whole corpus; ``frame_songs`` adds the BOS/EOS positions with index
arithmetic, so no code path loops over notes or songs in Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from notelm import notes as nt
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL, Vocab
from notelm.io import NotelmError

CHUNK_NOTES = 50_000  # notes per step of encode_corpus: steps this small stay in cache (2x faster than one big step)


class Representation:
    name: str = ""
    defaults: dict = {}
    choices: dict = {}  # setting -> allowed string values
    minimum: dict = {}  # setting -> smallest allowed number
    note_columns: tuple = tuple(nt.NOTE_COLUMNS)  # the note-table columns the encoder reads

    def __init__(self, config: dict | None = None):
        self.config = self.resolve(self.check_settings(config or {}))

    # ------------------------------------------------------------------ settings
    def check_settings(self, config: dict) -> dict:
        """Defaults overlaid with ``config``; every key known, every value of the default's type."""
        out = dict(self.defaults)
        for key, value in config.items():
            if key not in self.defaults:
                raise NotelmError(f"unknown {self.name} setting {key!r}; valid settings: {', '.join(self.defaults)}")
            out[key] = _checked(self.name, key, value, self.defaults[key], self.choices.get(key), self.minimum.get(key))
        return out

    def resolve(self, config: dict) -> dict:
        """Settings whose default depends on other settings are made explicit here."""
        return config

    @classmethod
    def parse_settings(cls, items: list[str] | None) -> dict:
        """``["key=value", ...]`` (the CLI's ``--set``) -> typed settings, checked against the defaults."""
        out = {}
        for item in items or []:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep:
                raise NotelmError(f"--set {item!r}: expected key=value")
            if key not in cls.defaults:
                raise NotelmError(f"unknown {cls.name} setting {key!r}; valid settings: {', '.join(cls.defaults)}")
            out[key] = _parse_value(cls.name, key, text.strip(), cls.defaults[key])
        return out

    # ------------------------------------------------------------------ interface
    @property
    def stream_names(self) -> list[str]:
        return [s.name for s in self.vocab().streams]

    def vocab(self, conditions=()) -> Vocab:
        raise NotImplementedError

    def encode_events(self, notes: nt.Notes, n_songs: int) -> "EventColumns":
        """Events of many songs (``notes["song"]`` in 0..n_songs-1), song-major, without BOS/EOS."""
        raise NotImplementedError

    def decode(self, streams: dict[str, np.ndarray]) -> nt.Notes:
        raise NotImplementedError

    def quantize(self, notes: nt.Notes) -> nt.Notes:
        """The notes exactly as the encoding keeps them: ``decode(encode_song(x))`` equals it (as a multiset)."""
        raise NotImplementedError(f"the {self.name} representation is lossy (chords become roots): it has no exact round trip")

    def encode_song(self, notes: nt.Notes) -> dict[str, np.ndarray]:
        """One song's note table -> ``{stream: ids}`` framed as ``[BOS, events..., EOS]``."""
        notes = dict(notes, song=np.zeros(nt.num_notes(notes), np.int64))
        streams, _ = frame_songs(self.encode_events(notes, 1), 1, self.vocab())
        return streams

    def encode_notes(self, notes: nt.Notes, n_songs: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Many songs at once -> (concatenated framed streams, offsets [n_songs + 1])."""
        return frame_songs(self.encode_events(notes, n_songs), n_songs, self.vocab())

    def encode_corpus(self, corpus, progress: bool = False):
        """A whole ``Corpus`` -> ``EncodedCorpus`` (in memory; ``cache.load_or_encode`` stores it)."""
        from tqdm import tqdm

        from notelm.encoding.cache import EncodedCorpus, split_codes

        started = time.perf_counter()
        vocab = self.vocab(corpus.collections)
        columns = corpus.all_notes(["song", *self.note_columns])
        starts = np.asarray(corpus.songs["note_start"], np.int64)
        ends = np.asarray(corpus.songs["note_end"], np.int64)
        n_songs = len(starts)
        parts, offsets, base = [], [np.zeros(1, np.int64)], 0
        bar = tqdm(total=int(ends[-1]) if n_songs else 0, unit="note", unit_scale=True, desc=f"encode {self.name}",
                   disable=not progress, dynamic_ncols=True, delay=0.5)  # a bar only when it takes a while
        for lo, hi in song_chunks(starts, ends, CHUNK_NOTES):  # a loop per chunk of songs, not per song
            a, b = int(starts[lo]), int(ends[hi - 1])
            chunk = {k: v[a:b] for k, v in columns.items()}
            chunk["song"] = np.subtract(chunk["song"], lo, dtype=np.int64)
            streams, chunk_offsets = self.encode_notes(chunk, hi - lo)
            parts.append(streams)
            offsets.append(chunk_offsets[1:] + base)
            base += int(chunk_offsets[-1])
            bar.update(b - a)
        bar.close()
        streams = {s.name: np.concatenate([p[s.name] for p in parts]) if parts else np.zeros(0, s.dtype)
                   for s in vocab.streams}
        cond = condition_ids(vocab, corpus.songs["collection"])
        encoded = EncodedCorpus(vocab, streams, np.concatenate(offsets), cond, split_codes(corpus.songs["split"]))
        encoded.seconds = time.perf_counter() - started
        return encoded


# --------------------------------------------------------------------------- shared helpers

@dataclass
class EventColumns:
    """The events of many songs before framing, song-major (``song`` is non-decreasing).

    ``lead[i]`` filler positions come right before event ``i`` (the rests that
    split a long gap in ``events``), holding ``filler[stream]`` in every stream.
    """

    song: np.ndarray
    values: dict[str, np.ndarray]
    lead: np.ndarray | None = None
    filler: dict[str, int] | None = None


def frame_songs(events: EventColumns, n_songs: int, vocab: Vocab):
    """Events -> streams with BOS before and EOS after every song, plus offsets [n_songs + 1].

    Event ``i`` of song ``s`` lands at ``i + (fillers up to and including its own) + 2 s + 1``:
    after the BOS and EOS of the ``s`` songs before it and its own song's BOS.
    A song without events is ``[BOS, EOS]``.
    """
    song = np.asarray(events.song, np.int64)
    n = len(song)
    # used[i]: positions (events and fillers) taken by events 0..i-1
    used = np.zeros(n + 1, np.int64)
    if events.lead is None:
        used[1:] = np.arange(1, n + 1)
    else:
        np.cumsum(events.lead + 1, out=used[1:])
    counts = np.diff(used[np.searchsorted(song, np.arange(n_songs + 1))])
    offsets = np.zeros(n_songs + 1, np.int64)
    np.cumsum(counts + 2, out=offsets[1:])
    position = used[1:]  # (reuses ``used``, done with) index among events and fillers + 1 for its song's BOS,
    position += song  # + 2 per earlier song (its BOS and EOS)
    position += song
    streams = {}
    for stream in vocab.streams:
        fill = events.filler[stream.name] if events.filler else 0
        out = np.full(int(offsets[-1]), fill, stream.dtype)
        out[offsets[:-1]] = BOS
        out[offsets[1:] - 1] = EOS
        out[position] = events.values[stream.name]
        streams[stream.name] = out
    return streams, offsets


def condition_ids(vocab: Vocab, collections) -> np.ndarray:
    """Condition id of every song from its collection name (vocab.conditions are sorted names; 0 = none)."""
    names, inverse = np.unique(np.asarray(collections).astype(str), return_inverse=True)
    known = np.asarray(vocab.conditions, dtype=str)
    if not len(known) or not len(names):
        return np.zeros(len(inverse), np.int32)
    at = np.minimum(np.searchsorted(known, names), len(known) - 1)
    ids = np.where(known[at] == names, at + 1, 0).astype(np.int32)
    return ids[inverse.reshape(-1)]


def song_chunks(starts: np.ndarray, ends: np.ndarray, max_notes: int):
    """``(lo, hi)`` song ranges holding about ``max_notes`` notes each (a song is never cut)."""
    n = len(starts)
    lo = 0
    while lo < n:
        hi = int(np.searchsorted(ends, starts[lo] + max_notes, side="right"))
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def group_starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where any of the (already sorted) key columns changes: the first row of each group."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def single_song(streams: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """One song's streams as int64 arrays, cut at the first EOS after the start, specials dropped.

    Positions where any stream holds a special id (BOS, PAD, or a model's malformed
    output) carry no event; they are removed so decoders see regular ids only.
    """
    arrays = [np.asarray(streams[n], np.int64).reshape(-1) for n in names]
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise NotelmError(f"streams {names} have different lengths {sorted(lengths)}")
    length = lengths.pop()
    stack = np.stack(arrays) if length else np.zeros((len(names), 0), np.int64)
    eos = np.flatnonzero((stack[:, 1:] == EOS).any(0)) + 1 if length > 1 else np.zeros(0, np.int64)
    if len(eos):
        stack = stack[:, : eos[0]]
    keep = (stack >= N_SPECIAL).all(0)
    return {n: stack[i, keep] - N_SPECIAL for i, n in enumerate(names)}  # regular values from 0


def notes_from_columns(onset_steps, duration_steps, pitch, velocity, program, is_drum, track, steps_per_quarter) -> nt.Notes:
    """A note table on a grid of ``steps_per_quarter``; tick columns count grid steps (tpq = steps_per_quarter)."""
    n = len(onset_steps)
    cols = {
        "track": track, "onset_tick": onset_steps, "duration_tick": duration_steps,
        "onset": np.asarray(onset_steps, np.float64) / steps_per_quarter,
        "duration": np.asarray(duration_steps, np.float64) / steps_per_quarter,
        "pitch": pitch, "velocity": velocity, "program": program, "is_drum": is_drum,
    }
    return {k: np.ascontiguousarray(np.broadcast_to(np.asarray(v), (n,)), nt.NOTE_COLUMNS[k]) for k, v in cols.items()}


def _checked(rep: str, key: str, value, default, choices, minimum):
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    elif kind is float:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise NotelmError(f"{rep} setting {key}: expected {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
    value = kind(value)
    if choices and value not in choices:
        raise NotelmError(f"{rep} setting {key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if minimum is not None and value < minimum:
        raise NotelmError(f"{rep} setting {key}: {value!r} is below the minimum {minimum}")
    return value


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _parse_value(rep: str, key: str, text: str, default):
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        return kind(text)
    except ValueError:
        raise NotelmError(f"{rep} setting {key}: expected {_KIND_NAMES.get(kind, kind.__name__)}, got {text!r}") from None
