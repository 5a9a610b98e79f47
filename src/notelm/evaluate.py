"""Evaluation: how well a trained model predicts held-out music, beside the baselines.

    notelm evaluate RUN_DIR [--corpus CORPUS] [--split test] [--context N] [--transpose-average] [--ngram-blend W]
                    [--song-cache W | --song-cache-fit] [--generate N]

``evaluate(run_dir, EvalOptions(...))``: the options are the command's flags.

What is scored
    Every song of the split is encoded with the model's own vocabulary settings.
    The targets are every event after each song's BOS (EOS included, PAD never):
    row ``r`` of ``model.predict(song)`` predicts event ``r + 1``.  For each stream:
    accuracy (argmax == target), NLL in bits per event, perplexity (2 ** bits);
    the total bits of a whole event is the sum over streams.

    A run trained on the original's random *window* split (``train.split =
    "window"``) is scored the way it was trained: on the event after each window
    of ``train.context`` events of that split (``data.window_splits``), each
    prediction seeing exactly the window.

Options
    ``context``: every prediction sees at most N previous events (the original's
    32-note windows).  The windows are cut with index arithmetic and run as
    batches through the model's incremental interface (``begin`` /
    ``stream_logprobs``); events near a song's start, whose whole past fits in N,
    come from one plain prediction of the song's start.
    ``transpose_average``: the representation's pitch stream is shifted by each of
    its 12 transpositions, predicted, mapped back and the 12 distributions averaged
    in probability space (shifts that would move a note out of range are skipped).
    ``ngram_blend``: each prediction is mixed with the best n-gram's (below), weight W
    in probability space: an interpolation of two models that err differently.
    ``song_cache``: each prediction is blended with what followed earlier
    occurrences of its context in the same song (``models.song_cache``; weight
    ``min(W * matched events, 0.9)``), after any transposition average and n-gram blend.
    ``song_cache_fit`` (piano rolls of the ``steps`` representation): the per-step
    metric's cache gets one share per bucket of match lengths, fitted on the
    valid split (``models.song_cache.fit_shares``), and reads contexts of up to
    48 events; the n-gram beside it gets a cache fitted the same way.

Baselines, on exactly the same targets
    majority, stratified (its accuracy is the *expected* accuracy of a guess drawn
    from the prior, sum p * f, not an argmax), n-grams per stream of orders 2..5
    and joint n-grams over whole events of orders 2..5, all fitted on the TRAIN
    split of the corpus (the training windows for a window-split run; for
    ``--split all`` on a corpus other than the run's, the run's own training
    corpus, so that model and baselines learned from the same music).  The best
    n-gram is the one with the lowest total bits on the VALID split, chosen
    without looking at the evaluated split.  With ``context`` N, only n-grams that
    see at most N events (order <= N + 1) take part.

``generate``: N pieces sampled from the model and N from the best n-gram (default
sampling settings, seed 0) are compared with the real songs of the split by the
music metrics of ``metrics.compare_sets``, beside a second real set (the valid
split, or one half of the split against the other) as the reference of what
"as close as real music" looks like; plus the copy check (longest run of whole
events shared with any training song) per piece.

Outputs go to ``RUN_DIR/eval/`` (or ``out_dir``): ``evaluation.md``,
``evaluation.json`` and ``evaluation.png``; ``compare`` lays several runs'
``evaluation.json`` side by side.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from notelm.checkpoint import load_model, read_run
from notelm.config import SamplingConfig
from notelm.corpus import SPLITS
from notelm.data import CropSampler, condition_map, window_splits
from notelm.encoding import from_vocab, load_or_encode
from notelm.encoding.vocab import Vocab, event_ids
from notelm.generate import sample, write_pieces
from notelm.io import NotelmError, atomic_path, printable, read_json, write_json, write_text
from notelm.metrics import CorpusIndex, PredictionScores, compare_sets, copy_report, format_table, prediction_table
from notelm.models import NextEventModel
from notelm.models import song_cache as cache
from notelm.models.baselines import MajorityModel, StratifiedModel
from notelm.models.ngram import NGramModel
from notelm.names import plural
from notelm.rollmetrics import blend_label, step_markdown, step_report
from notelm.settings import Settings, setting

NGRAM_ORDERS = (2, 3, 4, 5)  # per stream and joint
FALLBACK_NGRAM = "ngram3"  # the "best" n-gram when the corpus has no valid songs to choose on
WINDOWS_PER_BATCH = 512  # context windows run through the model at once
GENERATE_LENGTH = 256  # events per sampled piece (generate.sample's default)
REPORT_NAME = "evaluation"  # evaluation.json / .md / .png


# =============================================================================
# Which predictions are scored
# =============================================================================

@dataclass
class Targets:
    """The predictions an evaluation scores: for each song, which of its events are targets.

    ``rows[i]`` are row indices into ``model.predict(song)`` of song ``songs[i]``:
    row ``r`` predicts event ``r + 1`` (event 0 is the song's BOS).
    """
    kind: str  # "song" (every event after BOS) or "window" (the event after each window)
    songs: np.ndarray  # int64 song ids
    rows: list[np.ndarray]  # int64 rows per song

    @property
    def n(self) -> int:
        return int(sum(len(r) for r in self.rows))

    def positions(self, offsets: np.ndarray) -> np.ndarray:
        """Corpus positions (into the concatenated streams) of every target."""
        if not self.rows:
            return np.zeros(0, np.int64)
        return np.concatenate([offsets[s] + 1 + r for s, r in zip(self.songs, self.rows)]).astype(np.int64)


def song_targets(encoded, split: str, only: np.ndarray | None = None) -> Targets:
    """Every event after BOS (EOS included) of every song of ``split`` (and of ``only``, a mask over songs)."""
    songs = encoded.ids(split)
    if only is not None:
        songs = songs[np.asarray(only, bool)[songs]]
    lengths = np.diff(np.asarray(encoded.offsets, np.int64))[songs]
    return Targets("song", songs, [np.arange(length - 1, dtype=np.int64) for length in lengths])


def window_targets(encoded, split: str, context: int) -> Targets:
    """The event after each window of ``context`` events in ``split`` of the original's random window split.

    The windows are those ``train.py`` draws for ``train.split = "window"``: every
    start position of every song (``CropSampler`` over all songs, crops of
    ``context + 1``), assigned to train/valid/test by ``window_splits``.  A song
    shorter than a window has no target (its one crop ends in padding).
    """
    streams = [encoded.streams[name] for name in encoded.vocab.names]
    sampler = CropSampler(streams, encoded.offsets, encoded.ids("all"), context + 1)
    window = np.arange(sampler.n_windows) if split == "all" else window_splits(sampler.n_windows)[split]
    k = np.searchsorted(sampler.cum, window, side="right") - 1
    target = sampler.start[k] + (window - sampler.cum[k]) + context
    keep = target < sampler.end[k]
    song = sampler.songs[k[keep]]
    row = target[keep] - np.asarray(encoded.offsets, np.int64)[song] - 1
    order = np.lexsort((row, song))
    song, row = song[order], row[order]
    songs, first = np.unique(song, return_index=True)
    return Targets("window", songs.astype(np.int64), np.split(row, first[1:]) if len(songs) else [])


# =============================================================================
# Predictions of one song
# =============================================================================

def predict_rows(model, song: dict[str, np.ndarray], cond: int, rows: np.ndarray,
                 context: int | None = None) -> dict[str, np.ndarray]:
    """Log-probabilities ``{stream: [len(rows), V]}`` of the events ``rows + 1`` of one song.

    ``context=None``: each event sees the whole song before it (one ``predict``).
    ``context=N``: each sees at most the N events before it.  Events whose whole
    past fits (event index <= N) come from one prediction of the song's first
    events; every later one from a window of exactly N events, run in batches
    through ``begin`` / ``stream_logprobs`` with the true values of the earlier
    streams of the target event (what ordered heads condition on in ``predict``).
    """
    names = model.vocab.names
    events = np.asarray(rows, np.int64) + 1
    if not len(events):
        return {name: np.zeros((0, size), np.float32) for name, size in zip(names, model.vocab.sizes)}
    if context is None:
        logprobs = model.predict({name: song[name][: events.max() + 1] for name in names}, cond)
        return {name: logprobs[name][rows] for name in names}
    out = {name: np.empty((len(events), size), np.float32) for name, size in zip(names, model.vocab.sizes)}
    near = events <= context
    if near.any():
        logprobs = model.predict({name: song[name][: events[near].max() + 1] for name in names}, cond)
        for name in names:
            out[name][near] = logprobs[name][events[near] - 1]
    far = np.flatnonzero(~near)
    for lo in range(0, len(far), WINDOWS_PER_BATCH):
        which = far[lo:lo + WINDOWS_PER_BATCH]
        target = events[which]
        window = target[:, None] - context + np.arange(context)  # [B, N] positions before each target
        state = model.begin({name: song[name][window] for name in names}, np.full(len(which), cond, np.int64))
        chosen: list[np.ndarray] = []
        for k, name in enumerate(names):
            out[name][which] = model.stream_logprobs(state, k, chosen)
            chosen.append(song[name][target])
    return out


def predict_rows_transposed(model, song, cond, rows, context, tables: dict[int, np.ndarray],
                            pitch: str = "pitch") -> tuple[dict, int]:
    """``predict_rows`` averaged over transpositions: ``(log-probabilities, shifts used)``.

    For each shift the stream ``pitch`` is moved through its table (id -> shifted
    id, -1 out of range; a representation's ``transpositions()``), predicted, and
    the pitch distribution mapped back (the probability of pitch v is the shifted
    prediction's probability of table[v]).  Probabilities are averaged, then each
    row is renormalized (a shifted pitch with no un-shifted counterpart loses its mass).
    """
    sums: dict[str, np.ndarray] | None = None
    used = 0
    for table in tables.values():
        moved = table[song[pitch]]
        if (moved < 0).any():
            continue  # this shift would take a note out of range
        logprobs = predict_rows(model, {**song, pitch: moved}, cond, rows, context)
        probs = {name: np.exp(lp.astype(np.float64)) for name, lp in logprobs.items()}
        back = np.zeros_like(probs[pitch])
        fits = table >= 0
        back[:, fits] = probs[pitch][:, table[fits]]
        probs[pitch] = back
        sums = probs if sums is None else {name: sums[name] + probs[name] for name in sums}
        used += 1
    if sums is None:  # cannot happen: shift 0 always fits
        raise NotelmError("no transposition fits this song")
    with np.errstate(divide="ignore"):
        return {name: np.log(p / p.sum(1, keepdims=True)).astype(np.float32) for name, p in sums.items()}, used


def score_model(model, encoded, targets: Targets, cond_of_song: np.ndarray | None = None, context: int | None = None,
                transpose_average: bool = False, progress: bool = False, desc: str = "evaluate",
                song_cache: float = 0.0, blend: tuple[NextEventModel, float] | None = None, ensemble=()) -> dict:
    """``PredictionScores.result()`` of ``model`` on ``targets`` (+ ``"shifts"``: mean transpositions per song);
    ``ensemble``: more models whose predictions are averaged with the model's (probability space);
    ``blend``: (another model, its weight) mixed into every prediction; ``song_cache``: the weight per
    matched event of the song cache blended in last (0: none)."""
    from tqdm import tqdm

    names = model.vocab.names
    rep = from_vocab(model.vocab)
    tables = None
    if transpose_average:
        tables = rep.transpositions()
        if tables is None:
            raise NotelmError(f"--transpose-average: the {rep.name} representation cannot be transposed")
    if song_cache and context is not None:
        raise NotelmError("--song-cache reads the whole song so far; it cannot be combined with --context")
    scores = PredictionScores(names)
    shifts = []
    for song_id, rows in tqdm(list(zip(targets.songs, targets.rows)), desc=desc, unit="song", disable=not progress,
                              dynamic_ncols=True, leave=False):
        if not len(rows):
            continue
        song = {name: np.asarray(encoded.streams[name][encoded.offsets[song_id]:encoded.offsets[song_id + 1]], np.int64)
                for name in names}
        cond = int(cond_of_song[song_id]) if cond_of_song is not None else 0
        predictions = []
        for member in (model, *ensemble):
            if tables:
                logprobs, used = predict_rows_transposed(member, song, cond, rows, context, tables, rep.pitch_stream)
                shifts.append(used)
            else:
                logprobs = predict_rows(member, song, cond, rows, context)
            predictions.append(logprobs)
        logprobs = predictions[0] if len(predictions) == 1 else mean_logprobs(predictions)
        if blend:
            logprobs = blend_logprobs(logprobs, predict_rows(blend[0], song, cond, rows, context), blend[1])
        if song_cache:
            tokens = np.stack([song[name] for name in names], -1)
            logprobs = cache.mix(logprobs, tokens, rows, names, model.vocab.sizes, song_cache)
        scores.add(logprobs, {name: song[name][rows + 1] for name in names})
    result = scores.result()
    if tables:
        result["shifts"] = float(np.mean(shifts)) if shifts else math.nan
    return result


def mean_logprobs(predictions: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean of several predictions per stream, in probability space (log-probabilities in and out)."""
    return {name: (np.logaddexp.reduce(np.stack([p[name].astype(np.float64) for p in predictions]), 0)
                   - np.log(len(predictions))).astype(np.float32) for name in predictions[0]}


def blend_logprobs(a: dict[str, np.ndarray], b: dict[str, np.ndarray], weight: float) -> dict[str, np.ndarray]:
    """``(1 - weight) * a + weight * b`` per stream, in probability space (log-probabilities in and out)."""
    out = {}
    for name in a:
        mixed = (1 - weight) * np.exp(a[name].astype(np.float64)) + weight * np.exp(b[name].astype(np.float64))
        with np.errstate(divide="ignore"):
            out[name] = np.log(mixed).astype(np.float32)
    return out


# =============================================================================
# Baselines
# =============================================================================

def baseline_scores(fit_corpus, eval_corpus, eval_targets: Targets, orders=NGRAM_ORDERS,
                    window_context: int | None = None, progress: bool = False, fit_corpus_name: str = "",
                    fit_only: np.ndarray | None = None) -> dict:
    """Fit the baselines on the train split of ``fit_corpus``, pick the best n-gram on its valid
    split, score them all on ``eval_targets`` of ``eval_corpus``.

    ``fit_only``: a mask over ``fit_corpus``'s songs (one collection): fit and choose on those only.

    ``window_context``: a window-split run's window length (fit on the training
    windows' targets, choose on the valid windows).  ``orders``: the n-gram orders
    (per stream and joint).
    Returns ``{"results": {name: scores}, "best_ngram", "selection": {...}}``.
    """
    vocab = fit_corpus.vocab
    if window_context:
        positions = window_targets(fit_corpus, "train", window_context).positions(fit_corpus.offsets)
        fit_on, n_fit = dict(song_ids=None, positions=positions), len(positions)
        valid = window_targets(fit_corpus, "valid", window_context)
        fitted_on = f"the targets of the training windows ({window_context}-event windows)"
    else:
        train_ids = fit_corpus.ids("train")
        fit_on = dict(song_ids=train_ids if fit_only is None else train_ids[fit_only[train_ids]], positions=None)
        n_fit = len(fit_on["song_ids"])
        valid = song_targets(fit_corpus, "valid", fit_only)
        fitted_on = "the train split"
    if not n_fit:
        raise NotelmError(f"{fit_corpus.path}: no training songs to fit the baselines on")
    models = fit_models(vocab, fit_corpus.streams, fit_corpus.offsets, orders=orders, joint_orders=orders, **fit_on)
    ngrams = [name for name in models if name.startswith(("ngram", "joint"))]
    selection: dict = {"split": "valid", "targets": valid.n, "total_bits": {}}
    if valid.n:
        for name in ngrams:
            selection["total_bits"][name] = score_model(models[name], fit_corpus, valid)["total"]["bits"]
        best = min(ngrams, key=lambda name: selection["total_bits"][name])
    else:
        best = FALLBACK_NGRAM if FALLBACK_NGRAM in models else ngrams[0]
        selection["note"] = f"no valid songs to choose on: {best} by default"
    results = {name: score_model(m, eval_corpus, eval_targets, progress=progress, desc=name)
               for name, m in models.items()}
    return {"results": results, "best_ngram": best, "selection": selection, "fitted_on": fitted_on,
            "fit_corpus": fit_corpus_name or str(fit_corpus.path), "models": models}


def valid_against_ngram(model, encoded, cond_of_song: np.ndarray, orders=NGRAM_ORDERS) -> dict | None:
    """Bits/event on the whole valid songs of ``encoded``: ``model`` and the best of the n-grams fitted
    on its train split (per stream and joint, ``orders``), as ``notelm evaluate --split valid`` scores
    them.  What ``notelm train`` ends with; None when there are no valid or no train songs."""
    valid, train_ids = song_targets(encoded, "valid"), encoded.ids("train")
    if not valid.n or not len(train_ids):
        return None
    data = (encoded.streams, encoded.offsets, train_ids, None)
    bits = {}
    for joint in (False, True):
        for k in orders:
            ngram = NGramModel(model.vocab, order=k, joint=joint).fit(*data)
            bits[f"{'joint' if joint else 'ngram'}{k}"] = score_model(ngram, encoded, valid)["total"]["bits"]
    best = min(bits, key=bits.get)
    model_bits = score_model(model, encoded, valid, cond_of_song)["total"]["bits"]
    return {"model_bits": model_bits, "best_ngram": best, "ngram_bits": bits[best], "targets": valid.n,
            "songs": int(len(valid.songs))}


def fit_models(vocab: Vocab, streams, offsets, song_ids=None, orders=(2, 3, 4), joint_orders=(3,),
               smoothing: str = "kn", positions=None) -> dict[str, NextEventModel]:
    """The reference models an evaluation compares against, fitted on the songs ``song_ids``
    (only the targets at ``positions``, if given).

    Names: ``majority``, ``stratified``, ``ngram{k}`` (per stream), ``joint{k}``.
    """
    data = (streams, offsets, song_ids, positions)
    models: dict[str, NextEventModel] = {
        "majority": MajorityModel(vocab).fit(*data),
        "stratified": StratifiedModel(vocab).fit(*data),
    }
    for k in orders:
        models[f"ngram{k}"] = NGramModel(vocab, order=k, smoothing=smoothing).fit(*data)
    for k in joint_orders:
        models[f"joint{k}"] = NGramModel(vocab, order=k, joint=True, smoothing=smoothing).fit(*data)
    return models


# =============================================================================
# Music of generated pieces
# =============================================================================

def generation_report(model, ngram_model, ngram_name: str, encoded, split: str, n: int, length: int,
                      copy_songs: np.ndarray, out_dir: Path, log=print, only: np.ndarray | None = None,
                      cond: int = 0) -> tuple[dict, str]:
    """Music metrics and copy check of ``n`` model and ``n`` n-gram pieces against real songs: ``(json, markdown)``.

    ``only``: a mask over the songs (one collection): the real sets are its songs, and the model's
    pieces are sampled with condition id ``cond`` (its style).
    """
    vocab = model.vocab
    rep = from_vocab(vocab)
    real_ids, valid_ids = encoded.ids(split), encoded.ids("valid")
    if only is not None:
        real_ids, valid_ids = real_ids[only[real_ids]], valid_ids[only[valid_ids]]
    if split in ("train", "test") and len(valid_ids):
        reference_ids, second_ids, second_name = real_ids, valid_ids, "valid split"
    else:  # no separate real set: one half of the split is the reference for all, the other half the second set
        reference_ids, second_ids, second_name = real_ids[0::2], real_ids[1::2], f"other half of the {split} split"
    if not len(reference_ids) or not len(second_ids):
        raise NotelmError(f"--generate needs at least 2 real songs to compare with "
                          f"(the {split} split has {plural(len(real_ids), 'song')})")

    def real(ids):  # the first `length` events of each song, as long as the sampled pieces
        return [{name: np.asarray(s[name][: length + 1], np.int64) for name in vocab.names}
                for s in (encoded.song(int(i)) for i in ids)]

    reference, second = real(reference_ids), real(second_ids)
    cfg = SamplingConfig(seed=0)
    pieces = {"model": sample(model, n, length, cond=cond, cfg=cfg),
              ngram_name: sample(ngram_model, n, length, cfg=cfg)}
    for prefix, batch in pieces.items():
        write_pieces(batch, vocab, out_dir / "generated", prefix=prefix, log=lambda *_: None)
    notes = {name: [p.notes for p in batch] for name, batch in pieces.items()}
    reference_notes = [rep.decode(s) for s in reference]
    columns = {f"model vs {split}": compare_sets(notes["model"], reference_notes),
               f"{ngram_name} vs {split}": compare_sets(notes[ngram_name], reference_notes),
               f"{second_name} vs {split}": compare_sets([rep.decode(s) for s in second], reference_notes)}

    train_events = [event_ids(encoded.song(int(i)), vocab) for i in copy_songs]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in train_events])]).astype(np.int64)
    index = CorpusIndex(np.concatenate(train_events) if train_events else np.zeros(0, np.int64), offsets[:-1])
    copies = {"model": copy_report([event_ids(p.streams, vocab) for p in pieces["model"]], None, None, index),
              ngram_name: copy_report([event_ids(p.streams, vocab) for p in pieces[ngram_name]], None, None, index),
              second_name: copy_report([event_ids(s, vocab) for s in second], None, None, index)}

    data = {"pieces": n, "length": length, "reference": {"split": split, "songs": len(reference_ids)},
            "second_real_set": {"name": second_name, "songs": len(second_ids)},
            "metrics": {title: _plain(result) for title, result in columns.items()},
            "copy": {name: _plain(report) for name, report in copies.items()}}
    return data, _generation_markdown(data, columns, copies, out_dir)


def _generation_markdown(data: dict, columns: dict, copies: dict, out_dir: Path) -> str:
    """The generation section of the evaluation report: music metrics, then the copy check."""
    n, length, split = data["pieces"], data["length"], data["reference"]["split"]
    second_name = data["second_real_set"]["name"]
    lines = [f"## Generated pieces ({plural(n, 'piece')} per model, {length} events, default sampling, seed 0)", "",
             f"Music metrics against the first {length} events of each of the "
             f"{plural(data['reference']['songs'], 'real song')} of the {split} split (real songs cut the same way "
             f"for the {second_name}).", "",
             format_table(columns), "",
             "### Copying: longest run of events shared with a training song", "",
             "| set | pieces | min | median | mean | max | median share of piece | distribution (run length: pieces) "
             "| per piece |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, report in copies.items():
        edges, counts = report["histogram"]["edges"], report["histogram"]["counts"]
        spread = " · ".join(f"{_bin(edges[i], edges[i + 1])}: {c}" for i, c in enumerate(counts) if c)
        runs = report["per_piece"]
        per_piece = " ".join(str(r) for r in runs[:24]) + (" …" if len(runs) > 24 else "")
        lines.append(f"| {name} | {len(runs)} | {report['min']} | {report['median']:g} | {report['mean']:.1f} "
                     f"| {report['max']} | {np.median(report['share_of_piece']):.2f} | {spread} | {per_piece} |")
    lines += ["", f"MIDI files of the sampled pieces: `{out_dir / 'generated'}`."]
    return "\n".join(lines)


def _bin(lo: int, hi: int) -> str:
    return str(lo) if hi == lo + 1 else f"{lo}–{hi - 1}"


def _plain(obj):
    """numpy values -> JSON-ready Python (NaN/inf become None)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# =============================================================================
# The verb
# =============================================================================

def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


@dataclass
class EvalOptions(Settings):
    """What ``notelm evaluate`` scores and how: its command-line flags."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "evaluate"
    corpus: str = setting(None, "corpus to score on (default: the run's own, from run.json)", kind=str)
    split: str = setting("test", "songs to score: a split, or all (for a corpus the model never saw)",
                         choices=(*SPLITS, "all"))
    context: int = setting(None, "each prediction sees at most N previous events (default: the whole song)",
                           kind=int, minimum=1)
    transpose_average: bool = setting(False, "average the predictions of the transpositions of the input")
    ensemble: str = setting(None, "more runs (comma-separated) trained on the same kind of data: each prediction "
                                  "is the mean of every run's probabilities", kind=str)
    ngram_blend: float = setting(0.0, "mix each prediction with the best n-gram's (fitted on the train split, chosen "
                                      "on the valid split), weight W in probability space; 0: off",
                                 minimum=0.0, maximum=1.0)
    song_cache: float = setting(0.0, "blend each prediction with what followed earlier occurrences of its context "
                                     "in the same song, weight W per matched event (at most 0.9); the best "
                                     "n-gram with the same cache is a row of its own; 0: off",
                                minimum=0.0)
    song_cache_fit: bool = setting(False, "piano rolls (steps): blend the per-step metric's predictions with a song "
                                          "cache whose share per match length is fitted on the valid split "
                                          "(contexts up to 48 events); the n-gram's cache is fitted the same way")
    generate: int = setting(0, "also sample N pieces (and N from the best n-gram) and compare their music with "
                               "real songs", minimum=0)
    generate_length: int = setting(GENERATE_LENGTH, "events per sampled piece", minimum=1)
    collection: str = setting(None, "score only the songs of this collection (the label the model is conditioned "
                                    "on); the baselines are fitted on that collection's train split", kind=str)
    baselines_from_train: bool = setting(False, "fit the baselines on the train split of the run's own training "
                                                "corpus (out-of-domain: model and baselines learned from the same "
                                                "music)")
    device: str = setting(None, "where a neural model runs (default: CUDA when present, else CPU)", kind=str)


@dataclass
class _Scoring:
    """What one evaluation scores: the model, the encoded corpus, the targets and how they are read."""

    model: NextEventModel
    encoded: object  # encoding.EncodedCorpus
    targets: Targets
    run: dict  # the run's run.json ({} for a bare model directory)
    corpus: str
    context: int | None
    window_context: int | None  # a window-split run's window length
    device: str = "cpu"


def evaluate(run_dir, options: EvalOptions | None = None, out_dir=None, progress: bool = True, log=print,
             baseline_cache: dict | None = None) -> dict:
    """The ``notelm evaluate`` verb: score a run and the baselines, write the report; returns its JSON.

    ``baseline_cache``: a dict shared between calls (e.g. by the reproduction) so
    that runs evaluated on the same targets reuse one set of fitted baselines.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    options = (options or EvalOptions()).validate()
    scoring = _scoring(run_dir, options, progress, log)
    model, vocab, encoded, targets = scoring.model, scoring.model.vocab, scoring.encoded, scoring.targets
    conditioned = bool(vocab.conditions) and float(scoring.run.get("train", {}).get("cond_dropout", 0.0)) < 1.0
    cond_of_song = condition_map(vocab, encoded.vocab, conditioned)[np.asarray(encoded.cond, np.int64)]
    context, average = scoring.context, options.transpose_average
    rep = from_vocab(vocab)
    if options.song_cache_fit and (rep.step_token() is None or options.song_cache or context):
        raise NotelmError("--song-cache-fit fits the song cache of the piano-roll metric: it needs a corpus of the "
                          "steps representation, the whole song as context, and no --song-cache beside it")
    ensemble = _ensemble(options.ensemble, model, scoring.run, scoring.device)
    fit_corpus, baselines = _baselines(scoring, options, progress, log, baseline_cache)
    best = baselines["best_ngram"]
    blend = (baselines["models"][best], options.ngram_blend) if options.ngram_blend else None
    label = (f"{model.family}{f' x {1 + len(ensemble)} runs' if ensemble else ''} "
             f"({'context ' + str(context) if context else 'whole song'}"
             f"{', transposition average' if average else ''}"
             f"{f', blended with {best} {options.ngram_blend:g}' if blend else ''}"
             f"{f', song cache {options.song_cache:g}' if options.song_cache else ''})")
    model_result = score_model(model, encoded, targets, cond_of_song, context, average, progress, desc=model.family,
                               song_cache=options.song_cache, blend=blend, ensemble=ensemble)
    cached = {}
    if options.song_cache:  # like for like: the best n-gram with the same cache beside the model with it
        cached[f"{best} + song cache"] = score_model(baselines["models"][best], encoded, targets,
                                                     song_cache=options.song_cache)
    report = {
        "run": str(run_dir), "model": {"family": model.family, "label": label, "ordered": bool(model.ordered)},
        "corpus": str(scoring.corpus), "representation": vocab.representation, "streams": vocab.names,
        "split": options.split, "split_kind": targets.kind, "songs": int(len(targets.songs)), "targets": targets.n,
        "context": context, "transpose_average": average, "ensemble": options.ensemble,
        "ngram_blend": options.ngram_blend,
        "song_cache": options.song_cache, "song_cache_fit": options.song_cache_fit,
        "conditioned": conditioned,
        "collection": options.collection,
        "baselines": {"fitted_on": baselines["fitted_on"], "corpus": baselines["fit_corpus"], "best_ngram": best,
                      "selection": baselines["selection"]},
        "results": _plain({"model": model_result, **baselines["results"], **cached}),
    }
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    markdown = report_markdown(report)
    if options.generate:
        copy_songs = encoded.ids("all") if scoring.window_context else encoded.ids("train")
        if not len(copy_songs):
            copy_songs = fit_corpus.ids("train")
        only = songs_of(encoded, options.collection) if options.collection else None
        cond = vocab.condition_id(options.collection) if options.collection in vocab.conditions else 0
        report["generation"], section = generation_report(model, baselines["models"][best], best, encoded,
                                                          options.split, options.generate, options.generate_length,
                                                          copy_songs, out_dir, log, only, cond)
        markdown += "\n\n" + section + "\n"
    if rep.step_token() is not None:  # a piano roll read step by step: also the benchmark's metric
        tables = list(rep.transpositions().values()) if average else None
        report["per_step"] = step_report([model, *ensemble], rep, encoded, fit_corpus, options.split, cond_of_song,
                                         tables, options.song_cache, options.ngram_blend, options.song_cache_fit)
        markdown += "\n" + step_markdown(report["per_step"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / f"{REPORT_NAME}.json", report)
    write_text(out_dir / f"{REPORT_NAME}.md", markdown)
    plot_results(report, out_dir / f"{REPORT_NAME}.png")
    log(summary_line(report, out_dir))
    if "per_step" in report:
        p = report["per_step"]
        label = blend_label(p).removeprefix(" + ")
        cached = f" ({label})" if label else ""
        ngram_cached = f" ({p['ngram_song_cache']:.3f} with the cache)" if "ngram_song_cache" in p else ""
        log(f"nats per time step ({p['split']}, steps 2..T): model{cached} {p['model']:.3f}, {p['best_ngram']} "
            f"{p['ngram']:.3f}{ngram_cached}, Bernoulli per key given the previous step {p['markov']:.3f}, "
            f"Bernoulli per key {p['bernoulli']:.3f}")
    return report


def _ensemble(runs: str | None, model, run: dict, device: str) -> list:
    """The models of ``--ensemble`` (comma-separated run or model directories); each must read what ``model``
    reads, and none may have trained on what the first run holds out (their corpus and split are the same)."""
    out = []
    for path in [p.strip() for p in (runs or "").split(",") if p.strip()]:
        other = load_model(path, device=device)
        problems = model.vocab.differences(other.vocab)
        if problems:
            raise NotelmError(f"--ensemble {path}: it does not read what {model.family} reads: {'; '.join(problems)}")
        other_run = read_run(path)
        if run.get("corpus") and other_run.get("corpus") and not _same_path(run["corpus"], other_run["corpus"]):
            raise NotelmError(f"--ensemble {path}: trained on {other_run['corpus']}, not on {run['corpus']}: the "
                              "songs scored may be among its training songs")
        out.append(other)
    return out


def _scoring(run_dir: Path, options: EvalOptions, progress: bool, log) -> _Scoring:
    """The model, the corpus it is scored on (encoded with its settings) and the targets of the split."""
    device = options.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(run_dir, device=device)
    vocab = model.vocab
    run = read_run(run_dir)
    run_corpus = run.get("corpus")
    corpus = options.corpus or run_corpus
    if not corpus:
        raise NotelmError(f"{run_dir}: no run.json naming the training corpus; pass --corpus CORPUS_DIR")
    encoded = load_or_encode(corpus, vocab.representation, vocab.config, progress=progress, log=log,
                             condition=vocab.condition_label)
    problems = vocab.differences(encoded.vocab)
    if problems:
        raise NotelmError(f"{corpus}: the model cannot read this corpus: {'; '.join(problems)}")
    train_cfg = run.get("train", {})
    context, split = options.context, options.split
    if train_cfg.get("split") == "window" and _same_path(corpus, run_corpus):
        window_context = int(train_cfg.get("context", 32))
        if context is not None and context != window_context:
            raise NotelmError(f"{run_dir} was trained on a random split of {window_context}-event windows and is "
                              f"scored on its test windows with that context; drop --context {context}")
        context, targets = window_context, window_targets(encoded, split, window_context)
    else:
        window_context, targets = None, song_targets(encoded, split)
    if options.collection is not None:
        if window_context:
            raise NotelmError(f"--collection: {run_dir} was trained on a random window split; score it whole")
        targets = song_targets(encoded, split, songs_of(encoded, options.collection, corpus))
    if not targets.n:
        raise NotelmError(f"{corpus}: no {split} {'windows' if window_context else 'songs'} to evaluate"
                          + (f" in {options.collection}" if options.collection else ""))
    return _Scoring(model, encoded, targets, run, corpus, context, window_context, device)


def songs_of(encoded, name: str, corpus="the corpus") -> np.ndarray:
    """A mask over the songs of ``encoded`` whose condition (collection, group) is ``name``."""
    vocab = encoded.vocab
    if name not in vocab.conditions:
        raise NotelmError(f"{corpus}: no {vocab.condition_label} {name!r}; it has {', '.join(vocab.conditions)}")
    return np.asarray(encoded.cond) == vocab.conditions.index(name) + 1


def _baselines(scoring: _Scoring, options: EvalOptions, progress: bool, log, cache: dict | None):
    """(the corpus the baselines are fitted on, ``baseline_scores``), reused from ``cache`` when the same.

    Fitted on the train split; on the run's own corpus with ``baselines_from_train`` or for ``all`` on
    another corpus than the run's; only on the songs of ``collection`` where the fit corpus has it.
    """
    split, collection = options.split, options.collection
    vocab, corpus, run_corpus = scoring.model.vocab, scoring.corpus, scoring.run.get("corpus")
    fit_corpus, fit_name = scoring.encoded, str(corpus)
    from_train = options.baselines_from_train or split == "all"
    if from_train and run_corpus and not _same_path(corpus, run_corpus):
        if Path(run_corpus).exists():
            fit_corpus = load_or_encode(run_corpus, vocab.representation, vocab.config, progress=progress, log=log,
                                        condition=vocab.condition_label)
            fit_name = str(run_corpus)
        else:
            log(f"note: the run's corpus {run_corpus} is gone; baselines are fitted on the train split of {corpus}")
    elif options.baselines_from_train and not run_corpus:
        raise NotelmError("--baselines-from-train: the model names no training corpus (no run.json beside it)")
    fit_only = None
    if collection is not None and collection in fit_corpus.vocab.conditions:
        fit_only = songs_of(fit_corpus, collection)
    context = scoring.context
    orders = [k for k in NGRAM_ORDERS if context is None or k - 1 <= context]  # n-grams that see <= context events
    key = json.dumps([str(Path(fit_name).resolve()), str(Path(corpus).resolve()), vocab.representation, vocab.config,
                      split, orders, scoring.window_context, collection, fit_only is not None])
    cache = cache if cache is not None else {}
    if key not in cache:
        cache[key] = baseline_scores(fit_corpus, scoring.encoded, scoring.targets, orders, scoring.window_context,
                                     progress, fit_name, fit_only)
        if fit_only is not None:
            cache[key]["fitted_on"] += f" (its {collection} songs)"
    return fit_corpus, cache[key]


def reported_accuracy(report: dict, model: str, stream: str) -> float:
    """The accuracy a report states for a model: the expected accuracy for the stratified dummy, else argmax."""
    key = "expected_accuracy" if model == "stratified" else "accuracy"
    value = report["results"][model][stream][key]
    return math.nan if value is None else value


def report_markdown(report: dict) -> str:
    best = report["baselines"]["best_ngram"]
    results = report["results"]
    names = ["model", "majority", "stratified"] + [n for n in results if n.startswith("ngram")] + \
            [n for n in results if n.startswith("joint")]
    what = ("the event after each window" if report["split_kind"] == "window"
            else "every event after BOS, EOS included")
    selection = report["baselines"]["selection"]
    context = f"at most {report['context']} events" if report["context"] else "the whole song before each event"
    chosen_on = selection.get("note") or f"lowest total bits on the valid split, {selection['targets']:,} targets"
    lines = [
        f"# Evaluation of {report['run']}", "",
        f"- model: {report['model']['label']}",
        f"- corpus: `{report['corpus']}` ({report['representation']} representation), split **{report['split']}**"
        f"{' of the random window split' if report['split_kind'] == 'window' else ''}"
        f"{', collection ' + report['collection'] if report.get('collection') else ''}: {report['songs']} songs, "
        f"{report['targets']:,} targets ({what})",
        f"- context: {context}"
        + (f"; predictions averaged over transpositions ({results['model'].get('shifts', 0):.1f} shifts per song)"
           if report["transpose_average"] else "")
        + (f"; mixed with {best} (weight {report['ngram_blend']:g})" if report.get("ngram_blend") else "")
        + (f"; blended with the song cache (weight {report['song_cache']:g} per matched event)"
           if report.get("song_cache") else ""),
        f"- baselines fitted on {report['baselines']['fitted_on']} of `{report['baselines']['corpus']}`; "
        f"best n-gram ★ = {best} ({chosen_on})", "",
        prediction_table({n: results[n] for n in names}, report["streams"], marks={best: " ★"},
                         accuracy_key={"stratified": "expected_accuracy"}), "",
        "acc: accuracy (argmax = target; for stratified the expected accuracy of a guess drawn from the class prior, "
        "Σ p·f); bits: negative log-likelihood in bits per event; ppl: perplexity 2^bits; total: a whole event "
        "(sum over streams). ngramK: per-stream K-gram; jointK: K-gram over whole events (Kneser-Ney). "
        "The majority dummy's bits only reflect its smoothing (1e-3 spread over the other values): compare its "
        "accuracy.", "",
        f"![accuracy and bits per event]({REPORT_NAME}.png)",
    ]
    return "\n".join(lines) + "\n"


def summary_line(report: dict, out_dir: Path) -> str:
    best = report["baselines"]["best_ngram"]
    parts = [f"{s} acc {reported_accuracy(report, 'model', s):.3f} "
             f"(best n-gram {reported_accuracy(report, best, s):.3f})"
             for s in report["streams"]]
    model_bits, ngram_bits = report["results"]["model"]["total"]["bits"], report["results"][best]["total"]["bits"]
    cached = f"{best} + song cache"
    versus = (f"{best} {ngram_bits:.3f} ({cached} {report['results'][cached]['total']['bits']:.3f})"
              if cached in report["results"] else f"{best} {ngram_bits:.3f}")
    return (f"evaluated {report['model']['label']} on {plural(report['targets'], report['split'] + ' target')} of "
            f"{plural(report['songs'], 'song')}: {', '.join(parts)}; {model_bits:.3f} bits/event vs {versus}, "
            f"in {report['seconds']:.0f} s -> {out_dir / (REPORT_NAME + '.md')}")


def plot_results(report: dict, path: Path) -> None:
    """Bars per stream: accuracy, and bits per event (plus the whole event) of the model and the baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = report["baselines"]["best_ngram"]
    shown = ["model", best, "majority", "stratified"]
    streams = report["streams"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        result = report["results"][name]
        accuracies = [reported_accuracy(report, name, s) for s in streams]
        label = f"{name} (best n-gram)" if name == best else name
        axes[0].bar(np.arange(len(streams)) + i * width, accuracies, width, label=label, color=f"C{i}")
        if name != "majority":  # its NLL only reflects its smoothing constant
            bits = [result[s]["bits"] for s in streams] + [result["total"]["bits"]]
            axes[1].bar(np.arange(len(streams) + 1) + i * width, [b if b is not None else np.nan for b in bits], width,
                        label=label, color=f"C{i}")
    axes[0].set_xticks(np.arange(len(streams)) + 0.4 - width / 2, streams)
    axes[0].set(title="accuracy (stratified: expected)", ylim=(0, 1))
    axes[1].set_xticks(np.arange(len(streams) + 1) + 0.4 - width / 2, streams + ["whole event"])
    axes[1].set(title="bits per event (lower is better)")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{report['run']} — {report['split']} split, {report['targets']:,} targets", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# =============================================================================
# compare
# =============================================================================

def find_evaluation(path) -> Path:
    """The evaluation JSON of a run directory, an eval directory, or the file itself."""
    path = Path(path)
    for candidate in (path, path / f"{REPORT_NAME}.json", path / "eval" / f"{REPORT_NAME}.json"):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise NotelmError(f"{path}: no such run directory")
    raise NotelmError(f"{path}: not evaluated yet (no eval/{REPORT_NAME}.json); run `notelm evaluate {path}` first")


def compare(paths: list, out=None, log=print) -> str:
    """A Markdown table of several runs' evaluations side by side; written to ``out`` and returned."""
    if not paths:
        raise NotelmError("compare needs at least one run directory")
    files = [find_evaluation(path) for path in paths]
    reports = [read_json(file) for file in files]
    for file, r in zip(files, reports):
        if not isinstance(r, dict) or not isinstance(r.get("streams"), list):
            raise NotelmError(f"{printable(file)}: not a notelm evaluation (no list of streams)")
    streams = list(dict.fromkeys(printable(s) for r in reports for s in r["streams"]))
    header = (["run", "model", "corpus", "split", "context", "targets"] + [f"{s} acc" for s in streams]
              + [f"{s} bits" for s in streams] + ["total bits", "best n-gram", "n-gram total bits"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 6 + "---:|" * (len(header) - 8) + "---|---:|"]
    for file, r in zip(files, reports):
        try:
            cells = _compare_cells(r, streams)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a damaged or foreign JSON
            raise NotelmError(f"{printable(file)}: not a notelm evaluation ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:80]})") from None
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(out) if out else Path("comparison.md")
    write_text(out, table)
    log(table)
    log(f"compared {len(reports)} evaluations -> {out}")
    return table


def _compare_cells(r: dict, streams: list[str]) -> list[str]:
    """One run's row of the comparison table."""
    model, best = r["results"]["model"], r["baselines"]["best_ngram"]
    context = (f"{r['context']}" if r["context"] else "song") + (" + transp. avg" if r["transpose_average"] else "")
    context += " + n-gram blend" if r.get("ngram_blend") else ""
    context += " + song cache" if r.get("song_cache") else ""

    def cell(s, key):
        return "–" if s not in model or model[s][key] is None else f"{model[s][key]:.3f}"

    return ([printable(r["run"]), printable(r["model"]["family"]), printable(Path(r["corpus"]).name),
             f"{printable(r['split'])} ({printable(r['split_kind'])})", printable(context), f"{r['targets']:,}"]
            + [cell(s, "accuracy") for s in streams] + [cell(s, "bits") for s in streams]
            + [f"{model['total']['bits']:.3f}", printable(best), f"{r['results'][best]['total']['bits']:.3f}"])
