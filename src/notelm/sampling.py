"""Sampling controls as small logits processors, chained as a list.

Each processor takes the log-probabilities ``[B, V]`` of one stream of the next
event and returns new, unnormalized ones; ``draw`` then samples one value per
row.  A processor checks its own setting when it is made (a bad value is a
one-line error naming the command-line flag).  ``build_processors`` turns a
``config.SamplingConfig`` into the chain, in the order they apply:

    SmoothingFloor        take back the floor that train.label_smoothing put under every value
    SuppressSpecials      never PAD, BOS or EOS: the caller decides where a piece ends
    RepetitionPenalty     lower the odds of pitches used in the last N events   (pitch stream only)
    MaxRepeat             never the same pitch more than N times in a row       (pitch stream only)
    Temperature           divide by T
    TopK                  keep the k likeliest values
    TopP                  keep the smallest set of values holding probability p

Processors that would change nothing (temperature 1, top-k 0, ...) are left out
of the chain.  A new control is one class here and one line in ``build_processors``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from notelm.encoding.vocab import N_SPECIAL
from notelm.io import NotelmError


class LogitsProcessor:
    """One step of the chain: ``__call__(logprobs [B, V], history [B, T], skip)`` -> logprobs.

    ``history``: the values already chosen for this stream in every piece; ``skip``: ids
    that are not notes (a rest), which repetition controls leave alone.
    """

    pitch_only = False  # applies only to the representation's pitch stream

    def __call__(self, logprobs: np.ndarray, history: np.ndarray, skip: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SmoothingFloor(LogitsProcessor):
    """Each probability less eps / K (K: the values the head can give), clipped at 0.

    A model trained with ``train.label_smoothing = eps`` learns p = (1 - eps) q + eps / K: every value it can
    give keeps at least eps / K, so one draw in 1 / eps would be a value the music never uses.  Taking the
    floor back samples from q, the model's own guess; the likeliest value always stays (p >= 1 / K).
    """

    def __init__(self, eps: float):
        if not 0 <= eps < 1:
            raise NotelmError("--smoothing-floor must be in [0, 1)")
        self.eps = eps

    def __call__(self, logprobs, history, skip):
        finite = np.isfinite(logprobs)
        p = np.exp(logprobs - logprobs.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        kept = p - self.eps / finite.sum(1, keepdims=True)
        with np.errstate(divide="ignore"):
            return np.where(finite & (kept > 0), np.log(np.maximum(kept, 0)), -np.inf)


class SuppressSpecials(LogitsProcessor):
    def __call__(self, logprobs, history, skip):
        logprobs[:, :N_SPECIAL] = -np.inf
        return logprobs


class Temperature(LogitsProcessor):
    def __init__(self, temperature: float):
        if not temperature > 0:
            raise NotelmError("--temperature must be > 0")
        self.temperature = temperature

    def __call__(self, logprobs, history, skip):
        return logprobs / self.temperature


class TopK(LogitsProcessor):
    def __init__(self, k: int):
        if k < 0:
            raise NotelmError("--top-k must be >= 0")
        self.k = k

    def __call__(self, logprobs, history, skip):
        if self.k >= logprobs.shape[1]:
            return logprobs
        kth = np.partition(logprobs, -self.k, axis=1)[:, -self.k][:, None]
        return np.where(logprobs < kth, -np.inf, logprobs)


class TopP(LogitsProcessor):
    def __init__(self, p: float):
        if not 0 < p <= 1:
            raise NotelmError("--top-p must be in (0, 1]")
        self.p = p

    def __call__(self, logprobs, history, skip):
        order = np.argsort(-logprobs, axis=1)
        sorted_lp = np.take_along_axis(logprobs, order, 1)
        p = np.exp(sorted_lp - sorted_lp[:, :1])
        total = p.sum(1, keepdims=True)
        drop_sorted = (np.cumsum(p, 1) / total - p / total) >= self.p  # keep the smallest prefix reaching p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, 1)
        return np.where(drop, -np.inf, logprobs)


class RepetitionPenalty(LogitsProcessor):
    pitch_only = True

    def __init__(self, penalty: float, window: int):
        if not penalty >= 1:
            raise NotelmError("--repetition-penalty must be >= 1")
        if window < 1:
            raise NotelmError("--penalty-window must be >= 1")
        self.log_penalty, self.window = np.log(penalty), window

    def __call__(self, logprobs, history, skip):
        if not history.shape[1]:
            return logprobs
        mask = np.zeros(logprobs.shape, bool)
        np.put_along_axis(mask, history[:, -self.window:], True, 1)
        mask[:, skip] = False
        mask[:, :N_SPECIAL] = False
        return np.where(mask, logprobs - self.log_penalty, logprobs)


class MaxRepeat(LogitsProcessor):
    pitch_only = True

    def __init__(self, n: int):
        if n < 0:
            raise NotelmError("--max-repeat must be >= 0")
        self.n = n  # 0: off (build_processors leaves it out)

    def __call__(self, logprobs, history, skip):
        if history.shape[1] < self.n:
            return logprobs
        last = history[:, -self.n:]
        same = (last == last[:, -1:]).all(1) & (last[:, -1] >= N_SPECIAL) & ~np.isin(last[:, -1], skip)
        rows = np.flatnonzero(same)
        if len(rows):
            blocked = logprobs.copy()
            blocked[rows, last[rows, -1]] = -np.inf
            ok = np.isfinite(blocked[rows]).any(1)  # never block the only option
            logprobs[rows[ok]] = blocked[rows[ok]]
        return logprobs


def with_model_floor(cfg, model):
    """``cfg`` with ``smoothing_floor`` settled: None (the default) is the model's own train.label_smoothing."""
    if cfg.smoothing_floor is not None:
        return cfg
    return dataclasses.replace(cfg, smoothing_floor=getattr(model, "label_smoothing", 0.0))


def build_processors(cfg) -> list[LogitsProcessor]:
    """The chain for a ``SamplingConfig``; every processor checks its own setting."""
    chain: list[LogitsProcessor] = [SmoothingFloor(cfg.smoothing_floor)] if cfg.smoothing_floor else []
    chain.append(SuppressSpecials())
    optional = [
        (cfg.repetition_penalty != 1.0, lambda: RepetitionPenalty(cfg.repetition_penalty, cfg.penalty_window)),
        (cfg.max_repeat != 0, lambda: MaxRepeat(cfg.max_repeat)),
        (cfg.temperature != 1.0, lambda: Temperature(cfg.temperature)),
        (cfg.top_k != 0, lambda: TopK(cfg.top_k)),
        (cfg.top_p != 1.0, lambda: TopP(cfg.top_p)),
    ]
    return chain + [make() for wanted, make in optional if wanted]


def apply_processors(chain: list[LogitsProcessor], logprobs: np.ndarray, history: np.ndarray,
                     skip: np.ndarray) -> np.ndarray:
    for processor in chain:
        logprobs = processor(logprobs, history, skip)
    return logprobs


def draw(lp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sample per row of unnormalized log-probabilities (inverse CDF, vectorized)."""
    p = np.exp(lp - lp.max(1, keepdims=True))
    cum = np.cumsum(p, 1)
    u = rng.random(len(lp))[:, None] * cum[:, -1:]
    return np.minimum((cum < u).sum(1), lp.shape[1] - 1)
