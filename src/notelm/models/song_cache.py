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
"""

from __future__ import annotations

import numpy as np

MAX_WEIGHT = 0.9  # the model always keeps some weight: a cache never rules a value out
MAX_CONTEXT = 12  # longest context matched, in events


def event_ids(tokens: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``[T, S]`` stream ids -> ``[T]`` one id per whole event (mixed radix, specials included)."""
    ids = np.zeros(len(tokens), np.int64)
    for s, size in enumerate(sizes):
        ids = ids * size + tokens[:, s]
    return ids


def cache_counts(events: np.ndarray, n_values: int, max_context: int = MAX_CONTEXT):
    """For each row t of a song of whole events ``events`` [T] (predicting event t + 1 from 0..t):
    ``(k [T-1], counts [T-1, n_values])``: the longest context length k with an earlier occurrence
    (0: none) and how often each event followed its occurrences."""
    T = len(events)
    k_found = np.zeros(max(T - 1, 0), np.int64)
    counts = np.zeros((max(T - 1, 0), n_values))
    for k in range(min(max_context, T - 1), 0, -1):
        # context ending at t = events[t-k+1 .. t], for t = k-1 .. T-2 (rows that predict an event)
        windows = np.lib.stride_tricks.sliding_window_view(events[:T - 1], k)
        ends = np.arange(k - 1, T - 1)
        _, group = np.unique(windows, axis=0, return_inverse=True)
        order = np.lexsort((ends, group))  # occurrences of each context, earliest first
        group, ends = group.reshape(-1)[order], ends[order]
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


def blend(model_prob: np.ndarray, cache_prob: np.ndarray, k: np.ndarray, weight: float) -> np.ndarray:
    """log of the model's probabilities blended with the cache's: the cache gets ``min(weight * k, MAX_WEIGHT)``
    of each row (``k``: its longest match, 0: none), the model the rest.  ``k`` is per row of ``model_prob``'s
    first axis."""
    share = np.minimum(weight * k, MAX_WEIGHT).reshape(-1, *([1] * (np.ndim(model_prob) - 1)))
    with np.errstate(divide="ignore"):
        return np.log((1 - share) * model_prob + share * cache_prob)


def mix(logprobs: dict[str, np.ndarray], tokens: np.ndarray, rows: np.ndarray, names: list[str], sizes: list[int],
        weight: float, max_context: int = MAX_CONTEXT) -> dict[str, np.ndarray]:
    """A model's log-probabilities ``{stream: [len(rows), V]}`` of one song's rows blended with the song
    cache of that song (``tokens`` [T, S] in the order of ``names``); returns the blended log-probabilities.

    The cache counts the song's own distinct events only (at most T of them): counting every possible
    whole event (the product of the streams' sizes, millions for ``events``) would not fit in memory."""
    tokens = np.asarray(tokens, np.int64)
    first, _, k, counts = song_matches(event_ids(tokens, sizes), rows, max_context)
    total = np.maximum(counts.sum(1), 1)[:, None]
    out = {}
    for s, name in enumerate(names):
        value_of = np.zeros((len(first), sizes[s]))  # distinct event -> its value in stream s
        value_of[np.arange(len(first)), tokens[first, s]] = 1
        cache = counts @ value_of / total  # the marginal of stream s
        out[name] = blend(np.exp(logprobs[name].astype(np.float64)), cache, k, weight).astype(np.float32)
    return out


def target_logprobs(logp: np.ndarray, tokens: np.ndarray, rows: np.ndarray, weight: float,
                    max_context: int = MAX_CONTEXT) -> np.ndarray:
    """A model's log-probability ``logp`` of the token that came at each of ``rows`` of a one-stream song
    ``tokens`` [T] (row r predicts token r + 1 from 0..r), blended with the cache as ``mix`` blends every
    value: the true token's only, enough for a likelihood, without a distribution per row."""
    _, local, k, counts = song_matches(np.asarray(tokens, np.int64), rows, max_context)
    cache = counts[np.arange(len(rows)), local[rows + 1]] / np.maximum(counts.sum(1), 1)
    return blend(np.exp(logp), cache, k, weight)
