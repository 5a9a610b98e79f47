"""Ingest speed: music21 (the original pipeline's parser) vs raw symusic vs `notelm prepare`.

A fourth line, symusic parse plus copying each track's notes out as numpy arrays, is the
least work any store of the notes has to do; it shows where notelm's time goes.  A last
line runs `prepare` with one worker: the ratio of the two `prepare` lines is how ingest
scales with cores (the parent process only coordinates; workers parse and write the notes).

All read the same MIDI files in one run.  music21 is slow, so it parses a
subset and is reported per file.  symusic and notelm take the best of three
runs over all files (the machines are shared and noisy); notelm's figure is a
whole `prepare` into a fresh corpus directory: parse, hash, assemble, write.

    python benchmarks/ingest.py            # 337 files of piano_midi_de
    python benchmarks/ingest.py --quick    # 60 files, well under a minute

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "piano_midi_de"


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DATA), help="folder of MIDI files (default: shared piano_midi_de)")
    ap.add_argument("--files", type=int, default=None, help="number of files (default: all; 60 with --quick)")
    ap.add_argument("--music21-files", type=int, default=None, help="files music21 parses (default 10; 3 with --quick)")
    ap.add_argument("--workers", type=int, default=None, help="notelm worker processes (default: cores)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)

    import music21
    import symusic

    from notelm.corpus import prepare
    from notelm.ingest import default_workers

    files = sorted(str(p) for p in Path(a.path).rglob("*") if p.suffix.lower() in {".mid", ".midi"})
    n = a.files or (60 if a.quick else len(files))
    files = files[:n]
    if not files:
        raise SystemExit(f"no MIDI files under {a.path}")
    n_m21 = min(a.music21_files or (3 if a.quick else 10), len(files))

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i, f in enumerate(files):  # one flat folder of links: notelm reads exactly these files
            (src / f"{i:05d}_{Path(f).name}").symlink_to(f)

        warnings.simplefilter("ignore")
        t_m21 = best_of(1, lambda: [music21.converter.parse(f, forceSource=True) for f in files[:n_m21]])
        t_sym = best_of(3, lambda: [symusic.Score(f) for f in files])
        # the least any note store must do: parse, then copy each track's notes out as arrays
        t_arr = best_of(3, lambda: [[t.notes.numpy() for t in symusic.Score(f).tracks] for f in files])
        runs = iter(range(6))
        t_nlm, t_one = (best_of(3, lambda workers=workers: prepare([str(src)], Path(tmp) / f"corpus{next(runs)}",
                                                                   workers=workers, progress=False,
                                                                   log=lambda *_: None))
                        for workers in (a.workers, 1))

    m21_fps, sym_fps, nlm_fps = n_m21 / t_m21, len(files) / t_sym, len(files) / t_nlm
    arr_fps = len(files) / t_arr
    result = {
        "files": len(files),
        "music21_files": n_m21,
        "music21_files_per_s": round(m21_fps, 3),
        "symusic_files_per_s": round(sym_fps, 1),
        "symusic_arrays_files_per_s": round(arr_fps, 1),
        "notelm_files_per_s": round(nlm_fps, 1),
        "ingest_vs_music21": round(nlm_fps / m21_fps, 1),
        "ingest_vs_symusic": round(nlm_fps / sym_fps, 3),
        "ingest_vs_symusic_arrays": round(nlm_fps / arr_fps, 3),
        "workers": a.workers or default_workers(),
        "notelm_one_worker_files_per_s": round(len(files) / t_one, 1),
        "speedup_over_one_worker": round(t_one / t_nlm, 2),
    }
    print(f"{'parser':<28}{'files':>7}{'seconds':>10}{'files/s':>12}")
    print(f"{'music21 converter.parse':<28}{n_m21:>7}{t_m21:>10.3f}{m21_fps:>12.2f}")
    print(f"{'symusic.Score (raw parse)':<28}{len(files):>7}{t_sym:>10.3f}{sym_fps:>12.1f}")
    print(f"{'symusic parse + note arrays':<28}{len(files):>7}{t_arr:>10.3f}{arr_fps:>12.1f}")
    print(f"{'notelm prepare (corpus)':<28}{len(files):>7}{t_nlm:>10.3f}{nlm_fps:>12.1f}")
    print(f"{'notelm prepare, 1 worker':<28}{len(files):>7}{t_one:>10.3f}{len(files) / t_one:>12.1f}")
    print(f"notelm vs music21: {result['ingest_vs_music21']:,}x faster per file; "
          f"notelm vs raw symusic: {result['ingest_vs_symusic']:.2f}x the speed "
          f"({result['ingest_vs_symusic_arrays']:.2f}x symusic parse + note arrays); "
          f"{result['workers']} workers are {result['speedup_over_one_worker']:.2f}x one")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
