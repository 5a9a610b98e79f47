"""Round trip of the events representation over real MIDI files: decode(encode(x)) against quantize(x).

    .venv/bin/python benchmarks/roundtrip.py [PATH ...] [--quick]

PATHs are MIDI files or folders (default: ../shared/data/nottingham and
../shared/data/piano_midi_de).  Every file is parsed with symusic into a note
table and encoded with the events representation with velocity and program
streams on (drums kept), so the comparison covers onset, pitch, duration,
velocity bin, program and the drum flag.  A mismatched note is one that is in
quantize(x) but not in decode(encode(x)), or the other way round (multisets).
Prints a table per folder and, last, one JSON line: files, notes, mismatched_notes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import symusic

from notelm import notes as nt
from notelm.encoding import Events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_PATHS = [DATA / "nottingham", DATA / "piano_midi_de"]
CONFIG = {"velocity_bins": 8, "program": True, "drums": "keep"}
MIDI_SUFFIXES = {".mid", ".midi"}


def note_rows(notes: nt.Notes) -> np.ndarray:
    """The compared attributes of every note as one sortable record array."""
    cols = ["onset", "pitch", "duration", "velocity", "program", "is_drum"]
    return np.sort(np.rec.fromarrays([notes[c] for c in cols], names=cols))


def mismatches(a: np.ndarray, b: np.ndarray) -> int:
    if len(a) == len(b) and (a == b).all():
        return 0
    ca, cb = Counter(map(tuple, a.tolist())), Counter(map(tuple, b.tolist()))
    return sum(((ca - cb) + (cb - ca)).values())


def midi_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=DEFAULT_PATHS)
    ap.add_argument("--quick", action="store_true", help="every 10th file only")
    a = ap.parse_args(argv)
    rep = Events(CONFIG)
    total = {"files": 0, "notes": 0, "mismatched_notes": 0, "failed": 0}
    print(f"events round trip, settings {json.dumps(CONFIG)}")
    print(f"{'path':<40} {'files':>6} {'failed':>6} {'notes':>10} {'events':>10} {'mismatched':>10} {'seconds':>8}")
    for path in a.paths:
        files = midi_files(path)[:: 10 if a.quick else 1]
        row = {"files": 0, "failed": 0, "notes": 0, "events": 0, "mismatched": 0}
        started = time.perf_counter()
        for f in files:
            try:
                notes, _ = nt.from_score(symusic.Score(str(f)))
            except Exception as e:  # a file symusic cannot read is not a round-trip failure; count it apart
                print(f"skipped {f}: {e}", file=sys.stderr)
                row["failed"] += 1
                continue
            streams = rep.encode_song(notes)
            expected, got = note_rows(rep.quantize(notes)), note_rows(rep.decode(streams))
            bad = mismatches(expected, got)
            if bad:
                print(f"mismatch: {f}: {bad} notes", file=sys.stderr)
            row["files"] += 1
            row["notes"] += len(expected)
            row["events"] += len(streams["pitch"]) - 2
            row["mismatched"] += bad
        print(f"{str(path)[-40:]:<40} {row['files']:>6} {row['failed']:>6} {row['notes']:>10,} {row['events']:>10,} "
              f"{row['mismatched']:>10} {time.perf_counter() - started:>8.2f}")
        total["files"] += row["files"]
        total["notes"] += row["notes"]
        total["mismatched_notes"] += row["mismatched"]
        total["failed"] += row["failed"]
    print(json.dumps(total))
    return 0 if total["mismatched_notes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
