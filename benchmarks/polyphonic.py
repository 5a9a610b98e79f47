"""The classic piano-roll benchmark: notelm's test NLL per time step on JSB Chorales, Nottingham,
Piano-midi.de and MuseData, beside the two calibration baselines and the best n-gram.

    python benchmarks/polyphonic.py                     # all four sets (about 3 minutes of training each)
    python benchmarks/polyphonic.py --sets jsb,piano    # some of them; results of earlier sets are kept
    python benchmarks/polyphonic.py --steps 2000        # a longer budget (up to the 510 s cap a set)
    python benchmarks/polyphonic.py --quick             # metric and baselines only, no training (< 1 minute)

Per set: ``notelm prepare`` of its .mat file (the official split), the two baselines (a Bernoulli per
key; a Bernoulli per key given the previous step) and Kneser-Ney n-grams over the serialization fitted
on the train split, then the ``steps`` preset trained for the set's budget (``STEPS``, optimizer steps:
the same on every machine).  The checkpoint kept is the one with the lowest loss on the valid split;
it is scored once on valid and once on test, in nats per predicted time step (steps 2..T of every
sequence, given all earlier steps).  Nothing is chosen on test.

Each set's result goes to ``WORK/SET/result.json`` and a set already done is not trained again
(``--force``: again), so the sets can run one at a time.  The last line is one JSON object:
``jsb``, ``nottingham``, ``piano``, ``muse`` (test nats per step of notelm's model), ``*_valid``,
``*_bernoulli``, ``*_markov`` (the two baselines, test), ``*_ngram`` (best n-gram, test) and
``*_minutes`` (minutes of training), for every set done so far.  ``--quick`` checks that both
baseline rows equal those of the data's SOURCE.md (exit status 1 if not) and prints the n-gram rows.
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
from notelm.rollmetrics import STEP_NGRAM_ORDERS, bernoulli_nll, fit_step_ngrams, markov_nll, split_songs, step_nll
from notelm.train import train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "polyphonic"
FILES = {"jsb": "JSB_Chorales.mat", "nottingham": "Nottingham.mat", "piano": "Piano_midi.mat", "muse": "MuseData.mat"}
# Training budget per set, in optimizer steps (the same on every machine): about 3 minutes each on one core
# of a shared 2-core CPU; TIME_LIMIT is the safety cap that ends a run on a slower or busier machine.
STEPS = {"jsb": 560, "nottingham": 560, "piano": 560, "muse": 560}
TIME_LIMIT = 510
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


def baselines(encoded, rep, orders=STEP_NGRAM_ORDERS) -> dict:
    """The two baselines (test) and the best n-gram of ``orders`` (chosen on valid; valid and test)."""
    step_id = rep.step_token()
    rolls = {s: [rep.roll(song) for song in split_songs(encoded, s)] for s in ("train", "test")}
    best, ngrams = fit_step_ngrams(encoded, step_id, orders)
    out = {"bernoulli": bernoulli_nll(rolls["train"], rolls["test"]),
           "markov": markov_nll(rolls["train"], rolls["test"]), "ngram_name": best}
    for split in ("valid", "test"):
        songs = split_songs(encoded, split)
        out["ngram" if split == "test" else "ngram_valid"] = step_nll(ngrams[best], songs, np.zeros(len(songs)),
                                                                      step_id)
    return out


def train_and_score(name: str, corpus: Path, work: Path, steps: int, overrides: list[str], test: bool) -> dict:
    """Train the preset on the set (unless done), score its best checkpoint on valid (and test)."""
    run_dir = work / name / "run"
    if not (run_dir / "summary.json").exists():
        # one thread: on a busy machine a second one mostly waits for the first at every LSTM step
        raw = apply_overrides(read_preset(PRESET), [f"train.steps={steps}", "train.threads=1",
                                                    f"train.time_limit={TIME_LIMIT}", *overrides])
        train(corpus, parse_config(raw), run_dir, progress=False)
    summary = read_json(run_dir / "summary.json")
    model = load_model(run_dir / "best")
    encoded = load_or_encode(corpus, model.vocab.representation, model.vocab.config)
    step_id = from_vocab(model.vocab).step_token()
    cond = condition_map(model.vocab, encoded.vocab)[np.asarray(encoded.cond, np.int64)]  # as notelm evaluate
    out = {"steps": summary["steps"], "minutes": round(summary["seconds"] / 60, 2), "stopped": summary["stopped"]}
    for split in ("valid", "test") if test else ("valid",):
        songs = split_songs(encoded, split)
        out["model" if split == "test" else "valid"] = step_nll(model, songs, cond[encoded.ids(split)], step_id)
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
    result = {"set": name, **baselines(encoded, from_vocab(encoded.vocab), orders)}
    if not a.quick:
        result.update(train_and_score(name, corpus, work, a.steps or STEPS[name], a.set, not a.valid_only))
        write_json(result_path, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def table(results: dict) -> str:
    lines = ["| set | Bernoulli per key | given the previous step | best n-gram (valid / test) | notelm valid | "
             "notelm test | minutes trained (steps) |", "|---|---:|---:|---|---:|---:|---|"]
    for name, r in results.items():
        cells = [f"{r[k]:.3f}" if k in r else "–" for k in ("valid", "model")]
        cells.append(f"{r['minutes']:.1f} ({r['steps']})" if "minutes" in r else "–")
        model = " | ".join(cells)
        lines.append(f"| {name} | {r['bernoulli']:.2f} | {r['markov']:.2f} | {r['ngram_name']} "
                     f"{r['ngram_valid']:.3f} / {r['ngram']:.3f} | {model} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the metric and the baselines only, no training (< 1 min)")
    ap.add_argument("--sets", default=",".join(FILES), help=f"comma-separated, of {', '.join(FILES)}")
    ap.add_argument("--data", default=str(DATA), help="the .mat files' folder (default ../shared/data/polyphonic)")
    ap.add_argument("--work", default="work/polyphonic", help="corpora, runs and results (default work/polyphonic)")
    ap.add_argument("--steps", type=int, help="training steps for every set chosen (default: STEPS per set)")
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
        for key, field in (("", "model"), ("_valid", "valid"), ("_bernoulli", "bernoulli"), ("_markov", "markov"),
                           ("_ngram", "ngram"), ("_minutes", "minutes")):
            if field in r:
                out[name + key] = round(r[field], 4)
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
