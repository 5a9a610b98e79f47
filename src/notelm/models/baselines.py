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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from notelm.data import check_song, target_positions
from notelm.encoding.vocab import EOS, Vocab
from notelm.io import NotelmError
from notelm.models.base import NextEventModel
from notelm.settings import Settings, setting

FIRST_TARGET = EOS  # ids below this (PAD, BOS) are never predicted


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
        targets, _ = target_positions(self.vocab, streams, offsets, song_ids)
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
        return {name: np.broadcast_to(self._logprobs(name).astype(np.float32),
                                      (length - 1, len(self.counts[name]))).copy()
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
    def tensors(self) -> dict[str, np.ndarray]:
        self._fitted()
        return {f"counts/{name}": c for name, c in self.counts.items()}

    def load_tensors(self, tensors: dict) -> None:
        try:
            self.counts = {name: tensors[f"counts/{name}"].astype(np.int64) for name in self.vocab.names}
        except KeyError as e:
            raise NotelmError(f"the {self.family} model lacks the table {e}") from None


@dataclass
class MajorityConfig(Settings):
    section: ClassVar[str] = "model"
    family: ClassVar[str] = "majority"
    eps: float = setting(1e-3, "probability spread over the values other than the mode (keeps the NLL finite)",
                         above=0.0, below=1.0)


@dataclass
class StratifiedConfig(Settings):
    section: ClassVar[str] = "model"
    family: ClassVar[str] = "stratified"
    alpha: float = setting(0.5, "added to every predictable value's count (0: the plain empirical prior)",
                           minimum=0.0)


class MajorityModel(_PriorBaseline):
    """Always the most frequent training target of each stream.

    Log-probabilities are smoothed so that NLL stays finite: the mode gets ``1 - eps``
    and the other predictable ids share ``eps`` equally.  Only its accuracy is meant
    to be compared; its NLL depends on ``eps``.
    """

    family = "majority"
    config_class = MajorityConfig

    def __init__(self, vocab: Vocab, eps: float = 1e-3):
        super().__init__(vocab)
        self.cfg = MajorityConfig(eps=eps).validate()
        self.eps = self.cfg.eps

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


class StratifiedModel(_PriorBaseline):
    """The class prior of each stream (a guess drawn from it, as sklearn's "stratified").

    The prior adds ``alpha`` to every predictable id's count (EOS and the regular
    values) so that a value never seen in training still has a finite NLL;
    ``alpha=0`` gives the plain empirical prior.
    """

    family = "stratified"
    config_class = StratifiedConfig

    def __init__(self, vocab: Vocab, alpha: float = 0.5):
        super().__init__(vocab)
        self.cfg = StratifiedConfig(alpha=alpha).validate()
        self.alpha = self.cfg.alpha

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

    def expected_accuracy(self, streams: dict[str, np.ndarray] | None = None, offsets=None,
                          song_ids=None) -> dict[str, float]:
        """Expected accuracy of guessing from the prior, per stream.

        Without data: ``sum_i p_i^2`` (on the training distribution itself).  With a corpus
        (``streams``, ``offsets``, optional ``song_ids``): ``sum_i p_i * f_i`` with ``f`` the
        target frequencies of those songs — the exact mean of a sampled run's accuracy.
        """
        self._fitted()
        if streams is None:
            return {name: float(np.sum(self.prior(name) ** 2)) for name in self.vocab.names}
        targets, _ = target_positions(self.vocab, streams, offsets, song_ids)
        out = {}
        for s in self.vocab.streams:
            freq = np.bincount(streams[s.name][targets], minlength=s.size) / len(targets)
            out[s.name] = float(np.dot(self.prior(s.name), freq))
        return out


__all__ = ["MajorityModel", "StratifiedModel", "MajorityConfig", "StratifiedConfig", "FIRST_TARGET"]
