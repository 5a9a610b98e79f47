"""Order-k n-gram models, per stream or over joint events.

``NGramModel(vocab, order=k)`` predicts each stream from its own previous k-1
values (independent heads).  ``NGramModel(vocab, order=k, joint=True)`` models
whole events: every tuple of stream values seen in training gets one joint id
(plus an unknown-event id), and the next event is predicted from the previous
k-1 events; ``predict`` then marginalizes it onto each stream, conditioned on the
true earlier streams of the same event (``ordered = True``).

Smoothing
    ``"kn"``: interpolated modified Kneser-Ney (Chen & Goodman 1998): three
    discounts D1, D2, D3+ per order from that order's count-of-counts; the highest
    order uses raw counts, lower orders continuation counts (how many distinct
    symbols precede the n-gram) except n-grams whose oldest token is BOS, which
    have no real left context and keep their raw counts (as KenLM does); the
    unigram level is interpolated with a uniform distribution over every symbol
    that can be predicted, so nothing predictable gets probability 0.
    ``"addk"``: ``(c(h w) + k) / (c(h) + k |V|)`` at the highest order only.

Every distribution covers the full vocabulary of a stream; PAD and BOS, which are
never targets, get probability 0 (log-prob ``-inf``).

Counting is vectorized: a context of m tokens gets an integer id by ranking
``(id of its m-1 most recent tokens) * V + its oldest token`` with ``np.unique``
(a trie laid out in sorted arrays), so keys never overflow whatever the order;
an n-gram is ``context id * V + next symbol``.  Lookups are ``np.searchsorted``
on these sorted keys, and the successors of one context are a contiguous run.
Songs never share contexts: positions before a song's start read as BOS.

Joint events and the unknown event
    Let ``Pj`` be the joint n-gram distribution over the observed tuples and UNK.
    The probability of a tuple ``e`` is ``Pj(id(e)) [if e was seen] + Pj(UNK) *
    prod_s q_s(e_s)``, with ``q_s`` the add-one unigram of stream s: it sums to one
    over all tuples, and the per-stream conditionals of ``predict`` are its exact
    marginals, so ``sum_s log P(stream s | earlier streams) == logprob_events``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from notelm.data import check_song, check_streams, expand_ranges, song_ranges, target_positions
from notelm.encoding.vocab import BOS, Vocab
from notelm.io import NotelmError
from notelm.models.base import NextEventModel
from notelm.models.baselines import FIRST_TARGET
from notelm.settings import Settings, setting

JOINT = "joint"  # the array-name prefix of the joint model's tables
BOS_EVENT = 0  # joint id of the all-BOS event (the smallest tuple, so it sorts first)
MIN_DISCOUNT = 0.05  # keeps every backoff weight > 0, so unseen symbols never get probability 0
TERMS_PER_CHUNK = 4_000_000  # joint predict: bound on the (position, symbol) pairs held at once
POSITIONS_PER_CHUNK = 8192  # per-stream predict: rows of dense probabilities held at once


# ---------------------------------------------------------------------------- one n-gram table


def _song_lags(tokens: np.ndarray, order: int, bos: int) -> np.ndarray:
    """Contexts ``[T-1, order-1]`` for positions 1..T-1 of one song (BOS-padded on the left)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    padded = np.concatenate([np.full(order - 1, bos, np.int64), tokens])
    n = len(tokens) - 1
    return np.stack([padded[order - m: order - m + n] for m in range(1, order)], axis=1) if order > 1 \
        else np.empty((max(n, 0), 0), np.int64)


def _tail_lags(tokens: np.ndarray, order: int, bos: int) -> np.ndarray:
    """Context ``[B, order-1]`` for the event after the prompts ``[B, P]``."""
    tokens = np.asarray(tokens, dtype=np.int64)
    width = tokens.shape[1]
    out = np.full((len(tokens), order - 1), bos, np.int64)
    for m in range(1, min(order - 1, width) + 1):
        out[:, m - 1] = tokens[:, width - m]
    return out


def _kn_discounts(adjusted: np.ndarray) -> np.ndarray:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts (Chen & Goodman, eq. 26)."""
    n1, n2, n3, n4 = (np.count_nonzero(adjusted == c) for c in (1, 2, 3, 4))
    fallback = np.array([0.5, 1.0, 1.5])  # when a count-of-count is 0 the estimate is undefined
    if n1 == 0 or n2 == 0:
        return fallback
    y = n1 / (n1 + 2 * n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3 if n3 else np.nan])
    d = np.where(np.isfinite(d) & (d > 0), d, fallback)
    return np.clip(d, MIN_DISCOUNT, [1.0, 2.0, 3.0])


@dataclass
class _Level:
    """One order n: its n-grams sorted by (context id, symbol) and their interpolation terms."""
    keys: np.ndarray    # int64 [S]: context id * V + symbol
    direct: np.ndarray  # float64 [S]: discounted probability of the symbol in its context
    gamma: np.ndarray   # float64 [C]: weight of the next lower order, per context
    start: np.ndarray   # int64 [C + 1]: successors of context c are keys[start[c]:start[c + 1]]
    symbol: np.ndarray  # int64 [S]: keys % V


class _SymbolNGram:
    """An order-k model over one sequence of symbols 0..V-1 (a stream, or joint event ids)."""

    def __init__(self, n_symbols: int, order: int, smoothing: str, k_add: float, bos: int, first_outcome: int,
                 ctx_keys: list[np.ndarray], top_keys: np.ndarray, top_counts: np.ndarray):
        self.n_symbols, self.order, self.smoothing, self.k_add = n_symbols, order, smoothing, k_add
        self.bos, self.first_outcome = bos, first_outcome  # symbols below first_outcome are never predicted
        # ctx_keys[m-1]: sorted keys of the contexts of m tokens (parent id * V + oldest token)
        self.ctx_keys = ctx_keys
        self.top_keys, self.top_counts = top_keys, top_counts  # the counted order-k n-grams
        self._derive()

    @classmethod
    def count(cls, tokens, targets, song_start, n_symbols, order, **kw) -> _SymbolNGram:
        """Count the order-k n-grams ending at ``targets`` (positions into ``tokens``)."""
        if (len(targets) + 1) * n_symbols >= 2 ** 62:
            raise NotelmError("too many events for int64 n-gram keys")
        context = np.zeros(len(targets), np.int64)
        ctx_keys = []
        for m in range(1, order):  # extend every context one token further back; BOS before the song
            source = targets - m
            token = np.where(source >= song_start, tokens[np.maximum(source, 0)], kw["bos"]).astype(np.int64)
            keys, context = np.unique(context * n_symbols + token, return_inverse=True)
            ctx_keys.append(keys)
            context = context.reshape(-1)
        ngram_keys = context * n_symbols + np.asarray(tokens[targets], np.int64)
        top_keys, top_counts = np.unique(ngram_keys, return_counts=True)
        return cls(n_symbols, order, ctx_keys=ctx_keys, top_keys=top_keys, top_counts=top_counts.astype(np.int64), **kw)

    # ---------------------------------------------------------------- derived tables
    def _derive(self) -> None:
        V, k = self.n_symbols, self.order
        n_outcomes = V - self.first_outcome
        keys = {k: self.top_keys}
        adjusted = {k: self.top_counts.astype(np.float64)}
        if self.smoothing == "kn":
            raw = adjusted[k]
            for n in range(k - 1, 0, -1):  # drop the oldest token of every (n+1)-gram
                upper = keys[n + 1]
                parent = self.ctx_keys[n - 1][upper // V] // V
                keys[n], inverse = np.unique(parent * V + upper % V, return_inverse=True)
                inverse = inverse.reshape(-1)
                raw = np.bincount(inverse, weights=raw)
                continuation = np.bincount(inverse).astype(np.float64)  # distinct left extensions
                if n >= 2:
                    oldest = self.ctx_keys[n - 2][keys[n] // V] % V
                    adjusted[n] = np.where(oldest == self.bos, raw, continuation)
                else:
                    adjusted[n] = continuation
        n_lowest = 1 if self.smoothing == "kn" or k == 1 else k
        self.levels: dict[int, _Level] = {}
        for n in range(k, n_lowest - 1, -1):
            n_contexts = len(self.ctx_keys[n - 2]) if n >= 2 else 1
            context = keys[n] // V
            counts = adjusted[n]
            total = np.bincount(context, weights=counts, minlength=n_contexts)
            if self.smoothing == "kn":
                discount = np.minimum(_kn_discounts(counts)[np.minimum(counts, 3).astype(np.int64) - 1], counts)
                direct = (counts - discount) / total[context]
                gamma = np.bincount(context, weights=discount, minlength=n_contexts) / total
            else:
                denominator = total + self.k_add * n_outcomes
                direct = counts / denominator[context]
                gamma = self.k_add * n_outcomes / denominator
            start = np.searchsorted(keys[n], np.arange(n_contexts + 1, dtype=np.int64) * V)
            self.levels[n] = _Level(keys[n], direct, gamma, start, keys[n] % V)
        self.unigram = np.zeros(V)  # the lowest level: (discounted) unigram + uniform floor, or uniform alone
        self.unigram[self.first_outcome:] = 1.0 / n_outcomes
        if 1 in self.levels:
            level = self.levels.pop(1)
            self.unigram *= level.gamma[0]
            self.unigram[level.keys % V] += level.direct

    # ---------------------------------------------------------------- lookups
    def context_ids(self, lags: np.ndarray) -> np.ndarray:
        """Ids ``[P, k-1]`` of the contexts of 1..k-1 most recent tokens; -1 where never seen."""
        ids = np.empty(lags.shape, np.int64)
        current = np.zeros(len(lags), np.int64)
        for m in range(1, self.order):
            keys = self.ctx_keys[m - 1]
            wanted = current * self.n_symbols + lags[:, m - 1]
            at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            current = np.where((current >= 0) & (keys[at] == wanted), at, -1)
            ids[:, m - 1] = current
        return ids

    def n_terms(self, contexts: np.ndarray) -> np.ndarray:
        """How many (symbol, weight) terms ``terms`` yields per position: to size chunks."""
        out = np.zeros(len(contexts), np.int64)
        for n, level in self.levels.items():
            c = contexts[:, n - 2]
            seen = c >= 0
            out[seen] += level.start[c[seen] + 1] - level.start[c[seen]]
        return out

    def spans(self, lags: np.ndarray, contexts: np.ndarray | None = None):
        """How each position's distribution mixes the orders (interpolated, highest order first).

        ``P(w | p) = unigram_weight[p] * unigram[w] + sum over spans (n, pos, ctx, weight) with
        pos == p of weight * levels[n].direct[w in context ctx]``.  Returns ``(unigram_weight, spans)``.
        """
        contexts = self.context_ids(lags) if contexts is None else contexts
        weight_left = np.ones(len(lags))
        spans = []
        for n in sorted(self.levels, reverse=True):  # highest order first: its weight is 1
            c = contexts[:, n - 2]
            seen = np.flatnonzero(c >= 0)  # unseen context: this order passes its whole weight down
            spans.append((n, seen, c[seen], weight_left[seen].copy()))
            weight_left[seen] *= self.levels[n].gamma[c[seen]]
        return weight_left, spans

    def terms(self, spans):
        """The sparse part of ``spans`` as ``(position, symbol, weight)`` triples."""
        positions, symbols, weights = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
        for n, p, c, w in spans:
            level = self.levels[n]
            row, index = expand_ranges(level.start[c], level.start[c + 1])
            positions.append(p[row])
            symbols.append(level.symbol[index])
            weights.append(w[row] * level.direct[index])
        return np.concatenate(positions), np.concatenate(symbols), np.concatenate(weights)

    def probs(self, lags: np.ndarray) -> np.ndarray:
        """Dense probabilities ``[P, V]``."""
        unigram_weight, spans = self.spans(lags)
        position, symbol, weight = self.terms(spans)
        P, V = len(lags), self.n_symbols
        sparse = _scatter(position * V + symbol, weight, P * V).reshape(P, V)
        return sparse + unigram_weight[:, None] * self.unigram[None, :]

    def prob_of(self, lags: np.ndarray, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P(symbol | context), unigram weight)`` per position, without dense rows."""
        contexts = self.context_ids(lags)
        weight_left = np.ones(len(lags))
        prob = np.zeros(len(lags))
        for n in sorted(self.levels, reverse=True):
            level = self.levels[n]
            c = contexts[:, n - 2]
            seen = c >= 0
            wanted = c * self.n_symbols + symbols
            at = np.minimum(np.searchsorted(level.keys, wanted), len(level.keys) - 1)
            hit = seen & (level.keys[at] == wanted)
            prob[hit] += weight_left[hit] * level.direct[at[hit]]
            weight_left[seen] *= level.gamma[c[seen]]
        return prob + weight_left * self.unigram[symbols], weight_left

    def ngrams(self) -> tuple[np.ndarray, np.ndarray]:
        """The counted order-k n-grams ``[S, k]`` (oldest token first) and their counts ``[S]``."""
        V, k = self.n_symbols, self.order
        out = np.empty((len(self.top_keys), k), np.int64)
        out[:, k - 1] = self.top_keys % V
        context = self.top_keys // V
        for m in range(k - 1, 0, -1):  # walk the context trie from the longest context to the root
            key = self.ctx_keys[m - 1][context]
            out[:, k - 1 - m] = key % V
            context = key // V
        return out, self.top_counts

    # ---------------------------------------------------------------- persistence
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}/context{m}": keys for m, keys in enumerate(self.ctx_keys, start=1)}
        out[f"{prefix}/ngram_keys"], out[f"{prefix}/ngram_counts"] = self.top_keys, self.top_counts
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix, n_symbols, order, **kw) -> _SymbolNGram:
        try:
            ctx_keys = [arrays[f"{prefix}/context{m}"].astype(np.int64) for m in range(1, order)]
            return cls(n_symbols, order, ctx_keys=ctx_keys, top_keys=arrays[f"{prefix}/ngram_keys"].astype(np.int64),
                       top_counts=arrays[f"{prefix}/ngram_counts"].astype(np.int64), **kw)
        except KeyError as e:
            raise NotelmError(f"n-gram model file lacks the table {e}") from None


def _expand_spans(spans, tables: dict, width: int, first: np.ndarray, end: np.ndarray):
    """Like ``_SymbolNGram.terms`` over tables keyed ``context * width + symbol``, keeping only
    the symbols ``first[p] <= symbol < end[p]`` of each position (a context's symbols are sorted)."""
    positions, symbols, weights = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    for n, p, c, w in spans:
        keys, direct = tables[n]
        row, index = expand_ranges(np.searchsorted(keys, c * width + first[p]),
                                   np.searchsorted(keys, c * width + end[p]))
        positions.append(p[row])
        symbols.append(keys[index] % width)
        weights.append(w[row] * direct[index])
    return np.concatenate(positions), np.concatenate(symbols), np.concatenate(weights)


def _chunks(cost: np.ndarray, budget: int):
    """Split positions into consecutive runs whose summed cost stays near ``budget``."""
    if len(cost) == 0:
        return
    cum = np.cumsum(cost)
    lo = 0
    while lo < len(cost):
        base = cum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(cum, base + budget, side="right")), lo + 1)
        yield lo, hi
        lo = hi


def _scatter(index: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Sum ``weight`` into a float64 array of ``size`` at ``index`` (bincount, also when empty)."""
    return np.bincount(index, weights=weight, minlength=size).astype(np.float64, copy=False)


def _log(probs: np.ndarray) -> np.ndarray:
    """Normalized log-probabilities as float32 (rows that sum to 1 in probability space)."""
    with np.errstate(divide="ignore"):
        return (np.log(probs) - np.log(probs.sum(axis=1, keepdims=True))).astype(np.float32)


# ---------------------------------------------------------------------------- the model


@dataclass
class NGramState:
    """Generation state: per piece, the last order-1 symbols, most recent first."""
    lags: dict[str, np.ndarray]  # stream name (or "joint") -> int64 [B, order-1]
    cache: dict = field(default_factory=dict)  # joint mode: the next event's mixture, computed once per step


@dataclass
class NGramConfig(Settings):
    section: ClassVar[str] = "model"
    family: ClassVar[str] = "ngram"
    order: int = setting(3, "n: each prediction sees the n - 1 events before it", minimum=1, maximum=64)
    joint: bool = setting(False, "false: one model per stream; true: one model over whole events")
    smoothing: str = setting("kn", "'kn': interpolated modified Kneser-Ney; 'addk': add-k at the highest order",
                             choices=("kn", "addk"))
    k_add: float = setting(1.0, "k of add-k smoothing", above=0.0)


class NGramModel(NextEventModel):
    """Order-k n-gram next-event model, per stream (``joint=False``) or over whole events.

    Usage: ``NGramModel(vocab, order=4).fit(streams, offsets, train_ids)``, then the
    ``NextEventModel`` methods.  Condition ids are accepted and ignored.
    """

    family = "ngram"
    config_class = NGramConfig

    def __init__(self, vocab: Vocab, order: int = 3, joint: bool = False, smoothing: str = "kn", k_add: float = 1.0):
        self.cfg = NGramConfig(order=order, joint=joint, smoothing=smoothing, k_add=k_add).validate()
        self.vocab = vocab
        self.order, self.joint, self.smoothing, self.k_add = self.cfg.order, self.cfg.joint, self.cfg.smoothing, \
            self.cfg.k_add
        self.ordered = self.joint  # joint marginals condition on the earlier streams of the same event
        self.tables: dict[str, _SymbolNGram] = {}  # stream name (or "joint") -> its n-gram model

    def _options(self, n_symbols: int) -> dict:
        bos, first = (BOS_EVENT, BOS_EVENT + 1) if self.joint else (BOS, FIRST_TARGET)
        return dict(n_symbols=n_symbols, order=self.order, smoothing=self.smoothing, k_add=self.k_add, bos=bos,
                    first_outcome=first)

    # ---------------------------------------------------------------- fitting
    def fit(self, streams: dict[str, np.ndarray], offsets, song_ids=None, positions=None) -> NGramModel:
        """Count on the songs ``song_ids`` of an encoded corpus (default: all); returns ``self``.

        ``positions``: count only the n-grams ending at these corpus positions (e.g. the
        targets of the training windows of a random window split); contexts still
        reach back into the song, and joint ids cover every event of the chosen songs.
        """
        if not self.joint:
            targets, song_start = target_positions(self.vocab, streams, offsets, song_ids)
            if positions is not None:
                keep = np.isin(targets, positions)
                targets, song_start = targets[keep], song_start[keep]
            for s in self.vocab.streams:
                self.tables[s.name] = _SymbolNGram.count(streams[s.name], targets, song_start, **self._options(s.size))
            return self
        # Joint ids for the events of the chosen songs only (one copy of that part of the corpus).
        starts, ends = song_ranges(self.vocab, streams, offsets, song_ids)
        _, event_positions = expand_ranges(starts, ends)
        columns = np.stack([np.asarray(streams[name][event_positions], np.int64) for name in self.vocab.names], axis=1)
        rank = np.zeros(len(event_positions), np.int64)
        for s, size in enumerate(self.vocab.sizes):  # rank of each tuple among distinct tuples, in tuple order
            _, rank = np.unique(rank * size + columns[:, s], return_inverse=True)
            rank = rank.reshape(-1)
        _, first_seen = np.unique(rank, return_index=True)
        self._set_events(columns[first_seen])
        local_start = np.cumsum(ends - starts) - (ends - starts)
        owner, local_targets = expand_ranges(local_start + 1, local_start + (ends - starts))
        if positions is not None:
            keep = np.isin(event_positions[local_targets], positions)
            owner, local_targets = owner[keep], local_targets[keep]
        target_values = columns[local_targets]
        self.target_counts = {s.name: np.bincount(target_values[:, i], minlength=s.size).astype(np.int64)
                              for i, s in enumerate(self.vocab.streams)}
        self._set_unigrams()
        options = self._options(self.unknown_event + 1)
        self._set_joint_table(_SymbolNGram.count(rank, local_targets, local_start[owner], **options))
        return self

    def _set_events(self, events: np.ndarray) -> None:
        """Index the observed event tuples (lexicographically sorted, unique) as a trie over streams."""
        if len(events) == 0 or np.any(events[0] != BOS):
            raise NotelmError("joint n-gram: the all-BOS event is missing from the training events")
        self.events = events  # [J, S]: joint id -> stream values
        self.unknown_event = len(events)  # the joint id of every tuple never seen in training
        self.node_keys, self.node_start, self.event_node = [], [], []
        rank, n_parents = np.zeros(len(events), np.int64), 1
        for s, size in enumerate(self.vocab.sizes):
            keys, rank = np.unique(rank * size + events[:, s], return_inverse=True)
            rank = rank.reshape(-1)
            self.node_keys.append(keys)  # prefix nodes of streams 0..s: parent node * size + value
            self.node_start.append(np.searchsorted(keys, np.arange(n_parents + 1, dtype=np.int64) * size))
            self.event_node.append(np.append(rank, -2))  # the unknown event matches no node
            n_parents = len(keys)

    def _set_joint_table(self, table: _SymbolNGram) -> None:
        """Install the joint n-gram table and sum it per prefix node, once, for the marginals.

        ``node_levels[k][n]``: order n's direct probabilities summed per (context, prefix node of
        streams 0..k), keyed ``context * node_width[k] + node``; the last stream's nodes are the
        events themselves, so there it is order n's own table.  A marginal then reads at most
        V_k entries per context instead of every successor event.
        """
        self.tables[JOINT] = table
        observed = slice(0, self.unknown_event)
        self.node_mass = [np.bincount(nodes[observed], weights=table.unigram[observed], minlength=len(keys))
                          for nodes, keys in zip(self.event_node, self.node_keys)]
        last = len(self.vocab.sizes) - 1
        self.node_width = [len(keys) for keys in self.node_keys[:last]] + [table.n_symbols]
        self.node_levels = []
        for k in range(last + 1):
            by_order = {}
            for n, level in table.levels.items():
                if k == last:
                    by_order[n] = (level.keys, level.direct)
                else:
                    keys, inverse = np.unique(level.keys // table.n_symbols * self.node_width[k]
                                              + self.event_node[k][level.symbol], return_inverse=True)
                    by_order[n] = (keys, np.bincount(inverse.reshape(-1), weights=level.direct))
            self.node_levels.append(by_order)

    def _set_unigrams(self) -> None:
        """Add-one unigram ``q_s`` per stream: how the unknown event's mass is spread over tuples."""
        self.stream_unigram = []
        for s in self.vocab.streams:
            q = self.target_counts[s.name].astype(np.float64) + 1.0
            q[:FIRST_TARGET] = 0.0
            self.stream_unigram.append(q / q.sum())

    def _fitted(self) -> None:
        if not self.tables:
            raise NotelmError("the n-gram model has not been fitted")

    def ngram_counts(self, stream: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The counted order-k n-grams ``[S, order]`` (oldest first, BOS-padded) and their counts.

        ``stream``: a stream name in per-stream mode; ignored in joint mode, where the
        symbols are joint ids (``self.events[id]`` gives the stream values).
        """
        self._fitted()
        return self.tables[JOINT if self.joint else (stream or self.vocab.names[0])].ngrams()

    # ---------------------------------------------------------------- joint helpers
    def _event_ids(self, values: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Joint ids of events (unknown -> ``unknown_event``) and the prefix node of each stream (-1: unseen)."""
        node = np.zeros(len(values[0]) if values else 0, np.int64)
        prefix_nodes = []
        for s, v in enumerate(values):
            keys, size = self.node_keys[s], self.vocab.sizes[s]
            wanted = node * size + np.asarray(v, np.int64)
            at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
            node = np.where((node >= 0) & (keys[at] == wanted), at, -1)
            prefix_nodes.append(node)
        ids = np.where(node >= 0, node, self.unknown_event) if len(values) == len(self.vocab.sizes) else None
        return ids, prefix_nodes

    def _stream_probs(self, k: int, mixture, prefix: np.ndarray, prefix_q: np.ndarray) -> np.ndarray:
        """Unnormalized ``P(earlier streams = true prefix, stream k = v)`` ``[P, V_k]``.

        ``mixture``: ``spans()`` of the joint table at these positions; ``prefix``: the prefix
        node of streams 0..k-1 per position (ignored for k = 0); ``prefix_q``:
        ``prod_{s<k} q_s(true value)`` for the unknown event's share.
        """
        table = self.tables[JOINT]
        unigram_weight, spans = mixture
        P, size = len(unigram_weight), self.vocab.sizes[k]
        # the children of the true prefix (the nodes of streams 0..k that extend it) are one range
        if k == 0:
            first, end = np.zeros(P, np.int64), np.full(P, len(self.node_keys[0]))
        else:
            seen = prefix >= 0
            node = np.where(seen, prefix, 0)
            first = np.where(seen, self.node_start[k][node], 0)
            end = np.where(seen, self.node_start[k][node + 1], 0)
        values = self.node_keys[k] % size
        position, child, weight = _expand_spans(spans, self.node_levels[k], self.node_width[k], first, end)
        out = _scatter(position * size + values[child], weight, P * size).reshape(P, size)
        # the unigram level: its mass summed per prefix node, then spread to the node's children
        node_mass = self.node_mass[k]
        if k == 0:
            out += unigram_weight[:, None] * np.bincount(values, weights=node_mass, minlength=size)[None, :]
        else:
            seen = np.flatnonzero(prefix >= 0)
            row, child = expand_ranges(self.node_start[k][prefix[seen]], self.node_start[k][prefix[seen] + 1])
            p = seen[row]
            out[p, values[child]] += unigram_weight[p] * node_mass[child]
        unknown = unigram_weight * table.unigram[self.unknown_event] * prefix_q
        out += unknown[:, None] * self.stream_unigram[k][None, :]
        # An impossible prefix (an earlier stream holds PAD or BOS) conditions on nothing: use q_k.
        impossible = out.sum(axis=1) <= 0
        out[impossible] = self.stream_unigram[k]
        return out

    # ---------------------------------------------------------------- evaluation
    def predict(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        self._fitted()
        length = check_song(self.vocab, streams)
        if not self.joint:
            out = {}
            for s in self.vocab.streams:
                table = self.tables[s.name]
                lags = _song_lags(streams[s.name], self.order, BOS)
                out[s.name] = np.empty((length - 1, s.size), np.float32)
                for lo in range(0, length - 1, POSITIONS_PER_CHUNK):
                    hi = lo + POSITIONS_PER_CHUNK
                    out[s.name][lo:hi] = _log(table.probs(lags[lo:hi]))
            return out
        values = [np.asarray(streams[name], np.int64) for name in self.vocab.names]
        ids, _ = self._event_ids(values)
        _, prefix_nodes = self._event_ids([v[1:] for v in values])
        prefix_q = np.cumprod([np.ones(length - 1)] + [q[v[1:]] for q, v in zip(self.stream_unigram, values)], axis=0)
        table = self.tables[JOINT]
        lags = _song_lags(ids, self.order, BOS_EVENT)
        contexts = table.context_ids(lags)
        out = {s.name: np.empty((length - 1, s.size), np.float32) for s in self.vocab.streams}
        cost = table.n_terms(contexts) + sum(self.vocab.sizes)
        for lo, hi in _chunks(cost, TERMS_PER_CHUNK):
            mixture = table.spans(lags[lo:hi], contexts[lo:hi])
            for k, name in enumerate(self.vocab.names):
                prefix = prefix_nodes[k - 1][lo:hi] if k else None
                out[name][lo:hi] = _log(self._stream_probs(k, mixture, prefix, prefix_q[k, lo:hi]))
        return out

    def logprob_events(self, streams: dict[str, np.ndarray], cond: int = 0) -> np.ndarray:
        """Natural-log probability of each whole event 1..T-1 of a song, float64 ``[T-1]``."""
        self._fitted()
        length = check_song(self.vocab, streams)
        if not self.joint:
            logprobs = self.predict(streams, cond)
            return sum(np.take_along_axis(logprobs[name], np.asarray(streams[name][1:], np.int64)[:, None], 1)[:, 0]
                       .astype(np.float64) for name in self.vocab.names) if length > 1 else np.zeros(0)
        values = [np.asarray(streams[name], np.int64) for name in self.vocab.names]
        ids, _ = self._event_ids(values)
        table = self.tables[JOINT]
        prob, unigram_weight = table.prob_of(_song_lags(ids, self.order, BOS_EVENT), ids[1:])
        seen = ids[1:] != self.unknown_event
        q = np.prod([q[v[1:]] for q, v in zip(self.stream_unigram, values)], axis=0)
        with np.errstate(divide="ignore"):
            return np.log(np.where(seen, prob, 0.0) + unigram_weight * table.unigram[self.unknown_event] * q)

    # ---------------------------------------------------------------- generation
    def begin(self, prompt: dict[str, np.ndarray], cond) -> NGramState:
        self._fitted()
        prompt = {name: np.atleast_2d(np.asarray(v)) for name, v in prompt.items()}
        check_streams(self.vocab, {name: v.reshape(-1) for name, v in prompt.items()}, what="prompt")
        if len({v.shape for v in prompt.values()}) != 1 or next(iter(prompt.values())).shape[1] < 1:
            raise NotelmError("prompt streams must all be [B, P] with P >= 1")
        if not self.joint:
            return NGramState({name: _tail_lags(prompt[name], self.order, BOS) for name in self.vocab.names})
        values = [prompt[name].reshape(-1) for name in self.vocab.names]
        ids = self._event_ids(values)[0].reshape(prompt[self.vocab.names[0]].shape)
        return NGramState({JOINT: _tail_lags(ids, self.order, BOS_EVENT)})

    def stream_logprobs(self, state: NGramState, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        if not self.joint:
            name = self.vocab.names[k]
            return _log(self.tables[name].probs(state.lags[name]))
        table = self.tables[JOINT]
        if "mixture" not in state.cache:
            state.cache["mixture"] = table.spans(state.lags[JOINT])
        chosen = [np.asarray(c, np.int64).reshape(-1) for c in chosen[:k]]
        prefix = self._event_ids(chosen)[1][k - 1] if k else None
        prefix_q = np.prod([self.stream_unigram[s][c] for s, c in enumerate(chosen)], axis=0) if k \
            else np.ones(len(state.lags[JOINT]))
        return _log(self._stream_probs(k, state.cache["mixture"], prefix, prefix_q))

    def advance(self, state: NGramState, event: dict[str, np.ndarray]) -> NGramState:
        if self.order == 1:
            return NGramState(state.lags)
        if self.joint:
            values = [np.asarray(event[name], np.int64).reshape(-1) for name in self.vocab.names]
            new = {JOINT: self._event_ids(values)[0]}
        else:
            new = {name: np.asarray(event[name], np.int64).reshape(-1) for name in self.vocab.names}
        return NGramState({key: np.concatenate([new[key][:, None], lags[:, :-1]], axis=1)
                           for key, lags in state.lags.items()})

    # ---------------------------------------------------------------- persistence
    def tensors(self) -> dict[str, np.ndarray]:
        self._fitted()
        arrays = {}
        for key, table in self.tables.items():
            arrays.update(table.arrays(key))
        if self.joint:
            arrays["joint_events"] = self.events
            arrays.update({f"target_counts/{name}": c for name, c in self.target_counts.items()})
        return arrays

    def load_tensors(self, arrays: dict) -> None:
        try:
            if self.joint:
                self._set_events(arrays["joint_events"].astype(np.int64))
                self.target_counts = {name: arrays[f"target_counts/{name}"].astype(np.int64)
                                      for name in self.vocab.names}
                self._set_unigrams()
                self._set_joint_table(_SymbolNGram.from_arrays(arrays, JOINT, **self._options(self.unknown_event + 1)))
            else:
                for s in self.vocab.streams:
                    self.tables[s.name] = _SymbolNGram.from_arrays(arrays, s.name, **self._options(s.size))
        except KeyError as e:
            raise NotelmError(f"the n-gram model lacks {e}") from None


__all__ = ["NGramModel", "NGramConfig", "NGramState"]
