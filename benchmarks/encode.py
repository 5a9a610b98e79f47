"""Encoding speed: notelm's events encoding vs MidiTok's REMI tokenizer, and vs parsing.

Both encoders start from music already in memory: MidiTok tokenizes symusic
Score objects (miditok.REMI with a default TokenizerConfig, one call per
file), notelm encodes the note table of a prepared corpus (``encode_corpus``,
all songs at once).  Each side counts its own notes.  notelm takes the median
of five runs; MidiTok, far slower, one pass over every file.

A second figure checks that encoding is never the bottleneck: the time symusic
takes to parse the piano_midi_de files against the time notelm takes to encode
the whole piano_midi_de corpus (best of five each).

    python benchmarks/encode.py            # nottingham + piano_midi_de (~1,370 files)
    python benchmarks/encode.py --quick    # every 8th file for MidiTok: under a minute

The last line is one JSON object: files, notes, miditok_notes_per_s,
notelm_notes_per_s, encode_vs_miditok (+ parse_piano_s, encode_piano_s, encode_vs_parse).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_PATHS = [DATA / "nottingham", DATA / "piano_midi_de"]


def midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".mid", ".midi"})


def timed(runs: int, fn) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def prepared(files: list[Path], out: Path):
    """A corpus of exactly these files (links in one folder keep every file, even same-named ones)."""
    from notelm.corpus import Corpus, prepare

    src = out.with_name(out.name + "_src")
    src.mkdir()
    for i, f in enumerate(files):
        (src / f"{i:05d}_{f.name}").symlink_to(f)
    prepare([str(src)], out, progress=False, log=lambda *_: None)
    corpus = Corpus(out)
    corpus.all_notes()  # page the note table in: both sides start from music in memory
    return corpus


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path, default=DEFAULT_PATHS, help="folders of MIDI files")
    ap.add_argument("--quick", action="store_true", help="every 8th file (MidiTok is the slow part)")
    a = ap.parse_args(argv)

    import miditok
    import symusic

    from notelm.encoding import get_representation
    from notelm.encoding.cache import encode_corpus

    files = [f for folder in a.paths for f in midi_files(folder)][:: 8 if a.quick else 1]
    if not files:
        raise SystemExit(f"no MIDI files under {', '.join(map(str, a.paths))}")
    piano = midi_files(DATA / "piano_midi_de")
    rep = get_representation("events")

    with tempfile.TemporaryDirectory() as tmp:
        # ---- MidiTok REMI on Score objects in memory
        scores = [symusic.Score(str(f)) for f in files]
        miditok_notes = sum(len(t.notes) for s in scores for t in s.tracks)
        tokenizer = miditok.REMI(miditok.TokenizerConfig())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer(scores[0])  # warm-up
            started = time.perf_counter()
            for score in scores:
                tokenizer(score)
            miditok_s = time.perf_counter() - started
        del scores

        # ---- notelm events on the note table of the same files
        corpus = prepared(files, Path(tmp) / "corpus")
        encode_corpus(rep, corpus)  # warm-up
        notelm_s = statistics.median(timed(5, lambda: encode_corpus(rep, corpus)))

        # ---- parse vs encode: the whole of piano_midi_de
        parse_s = min(timed(5, lambda: [symusic.Score(str(f)) for f in piano]))
        piano_corpus = prepared(piano, Path(tmp) / "piano")
        encode_corpus(rep, piano_corpus)
        encode_s = min(timed(5, lambda: encode_corpus(rep, piano_corpus)))

    miditok_rate = miditok_notes / miditok_s
    notelm_rate = corpus.num_notes / notelm_s
    print(f"{'':<28} {'files':>6} {'notes':>10} {'seconds':>9} {'notes/s':>12}")
    print(f"{'MidiTok REMI (Score objects)':<28} {len(files):>6} {miditok_notes:>10,} {miditok_s:>9.3f} "
          f"{miditok_rate:>12,.0f}")
    print(f"{'notelm events (note table)':<28} {len(corpus):>6} {corpus.num_notes:>10,} {notelm_s:>9.3f} "
          f"{notelm_rate:>12,.0f}")
    print(f"events encoding is {notelm_rate / miditok_rate:.0f}x MidiTok REMI in notes/s")
    print(f"piano_midi_de ({len(piano)} files, {piano_corpus.num_notes:,} notes): symusic parses in {parse_s:.3f} s, "
          f"notelm encodes the corpus in {encode_s:.3f} s ({parse_s / encode_s:.1f}x faster than parsing)")
    result = {
        "files": len(files),
        "notes": int(corpus.num_notes),
        "miditok_notes_per_s": round(miditok_rate),
        "notelm_notes_per_s": round(notelm_rate),
        "encode_vs_miditok": round(notelm_rate / miditok_rate, 1),
        "parse_piano_s": round(parse_s, 4),
        "encode_piano_s": round(encode_s, 4),
        "encode_vs_parse": round(parse_s / encode_s, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
