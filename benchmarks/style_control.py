"""Style control of a conditioned model: are pieces written "in the style of" S closer to S than to the others?

    .venv/bin/python benchmarks/style_control.py RUN_DIR [--corpus CORPUS] [--pieces 16] [--length 256]
                                                 [--guidance G] [--top-p P] [--temperature T]
                                                 [--smoothing-floor F] [--copies avoid|allow] [--whole]
                                                 [--seed S] [--quick]

For every style S the model is conditioned on (the collections of its corpus),
``--pieces`` pieces of ``--length`` events are sampled with ``--condition S``
(default sampling settings, seed 0 or ``--seed``; ``--guidance``, ``--top-p`` and
``--temperature`` and ``--smoothing-floor`` as ``notelm generate``'s; the n-gram samples with the same
top-p and temperature), and the same number from the best n-gram
fitted on S's train songs alone (the n-gram with the lowest bits on S's valid
songs among per-stream and joint Kneser-Ney n-grams of orders 2-5).  Each set
is described by four histograms, each the mean of its pieces' normalized
histograms: pitch class (12), duration and inter-onset interval (the log-spaced
bins of ``metrics.TIME_BIN_EDGES``), and polyphony (how many notes start
together: 1 .. 8 or more).  Closeness of two sets: the overlapping area of each
histogram (sum of the bin-wise minimum; 1 = identical), averaged over the four.

The real sets are the first ``--length`` events of every test song of each
style.  The table has a row per generated style and a column per real style:
style control works where each row's largest value is on the diagonal.  Beside
it: the n-gram's samples against their own style, and the real valid songs and
the real training songs of each style against its test songs (how close two real
sets of one style are; the training songs: what a model that wrote exactly them would score).

Styles without test songs are left out.  With ``--whole``, or for a model that
knows fewer than two of the corpus's styles (one trained on one collection),
there is one set, the whole corpus, sampled without a condition: a 1x1 table,
the model's samples against the n-gram's.

The copy check: for every sampled piece, the longest run of whole events it
shares with any training song of the corpus (``metrics.CorpusIndex``); for
scale, the same of the real test songs' first ``--length`` events.  The
model's pieces go through generate's copy guard where the run carries a copy
index (``copyguard.py``; ``--copies allow``: the model's own draws); the
n-gram's never do.

Prints the tables and, last, one JSON line: ``table`` (generated style -> real
style -> overlap), ``diagonal_wins`` (rows whose best column is their own style),
``beats_ngram`` (styles where the model's own-style overlap is above the
n-gram's), ``gap_to_ngram`` (style -> the model's own-style overlap minus the n-gram's,
``gap``, and its 90 % bootstrap interval over the pieces drawn, ``lo`` .. ``hi``),
``ahead_of_ngram_90`` / ``behind_ngram_90`` (styles whose whole interval is above / below zero),
``own_by_histogram`` (style -> model / n-gram -> each histogram's own-style
overlap: where a gap comes from), ``copy_max`` / ``copy_median`` (model pieces), ``ngram_copy_max``,
``copy_max_by_style`` (model pieces, the longest run per style), ``copies`` and
``copy_guard_redrawn`` (events the guard drew again; null: no guard), ``real_copy_over_16`` of
``real_songs`` and ``real_copy_max_by_style`` (the real test songs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from notelm import notes as nt
from notelm.checkpoint import load_model
from notelm.config import SamplingConfig
from notelm.copyguard import guard_in_use
from notelm.encoding import from_vocab, load_or_encode
from notelm.encoding.vocab import UNCONDITIONED
from notelm.evaluate import event_ids, fit_models, read_run, score_model, song_targets, songs_of
from notelm.generate import sample
from notelm.metrics import TIME_BIN_EDGES, CorpusIndex
from notelm.models.ngram import NGramModel

HISTOGRAMS = ("pitch class", "duration", "inter-onset", "polyphony")
MAX_CHORD = 8
ORDERS = (2, 3, 4, 5)
CHOOSE_ON_SONGS = 30  # valid songs per style the n-gram is chosen on (enough to rank orders)
WHOLE = "all"  # the label of the one set of --whole: the whole corpus
BOOTSTRAP = 2000  # resamplings of the pieces for the model-vs-n-gram interval


def histograms(notes: nt.Notes) -> dict[str, np.ndarray]:
    """The four normalized histograms of one piece (all zero without notes)."""
    pitched = ~np.asarray(notes["is_drum"], bool)
    onset = np.round(np.asarray(notes["onset"], np.float64) * 48).astype(np.int64)  # a fine grid: exact starts
    starts, chord = np.unique(onset, return_counts=True)
    counts = {
        "pitch class": np.bincount(np.asarray(notes["pitch"], np.int64)[pitched] % 12, minlength=12),
        "duration": _time_counts(np.asarray(notes["duration"], np.float64)[pitched]),
        "inter-onset": _time_counts(np.diff(starts) / 48.0),
        "polyphony": np.bincount(np.minimum(chord, MAX_CHORD) - 1, minlength=MAX_CHORD)[:MAX_CHORD],
    }
    return {k: v / v.sum() if v.sum() else v.astype(np.float64) for k, v in counts.items()}


def _time_counts(quarters: np.ndarray) -> np.ndarray:
    bins = np.clip(np.searchsorted(TIME_BIN_EDGES, quarters, side="right") - 1, 0, len(TIME_BIN_EDGES) - 2)
    return np.bincount(bins, minlength=len(TIME_BIN_EDGES) - 1)


def piece_histograms(pieces: list[nt.Notes]) -> dict[str, np.ndarray]:
    """Each histogram of every piece with notes, stacked: name -> [pieces, bins]."""
    per_piece = [histograms(p) for p in pieces if nt.num_notes(p)]
    return {k: np.stack([h[k] for h in per_piece]) for k in HISTOGRAMS}


def mean_histograms(per_piece: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A set's histograms from ``piece_histograms``: the mean of its pieces' normalized histograms."""
    return {k: v.mean(0) for k, v in per_piece.items()}


def set_histograms(pieces: list[nt.Notes]) -> dict[str, np.ndarray]:
    return mean_histograms(piece_histograms(pieces))


def overlaps(a: dict, b: dict) -> dict[str, float]:
    """Overlapping area of each of the four histograms (1 = the same distribution)."""
    return {k: float(np.minimum(a[k], b[k]).sum()) for k in HISTOGRAMS}


def closeness(a: dict, b: dict) -> float:
    """The four overlapping areas, averaged."""
    return float(np.mean(list(overlaps(a, b).values())))


def bootstrap_gap(model: dict, ngram: dict, real: dict, rounds: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Own-style closeness of the model's set minus the n-gram's, and how much of it is the pieces drawn:
    both sets resampled with replacement ``rounds`` times (the real set fixed); the interval is the gap
    ± 1.645 standard deviations of the resampled gaps (90 %).  Centred on the gap itself, not on the
    resamples' percentiles: a resampled set is noisier, so its overlap with the real set is biased low.
    ``model`` / ``ngram``: ``piece_histograms`` of the two sets."""
    rng = np.random.default_rng(seed)

    def resampled(per_piece):
        n = len(next(iter(per_piece.values())))
        picks = rng.integers(0, n, (rounds, n))
        return np.mean([np.minimum(v[picks].mean(1), real[k]).sum(-1) for k, v in per_piece.items()], 0)

    spread = float(np.std(resampled(model) - resampled(ngram)))
    gap = closeness(mean_histograms(model), real) - closeness(mean_histograms(ngram), real)
    return {"gap": gap, "lo": gap - 1.645 * spread, "hi": gap + 1.645 * spread}


def best_ngram(encoded, only: np.ndarray) -> tuple[str, NGramModel]:
    """The n-gram fitted on one style's train songs with the lowest bits on (up to 30 of) its valid songs."""
    train_ids = encoded.ids("train")
    models = fit_models(encoded.vocab, encoded.streams, encoded.offsets, train_ids[only[train_ids]],
                        orders=ORDERS, joint_orders=ORDERS)
    valid = song_targets(encoded, "valid", only)
    valid.songs, valid.rows = valid.songs[:CHOOSE_ON_SONGS], valid.rows[:CHOOSE_ON_SONGS]
    if not valid.n:
        return "ngram3", models["ngram3"]
    bits = {name: score_model(m, encoded, valid)["total"]["bits"] for name, m in models.items()
            if name.startswith(("ngram", "joint"))}
    name = min(bits, key=bits.get)
    return name, models[name]


def real_pieces(encoded, ids, length: int) -> tuple[list[nt.Notes], list[np.ndarray]]:
    rep = from_vocab(encoded.vocab)
    songs = [encoded.song(int(i)) for i in ids]
    return ([rep.decode({k: np.asarray(v[: length + 1], np.int64) for k, v in s.items()}) for s in songs],
            [event_ids(s, encoded.vocab) for s in songs])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--corpus", help="default: the run's own corpus")
    ap.add_argument("--pieces", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--guidance", type=float, default=SamplingConfig.guidance,
                    help="classifier-free guidance of the model's samples (default: generate's)")
    ap.add_argument("--top-p", type=float, default=SamplingConfig.top_p,
                    help="nucleus sampling of both sets of samples (default: generate's)")
    ap.add_argument("--temperature", type=float, default=SamplingConfig.temperature,
                    help="temperature of both sets of samples (default: generate's)")
    ap.add_argument("--smoothing-floor", type=float, default=None,
                    help="the floor a label-smoothed model's samples take back (default: generate's, the model's own)")
    ap.add_argument("--copies", default=SamplingConfig.copies, choices=("avoid", "allow"),
                    help="'avoid': the model's pieces go through generate's copy guard (the default, where the run "
                         "has a copy index); 'allow': the model's own draws")
    ap.add_argument("--whole", action="store_true",
                    help="one set: the whole corpus, sampled without a condition (the default for a model that "
                         "knows fewer than two of its styles)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of the model's and the n-gram's pieces "
                    "(another seed: how much a row moves with the pieces drawn)")
    ap.add_argument("--quick", action="store_true", help="4 pieces of 64 events per style")
    a = ap.parse_args(argv)
    if a.quick:
        a.pieces, a.length = 4, 64
    started = time.perf_counter()
    model = load_model(a.run)
    vocab = model.vocab
    corpus = a.corpus or read_run(a.run).get("corpus")
    encoded = load_or_encode(corpus, vocab.representation, vocab.config, condition=vocab.condition_label)
    test, valid_ids, train_ids = encoded.ids("test"), encoded.ids("valid"), encoded.ids("train")
    styles = [s for s in vocab.conditions if s in encoded.vocab.conditions and songs_of(encoded, s)[test].any()]
    whole = a.whole or len(styles) < 2  # e.g. a model of one collection: against the whole corpus, no condition
    if whole:
        styles = [WHOLE]
    rep = from_vocab(vocab)
    cfg = SamplingConfig(seed=a.seed, guidance=a.guidance, top_p=a.top_p, temperature=a.temperature,
                         smoothing_floor=a.smoothing_floor, copies=a.copies).validate()
    guard = guard_in_use(model, cfg)
    real, valid, trained, generated, ngram_sets, gaps = {}, {}, {}, {}, {}, {}
    pieces = {"model": [], "ngram": [], "real test": []}  # event ids, for the copy check
    counts = {name: [] for name in pieces}  # pieces per style of each set
    for style in styles:
        only = np.ones(len(encoded.offsets) - 1, bool) if whole else songs_of(encoded, style)
        cond = UNCONDITIONED if whole else vocab.condition_id(style)
        real_notes, real_ids = real_pieces(encoded, test[only[test]], a.length)
        real[style] = set_histograms(real_notes)
        pieces["real test"] += [ids[:a.length] for ids in real_ids]  # how much real held-out music shares
        valid[style] = set_histograms(real_pieces(encoded, valid_ids[only[valid_ids]], a.length)[0])
        trained[style] = set_histograms(real_pieces(encoded, train_ids[only[train_ids]], a.length)[0])
        batch = sample(model, a.pieces, a.length, cond=cond, cfg=cfg)
        model_pieces = piece_histograms([rep.decode(p.streams) for p in batch])
        generated[style] = mean_histograms(model_pieces)
        name, ngram = best_ngram(encoded, only)
        ngram_batch = sample(ngram, a.pieces, a.length, cfg=replace(cfg, smoothing_floor=None))  # its own: none
        ngram_pieces = piece_histograms([rep.decode(p.streams) for p in ngram_batch])
        ngram_sets[style] = (name, mean_histograms(ngram_pieces))
        gaps[style] = bootstrap_gap(model_pieces, ngram_pieces, real[style], seed=a.seed)
        pieces["model"] += [event_ids(p.streams, vocab) for p in batch]
        pieces["ngram"] += [event_ids(p.streams, vocab) for p in ngram_batch]
        for name, n in (("model", a.pieces), ("ngram", a.pieces), ("real test", len(real_ids))):
            counts[name].append(n)
        print(f"{style}: sampled {a.pieces} pieces (model) and {a.pieces} ({name}) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    table = {g: {r: closeness(generated[g], real[r]) for r in styles} for g in styles}
    ngram_own = {s: closeness(ngram_sets[s][1], real[s]) for s in styles}
    valid_own = {s: closeness(valid[s], real[s]) for s in styles}
    train_own = {s: closeness(trained[s], real[s]) for s in styles}
    by_histogram = {s: {"model": overlaps(generated[s], real[s]), "ngram": overlaps(ngram_sets[s][1], real[s])}
                    for s in styles}
    copies = _copy_check(encoded, pieces)
    longest = {name: {s: int(r.max()) for s, r in zip(styles, np.split(runs, np.cumsum(counts[name])[:-1]))}
               for name, runs in copies.items()}  # pieces come style by style
    _print_tables(styles, table, ngram_sets, ngram_own, valid_own, train_own, by_histogram, copies, longest, a)
    print(f"\nModel minus n-gram, own-style closeness, with the 90 % interval of {BOOTSTRAP} resamplings of both "
          f"sets' pieces: " + "; ".join(f"{s} {g['gap']:+.3f} ({g['lo']:+.3f} .. {g['hi']:+.3f})"
                                       for s, g in gaps.items()))
    result = {"styles": styles, "pieces": a.pieces, "length": a.length, "seed": a.seed, "guidance": a.guidance,
              "top_p": a.top_p, "temperature": a.temperature, "smoothing_floor": a.smoothing_floor,
              "table": table,
              "diagonal_wins": sum(max(table[s], key=table[s].get) == s for s in styles),
              "beats_ngram": sum(table[s][s] > ngram_own[s] for s in styles), "ngram_own": ngram_own,
              "gap_to_ngram": gaps, "ahead_of_ngram_90": sum(g["lo"] > 0 for g in gaps.values()),
              "behind_ngram_90": sum(g["hi"] < 0 for g in gaps.values()),
              "valid_own": valid_own, "train_own": train_own, "own_by_histogram": by_histogram,
              "copy_max": int(copies["model"].max()),
              "copy_median": float(np.median(copies["model"])), "ngram_copy_max": int(copies["ngram"].max()),
              "copy_max_by_style": longest["model"], "copies": a.copies,
              "real_copy_over_16": int((copies["real test"] > 16).sum()), "real_songs": len(copies["real test"]),
              "real_copy_max_by_style": longest["real test"],
              "copy_guard_redrawn": None if guard is None else guard.redrawn,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return 0


def _copy_check(encoded, pieces: dict) -> dict[str, np.ndarray]:
    """Longest run of whole events each piece shares with any training song of the corpus."""
    train = [event_ids(encoded.song(int(i)), encoded.vocab) for i in encoded.ids("train")]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in train])[:-1]]).astype(np.int64)
    index = CorpusIndex(np.concatenate(train), offsets)
    return {name: index.longest_shared_runs(p) for name, p in pieces.items()}


def _print_tables(styles, table, ngram_sets, ngram_own, valid_own, train_own, by_histogram, copies, longest,
                  a) -> None:
    print(f"\nCloseness (mean overlapping area of pitch-class, duration, inter-onset and polyphony histograms; "
          f"1 = identical) of {a.pieces} pieces x {a.length} events per style to each style's real test songs:\n")
    print("| generated in the style of | " + " | ".join(f"real {s}" for s in styles)
          + " | best n-gram of the style (own style) | real valid songs (own style) | real train songs (own style) |")
    print("|---|" + "---:|" * (len(styles) + 3))
    for g in styles:
        best = max(table[g], key=table[g].get)
        cells = [f"**{table[g][r]:.3f}**" if r == best else f"{table[g][r]:.3f}" for r in styles]
        print(f"| {g} | " + " | ".join(cells)
              + f" | {ngram_own[g]:.3f} ({ngram_sets[g][0]}) | {valid_own[g]:.3f} | {train_own[g]:.3f} |")
    print("\nOwn-style closeness by histogram, model (n-gram):\n")
    print("| style | " + " | ".join(HISTOGRAMS) + " |")
    print("|---|" + "---:|" * len(HISTOGRAMS))
    for s in styles:
        m, n = by_histogram[s]["model"], by_histogram[s]["ngram"]
        print(f"| {s} | " + " | ".join(f"{m[k]:.3f} ({n[k]:.3f})" for k in HISTOGRAMS) + " |")
    for name, runs in copies.items():
        per_style = ", ".join(f"{s} {n}" for s, n in longest[name].items())
        print(f"\ncopy check ({name}): longest run shared with a training song: max {runs.max()}, "
              f"median {np.median(runs):g} events; pieces over 16: {int((runs > 16).sum())} of {len(runs)}; "
              f"longest by style: {per_style}")


if __name__ == "__main__":
    sys.exit(main())
