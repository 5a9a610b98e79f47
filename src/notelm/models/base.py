"""The interface every next-event model shares: baselines, n-grams and neural nets.

A model predicts the next event one stream (attribute) at a time, in the
vocabulary's stream order.  Independent models ignore the values already
chosen for the same event; ordered models condition on them.  Two entry points:

* ``predict`` — teacher-forced log-probabilities over whole songs at once, for
  evaluation: position ``t`` holds the distribution of event ``t + 1`` given
  events ``0..t`` (and, for ordered models, the true values of the earlier
  streams of event ``t + 1``).
* ``begin`` / ``stream_logprobs`` / ``advance`` — incremental, for generation:
  one step per new event, many pieces in a batch.

Everything is numpy at this boundary (neural models convert inside), so an
evaluation or a sampler never needs to know which family it drives.

Every family is one file with one class, registered in ``models/__init__.py``;
``checkpoint.py`` saves and loads all of them the same way through
``config_class`` (the family's settings), ``build``, ``tensors`` and
``load_tensors``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from notelm.encoding.vocab import Vocab
from notelm.settings import Settings

INTEGER_DTYPES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")  # safetensors' names
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class NextEventModel:
    family: str = "base"
    config_class: type[Settings] = Settings  # the family's settings (a ``Settings`` dataclass)
    trainable: bool = False  # trained by ``train.py`` (neural) rather than fitted by counting
    tensor_format: str = "numpy"  # how ``tensors()`` are stored: "numpy" or "torch"
    saved_dtypes: tuple[str, ...] = INTEGER_DTYPES  # what a saved tensor may hold: counts and keys, never negative
    vocab: Vocab
    cfg: Settings
    ordered: bool = False  # do later streams see the earlier streams of the same event?
    representations: tuple[str, ...] = ()  # the representations this family reads (empty: every one)
    label_smoothing: float = 0.0  # train.label_smoothing of its run: the floor sampling takes back
    copy_guard = None  # copyguard.CopyGuard of its training songs, where one was saved beside it

    @classmethod
    def build(cls, vocab: Vocab, cfg: Settings, device: str = "cpu") -> NextEventModel:
        """An untrained model of this family (what loading fills with saved tensors)."""
        return cls(vocab, **cfg.to_dict())

    # ------------------------------------------------------------------ evaluation
    def predict(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        """Log-probabilities for one song: ``{stream: float32 [T-1, V]}`` from ``{stream: int [T]}``."""
        raise NotImplementedError

    def predict_batch(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        """``predict`` of several songs of one length at once: ``{stream: [B, T-1, V]}`` from ``{stream: [B, T]}``."""
        rows = [self.predict({name: ids[b] for name, ids in streams.items()}, cond)
                for b in range(len(next(iter(streams.values()))))]
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}

    # ------------------------------------------------------------------ generation
    def begin(self, prompt: dict[str, np.ndarray], cond: np.ndarray) -> Any:
        """State after reading ``prompt`` (``{stream: int [B, P]}``, P >= 1, starting with BOS)."""
        raise NotImplementedError

    def stream_logprobs(self, state: Any, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        """Log-probabilities ``[B, V_k]`` of stream ``k`` of the next event, given the values
        ``chosen`` (``k`` arrays of ``[B]``) already drawn for streams ``0..k-1`` of that event."""
        raise NotImplementedError

    def advance(self, state: Any, event: dict[str, np.ndarray]) -> Any:
        """State after appending one event (``{stream: int [B]}``) to every piece."""
        raise NotImplementedError

    def session(self, batch: int = 1):
        """A context for a whole generation loop of ``batch`` pieces (neural models tune their runtime in it)."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ persistence (checkpoint.py)
    def tensors(self) -> dict:
        """Every array the model is made of, by name (what ``model.safetensors`` holds)."""
        raise NotImplementedError

    def load_tensors(self, tensors: dict) -> None:
        """Take the arrays ``tensors()`` gave (read back from disk); raise NotelmError when some are missing."""
        raise NotImplementedError

    @classmethod
    def shape_problems(cls, vocab: Vocab, cfg: Settings, shapes: dict[str, tuple]) -> list[str]:
        """What is wrong with saved tensors of these ``shapes`` for this config, checked before any is
        read (a config asking for a huge network must not allocate it).  Families whose sizes follow
        from their data have nothing to check."""
        return []
