"""Copy guard: sampled pieces never repeat more than ``LONGEST`` events in a row of a training song.

A model writes what it has learned, and now and then that is a whole phrase of one
training song.  The guard keeps, beside the model, the keys of the training songs'
``WINDOW``-event runs that start at every ``STRIDE``-th event of a song (the copy
index, ``copy_index.safetensors``).  A run of ``LONGEST + 1`` events shared with a
song holds ``STRIDE`` consecutive windows of the song, so one of them starts at a
kept position: when the event just drawn completes a kept window, its last value
(the event's last stream, e.g. the duration) is drawn again without the value that
made the copy.  Kept at every ``STRIDE``-th position, the index is ``STRIDE`` times
smaller than one holding every window (5 bytes per key, about 1.1 bytes per training
event); it also stops some shorter runs that happen to match a kept window.

Keys are 40-bit hashes of the windows' whole-event ids (``vocab.event_ids``): with
500,000 keys kept, a drawn event matches one by chance once in 2.2 million events
(with 32-bit keys it would be once in 8,600, about as often as the real copies); such
a collision only redraws a value that was not a copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from notelm.encoding.vocab import N_SPECIAL, Vocab, event_ids, mixed_radix
from notelm.io import NotelmError, atomic_path

LONGEST = 16  # the longest run of a training song's events a sampled piece may repeat
STRIDE = 4  # the index keeps the windows that start at every STRIDE-th event of a song
WINDOW = LONGEST + 2 - STRIDE  # a run of LONGEST + 1 events holds STRIDE windows: one starts at a kept position
FILE = "copy_index.safetensors"
KEY_BITS = 40  # stored as 32 + 8 bits
REDRAWS = 8  # tries per event before a copy is let through (every value the sampler allows makes one)

_OFFSET, _PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)  # FNV-1a over 64-bit words
_MIX = np.uint64(0xFF51AFD7ED558CCD)  # a final avalanche, so that the top 32 bits depend on every event


def window_keys(windows: np.ndarray) -> np.ndarray:
    """40-bit keys (as uint64) of whole-event windows ``[N, WINDOW]`` (int64 event ids)."""
    h = np.full(len(windows), _OFFSET, np.uint64)
    for column in np.asarray(windows, np.int64).T.astype(np.uint64):
        h = (h ^ column) * _PRIME  # uint64 arithmetic wraps around: the hash is mod 2**64
    h ^= h >> np.uint64(33)
    h *= _MIX
    h ^= h >> np.uint64(33)
    return h >> np.uint64(64 - KEY_BITS)


class CopyGuard:
    """The copy index of a model's training songs, and the check the sampler asks at every event."""

    def __init__(self, keys: np.ndarray, sizes: list[int]):
        self.keys = keys  # uint64, sorted and distinct: found by binary search
        self.sizes = [int(s) for s in sizes]  # the vocabulary's stream sizes: the radix of the event ids
        self.redrawn = 0  # events whose last value the guard drew again (for reports)

    @classmethod
    def build(cls, songs, vocab: Vocab) -> CopyGuard:
        """The index of ``songs`` (each a ``dict[str, np.ndarray]`` of stream ids, as ``Encoded.song`` gives)."""
        keys = [window_keys(np.lib.stride_tricks.sliding_window_view(ids, WINDOW)[::STRIDE])
                for ids in (event_ids(song, vocab) for song in songs) if len(ids) >= WINDOW]
        keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)
        return cls(keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys, vocab.sizes)

    def save(self, path) -> None:
        from safetensors.numpy import save_file

        meta = {"longest": str(LONGEST), "stride": str(STRIDE), "window": str(WINDOW), "key_bits": str(KEY_BITS),
                "sizes": json.dumps(self.sizes)}
        high, low = (self.keys >> np.uint64(8)).astype(np.uint32), (self.keys & np.uint64(0xFF)).astype(np.uint8)
        with atomic_path(path) as tmp:
            save_file({"high": high, "low": low}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path, vocab: Vocab) -> CopyGuard:
        """The index at ``path``, checked to be this version's and to fit ``vocab``."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "numpy") as f:
                meta, high, low = f.metadata() or {}, f.get_tensor("high"), f.get_tensor("low")
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise NotelmError(f"{path}: not a readable copy index ({e}); delete it to generate without the copy "
                              "guard") from None
        expected = {"longest": str(LONGEST), "stride": str(STRIDE), "window": str(WINDOW), "key_bits": str(KEY_BITS)}
        if (any(meta.get(k) != v for k, v in expected.items()) or (high.dtype, low.dtype) != (np.uint32, np.uint8)
                or high.ndim != 1 or high.shape != low.shape):
            raise NotelmError(f"{path}: a copy index of another layout (another notelm version); delete it to "
                              "generate without the copy guard")
        if meta.get("sizes") != json.dumps(vocab.sizes):
            raise NotelmError(f"{path}: a copy index of another vocabulary than its model's")
        keys = high.astype(np.uint64) << np.uint64(8) | low
        if not (keys[1:] > keys[:-1]).all():  # written sorted: a binary search in any other order finds nothing
            raise NotelmError(f"{path}: a damaged copy index (keys out of order); delete it to generate without the "
                              "copy guard")
        return cls(keys, vocab.sizes)

    def copies(self, history: np.ndarray, event: np.ndarray) -> np.ndarray:
        """Which pieces the new ``event`` ([S, B] stream ids) would make repeat a kept window of a training
        song, after ``history`` ([S, B, t] stream ids so far, BOS first)."""
        if history.shape[2] < WINDOW:  # BOS and fewer than WINDOW - 1 events: no window yet
            return np.zeros(history.shape[1], bool)
        values = np.concatenate([history[:, :, history.shape[2] - WINDOW + 1:], event[:, :, None]], 2)
        keys = window_keys(mixed_radix(values, self.sizes))
        slot = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = self.keys[slot] == keys if len(self.keys) else np.zeros(len(keys), bool)
        return found & (values >= N_SPECIAL).all((0, 2))  # a window through BOS or EOS is no song's

    def without_copies(self, history: np.ndarray, chosen: list[np.ndarray], logprobs: np.ndarray, redraw):
        """The last stream's values of the new event (``chosen[-1]``), drawn again where the event would
        copy: ``redraw(rows, logprobs)`` draws those rows from ``logprobs`` with the copying values removed.
        A piece whose every allowed value copies keeps its draw."""
        ids = chosen[-1].copy()
        logprobs = logprobs.copy()
        for _ in range(REDRAWS):
            copying = self.copies(history, np.stack(chosen[:-1] + [ids]))
            logprobs[copying, ids[copying]] = -np.inf
            rows = np.flatnonzero(copying & np.isfinite(logprobs).any(1))
            if not len(rows):
                break
            ids[rows] = redraw(rows, logprobs[rows])
            self.redrawn += len(rows)
        return ids


def guard_in_use(model, cfg) -> CopyGuard | None:
    """The guard sampling with ``cfg`` (a ``SamplingConfig``) puts on ``model``'s pieces: None where
    ``--copies allow`` or where the model carries no copy index."""
    return model.copy_guard if cfg.copies == "avoid" else None


def guard_for(directory: Path, vocab: Vocab) -> CopyGuard | None:
    """The copy index beside a model (its directory, or the run above ``best/`` / ``checkpoint/``), or None."""
    for candidate in (directory, directory.parent):
        if (candidate / FILE).is_file():
            return CopyGuard.load(candidate / FILE, vocab)
    return None


def write_index(path, encoded, vocab: Vocab) -> CopyGuard:
    """Build the copy index of ``encoded``'s train split and write it to ``path``."""
    guard = CopyGuard.build((encoded.song(int(i)) for i in encoded.ids("train")), vocab)
    guard.save(path)
    return guard
