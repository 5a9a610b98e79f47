"""``notelm demo``: the whole tool in one command, on built-in data.

Without ``--train``: a few pieces from the shipped default model, as MIDI, WAV
and piano roll, ready to open.  With ``--train``: the full path on music21's
Bach chorales (prepare -> train briefly -> evaluate -> generate) in a few
minutes, using only notelm's own verbs.
"""

from __future__ import annotations

import time
from pathlib import Path

from notelm.io import NotelmError

BUILT_IN = "music21:bach"


def demo(out_dir="demo", train: bool = False, num: int = 3, length: str = "20s", seed: int = 0,
         minutes: float = 3.0, log=print) -> dict:
    from notelm.generate import SamplingConfig, default_model_path, generate

    out_dir = Path(out_dir)
    started = time.perf_counter()
    model = default_model_path() if not train else _train_path(out_dir, minutes, log)
    seconds = float(length[:-1]) if length.endswith("s") else None
    events = 0 if seconds else int(length)
    try:
        report = generate(model, out_dir / "pieces", n=num, length=events, seconds=seconds,
                          cfg=SamplingConfig(temperature=0.95, top_p=0.95, max_repeat=4, seed=seed), wav=True, png=True,
                          log=log)
    except NotelmError as e:
        if "SoundFont" in str(e) or "soundfont" in str(e):
            log(f"note: {e}; writing MIDI and piano rolls only")
            report = generate(model, out_dir / "pieces", n=num, length=events, seconds=seconds,
                              cfg=SamplingConfig(temperature=0.95, top_p=0.95, max_repeat=4, seed=seed), png=True, log=log)
        else:
            raise
    log("")
    log("Open these:")
    for row in report["pieces"]:
        files = [row["midi"]] + [row[k] for k in ("wav", "png") if k in row]
        log("  " + "  ".join(files))
    log(f"demo done in {time.perf_counter() - started:.0f} s: {num} pieces in {out_dir / 'pieces'}")
    return report


def _train_path(out_dir: Path, minutes: float, log) -> Path:
    """prepare -> train -> evaluate on the built-in corpus; returns the run directory."""
    from notelm.corpus import prepare
    from notelm.train import load_config, train

    corpus = out_dir / "corpus"
    if not (corpus / "manifest.json").exists():
        log(f"1/4 prepare {BUILT_IN} (music21's Bach chorales, offline)")
        prepare([BUILT_IN], corpus, log=log)
    run_dir = out_dir / "run"
    if not (run_dir / "best" / "config.json").exists():
        log(f"2/4 train an LSTM on the events representation for up to {minutes:g} minutes")
        run = load_config("default", [f"train.time_limit={minutes * 60:.0f}.0"])
        train(corpus, run, run_dir, resume=(run_dir / "checkpoint").exists(), log=log)
    log("3/4 evaluate on the held-out test songs")
    try:
        from notelm.evaluate import evaluate

        evaluate(run_dir, log=log)
    except ImportError:
        log("(evaluation is not available in this build)")
    log("4/4 generate")
    return run_dir
