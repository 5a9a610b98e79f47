"""What every representation shares: settings, the song frame (BOS ... EOS), and what other stages ask of it.

A representation turns a note table into one integer stream per event attribute
and back.  Each one is a small class over ``Representation`` in a file of its
own, registered by one line in ``encoding/__init__.py``:

* ``settings_class``: its settings, a ``Settings`` dataclass (documented defaults,
  one validator).  ``Representation(config)`` checks them and keeps the complete,
  resolved settings in ``self.config``, which is saved in the ``Vocab`` so a model
  always knows how its data was encoded.
* ``vocab(conditions)``: the streams and their token names.
* ``encode_events(notes, n_songs)``: the vectorized core.  ``notes`` holds many
  songs at once (a ``song`` column, 0..n_songs-1, rows grouped by song); it
  returns the events of all songs, song-major, without BOS/EOS.
* ``decode(streams)``: one song's streams -> a note table.

What training, generation and evaluation need to know about a representation
are methods with a neutral default, so no other module branches on its name:

* ``pitch_stream``: the stream holding pitches (None: no such stream);
* ``transpositions()``: id -> shifted id tables of that stream (None: it cannot be
  transposed);
* ``rest_ids()``: ids of that stream that are not notes (never called repetitions);
* ``step_token()``: the id that closes each time step, for a piano roll read step by
  step (``steps``): evaluation then also scores whole steps (None: no such token);
* ``token_features()``: optional fixed numeric features per token of a stream,
  which neural models add to the token's embedding.

``encode_song`` and ``encode_notes`` are the same core seen from one song or
from many; ``frame_songs`` adds the BOS/EOS positions with index arithmetic, so
no code path loops over notes or songs in Python.  ``cache.encode_corpus`` runs
the core over a whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from notelm import notes as nt
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL, Vocab
from notelm.io import NotelmError
from notelm.settings import Settings, parse_override

SHIFTS = tuple(range(-6, 6))  # the transpositions a pitch stream offers: every interval within a tritone


class Representation:
    name: str = ""
    settings_class: type[Settings] = Settings
    note_columns: tuple = tuple(nt.NOTE_COLUMNS)  # the note-table columns the encoder reads
    pitch_stream: str | None = None  # the stream holding pitches (transposition, repetition control)

    def __init__(self, config: dict | None = None):
        self.settings = self.settings_class.from_dict(dict(config or {}))
        self.config = self.resolve(self.settings.to_dict())

    # ------------------------------------------------------------------ settings
    def resolve(self, config: dict) -> dict:
        """Settings whose default depends on other settings are made explicit here."""
        return config

    @classmethod
    def parse_settings(cls, items: list[str] | None) -> dict:
        """``["key=value", ...]`` (the CLI's ``--set``, TOML values) -> typed settings, checked."""
        values = {}
        for item in items or []:
            path, value = parse_override(item)
            values[".".join(path)] = value
        checked = cls.settings_class.from_dict(values)
        return {key: getattr(checked, key) for key in values}

    # ------------------------------------------------------------------ interface
    @property
    def stream_names(self) -> list[str]:
        return [s.name for s in self.vocab().streams]

    def vocab(self, conditions=()) -> Vocab:
        raise NotImplementedError

    def encode_events(self, notes: nt.Notes, n_songs: int) -> EventColumns:
        """Events of many songs (``notes["song"]`` in 0..n_songs-1), song-major, without BOS/EOS."""
        raise NotImplementedError

    def decode(self, streams: dict[str, np.ndarray]) -> nt.Notes:
        raise NotImplementedError

    def quantize(self, notes: nt.Notes) -> nt.Notes:
        """The notes exactly as the encoding keeps them: ``decode(encode_song(x))`` equals it (as a multiset)."""
        raise NotImplementedError(f"the {self.name} representation is lossy: it has no exact round trip")

    def encode_song(self, notes: nt.Notes) -> dict[str, np.ndarray]:
        """One song's note table -> ``{stream: ids}`` framed as ``[BOS, events..., EOS]``."""
        notes = dict(notes, song=np.zeros(nt.num_notes(notes), np.int64))
        streams, _ = frame_songs(self.encode_events(notes, 1), 1, self.vocab())
        return streams

    def encode_notes(self, notes: nt.Notes, n_songs: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Many songs at once -> (concatenated framed streams, offsets [n_songs + 1])."""
        return frame_songs(self.encode_events(notes, n_songs), n_songs, self.vocab())

    # ------------------------------------------------------------------ what other stages ask
    def transpositions(self) -> dict[int, np.ndarray] | None:
        """For each shift in ``SHIFTS``: a table id -> shifted id of ``pitch_stream`` (-1 where the
        shift leaves the stream's range); None when this representation cannot be transposed."""
        return None

    def rest_ids(self) -> np.ndarray:
        """Ids of ``pitch_stream`` that are not notes (e.g. a rest): never penalized as repetitions."""
        return np.zeros(0, np.int64)

    def step_token(self) -> int | None:
        """The id of ``pitch_stream`` that ends each time step (``steps``); None for event representations."""
        return None

    def token_features(self) -> dict[str, np.ndarray]:
        """Optional: ``{stream: float32 [stream size, F]}``, fixed features of each token that a neural
        model adds to the token's learned embedding (e.g. the pitch class of a pitch).  None by default."""
        return {}


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


def notes_from_columns(onset_steps, duration_steps, pitch, velocity, program, is_drum, track,
                       steps_per_quarter) -> nt.Notes:
    """A note table on a grid of ``steps_per_quarter``; tick columns count grid steps (tpq = steps_per_quarter)."""
    n = len(onset_steps)
    cols = {
        "track": track, "onset_tick": onset_steps, "duration_tick": duration_steps,
        "onset": np.asarray(onset_steps, np.float64) / steps_per_quarter,
        "duration": np.asarray(duration_steps, np.float64) / steps_per_quarter,
        "pitch": pitch, "velocity": velocity, "program": program, "is_drum": is_drum,
    }
    return {k: np.ascontiguousarray(np.broadcast_to(np.asarray(v), (n,)), nt.NOTE_COLUMNS[k]) for k, v in cols.items()}
