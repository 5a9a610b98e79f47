"""The classic piano-roll benchmark: its MATLAB files in, its metric and its two baselines out.

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
exactly these rolls.  The published metric is the negative log-likelihood of each
time step given every earlier step of its sequence, in nats, averaged over the
predicted steps 2..T of every sequence of the split (``step_nll``).  Two baselines
calibrate it (``bernoulli_nll``, ``markov_nll``).
"""

from __future__ import annotations

import io

import numpy as np

from notelm import notes as nt
from notelm.encoding.vocab import N_SPECIAL

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
        raise RollError("reading .mat files needs scipy: pip install 'notelm[pianoroll]' (or pip install scipy)")
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


# --------------------------------------------------------------------------- the metric


def scored_rows(tokens: np.ndarray, step_id: int) -> np.ndarray:
    """Rows of ``model.predict(song)`` (row r predicts token r + 1) whose token belongs to steps 2..T.

    ``tokens`` is one song ``[BOS, step 1 ..., step T ..., EOS]``; EOS is not a step's token.
    """
    tokens = np.asarray(tokens, np.int64)
    steps_before = np.cumsum(tokens == step_id)[:-1]  # end-of-step tokens among tokens[0..r]
    return np.flatnonzero((steps_before >= 1) & (tokens[1:] >= N_SPECIAL))


def step_logprob(logprobs: np.ndarray, tokens: np.ndarray, rows: np.ndarray) -> float:
    """Sum of the log-probabilities of ``tokens[rows + 1]``, each renormalized over the regular ids.

    A step's tokens are keys and the end-of-step token, never PAD, BOS or EOS; the
    published metric conditions on the sequence's length, so EOS is ruled out where a
    step begins: the mass a model gives special ids is given back to the others.
    """
    lp = np.asarray(logprobs, np.float64)[rows]
    regular = lp[:, N_SPECIAL:]
    top = regular.max(1, keepdims=True)
    norm = np.log(np.exp(regular - top).sum(1)) + top[:, 0]
    return float((lp[np.arange(len(rows)), np.asarray(tokens)[rows + 1]] - norm).sum())


def step_nll(model, songs: list[dict[str, np.ndarray]], conds, step_id: int, stream: str = "pitch") -> float:
    """Nats per predicted step of ``model`` (any ``NextEventModel``) over the ``songs`` (framed token streams)."""
    total, steps = 0.0, 0
    for song, cond in zip(songs, conds):
        tokens = np.asarray(song[stream], np.int64)
        n_steps = int((tokens == step_id).sum())
        if n_steps < 2:
            continue
        rows = scored_rows(tokens, step_id)
        logprobs = model.predict({stream: tokens}, int(cond))[stream]
        total -= step_logprob(logprobs, tokens, rows)
        steps += n_steps - 1
    return total / max(steps, 1)


# --------------------------------------------------------------------------- the two baselines


def bernoulli_nll(train: list[np.ndarray], rolls: list[np.ndarray]) -> float:
    """A Bernoulli per key, p = (times on in training steps 2..T + 0.5) / (those steps + 1): nats per step 2..T."""
    on = sum(r[1:].sum(0, dtype=np.int64) for r in train)
    n = sum(len(r) - 1 for r in train)
    p = (on + 0.5) / (n + 1)
    x = np.concatenate([r[1:] for r in rolls]).astype(np.float64)
    return float(-(x @ np.log(p) + (1 - x) @ np.log1p(-p)).sum() / max(len(x), 1))


def markov_nll(train: list[np.ndarray], rolls: list[np.ndarray]) -> float:
    """A Bernoulli per key given the same key in the previous step: nats per step 2..T.

    p(on | previous on) = (on after on + 0.5) / (previous on + 1), likewise after off,
    counted over training steps 2..T.
    """
    prev = np.concatenate([r[:-1] for r in train]).astype(np.int64)
    cur = np.concatenate([r[1:] for r in train]).astype(np.int64)
    on_after = np.stack([((prev == a) & (cur == 1)).sum(0) for a in (0, 1)])  # [previous state, key]
    seen = np.stack([(prev == a).sum(0) for a in (0, 1)])
    p_on = (on_after + 0.5) / (seen + 1)
    prev = np.concatenate([r[:-1] for r in rolls]).astype(np.int64)
    x = np.concatenate([r[1:] for r in rolls]).astype(np.float64)
    p = p_on[prev, np.arange(KEYS)]
    return float(-(x * np.log(p) + (1 - x) * np.log1p(-p)).sum() / max(len(x), 1))
