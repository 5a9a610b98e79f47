"""Classifier-free guidance: sample from a conditioned model pushed further toward its condition.

A model trained with ``train.cond_dropout > 0`` knows two distributions for every next value: given the
condition (a collection, say) and unconditioned.  Guidance with scale ``s`` samples from

    log p_s(x) = log p(x | none) + s * (log p(x | cond) - log p(x | none)),  renormalized,

so ``s = 1`` is the conditioned model itself, ``s > 1`` exaggerates what sets the condition apart from
the rest of the training music, ``s = 0`` ignores the condition.  ``Guided`` wraps a model with the
interface of ``models.base.NextEventModel`` (``begin``, ``stream_logprobs``, ``advance``, ``session``):
each piece is run twice in one batch, the first half with its condition, the second without it, and
both halves always read the same drawn values.
"""

from __future__ import annotations

import numpy as np

from notelm.encoding.vocab import UNCONDITIONED


class Guided:
    """A model that answers with guided log-probabilities; everything else is the wrapped model's."""

    def __init__(self, model, scale: float):
        self.model, self.scale = model, float(scale)

    def __getattr__(self, name):  # vocab, family, ...: the wrapped model's
        return getattr(self.model, name)

    def session(self, batch: int = 1):
        return self.model.session(2 * batch)

    def begin(self, prompt: dict[str, np.ndarray], cond: np.ndarray):
        twice = {name: np.concatenate([ids, ids]) for name, ids in prompt.items()}
        return self.model.begin(twice, np.concatenate([cond, np.full_like(cond, UNCONDITIONED)]))

    def stream_logprobs(self, state, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        lp = np.asarray(self.model.stream_logprobs(state, k, [np.concatenate([c, c]) for c in chosen]), np.float64)
        cond, none = np.split(lp, 2)
        return guide(cond, none, self.scale)

    def advance(self, state, event: dict[str, np.ndarray]):
        return self.model.advance(state, {name: np.concatenate([ids, ids]) for name, ids in event.items()})


def guide(cond: np.ndarray, none: np.ndarray, scale: float) -> np.ndarray:
    """Renormalized ``none + scale * (cond - none)`` of two log-probability arrays ``[B, V]``; a value
    impossible under the condition stays impossible (and one impossible without it gets its conditioned
    log-probability, so no row is left empty)."""
    with np.errstate(invalid="ignore"):
        mixed = none + scale * (cond - none)
    mixed = np.where(np.isfinite(none), mixed, cond)
    mixed = np.where(np.isfinite(cond), mixed, -np.inf)
    top = mixed.max(1, keepdims=True)
    return mixed - (top + np.log(np.exp(mixed - top).sum(1, keepdims=True)))
