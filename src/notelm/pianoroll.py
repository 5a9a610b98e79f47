"""The classic piano-roll benchmark's MATLAB files as songs.

The four sets of Boulanger-Lewandowski, Bengio & Vincent (ICML 2012) - JSB
Chorales, Nottingham, Piano-midi.de, MuseData - come as ``.mat`` files holding
``traindata``, ``validdata`` and ``testdata``: cells of uint8 rolls ``[steps, 88]``
(column i is MIDI pitch 21 + i).  ``notelm prepare FILE.mat`` reads them with
``scipy.io.loadmat`` (scipy: the ``pianoroll`` extra, ``pip install 'notelm[pianoroll]'``):

* every sequence becomes a song whose split is the file's own (never the hash
  split: published results train, select and test on these very sequences);
* a time step becomes an eighth note (``TICKS_PER_QUARTER`` = 2 ticks, one tick per
  step; the files do not say how long a step is, so one grid serves all four sets);
* a key that sounds in consecutive steps becomes one note: the benchmark does not
  tell a held key from one struck again, and neither can notelm;
* silent steps before the first note are kept (the song starts at step 0), silent
  steps after the last note are not (3 training sequences of the four sets end in
  silence).

The ``steps`` representation (``encoding/steps.py``) reads such a corpus back to
exactly these rolls; ``rollmetrics.py`` holds the benchmark's metric and baselines.
"""

from __future__ import annotations

import io

import numpy as np

from notelm import notes as nt

MAT_SPLITS = {"traindata": "train", "validdata": "valid", "testdata": "test"}
LOWEST_KEY = 21
KEYS = 88
TICKS_PER_QUARTER = 2  # one tick per step, a step is an eighth note
VELOCITY = 80


class RollError(ValueError):
    """A .mat file that is not a piano-roll benchmark file; the message says why."""


# --------------------------------------------------------------------------- reading .mat files


def load_mat(data: bytes) -> list[nt.RawSong]:
    """The sequences of a benchmark .mat file as songs, in file order (train, valid, test), each with its split."""
    try:
        import scipy.io
    except ImportError:
        raise RollError("reading .mat files needs scipy: pip install 'notelm[pianoroll]'") from None
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for files it cannot read
        raise RollError(f"not a readable MATLAB file: {type(e).__name__}: {e}") from None
    if not any(key in mat for key in MAT_SPLITS):
        raise RollError("no traindata, validdata or testdata in this MATLAB file (not a piano-roll benchmark file)")
    songs = []
    for key, split in MAT_SPLITS.items():
        if key in mat:
            songs += [raw_from_roll(roll_of(cell, key), split) for cell in np.asarray(mat[key], object).reshape(-1)]
    return songs


def roll_of(cell, where: str) -> np.ndarray:
    roll = np.asarray(cell)
    if roll.ndim != 2 or roll.shape[1] != KEYS or not np.isin(roll, (0, 1)).all():
        raise RollError(f"{where}: a sequence of shape {roll.shape} is not a 0/1 roll of {KEYS} keys")
    return roll.astype(np.uint8)


def raw_from_roll(roll: np.ndarray, split: str = "") -> nt.RawSong:
    """A roll ``[steps, 88]`` -> a RawSong of one track: each run of a key over consecutive steps is a note."""
    padded = np.zeros((KEYS, len(roll) + 2), np.int8)
    padded[:, 1:-1] = roll.T
    change = np.diff(padded, axis=1)  # +1 where a run starts, -1 just after it ends
    key, onset = np.nonzero(change == 1)  # key-major: runs of a key in time order
    _, end = np.nonzero(change == -1)
    events = {"tempos": {"tick": np.zeros(1, np.int64), "qpm": np.array([120.0])},
              "timesigs": {"tick": np.zeros(0, np.int64), "numerator": np.zeros(0, np.int64),
                           "denominator": np.zeros(0, np.int64)},
              "keysigs": {"tick": np.zeros(0, np.int64), "sharps": np.zeros(0, np.int64),
                          "minor": np.zeros(0, np.int64)}}
    raw = nt.RawSong(TICKS_PER_QUARTER, events, split=split)
    if len(key):
        raw.tracks.append((onset.astype(np.int64), (end - onset).astype(np.int64), key.astype(np.int64) + LOWEST_KEY,
                           np.full(len(key), VELOCITY, np.int64), 0, 0, False))
    return raw
