"""The song cache: what followed earlier occurrences of the current context in the same song.

Music repeats itself: a chorale sings its first two phrases twice, a part echoes
a figure a few bars later.  A trained model reads the whole song too, but it is
poor at copying an exact passage from far back; the cache does nothing else.
For every position t of a song it finds the longest context (the last k whole
events, 1 <= k <= ``max_context``) that occurred earlier in the song and counts
the events that followed those occurrences.  ``mix`` blends a model's
prediction with these counts, trusting longer matches more: the cache gets
weight ``min(weight * k, MAX_WEIGHT)``, the model the rest; where nothing
matched, the model's prediction stays as it is.

Row t (the prediction of event t + 1) reads events 0..t only, like every
prediction.  The cache works on whole events (all streams at once) and gives
each stream the marginal of its counts.  It is the "cache" of cache language
models (Kuhn & De Mori 1990), with the longest match of PPM.

The cache's share can also be fitted on held-out songs (``fit_shares``): one
share per bucket of match lengths (``LENGTH_EDGES``), each the share that gives
those songs the highest likelihood, found by EM, like the bucketed interpolation
weights of Jelinek-Mercer smoothing.  A fitted cache reads contexts of up to
``FITTED_CONTEXT`` events: a chorale's repeated phrase matches dozens of tokens
back, and with a share per length the long matches earn their trust.
"""

from __future__ import annotations

import numpy as np

from notelm.encoding.vocab import mixed_radix

MAX_WEIGHT = 0.9  # the model always keeps some weight: a cache never rules a value out
MAX_CONTEXT = 12  # longest context matched, in events
FITTED_CONTEXT = 48  # ... by a cache whose shares are fitted per match length
LENGTH_EDGES = np.array([1, 2, 3, 4, 5, 7, 9, 13, 17, 25])  # buckets of match lengths: [1], [2], ..., [25, 48]


def event_ids(tokens: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``[T, S]`` stream ids -> ``[T]`` one id per whole event (mixed radix, specials included)."""
    return mixed_radix(np.asarray(tokens).T, sizes)


def cache_counts(events: np.ndarray, n_values: int, max_context: int = MAX_CONTEXT):
    """For each row t of a song of whole events ``events`` [T] (predicting event t + 1 from 0..t):
    ``(k [T-1], counts [T-1, n_values])``: the longest context length k with an earlier occurrence
    (0: none) and how often each event followed its occurrences."""
    T = len(events)
    rows = max(T - 1, 0)
    k_found = np.zeros(rows, np.int64)
    counts = np.zeros((rows, n_values))
    # group[t]: one id per distinct context of length k ending at t (rows t >= k - 1), built up one event
    # further back at a time: exact, and each length costs one sort of the rows
    group = np.asarray(events[:rows], np.int64).copy()
    contexts = []
    for k in range(1, min(max_context, rows) + 1):
        if k > 1:
            group = group[1:] * (n_values + 1) + events[:rows - k + 1]  # context k = context k-1 + one event before
            group = np.unique(group, return_inverse=True)[1].reshape(-1)
        contexts.append(group)
    for k in range(len(contexts), 0, -1):
        ends = np.arange(k - 1, rows)
        order = np.lexsort((ends, contexts[k - 1]))  # occurrences of each context, earliest first
        group, ends = contexts[k - 1][order], ends[order]
        follows = np.zeros((len(ends), n_values))
        follows[np.arange(len(ends)), events[ends + 1]] = 1  # ends + 1 <= T - 1
        seen = np.cumsum(follows, axis=0) - follows  # what followed the occurrences before this one ...
        first = np.searchsorted(group, group)  # ... of the same context: minus what came before the group
        seen -= np.cumsum(follows, axis=0)[first] - follows[first]
        found = (seen.sum(1) > 0) & (k_found[ends] == 0)
        k_found[ends[found]] = k
        counts[ends[found]] = seen[found]
    return k_found, counts


def song_matches(events: np.ndarray, rows: np.ndarray, max_context: int = MAX_CONTEXT):
    """``cache_counts`` of a song's whole events ``events`` [T], counted over its distinct events only, at
    ``rows``: ``(first, local, k, counts)``: where each distinct event first occurs, each event's distinct
    index [T], and the longest match and the counts [len(rows), distinct] of each row."""
    _, first, local = np.unique(events, return_index=True, return_inverse=True)
    local = local.reshape(-1)
    k, counts = cache_counts(local, len(first), max_context)
    return first, local, k[rows], counts[rows]


def length_bucket(k: np.ndarray) -> np.ndarray:
    """The bucket of ``LENGTH_EDGES`` of each match length ``k`` >= 1 (0 counts as 1: no match has no share)."""
    return np.searchsorted(LENGTH_EDGES, np.maximum(k, 1), "right") - 1


def shares(weight, k: np.ndarray) -> np.ndarray:
    """The cache's share of each row with longest match ``k`` (0: none): ``min(weight * k, MAX_WEIGHT)`` for a
    weight per matched event, or the fitted share of k's bucket for an array of shares (``fit_shares``)."""
    k = np.asarray(k)
    if np.ndim(weight):
        return np.where(k > 0, np.asarray(weight)[length_bucket(k)], 0.0)
    return np.minimum(weight * k, MAX_WEIGHT)


def context_of(weight) -> int:
    """The longest context a cache of ``weight`` matches: fitted shares read further back."""
    return FITTED_CONTEXT if np.ndim(weight) else MAX_CONTEXT


def fit_shares(model_prob: np.ndarray, cache_prob: np.ndarray, k: np.ndarray, iterations: int = 100) -> np.ndarray:
    """The share per bucket of match lengths (``LENGTH_EDGES``) that gives held-out tokens the highest likelihood
    under ``(1 - share) * model_prob + share * cache_prob`` (each the probability of the token that came, ``k``
    its longest match), by EM: a bucket's share becomes the mean posterior that its tokens came from the cache.
    At most ``MAX_WEIGHT``, like every share."""
    bucket, matched = length_bucket(k), k > 0
    fitted = np.full(len(LENGTH_EDGES), 0.1)
    n = np.bincount(bucket[matched], minlength=len(LENGTH_EDGES))
    for _ in range(iterations):
        share = fitted[bucket]
        mixed = (1 - share) * model_prob + share * cache_prob
        posterior = np.divide(share * cache_prob, mixed, out=np.zeros_like(mixed), where=mixed > 0)
        total = np.bincount(bucket[matched], posterior[matched], minlength=len(LENGTH_EDGES))
        fitted = np.minimum(np.divide(total, n, out=np.zeros_like(total), where=n > 0), MAX_WEIGHT)
    return fitted


def blend(model_prob: np.ndarray, cache_prob: np.ndarray, k: np.ndarray, weight) -> np.ndarray:
    """log of the model's probabilities blended with the cache's: the cache gets ``shares(weight, k)`` of each
    row (``k``: its longest match, 0: none), the model the rest.  ``k`` is per row of ``model_prob``'s first
    axis."""
    share = shares(weight, k).reshape(-1, *([1] * (np.ndim(model_prob) - 1)))
    with np.errstate(divide="ignore"):
        return np.log((1 - share) * model_prob + share * cache_prob)


def mix(logprobs: dict[str, np.ndarray], tokens: np.ndarray, rows: np.ndarray, names: list[str], sizes: list[int],
        weight, max_context: int | None = None) -> dict[str, np.ndarray]:
    """A model's log-probabilities ``{stream: [len(rows), V]}`` of one song's rows blended with the song
    cache of that song (``tokens`` [T, S] in the order of ``names``); returns the blended log-probabilities.

    The cache counts the song's own distinct events only (at most T of them): counting every possible
    whole event (the product of the streams' sizes, millions for ``events``) would not fit in memory."""
    tokens = np.asarray(tokens, np.int64)
    first, _, k, counts = song_matches(event_ids(tokens, sizes), rows, max_context or context_of(weight))
    total = np.maximum(counts.sum(1), 1)[:, None]
    out = {}
    for s, name in enumerate(names):
        value_of = np.zeros((len(first), sizes[s]))  # distinct event -> its value in stream s
        value_of[np.arange(len(first)), tokens[first, s]] = 1
        cache = counts @ value_of / total  # the marginal of stream s
        out[name] = blend(np.exp(logprobs[name].astype(np.float64)), cache, k, weight).astype(np.float32)
    return out


def target_probs(tokens: np.ndarray, rows: np.ndarray, max_context: int = MAX_CONTEXT):
    """The cache's probability of the token that came at each of ``rows`` of a one-stream song ``tokens`` [T]
    (row r predicts token r + 1 from 0..r) and each row's longest match: ``(cache_prob, k)``."""
    _, local, k, counts = song_matches(np.asarray(tokens, np.int64), rows, max_context)
    return counts[np.arange(len(rows)), local[rows + 1]] / np.maximum(counts.sum(1), 1), k
