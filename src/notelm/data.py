"""Training and evaluation data from encoded corpora: crops, splits, targets, transposition, conditions.

An encoded corpus is one integer array per stream with every song framed as
``[BOS ... EOS]`` one after another; song ``i`` is ``offsets[i]:offsets[i + 1]``.
Everything here works on those arrays with index arithmetic: no window or crop
is ever materialized for the whole corpus.

* ``CropSampler``: random crops of whole songs (the training batches), and the
  windows of the original's random *window* split (``window_splits``).
* ``check_streams`` / ``check_song`` / ``song_ranges`` / ``target_positions``: what a
  model is given, checked, and the positions of the targets of a set of songs.
* ``transpose_batch``: every crop of a batch shifted by its own random interval,
  through a representation's ``transpositions()`` tables.
* ``condition_map``: a corpus's condition ids in a model's numbering.
"""

from __future__ import annotations

import numpy as np

from notelm.corpus import SPLITS
from notelm.encoding.vocab import BOS, EOS, PAD, UNCONDITIONED, Vocab
from notelm.io import NotelmError


class CropSampler:
    """Random crops of ``length`` events from a set of songs, cut from contiguous streams.

    Every start position of every song is equally likely (as if all windows had
    been materialized and shuffled, without materializing them), unless
    ``song_weights`` are given: then a song is drawn with the chance of its
    weight, then one of its crops (see ``crop_weights``).  Songs shorter than a
    crop give one crop padded with PAD.

    ``start_share`` of the crops begin at their song's first event (BOS), the songs of
    these drawn so that every song of a label opens about equally often (``opening_weights``).
    """

    def __init__(self, streams: list[np.ndarray], offsets: np.ndarray, songs: np.ndarray, length: int,
                 windows: np.ndarray | None = None, song_weights: np.ndarray | None = None, start_share: float = 0.0,
                 labels: np.ndarray | None = None):
        self.streams, self.length = streams, length
        self.start_share = start_share  # this share of crops begins at its song's first event
        self.windows = windows  # if given, only these window indices are ever drawn
        self.songs = np.asarray(songs, np.int64)
        if not len(self.songs):
            raise NotelmError("no songs to train on in this split")
        self.start = offsets[self.songs]
        self.end = offsets[self.songs + 1]
        n_starts = np.maximum(self.end - self.start - length + 1, 1)
        self.cum = np.concatenate([[0], np.cumsum(n_starts)])
        self.cum_weight = None if song_weights is None else np.concatenate([[0], np.cumsum(song_weights)])
        self.cum_opening = None
        if start_share and windows is None:
            chance = (n_starts if song_weights is None else np.asarray(song_weights, np.float64)).astype(np.float64)
            labels = np.zeros(len(self.songs), np.int64) if labels is None else np.asarray(labels)
            extra = opening_weights(chance / chance.sum(), n_starts, labels, start_share)
            self.cum_opening = np.concatenate([[0], np.cumsum(extra)])

    @property
    def n_windows(self) -> int:
        return int(self.cum[-1])

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [batch, length, S] int64, song index [batch])."""
        if self.windows is not None:
            return self.at(self.windows[rng.integers(0, len(self.windows), batch)])
        if self.cum_weight is not None:
            k = self._draw_songs(self.cum_weight, rng, batch)
            window = self.cum[k] + (rng.random(batch) * (self.cum[k + 1] - self.cum[k])).astype(np.int64)
        else:
            window = rng.integers(0, self.n_windows, batch)
        if self.cum_opening is not None:
            # a long song's first events are in few of its crops: without these, a model sees how pieces
            # begin almost only in the short songs, and writes their openings in every style
            song = self._draw_songs(self.cum_opening, rng, batch)
            window = np.where(rng.random(batch) < self.start_share, self.cum[song], window)
        return self.at(window)

    def _draw_songs(self, cum: np.ndarray, rng: np.random.Generator, batch: int) -> np.ndarray:
        """``batch`` song indices, each with the chance of its weight (``cum``: the weights' running sum from 0)."""
        k = np.searchsorted(cum, rng.random(batch) * cum[-1], side="right") - 1
        return np.minimum(k, len(self.songs) - 1)

    def at(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The crops with the given window indices (0 .. n_windows-1)."""
        k = np.searchsorted(self.cum, window, side="right") - 1
        first = self.start[k] + (window - self.cum[k])
        index = first[:, None] + np.arange(self.length)
        valid = index < self.end[k][:, None]
        index = np.minimum(index, len(self.streams[0]) - 1)
        tokens = np.stack([np.where(valid, s[index], PAD) for s in self.streams], -1).astype(np.int64)
        return tokens, self.songs[k]


def crop_weights(mode: str, lengths: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Each song's chance of giving the next training crop under ``train.crops`` (None: every crop alike).

    ``by_length``: a song with the chance of its length.  When songs are about as long as a crop, drawing
    crops uniformly would weigh a song by how far it exceeds a crop, not by its length.
    ``balanced``: as ``by_length``, but each label (the song's condition: its collection, say) as a whole
    with the chance of the square root of its length in events.  A collection 1 % of the crops (the Bach
    chorales beside POP909) gets about 11 % of them: seen often enough to learn its style, not so often
    that it is learned by heart.
    """
    lengths = np.asarray(lengths, np.float64)
    if mode == "uniform":
        return None
    if mode == "by_length":
        return lengths
    _, label = np.unique(labels, return_inverse=True)
    total = np.bincount(label, weights=lengths)
    return lengths / np.sqrt(np.maximum(total[label], 1.0))


def opening_weights(chance: np.ndarray, n_starts: np.ndarray, labels: np.ndarray, share: float) -> np.ndarray:
    """Each song's chance of giving a start crop, so that songs of a label open as equally often as ``share`` allows.

    A crop that begins at a song's first event teaches how a piece opens.  Drawn like the other crops (a song
    with ``chance``, then one of its ``n_starts`` crops), a song opens with the chance ``chance / n_starts``:
    with crops drawn by length, a tune of 200 events (one crop) opens 30 times as often as one of 300 (44
    crops), and a model samples openings, and so whole pieces, mostly like the short songs.  Here the start
    crops (``share`` of all crops; each label gets its part of them, ``share`` times its songs' ``chance``)
    go to the songs that open least, until every song of the label opens equally often or the share is
    spent (water filling: extra = max(level - natural, 0), the level set so the extras sum to the part).
    """
    natural = (1.0 - share) * chance / n_starts
    extra = np.zeros(len(chance))
    for label in np.unique(labels):
        mine = np.flatnonzero(labels == label)
        order = mine[np.argsort(natural[mine])]
        low = natural[order]
        budget = share * chance[mine].sum()
        # with the k least-opening songs filled to one level: level_k = (budget + their natural sum) / k;
        # the right k is the first whose level does not reach the next song's natural chance
        level = (budget + np.cumsum(low)) / np.arange(1, len(low) + 1)
        k = int(np.argmax(level <= np.append(low[1:], np.inf)))
        extra[order] = np.maximum(level[k] - low, 0.0)
    return extra


def window_splits(n_windows: int, fractions=(0.8, 0.1, 0.1), seed: int = 1234) -> dict[str, np.ndarray]:
    """The original experiment's split: every window independently to train/valid/test at random.

    Overlapping windows of one song land on both sides, so test windows share
    31 of their 32 notes with training windows: the leak a song-level split avoids.
    """
    code = np.random.default_rng(seed).choice(len(SPLITS), n_windows, p=fractions)
    return {name: np.flatnonzero(code == i) for i, name in enumerate(SPLITS)}


# --------------------------------------------------------------------------- songs and targets


def check_streams(vocab: Vocab, streams: dict[str, np.ndarray], what: str = "song") -> int:
    """Raise unless ``streams`` has exactly the vocabulary's streams, equally long, in range; return the length."""
    if set(streams) != set(vocab.names):
        raise NotelmError(f"{what} has streams {sorted(streams)}, the model expects {vocab.names}")
    lengths = {len(np.asarray(streams[name])) for name in vocab.names}
    if len(lengths) != 1:
        raise NotelmError(f"{what} has streams of different lengths {sorted(lengths)}")
    for name in vocab.names:
        if not np.issubdtype(np.asarray(streams[name]).dtype, np.integer):
            raise NotelmError(f"{what}: stream {name!r} must hold integer ids, not {np.asarray(streams[name]).dtype}")
    vocab.check_ids({name: np.asarray(streams[name]) for name in vocab.names})
    return lengths.pop()


def check_song(vocab: Vocab, streams: dict[str, np.ndarray]) -> int:
    """Validate one song for ``predict`` (starts with BOS in every stream); return its length."""
    length = check_streams(vocab, streams)
    if length == 0 or any(int(streams[name][0]) != BOS for name in vocab.names):
        raise NotelmError("a song must start with the BOS event in every stream")
    return length


def song_ranges(vocab: Vocab, streams: dict[str, np.ndarray], offsets, song_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(starts, ends)`` int64 of the songs ``song_ids`` (default: all) of an encoded corpus."""
    n_events = check_streams(vocab, streams, what="corpus")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_events \
            or np.any(np.diff(offsets) < 2):
        raise NotelmError(f"offsets must rise from 0 to {n_events} with at least 2 events (BOS, EOS) per song")
    n_songs = len(offsets) - 1
    song_ids = np.arange(n_songs) if song_ids is None else np.asarray(song_ids, dtype=np.int64).reshape(-1)
    if len(song_ids) == 0:
        raise NotelmError("no songs to fit on")
    if song_ids.min() < 0 or song_ids.max() >= n_songs:
        raise NotelmError(f"song ids must lie in 0..{n_songs - 1}")
    starts, ends = offsets[song_ids], offsets[song_ids + 1]
    for name in vocab.names:
        bad = np.flatnonzero((streams[name][starts] != BOS) | (streams[name][ends - 1] != EOS))
        if len(bad):
            raise NotelmError(f"song {song_ids[bad[0]]} does not start with BOS and end with EOS in stream {name!r}")
    return starts, ends


def target_positions(vocab: Vocab, streams: dict[str, np.ndarray], offsets, song_ids=None):
    """Positions of the targets of the chosen songs and the start of each target's song.

    Returns ``(targets, song_start)``, both int64 ``[N]``: every position after the first
    (BOS) of each chosen song.  Nothing of the corpus is copied.
    """
    starts, ends = song_ranges(vocab, streams, offsets, song_ids)
    owner, targets = expand_ranges(starts + 1, ends)
    return targets, starts[owner]


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``i`` with ``lo[r] <= i < hi[r]`` for every row ``r``: returns ``(row, i)``, vectorized."""
    lengths = hi - lo
    row = np.repeat(np.arange(len(lo)), lengths)
    first = np.cumsum(lengths) - lengths  # where each row's run begins in the output
    return row, np.arange(row.size, dtype=np.int64) - np.repeat(first - lo, lengths)


# --------------------------------------------------------------------------- transposition and conditions


def transpose_batch(tokens: np.ndarray, pitch_index: int, tables: dict[int, np.ndarray],
                    rng: np.random.Generator) -> np.ndarray:
    """Shift each crop's pitch stream by its own random interval (``tables``: a representation's
    ``transpositions()``); a crop that some drawn shift would take out of range stays as it is."""
    shifts = np.array(sorted(tables))
    stacked = np.stack([tables[k] for k in shifts])  # [12, V]
    pitch = tokens[..., pitch_index]
    choice = rng.integers(0, len(shifts), len(tokens))
    moved = stacked[choice[:, None], pitch]
    bad = (moved < 0).any(axis=1)
    moved[bad] = pitch[bad]  # no shift fits this crop: leave it as it is
    tokens = tokens.copy()
    tokens[..., pitch_index] = moved
    return tokens


def condition_map(model_vocab: Vocab, corpus_vocab: Vocab, conditioned: bool = True) -> np.ndarray:
    """Corpus condition id -> the model's: ``condition_map(...)[encoded.cond]`` gives each song's.

    Collections the model does not know (or every one, when not ``conditioned``) map to
    ``UNCONDITIONED``.
    """
    known = [model_vocab.conditions.index(c) + 1 if conditioned and c in model_vocab.conditions else UNCONDITIONED
             for c in corpus_vocab.conditions]
    return np.array([UNCONDITIONED, *known], np.int64)
