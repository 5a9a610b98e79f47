"""The piano-roll benchmark's metric, its two baselines and the n-gram beside them.

The benchmark (``pianoroll.py`` reads its files, ``encoding/steps.py`` writes
each time step as its keys then an end-of-step token) scores a model by the
negative log-likelihood of each time step given every earlier step of its
sequence, in nats, averaged over the predicted steps 2..T of every sequence of
the split (``step_nll``).  A step's probability is exact: the sum of its tokens'
log-probabilities, each renormalized over the tokens a step can hold.  Two
baselines calibrate it (``bernoulli_nll``, ``markov_nll``); ``step_report`` is
what ``notelm evaluate`` adds for such a corpus.
"""

from __future__ import annotations

import numpy as np

from notelm.encoding.vocab import N_SPECIAL
from notelm.io import NotelmError
from notelm.models import song_cache as cache
from notelm.models.ngram import NGramModel

KEYS = 88


def scored_rows(tokens: np.ndarray, step_id: int) -> np.ndarray:
    """Rows of ``model.predict(song)`` (row r predicts token r + 1) whose token belongs to steps 2..T.

    ``tokens`` is one song ``[BOS, step 1 ..., step T ..., EOS]``; EOS is not a step's token.
    """
    tokens = np.asarray(tokens, np.int64)
    steps_before = np.cumsum(tokens == step_id)[:-1]  # end-of-step tokens among tokens[0..r]
    return np.flatnonzero((steps_before >= 1) & (tokens[1:] >= N_SPECIAL))


def component_logprobs(model, tokens: np.ndarray, rows: np.ndarray, cond: int, tables=(None,),
                       stream: str = "pitch") -> np.ndarray:
    """log p(token r + 1 | tokens 0..r) ``[len(tables), len(rows)]``: for each of ``rows``, under each component
    of a mixture: ``model`` reading the song as it is (table ``None``), or moved through a transposition
    ``table`` (id -> moved id, -1 off the keyboard) with its predictions moved back.  NaN where a component
    cannot predict.  All the components are read in one batch (``model.predict_batch``).

    Each prediction is renormalized over the regular ids: a step's tokens are keys and the end-of-step
    token, never PAD, BOS or EOS; the published metric conditions on the sequence's length, so EOS is ruled
    out where a step begins and the mass a model gives special ids is given back to the others.  Moved back,
    only the ids that have a moved counterpart count: a key the shift takes off the keyboard gets
    probability 0 (-inf).  After such a key the moved song cannot be read on, so the component has nothing
    to say (NaN) about the rest of the song: whether a component speaks depends only on the tokens before
    the one predicted.
    """
    tables = list(tables)
    moved = np.stack([tokens if t is None else t[tokens] for t in tables])  # [C, T]
    unreadable = moved < 0
    readable = np.where(unreadable.any(1), unreadable.argmax(1), moved.shape[1])  # tokens 0..readable-1 can be read
    # the models are causal: what follows a component's last readable token (BOS here) changes nothing before it
    lp = model.predict_batch({stream: np.where(unreadable, moved[:, :1], moved)}, cond)[stream]  # [C, T-1, V]
    out = np.full((len(tables), len(rows)), np.nan)
    for c, table in enumerate(tables):
        now = rows < readable[c]
        if not now.any():
            continue
        scores = np.asarray(lp[c, rows[now]], np.float64)
        if table is None:
            regular = scores[:, N_SPECIAL:]
        else:
            back = table[N_SPECIAL:]
            regular = scores[:, back[back >= 0]]
        top = regular.max(1, keepdims=True)
        norm = np.log(np.exp(regular - top).sum(1)) + top[:, 0]
        target = moved[c, rows[now] + 1]
        with np.errstate(invalid="ignore"):
            out[c, now] = np.where(target >= 0, scores[np.arange(len(target)), np.maximum(target, 0)] - norm,
                                   -np.inf)
    return out


def mixture_logprobs(model, songs: list[dict[str, np.ndarray]], conds, step_id: int, stream: str = "pitch",
                     tables: list[np.ndarray | None] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per song with two steps or more: (its tokens, its scored rows, log p of each scored row's token under
    ``model`` (any ``NextEventModel``, or a list of them)).

    Several models, or ``tables`` (transpositions; ``None``: the song as it is), make a mixture: each
    (model, transposition) is a component, and every token's probability is the mean of the probabilities
    the components that can read the song so far give it.  Each token's distribution sums to one, so the
    product over a song is an exact distribution and the metric stays exact.
    """
    models = model if isinstance(model, (list, tuple)) else [model]
    tables = [None] if tables is None else list(tables)
    out = []
    for song, cond in zip(songs, conds):
        tokens = np.asarray(song[stream], np.int64)
        if int((tokens == step_id).sum()) < 2:
            continue
        rows = scored_rows(tokens, step_id)
        logp = np.concatenate([component_logprobs(m, tokens, rows, int(cond), tables, stream) for m in models])
        speaking = ~np.isnan(logp)
        with np.errstate(divide="ignore"):
            out.append((tokens, rows, np.logaddexp.reduce(np.where(speaking, logp, -np.inf), 0)
                        - np.log(speaking.sum(0))))
    return out


def nats_per_step(scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]], step_id: int, song_cache=0.0,
                  cached: list | None = None) -> float:
    """Nats per predicted step of ``mixture_logprobs``' output, each token's probability first blended with
    the song cache (``models.song_cache``: what followed earlier occurrences of its context in the same
    sequence; ``song_cache``: a weight per matched token, 0: none, or shares per match length fitted by
    ``fit_song_cache``).  The cache reads only the tokens before the one predicted and its counts sum to one
    over the tokens a step can hold, so the blend is still an exact distribution.  ``cached``: the cache's
    side of the same songs (``cache_targets``), when several weights are tried on them."""
    total, steps = 0.0, 0
    blended = np.ndim(song_cache) or song_cache
    if blended and cached is None:
        cached = cache_targets(scored, cache.context_of(song_cache))
    for i, (tokens, _, logp) in enumerate(scored):
        if blended:
            logp = cache.blend(np.exp(logp), *cached[i], song_cache)
        total -= float(logp.sum())
        steps += int((tokens == step_id).sum()) - 1
    return total / max(steps, 1)


def cache_targets(scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_context: int) -> list:
    """For each song of ``mixture_logprobs``' output: the song cache's probability of each scored token and
    its longest match (``models.song_cache.target_probs``).  They depend on the songs alone, not on a model."""
    return [cache.target_probs(tokens, rows, max_context) for tokens, rows, _ in scored]


def fit_song_cache(scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cached: list | None = None) -> np.ndarray:
    """The song cache's shares per match length that give these songs' tokens (``mixture_logprobs``' output of
    held-out songs) the highest likelihood (``models.song_cache.fit_shares``).  ``cached``: ``cache_targets``
    of the songs with ``song_cache.FITTED_CONTEXT``."""
    if not scored:
        return np.zeros(len(cache.LENGTH_EDGES))
    cached = cache_targets(scored, cache.FITTED_CONTEXT) if cached is None else cached
    return cache.fit_shares(np.exp(np.concatenate([logp for _, _, logp in scored])),
                            np.concatenate([probs for probs, _ in cached]), np.concatenate([k for _, k in cached]))


def blend_scored(scored, other, weight: float):
    """``mixture_logprobs``' output of two models on the same songs, mixed token by token: ``(1 - weight) p +
    weight q``.  Both are distributions over what a step can hold, so the mixture is one too."""
    if not weight:
        return scored
    with np.errstate(divide="ignore"):
        return [(tokens, rows, np.logaddexp(np.log1p(-weight) + logp, np.log(weight) + other_logp))
                for (tokens, rows, logp), (_, _, other_logp) in zip(scored, other, strict=True)]


def step_nll(model, songs: list[dict[str, np.ndarray]], conds, step_id: int, stream: str = "pitch",
             tables: list[np.ndarray | None] | None = None, song_cache=0.0) -> float:
    """Nats per predicted step of ``model`` (or a mixture: ``mixture_logprobs``) over the ``songs`` (framed
    token streams), blended with the song cache ``song_cache`` (``nats_per_step``)."""
    return nats_per_step(mixture_logprobs(model, songs, conds, step_id, stream, tables), step_id, song_cache)


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


# --------------------------------------------------------------------------- the report of ``notelm evaluate``

STEP_NGRAM_ORDERS = (3, 5, 8, 12)  # a step is ~4-6 tokens: an n-gram needs more than one step of context


def split_songs(encoded, split: str) -> list[dict[str, np.ndarray]]:
    return [encoded.song(int(i)) for i in encoded.ids(split)]


def fit_step_ngrams(fit_corpus, step_id: int, orders=STEP_NGRAM_ORDERS) -> tuple[str, dict]:
    """Kneser-Ney n-grams over the serialization, fitted on the train split; (best name, models), the best
    chosen by nats per step on the valid split (the train split when there is no valid song)."""
    train = fit_corpus.ids("train")
    models = {f"ngram{k}": NGramModel(fit_corpus.vocab, order=k).fit(fit_corpus.streams, fit_corpus.offsets, train)
              for k in orders}
    valid = split_songs(fit_corpus, "valid" if len(fit_corpus.ids("valid")) else "train")
    scores = {name: step_nll(m, valid, np.zeros(len(valid), np.int64), step_id) for name, m in models.items()}
    return min(scores, key=scores.get), models


def step_report(model, rep, encoded, fit_corpus, split: str, cond_of_song, tables=None, song_cache=0.0,
                ngram_blend: float = 0.0, fit_cache: bool = False) -> dict:
    """Nats per predicted step of ``model`` (or a mixture: see ``step_nll``), mixed with the best n-gram of
    weight ``ngram_blend`` and blended with the song cache of weight ``song_cache``, or with a cache whose
    shares are fitted on the valid split of ``encoded`` (``fit_cache``); beside it the best n-gram (alone and
    with the same kind of cache) and both baselines on ``split`` of ``encoded`` (fitted on the train split of
    ``fit_corpus``)."""
    step_id = rep.step_token()
    best, ngrams = fit_step_ngrams(fit_corpus, step_id)

    def scored(part: str):
        songs = split_songs(encoded, part)
        ngram = mixture_logprobs(ngrams[best], songs, np.zeros(len(songs), np.int64), step_id)
        mixed = mixture_logprobs(model, songs, np.asarray(cond_of_song)[encoded.ids(part)], step_id, tables=tables)
        return blend_scored(mixed, ngram, ngram_blend), ngram

    mixed, ngram = scored(split)
    ngram_cache, cached = song_cache, None  # cached: the cache's side of the split (the songs alone decide it)
    if fit_cache:
        if not len(encoded.ids("valid")):
            raise NotelmError("fitting the song cache needs valid songs in the corpus scored; it has none")
        valid_mixed, valid_ngram = (mixed, ngram) if split == "valid" else scored("valid")
        valid_cached = cache_targets(valid_mixed, cache.FITTED_CONTEXT)
        song_cache, ngram_cache = fit_song_cache(valid_mixed, valid_cached), fit_song_cache(valid_ngram, valid_cached)
        cached = valid_cached if split == "valid" else None
    if cached is None and (fit_cache or song_cache):  # found once for the model and the n-gram
        cached = cache_targets(mixed, cache.context_of(song_cache))
    songs = split_songs(encoded, split)
    rolls = [rep.roll(s) for s in songs]
    train_rolls = [rep.roll(s) for s in split_songs(fit_corpus, "train")]
    report = {
        "split": split, "songs": len(songs), "steps": int(sum(max(len(r) - 1, 0) for r in rolls)),
        "model": nats_per_step(mixed, step_id, song_cache, cached), "ngram_blend": ngram_blend,
        "song_cache": np.round(song_cache, 4).tolist() if fit_cache else song_cache,
        "song_cache_fitted": fit_cache, "best_ngram": best, "ngram": nats_per_step(ngram, step_id),
        "bernoulli": bernoulli_nll(train_rolls, rolls), "markov": markov_nll(train_rolls, rolls),
    }
    if fit_cache or song_cache:  # like for like: the n-gram with the same kind of cache
        report["ngram_song_cache"] = nats_per_step(ngram, step_id, ngram_cache, cached)
    return report


def cache_label(report: dict) -> str:
    """The song cache a per-step report's model was blended with: '', ' + song cache 0.05', ..."""
    if report.get("song_cache_fitted"):
        return " + song cache fitted on valid"
    return f" + song cache {report['song_cache']:g}" if report.get("song_cache") else ""


def blend_label(report: dict) -> str:
    """What a per-step report's model was mixed and blended with: '', ' + ngram12 0.2 + song cache 0.05', ..."""
    ngram = f" + {report['best_ngram']} {report['ngram_blend']:g}" if report.get("ngram_blend") else ""
    return ngram + cache_label(report)


def step_markdown(report: dict) -> str:
    cached, blended = cache_label(report), blend_label(report)
    return "\n".join([
        f"## Per time step (the piano-roll benchmark's metric): {report['split']} split, {report['songs']} "
        f"sequences, {report['steps']:,} predicted steps", "",
        "Negative log-likelihood of each time step given all earlier steps of its sequence, in nats, averaged "
        "over steps 2..T of every sequence (lower is better).", "",
        "| model | nats per step |", "|---|---:|",
        f"| model{blended} | {report['model']:.3f} |",
        f"| best n-gram over the serialization ({report['best_ngram']}, chosen on valid) | {report['ngram']:.3f} |",
        *([f"| the same n-gram{cached} | {report['ngram_song_cache']:.3f} |"] if cached else []),
        f"| Bernoulli per key given the previous step | {report['markov']:.3f} |",
        f"| Bernoulli per key | {report['bernoulli']:.3f} |", ""])
