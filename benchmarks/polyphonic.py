"""The classic piano-roll benchmark: notelm's test NLL per time step on JSB Chorales, Nottingham,
Piano-midi.de and MuseData, beside the two calibration baselines and the best n-gram.

    python benchmarks/polyphonic.py                     # all four sets (about 20-26 minutes of training each)
    python benchmarks/polyphonic.py --sets jsb,piano    # some of them; results of earlier sets are kept
    python benchmarks/polyphonic.py --steps 560 --seeds 1   # one short run per set (about 5 minutes each)
    python benchmarks/polyphonic.py --quick             # metric and baselines only, no training (< 1 minute)

Per set: ``notelm prepare`` of its .mat file (the official split), the two baselines (a Bernoulli per
key; a Bernoulli per key given the previous step) and Kneser-Ney n-grams over the serialization fitted
on the train split, then the ``steps`` preset trained ``SEEDS`` times (seeds 0, 1, ...) for ``STEPS``
optimizer steps each (the same on every machine).  Each run keeps the checkpoint with the lowest loss on
the valid split.  notelm's model is the mixture of those checkpoints, each reading the sequence in its
12 transpositions (``notelm evaluate RUN --ensemble RUN2 ... --transpose-average``): every token's
probability is the mean of the components', so the metric stays exact.  The best n-gram joins that
mixture with a weight from ``NGRAM_BLEND`` (``--ngram-blend A``: it holds the exact passages that recur
across the training songs, up to 12 tokens long, and errs differently from the networks), and the result
is blended with the song cache (what followed earlier occurrences of the same context in the same sequence,
``models/song_cache.py``): a weight ``W`` per matched token from ``SONG_CACHE`` (``--song-cache W``), or a
share per match length fitted on valid (``--song-cache-fit``).  The n-gram's weight and the cache are
chosen together on valid.  The model is scored once on valid and once on test, in nats per predicted time
step (steps 2..T of every sequence, given all earlier steps), beside the mixture with the best cache but
no n-gram (``*_no_ngram``), the mixture alone (``*_no_cache``) and the first run alone (``*_single``).
Nothing is chosen on test.

Each set's result goes to ``WORK/SET/result.json`` and a set already done is not trained again
(``--force``: again; a run already trained is kept), so the sets can run one at a time.  The last line is
one JSON object: ``jsb``, ``nottingham``, ``piano``, ``muse`` (test nats per step of notelm's model),
``*_valid``, ``*_ngram_blend`` (the n-gram's weight), ``*_song_cache`` (the cache's weight, or "fit"),
``*_song_cache_shares`` (the fitted shares per match length, ``song_cache.LENGTH_EDGES``), ``*_no_ngram`` /
``*_no_ngram_valid``, ``*_no_cache`` / ``*_no_cache_valid`` (the mixture alone), ``*_single`` /
``*_single_valid`` (the first run alone, no transpositions), ``*_bernoulli``, ``*_markov`` (the two
baselines, test), ``*_ngram`` (best n-gram, test), ``*_ngram_song_cache`` (the same n-gram with the same kind
of song cache, test) and ``*_minutes`` (minutes of training, all runs), for every set done so far.
``--quick`` checks that both baseline rows equal those of the data's SOURCE.md (exit status 1 if not) and
prints the n-gram rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from notelm.checkpoint import load_model
from notelm.config import apply_overrides, parse_config, read_preset
from notelm.corpus import prepare
from notelm.data import condition_map
from notelm.encoding import from_vocab, load_or_encode
from notelm.io import NotelmError, read_json, write_json
from notelm.models import song_cache
from notelm.rollmetrics import (
    STEP_NGRAM_ORDERS,
    bernoulli_nll,
    blend_scored,
    cache_targets,
    fit_song_cache,
    fit_step_ngrams,
    markov_nll,
    mixture_logprobs,
    nats_per_step,
    split_songs,
    step_nll,
)
from notelm.train import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "polyphonic"
FILES = {"jsb": "JSB_Chorales.mat", "nottingham": "Nottingham.mat", "piano": "Piano_midi.mat", "muse": "MuseData.mat"}
# Training budget per set: SEEDS runs of STEPS optimizer steps each (the same on every machine), chosen on
# valid, within 30 minutes per set on one thread of this 2-core CPU (a run of 560 steps takes about 5 minutes,
# one of 2,000 about 19).  JSB and Piano-midi.de overfit after ~600 steps (few songs): more runs help them,
# not more steps; Nottingham and MuseData keep improving.  TIME_LIMIT is the safety cap of one run on a slower
# or busier machine.
STEPS = {"jsb": 560, "nottingham": 2000, "piano": 560, "muse": 2000}
SEEDS = {"jsb": 5, "nottingham": 1, "piano": 4, "muse": 1}
TIME_LIMIT = 1200
# Weights of the song cache (per matched token, models/song_cache.py) tried on valid, and "fit": shares per match
# length fitted on valid; each with the best n-gram mixed in at each of NGRAM_BLEND.  The best pair on valid is
# used on test.
SONG_CACHE = (0.0, 0.02, 0.05, 0.1)
NGRAM_BLEND = (0.0, 0.1, 0.2, 0.3)
PRESET = "steps"
QUICK_NGRAM_ORDERS = (5,)  # --quick: one small n-gram per set, enough to check the metric end to end
# What the data's SOURCE.md states (test split, nats per predicted step): the check of --quick.
SOURCE_BERNOULLI = {"jsb": 11.09, "nottingham": 10.26, "piano": 11.05, "muse": 11.51}
SOURCE_MARKOV = {"jsb": 10.49, "nottingham": 5.15, "piano": 8.26, "muse": 8.56}


def corpus_of(name: str, data: Path, work: Path) -> Path:
    path = work / name / "corpus"
    if not path.exists():
        prepare([str(data / FILES[name])], path, workers=1, progress=False, log=lambda *_: None)
    return path


def baselines(encoded, rep, orders=STEP_NGRAM_ORDERS, test: bool = True) -> tuple[dict, dict]:
    """The two baselines (test) and the best n-gram of ``orders`` (chosen on valid; valid and test), and that
    n-gram's log-probabilities per split (``mixture_logprobs``), for the mixture."""
    step_id = rep.step_token()
    rolls = {s: [rep.roll(song) for song in split_songs(encoded, s)] for s in ("train", "test")}
    best, ngrams = fit_step_ngrams(encoded, step_id, orders)
    out = {"bernoulli": bernoulli_nll(rolls["train"], rolls["test"]),
           "markov": markov_nll(rolls["train"], rolls["test"]), "ngram_name": best}
    scored = {}
    for split in ("valid", "test") if test else ("valid",):
        songs = split_songs(encoded, split)
        scored[split] = mixture_logprobs(ngrams[best], songs, np.zeros(len(songs)), step_id)
        out["ngram" if split == "test" else "ngram_valid"] = nats_per_step(scored[split], step_id)
    return out, scored


def train_one(corpus: Path, run_dir: Path, steps: int, seed: int, overrides: list[str]) -> dict:
    """Train the preset once (unless done): its summary."""
    if not (run_dir / "summary.json").exists():
        # one thread: on a busy machine a second one mostly waits for the first at every LSTM step
        raw = apply_overrides(read_preset(PRESET), [f"train.steps={steps}", f"train.seed={seed}", "train.threads=1",
                                                    f"train.time_limit={TIME_LIMIT}", *overrides])
        train(corpus, parse_config(raw), run_dir, progress=False)
    return read_json(run_dir / "summary.json")


def train_and_score(name: str, corpus: Path, work: Path, steps: int, seeds: int, overrides: list[str],
                    test: bool, ngram: dict) -> dict:
    """Train the preset ``seeds`` times (unless done), then score the mixture of their best checkpoints over the
    12 transpositions, mixed with the best n-gram (``ngram``: its log-probabilities per split) and blended with
    the song cache, the n-gram's weight and the cache chosen together on valid, on valid (and test); beside it
    the mixture alone, the mixture with the best cache but no n-gram, and the first run alone."""
    runs = [work / name / ("run" if seed == 0 else f"run_seed{seed}") for seed in range(seeds)]
    summaries = [train_one(corpus, run, steps, seed, overrides) for seed, run in enumerate(runs)]
    models = [load_model(run / "best") for run in runs]
    encoded = load_or_encode(corpus, models[0].vocab.representation, models[0].vocab.config)
    rep = from_vocab(models[0].vocab)
    tables = list(rep.transpositions().values())
    cond = condition_map(models[0].vocab, encoded.vocab)[np.asarray(encoded.cond, np.int64)]  # as notelm evaluate
    out = {"steps": [s["steps"] for s in summaries], "runs": seeds,
           "minutes": round(sum(s["seconds"] for s in summaries) / 60, 2),
           "stopped": [s["stopped"] for s in summaries]}
    step_id = rep.step_token()
    shares = {}  # n-gram weight -> the cache's shares fitted on valid; an n-gram weight of 0: the mixture alone

    def cache_of(choice):
        blend, weight = choice
        return shares[blend] if weight == "fit" else weight

    def score(mixed, choice, targets):
        weight = cache_of(choice)
        return nats_per_step(mixed, step_id, weight, targets(song_cache.context_of(weight)))

    for split in ("valid", "test") if test else ("valid",):
        songs = split_songs(encoded, split)
        conds = cond[encoded.ids(split)]
        scored = mixture_logprobs(models, songs, conds, step_id, tables=tables)
        # the cache's side depends on the songs alone: found once per reach (when first needed), blended with
        # every candidate
        reach = {}

        def targets(n, scored=scored, reach=reach):
            if n not in reach:
                reach[n] = cache_targets(scored, n)
            return reach[n]

        if split == "valid":  # the n-gram's weight and the cache are chosen here, once
            by_choice = {}
            for blend in NGRAM_BLEND:
                mixed = blend_scored(scored, ngram[split], blend)
                shares[blend] = fit_song_cache(mixed, targets(song_cache.FITTED_CONTEXT))
                for weight in (*SONG_CACHE, "fit"):
                    by_choice[blend, weight] = score(mixed, (blend, weight), targets)
            best = min(by_choice, key=by_choice.get)
            no_ngram = min((c for c in by_choice if c[0] == 0), key=by_choice.get)
            out.update(ngram_blend=best[0], song_cache=best[1], valid=by_choice[best],
                       valid_no_cache=by_choice[0, 0.0], valid_no_ngram=by_choice[no_ngram])
            ngram_cache = best[1]
            if best[1] == "fit":
                out["song_cache_shares"] = np.round(shares[best[0]], 4).tolist()
                ngram_cache = fit_song_cache(ngram[split], targets(song_cache.FITTED_CONTEXT))
        else:
            out["model"] = score(blend_scored(scored, ngram[split], best[0]), best, targets)
            out["model_no_cache"] = nats_per_step(scored, step_id)
            out["model_no_ngram"] = score(scored, no_ngram, targets)
            if best[1]:  # like for like: the n-gram alone with the same kind of cache
                out["ngram_song_cache"] = nats_per_step(ngram[split], step_id, ngram_cache,
                                                        targets(song_cache.context_of(ngram_cache)))
        out["single" if split == "test" else "single_valid"] = step_nll(models[0], songs, conds, step_id)
    return out


def run_set(name: str, a) -> dict:
    work = Path(a.work)
    result_path = work / name / "result.json"
    if result_path.exists() and not a.force and not a.quick:
        return read_json(result_path)
    started = time.perf_counter()
    corpus = corpus_of(name, Path(a.data), work)
    encoded = load_or_encode(corpus, "steps")
    orders = QUICK_NGRAM_ORDERS if a.quick else STEP_NGRAM_ORDERS
    found, ngram = baselines(encoded, from_vocab(encoded.vocab), orders, not a.valid_only)
    result = {"set": name, **found}
    if not a.quick:
        result.update(train_and_score(name, corpus, work, a.steps or STEPS[name], a.seeds or SEEDS[name], a.set,
                                      not a.valid_only, ngram))
        write_json(result_path, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def table(results: dict) -> str:
    lines = ["| set | Bernoulli per key | given the previous step | best n-gram (valid / test) | notelm valid | "
             "notelm test | first run alone (valid / test) | minutes trained (runs x steps) |",
             "|---|---:|---:|---|---:|---:|---|---|"]
    for name, r in results.items():
        cells = [f"{r[k]:.3f}" if k in r else "–" for k in ("valid", "model")]
        cells.append(f"{r['single_valid']:.3f} / {r['single']:.3f}" if "single" in r else "–")
        cells.append(f"{r['minutes']:.1f} ({r['runs']} x {max(r['steps'])})" if "runs" in r else "–")
        model = " | ".join(cells)
        cached = f" (with the song cache {r['ngram_song_cache']:.3f})" if "ngram_song_cache" in r else ""
        lines.append(f"| {name} | {r['bernoulli']:.2f} | {r['markov']:.2f} | {r['ngram_name']} "
                     f"{r['ngram_valid']:.3f} / {r['ngram']:.3f}{cached} | {model} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the metric and the baselines only, no training (< 1 min)")
    ap.add_argument("--sets", default=",".join(FILES), help=f"comma-separated, of {', '.join(FILES)}")
    ap.add_argument("--data", default=str(DATA), help="the .mat files' folder (default ../shared/data/polyphonic)")
    ap.add_argument("--work", default="work/polyphonic", help="corpora, runs and results (default work/polyphonic)")
    ap.add_argument("--steps", type=int, help="training steps of every run (default: STEPS per set)")
    ap.add_argument("--seeds", type=int, help="runs per set, mixed (default: SEEDS per set)")
    ap.add_argument("--set", action="append", default=[], help="a preset override, e.g. model.dropout=0.4")
    ap.add_argument("--valid-only", action="store_true", help="score the trained model on valid only (research)")
    ap.add_argument("--force", action="store_true", help="train and score again sets already done")
    a = ap.parse_args(argv)
    names = [s.strip() for s in a.sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in FILES]
    if unknown:
        raise SystemExit(f"polyphonic: unknown set(s) {', '.join(unknown)}; choose from {', '.join(FILES)}")
    results = {name: run_set(name, a) for name in names}
    if not a.quick:  # sets done by earlier runs join the summary
        for name in FILES:
            path = Path(a.work) / name / "result.json"
            if name not in results and path.exists():
                results[name] = read_json(path)
        results = {name: results[name] for name in FILES if name in results}
    print(table(results))
    out = {}
    for name, r in results.items():
        for key, field in (("", "model"), ("_valid", "valid"), ("_ngram_blend", "ngram_blend"),
                           ("_song_cache", "song_cache"), ("_song_cache_shares", "song_cache_shares"),
                           ("_no_ngram", "model_no_ngram"), ("_no_ngram_valid", "valid_no_ngram"),
                           ("_no_cache", "model_no_cache"), ("_no_cache_valid", "valid_no_cache"),
                           ("_single", "single"), ("_single_valid", "single_valid"),
                           ("_bernoulli", "bernoulli"), ("_markov", "markov"), ("_ngram", "ngram"),
                           ("_ngram_song_cache", "ngram_song_cache"),
                           ("_minutes", "minutes")):
            if field in r:
                value = r[field]
                out[name + key] = round(value, 4) if isinstance(value, float) else value
    if a.quick:
        got = {n: (round(results[n]["bernoulli"], 2), round(results[n]["markov"], 2)) for n in names}
        bad = [f"{n}: {got[n][0]} / {got[n][1]} (SOURCE.md: {SOURCE_BERNOULLI[n]} / {SOURCE_MARKOV[n]})"
               for n in names if got[n] != (SOURCE_BERNOULLI[n], SOURCE_MARKOV[n])]
        print("baselines: " + ("equal to SOURCE.md's rows" if not bad else "DIFFER: " + "; ".join(bad)))
        out["baselines_match_source"] = not bad
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    try:
        result = main()
    except NotelmError as e:
        print(f"polyphonic: error: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if result.get("baselines_match_source", True) else 1)
