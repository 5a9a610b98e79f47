"""``notelm demo``: the whole tool in one command, on built-in data.

Without ``--train``: pieces from the shipped default model, one per style it
knows (each collection it was trained on, ``--num`` per style), as MIDI, WAV and
piano roll, ready to open; each file has its style's time signature, key and
tracks.  With ``--train``: the full path on music21's Bach chorales (prepare ->
train briefly -> evaluate -> generate) in a few minutes, using only notelm's own
verbs.
"""

from __future__ import annotations

import time
from pathlib import Path

from notelm.io import NotelmError
from notelm.names import plural

BUILT_IN = "music21:bach"


def demo(out_dir="demo", train: bool = False, num: int = 1, length: str = "20s", seed: int = 0,
         minutes: float = 3.0, progress: bool = True, log=print) -> dict:
    """Returns ``{"styles": {style: generate's report}, "pieces": every piece's row}``; style "" for a
    model without conditions."""
    from notelm.checkpoint import load_model
    from notelm.generate import default_model_path

    out_dir = Path(out_dir)
    started = time.perf_counter()
    model = default_model_path() if not train else _train_path(out_dir, minutes, progress, log)
    styles = load_model(model).vocab.conditions or [""]
    reports = {}
    for style in styles:
        if style:
            log(f"style {style}:")
        reports[style] = _pieces(model, out_dir / "pieces" / style if style else out_dir / "pieces", style, num,
                                 length, seed, log)
    rows = [row for report in reports.values() for row in report["pieces"]]
    log("")
    log("Open these:")
    for row in rows:
        files = [row["midi"]] + [row[k] for k in ("wav", "png") if k in row]
        log("  " + "  ".join(files))
    per_style = f" ({plural(len(styles), 'style')})" if styles != [""] else ""
    log(f"demo done in {time.perf_counter() - started:.0f} s: {plural(len(rows), 'piece')}{per_style} in "
        f"{out_dir / 'pieces'}")
    return {"styles": reports, "pieces": rows}


def _pieces(model, out_dir: Path, style: str, num: int, length: str, seed: int, log) -> dict:
    """``num`` pieces in one style, with WAV and piano roll (MIDI and piano roll only without a SoundFont)."""
    from notelm.config import SamplingConfig
    from notelm.generate import OutputOptions, PieceOptions, generate, parse_length

    events, seconds = parse_length(length)
    pieces = PieceOptions(num=num, length=events, seconds=seconds, condition=f"{style}" if style else None)
    sampling = SamplingConfig(temperature=0.95, top_p=0.95, max_repeat=4, seed=seed)
    try:
        return generate(model, out_dir, pieces, sampling=sampling,
                        output=OutputOptions(wav=True, png=True, force=True), log=log)
    except NotelmError as e:
        if "SoundFont" not in str(e) and "soundfont" not in str(e):
            raise
        log(f"note: {e}; writing MIDI and piano rolls only")
        return generate(model, out_dir, pieces, sampling=sampling, output=OutputOptions(png=True, force=True), log=log)


def _train_path(out_dir: Path, minutes: float, progress: bool, log) -> Path:
    """prepare -> train -> evaluate on the built-in corpus; returns the run directory."""
    from notelm.config import load_config
    from notelm.corpus import prepare
    from notelm.train import train

    corpus = out_dir / "corpus"
    if not (corpus / "manifest.json").exists():
        log(f"1/4 prepare {BUILT_IN} (music21's Bach chorales, offline)")
        prepare([BUILT_IN], corpus, progress=progress, log=log)
    run_dir = out_dir / "run"
    if not (run_dir / "best" / "config.json").exists():
        log(f"2/4 train an LSTM on the events representation for up to {minutes:g} minutes")
        run = load_config("default", [f"train.time_limit={minutes * 60:.0f}.0"])
        train(corpus, run, run_dir, resume=(run_dir / "checkpoint").exists(), progress=progress, log=log)
    log("3/4 evaluate on the held-out test songs")
    from notelm.evaluate import evaluate

    evaluate(run_dir, progress=progress, log=log)
    log("4/4 generate")
    return run_dir
