"""Dummy baselines per stream: what the original experiment compared its LSTM against.

* ``MajorityModel`` — sklearn's ``DummyClassifier(strategy="most_frequent")``: always
  the most frequent training target.
* ``StratifiedModel`` — ``strategy="stratified"``: a random guess drawn from the class
  prior.  Its log-probabilities are that prior (so its NLL is the unigram
  cross-entropy); its *expected* accuracy is ``sum_i p_i * f_i`` (``sum p_i^2`` on the
  training distribution), given by ``expected_accuracy`` because an argmax over its
  log-probabilities would measure the majority strategy instead.

Both are fitted on the targets of the training songs: every event after a song's
BOS, EOS included.  PAD and BOS are never targets and get probability 0 (log-prob
``-inf``) in every model of this package.

This module also holds the helpers the n-gram models share: checking streams
against the vocabulary, finding the target positions of a subset of songs,
saving and loading ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from notelm.encoding.vocab import BOS, EOS, Vocab
from notelm.io import NotelmError, atomic_path, read_json, write_json
from notelm.models.base import NextEventModel

FIRST_TARGET = EOS  # ids below this (PAD, BOS) are never predicted

# ---------------------------------------------------------------------------- shared helpers


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


def chosen_songs(vocab: Vocab, streams: dict[str, np.ndarray], offsets, song_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(starts, ends)`` int64 of the songs ``song_ids`` (default: all) of an encoded corpus."""
    n_events = check_streams(vocab, streams, what="corpus")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_events or np.any(np.diff(offsets) < 2):
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


def song_targets(vocab: Vocab, streams: dict[str, np.ndarray], offsets, song_ids=None):
    """Positions of the targets of the chosen songs and the start of each target's song.

    Returns ``(targets, song_start)``, both int64 ``[N]``: every position after the first
    (BOS) of each chosen song.  Nothing of the corpus is copied.
    """
    starts, ends = chosen_songs(vocab, streams, offsets, song_ids)
    owner, targets = expand_ranges(starts + 1, ends)
    return targets, starts[owner]


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ``i`` with ``lo[r] <= i < hi[r]`` for every row ``r``: returns ``(row, i)``, vectorized."""
    lengths = hi - lo
    row = np.repeat(np.arange(len(lo)), lengths)
    first = np.cumsum(lengths) - lengths  # where each row's run begins in the output
    return row, np.arange(row.size, dtype=np.int64) - np.repeat(first - lo, lengths)


def save_model(directory, config: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``model.safetensors`` then ``config.json`` into ``directory``, each atomically."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    write_json(directory / "config.json", config)


def load_model_files(directory, family: str) -> tuple[dict, Vocab, dict[str, np.ndarray]]:
    """Read back what ``save_model`` wrote, checking the model family."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    try:
        config = read_json(directory / "config.json")
        arrays = load_file(str(directory / "model.safetensors"))
    except FileNotFoundError as e:
        raise NotelmError(f"{directory}: not a saved model ({Path(e.filename).name} missing)") from None
    except Exception as e:  # a truncated or foreign file
        raise NotelmError(f"{directory}: unreadable model files ({e})") from None
    if config.get("family") != family:
        raise NotelmError(f"{directory}: holds a {config.get('family')!r} model, not {family!r}")
    return config, Vocab.from_json(config["vocab"]), arrays


# ---------------------------------------------------------------------------- baselines


class _PriorBaseline(NextEventModel):
    """A model whose prediction ignores the context: one fixed distribution per stream."""

    family = "prior"

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.counts: dict[str, np.ndarray] = {}  # per stream: how often each id was a training target

    def fit(self, streams: dict[str, np.ndarray], offsets, song_ids=None, positions=None):
        """Count the targets of the songs ``song_ids`` (default: all); returns ``self``.

        ``positions``: count only the targets at these corpus positions (e.g. the
        training windows of a random window split).
        """
        targets, _ = song_targets(self.vocab, streams, offsets, song_ids)
        if positions is not None:
            targets = targets[np.isin(targets, positions)]
        for s in self.vocab.streams:
            self.counts[s.name] = np.bincount(streams[s.name][targets], minlength=s.size).astype(np.int64)
        return self

    def _logprobs(self, name: str) -> np.ndarray:  # float64 [V]
        raise NotImplementedError

    def _fitted(self) -> None:
        if not self.counts:
            raise NotelmError(f"the {self.family} model has not been fitted")

    # evaluation
    def predict(self, streams, cond=0):
        self._fitted()
        length = check_song(self.vocab, streams)
        return {name: np.broadcast_to(self._logprobs(name).astype(np.float32), (length - 1, len(self.counts[name]))).copy()
                for name in self.vocab.names}

    # generation: the state is just the batch size
    def begin(self, prompt, cond) -> Any:
        self._fitted()
        return len(np.asarray(cond).reshape(-1))

    def stream_logprobs(self, state, k, chosen):
        name = self.vocab.names[k]
        return np.broadcast_to(self._logprobs(name).astype(np.float32), (state, len(self.counts[name]))).copy()

    def advance(self, state, event):
        return state

    # persistence
    def _config(self) -> dict:
        return {"family": self.family, "vocab": self.vocab.to_json()}

    def save(self, directory) -> None:
        self._fitted()
        save_model(directory, self._config(), {f"counts/{name}": c for name, c in self.counts.items()})

    @classmethod
    def load(cls, directory):
        config, vocab, arrays = load_model_files(directory, cls.family)
        model = cls(vocab, **{k: v for k, v in config.items() if k not in ("family", "vocab")})
        model.counts = {name: arrays[f"counts/{name}"].astype(np.int64) for name in vocab.names}
        return model


class MajorityModel(_PriorBaseline):
    """Always the most frequent training target of each stream.

    Log-probabilities are smoothed so that NLL stays finite: the mode gets ``1 - eps``
    and the other predictable ids share ``eps`` equally.  Only its accuracy is meant
    to be compared; its NLL depends on ``eps``.
    """

    family = "majority"

    def __init__(self, vocab: Vocab, eps: float = 1e-3):
        super().__init__(vocab)
        if not 0 < eps < 1:
            raise NotelmError(f"eps must lie in (0, 1), got {eps}")
        self.eps = float(eps)

    def modes(self) -> dict[str, int]:
        self._fitted()
        return {name: int(np.argmax(c)) for name, c in self.counts.items()}

    def _logprobs(self, name):
        counts = self.counts[name]
        others = len(counts) - FIRST_TARGET - 1
        probs = np.zeros(len(counts))
        probs[FIRST_TARGET:] = self.eps / others if others else 0.0
        probs[int(np.argmax(counts))] = 1.0 - self.eps if others else 1.0
        with np.errstate(divide="ignore"):
            return np.log(probs)

    def _config(self):
        return {**super()._config(), "eps": self.eps}


class StratifiedModel(_PriorBaseline):
    """The class prior of each stream (a guess drawn from it, as sklearn's "stratified").

    The prior adds ``alpha`` to every predictable id's count (EOS and the regular
    values) so that a value never seen in training still has a finite NLL;
    ``alpha=0`` gives the plain empirical prior.
    """

    family = "stratified"

    def __init__(self, vocab: Vocab, alpha: float = 0.5):
        super().__init__(vocab)
        if alpha < 0:
            raise NotelmError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def prior(self, name: str) -> np.ndarray:
        """Probabilities float64 ``[V]`` of stream ``name`` (0 for PAD and BOS)."""
        self._fitted()
        smoothed = self.counts[name].astype(np.float64)
        smoothed[FIRST_TARGET:] += self.alpha
        smoothed[:FIRST_TARGET] = 0.0
        return smoothed / smoothed.sum()

    def _logprobs(self, name):
        with np.errstate(divide="ignore"):
            return np.log(self.prior(name))

    def expected_accuracy(self, streams: dict[str, np.ndarray] | None = None, offsets=None, song_ids=None) -> dict[str, float]:
        """Expected accuracy of guessing from the prior, per stream.

        Without data: ``sum_i p_i^2`` (on the training distribution itself).  With a corpus
        (``streams``, ``offsets``, optional ``song_ids``): ``sum_i p_i * f_i`` with ``f`` the
        target frequencies of those songs — the exact mean of a sampled run's accuracy.
        """
        self._fitted()
        if streams is None:
            return {name: float(np.sum(self.prior(name) ** 2)) for name in self.vocab.names}
        targets, _ = song_targets(self.vocab, streams, offsets, song_ids)
        out = {}
        for s in self.vocab.streams:
            freq = np.bincount(streams[s.name][targets], minlength=s.size) / len(targets)
            out[s.name] = float(np.dot(self.prior(s.name), freq))
        return out

    def _config(self):
        return {**super()._config(), "alpha": self.alpha}


__all__ = ["MajorityModel", "StratifiedModel", "check_streams", "check_song", "chosen_songs", "song_targets", "expand_ranges"]
