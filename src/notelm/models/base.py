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
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from notelm.encoding.vocab import Vocab


class NextEventModel:
    family: str = "base"
    vocab: Vocab
    ordered: bool = False  # do later streams see the earlier streams of the same event?

    # ------------------------------------------------------------------ evaluation
    def predict(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        """Log-probabilities for one song: ``{stream: float32 [T-1, V]}`` from ``{stream: int [T]}``."""
        raise NotImplementedError

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

    # ------------------------------------------------------------------ persistence
    def save(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically)."""
        raise NotImplementedError
