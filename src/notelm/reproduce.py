"""Reproduce the original experiment, and show how much its random window split flatters it.

    notelm reproduce [--quick] [--work DIR] [--steps N] [--time-limit SECONDS]
    python benchmarks/reproduce.py [the same options]

The ``seed`` representation (pitch class + five duration classes) on two
classical corpora, music21's Bach chorales and piano-midi.de, each under two
splits:

* ``window``: the original's split. Every 32-note window of every song goes to
  train / valid / test at random (``train.split = "window"``); the test targets
  are the events after the test windows, each predicted from its 32 notes.
  Neighbouring windows overlap in 31 notes, so every test target was seen in
  training as part of another window (with the loss at every position, even as
  a target): the leak a song-level split removes.
* ``song``: whole songs held out (the corpus's hash-based split); the test
  targets are every event of the test songs.

Models, all evaluated on the same targets by ``notelm.evaluate``:

* stratified dummy (its expected accuracy) and majority dummy;
* the best n-gram (per stream or joint, orders 2..5, lowest bits on the valid split);
* the original LSTM: ``configs/seed.toml`` (32-note windows, loss on the next note
  only), given 32 notes of context in both splits, as it was trained;
* notelm's best seed model: ``configs/seed_fullseq.toml`` (loss at every position,
  transposition augmentation, dropout). Song split: whole-song context, the
  average over the 12 transpositions, mixed with the best n-gram (weight
  ``NGRAM_BLEND``) and blended with the song cache (``models.song_cache``: what
  followed earlier occurrences of the same context in the song, weight
  ``SONG_CACHE`` per matched event). Window split: trained on
  crops of the same 33-event windows (``train.context = 32``) and given 32 notes
  of context.

Prepared corpora and finished runs in ``--work`` are reused, so an interrupted
reproduction picks up where it stopped.  Output: ``WORK/reproduce.md`` (the
table the README quotes), ``WORK/reproduce.json``, and as the very last line of
stdout one JSON object with every figure.  Every number comes from the runs the
command makes; nothing is typed in.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from notelm.io import NotelmError, read_json, write_json, write_text

SPLIT_KINDS = ("window", "song")
STREAMS = ("pitch", "duration")
MODELS = {  # key -> (preset, row title)
    "lstm_original": ("seed", "original LSTM (`seed.toml`: 32-note windows, loss on the next note)"),
    "notelm_best": ("seed_fullseq", "notelm best (`seed_fullseq.toml`: loss at every position, transposition "
                                    "augmentation; song split: + n-gram blend + song cache)"),
}
# how notelm's best model is scored on the song split; both weights chosen on the valid split of the Bach chorales
NGRAM_BLEND = 0.4  # the best n-gram's share of every prediction
SONG_CACHE = 0.06  # the song cache's weight per matched event
QUICK = {"bach_files": 40, "piano_files": 16, "steps": 30, "time_limit": 20.0, "split": (0.6, 0.2, 0.2)}
FULL_TIME_LIMIT = 600.0


def default_piano_folder() -> Path:
    """``../shared/data/piano_midi_de`` next to the repository (or the current folder)."""
    for root in (Path(__file__).resolve().parents[2].parent, Path.cwd().parent):
        if (root / "shared" / "data" / "piano_midi_de").is_dir():
            return root / "shared" / "data" / "piano_midi_de"
    return Path("..") / "shared" / "data" / "piano_midi_de"


def corpus_sources(name: str, source: str, quick: bool) -> list[str]:
    """What to prepare: the whole source, or (quick) a spread-out handful of its files."""
    from notelm.sources import iter_files

    if not quick:
        return [source]
    files = [f.path for f in iter_files([source]) if not f.error]
    want = QUICK["bach_files"] if name == "bach" else QUICK["piano_files"]
    if not files:
        raise NotelmError(f"{source}: no music files found")
    step = max(1, len(files) // want)  # every k-th file: several composers, not just the first folder
    return files[::step][:want]


def prepare_corpus(name: str, source: str, work: Path, quick: bool, progress: bool, log) -> Path:
    from notelm.corpus import prepare

    out = work / "corpora" / name
    if (out / "manifest.json").exists():
        log(f"{name}: using the corpus prepared before in {out}")
        return out
    if not source.startswith("music21:") and not Path(source).exists():
        raise NotelmError(f"{source}: no such folder (pass --piano / --bach)")
    split = QUICK["split"] if quick else (0.8, 0.1, 0.1)
    prepare(corpus_sources(name, source, quick), out, split=split, progress=progress, log=log)
    return out


def run_settings(preset: str, split: str, steps: int | None, time_limit: float, quick: bool) -> list[str]:
    overrides = [f'train.split="{split}"', f"train.time_limit={float(time_limit)}"]
    if steps:
        overrides.append(f"train.steps={steps}")
    if split == "window":
        overrides.append("train.context=32")  # the best model crops the same 33-event windows as the original
    if quick:
        overrides += ["train.eval_every=10", "train.eval_crops=128"]
    return overrides


def train_run(corpus: Path, preset: str, overrides: list[str], run_dir: Path, progress: bool, log) -> dict:
    """Train (or reuse a finished run with the same settings, or resume an interrupted one)."""
    from notelm.checkpoint import read_run
    from notelm.config import SECTIONS, load_config, parse_config
    from notelm.train import train

    run = load_config(preset, overrides)
    if (run_dir / "run.json").exists():
        saved = read_run(run_dir)
        same = parse_config({k: saved[k] for k in SECTIONS if k in saved}, saved=True).to_json() == run.to_json()
        if not same or saved.get("corpus") != str(corpus):
            raise NotelmError(f"{run_dir}: a run with other settings is already there; use another --work or remove it")
        if (run_dir / "summary.json").exists():
            log(f"{run_dir.name}: using the run trained before")
            summary = read_json(run_dir / "summary.json")
            if not isinstance(summary, dict):
                raise NotelmError(f"{run_dir / 'summary.json'}: expected a JSON object; remove the run to train "
                                  "it again")
            return summary
        if (run_dir / "checkpoint" / "config.json").exists():
            return train(corpus, run, run_dir, resume=True, progress=progress, log=log)
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume, start over
    return train(corpus, run, run_dir, progress=progress, log=log)


def reproduce(work="work/reproduce", quick: bool = False, steps: int | None = None, time_limit: float | None = None,
              bach: str = "music21:bach", piano: str | None = None, progress: bool = True, log=print) -> dict:
    """Run the whole reproduction; returns the flat figures (also printed as the last line)."""
    from notelm.evaluate import EvalOptions, evaluate, reported_accuracy

    started = time.perf_counter()
    work = Path(work) / ("quick" if quick else "full")
    steps = steps or (QUICK["steps"] if quick else None)
    time_limit = time_limit if time_limit is not None else (QUICK["time_limit"] if quick else FULL_TIME_LIMIT)
    corpora = {"bach": bach, "piano_midi_de": str(piano or default_piano_folder())}
    results: dict = {"quick": quick, "steps": steps, "time_limit": time_limit, "corpora": {}}
    for name, source in corpora.items():
        corpus = prepare_corpus(name, source, work, quick, progress, log)
        entry = results["corpora"][name] = {"source": source, "corpus": str(corpus), "splits": {}}
        for split in SPLIT_KINDS:
            cache: dict = {}  # both models of a split share one set of fitted baselines
            split_entry = entry["splits"][split] = {"runs": {}}
            for key, (preset, _) in MODELS.items():
                run_dir = work / "runs" / f"{name}-{split}-{key}"
                log(f"== {name}, {split} split, {key}: training {preset} -> {run_dir}")
                settings = run_settings(preset, split, steps, time_limit, quick)
                summary = train_run(corpus, preset, settings, run_dir, progress, log)
                best_model = key == "notelm_best" and split == "song"
                options = EvalOptions(split="test", context=None if best_model or split == "window" else 32,
                                      transpose_average=best_model, ngram_blend=NGRAM_BLEND if best_model else 0.0,
                                      song_cache=SONG_CACHE if best_model else 0.0)
                report = evaluate(run_dir, options, progress=progress, log=log, baseline_cache=cache)
                split_entry["runs"][key] = {"run": str(run_dir), "training": summary, "evaluation": report}
            first = next(iter(split_entry["runs"].values()))["evaluation"]
            split_entry.update(targets=first["targets"], songs=first["songs"],
                               best_ngram=first["baselines"]["best_ngram"])
            figures = {}
            for key in ("stratified", "majority", "ngram"):
                model = split_entry["best_ngram"] if key == "ngram" else key
                figures[key] = {s: reported_accuracy(first, model, s) for s in STREAMS}
                figures[key]["joint"] = reported_accuracy(first, model, "total")
                figures[key]["bits"] = first["results"][model]["total"]["bits"]
            for key, run in split_entry["runs"].items():
                report = run["evaluation"]
                figures[key] = {s: reported_accuracy(report, "model", s) for s in STREAMS}
                figures[key]["joint"] = reported_accuracy(report, "model", "total")
                figures[key]["bits"] = report["results"]["model"]["total"]["bits"]
            split_entry["figures"] = figures
    results["seconds"] = round(time.perf_counter() - started, 1)
    table = markdown(results)
    write_text(work / "reproduce.md", table)
    write_json(work / "reproduce.json", _strip(results))
    flat = flat_figures(results)
    log(table)
    log(f"reproduction finished in {results['seconds']:.0f} s -> {work / 'reproduce.md'}")
    log(json.dumps(flat))
    return flat


def _strip(results: dict) -> dict:
    """The results without the bulky per-model baseline tables of every evaluation (they are in each run's eval/)."""
    out = json.loads(json.dumps(results, default=str))
    for entry in out["corpora"].values():
        for split in entry["splits"].values():
            for run in split["runs"].values():
                report = run["evaluation"]
                run["evaluation"] = {k: report[k] for k in ("split", "split_kind", "songs", "targets", "context",
                                                            "transpose_average", "baselines")}
                run["evaluation"]["model"] = report["results"]["model"]
    return out


def flat_figures(results: dict) -> dict:
    """``{corpus}_{split}_{model}_{pitch|duration|joint|bits}`` -> number, plus the run's settings."""
    flat = {"quick": results["quick"], "seconds": results["seconds"]}
    for name, entry in results["corpora"].items():
        for split, split_entry in entry["splits"].items():
            flat[f"{name}_{split}_targets"] = split_entry["targets"]
            for model, figures in split_entry["figures"].items():
                for what, value in figures.items():
                    finite = value is not None and math.isfinite(value)
                    flat[f"{name}_{split}_{model}_{what}"] = round(value, 4) if finite else None
    return flat


def markdown(results: dict) -> str:
    rows = [("stratified", "stratified dummy (expected accuracy)"), ("majority", "majority dummy"),
            ("ngram", "best n-gram")] + [(key, title) for key, (_, title) in MODELS.items()]
    mode = "quick smoke test (a few files, tiny training budgets: not meaningful)" if results["quick"] else "full run"
    budget = f"{results['steps'] or 'preset'} steps, at most {results['time_limit']:g} s of training per model"
    lines = [f"Reproduction of the original experiment, seed representation ({mode}; {budget}). "
             "Accuracy of the next pitch class and duration class on the test targets; joint: both right at once; "
             "bits: NLL of a whole event."]
    for name, entry in results["corpora"].items():
        splits = entry["splits"]
        window, song = splits["window"], splits["song"]
        lines += ["", f"**{name}** (`{_source_name(entry['source'])}`): random window split — "
                      f"{window['targets']:,} test windows "
                      f"(the note after each 32-note window); song split — {song['targets']:,} events of "
                      f"{song['songs']} test songs.", "",
                  "| model | window split: pitch | duration | joint | bits "
                  "| song split: pitch | duration | joint | bits |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, title in rows:
            if key == "ngram":
                title = f"best n-gram (window: {window['best_ngram']}, song: {song['best_ngram']})"
            cells = []
            for split_entry in (window, song):
                f = split_entry["figures"][key]
                cells += [_pct(f["pitch"]), _pct(f["duration"]), _pct(f["joint"]), _bits(f["bits"])]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Window split: each model sees the 32 notes before the target (the original's setting). Song split: "
                  "the original LSTM sees at most 32 notes, notelm's best model the whole song so far, averaged over "
                  f"the 12 transpositions, mixed with the best n-gram (weight {NGRAM_BLEND:g}) and blended with "
                  "the song cache (what followed earlier occurrences of the same context in the song, weight "
                  f"{SONG_CACHE:g} per matched event). Joint: pitch and duration "
                  "both right. The dummies and n-grams are fitted on the same training data (training "
                  "windows or training songs); the best n-gram has the lowest bits on the valid split. The majority "
                  "dummy's bits only reflect its smoothing.", ""]
    return "\n".join(lines)


def _source_name(source: str) -> str:
    """How a source is shown: ``music21:NAME`` as it is, a folder by its name (never a path of this machine)."""
    return source if source.startswith("music21:") else Path(source).name


def _pct(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def _bits(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}"
