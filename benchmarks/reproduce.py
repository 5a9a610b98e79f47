"""Reproduce the original experiment: seed representation on music21's Bach chorales and piano-midi.de,
the original's random window split against a song-level split.

For each corpus and split it trains the original LSTM (configs/seed.toml) and notelm's best seed
model (configs/seed_fullseq.toml) and evaluates them beside the stratified and majority dummies
and the best n-gram on the same test targets (see notelm/reproduce.py for the exact protocol).

    python benchmarks/reproduce.py                       # full: ~100 s to prepare Bach, up to 10 min training per model
    python benchmarks/reproduce.py --quick               # a few files, tiny budgets: a smoke test in a few minutes
    python benchmarks/reproduce.py --steps 3000 --time-limit 900 --work work/reproduce

Same as `notelm reproduce`.  Writes WORK/{quick,full}/reproduce.md (the README's table) and
reproduce.json; the last line is one JSON object with every figure:
{corpus}_{window|song}_{stratified|majority|ngram|lstm_original|notelm_best}_{pitch|duration|bits}.
"""

from __future__ import annotations

import argparse
import sys

from notelm.io import NotelmError
from notelm.reproduce import reproduce


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few files and tiny training budgets (a few minutes)")
    ap.add_argument("--work", default="work/reproduce", help="corpora, runs and results (default work/reproduce)")
    ap.add_argument("--steps", type=int, help="training steps per model (default: the presets'; quick 30)")
    ap.add_argument("--time-limit", type=float, help="seconds of training per model (default 600; quick 20)")
    ap.add_argument("--bach", default="music21:bach", help="the Bach source (default music21:bach)")
    ap.add_argument("--piano", help="the piano_midi_de folder (default ../shared/data/piano_midi_de)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    try:
        reproduce(work=a.work, quick=a.quick, steps=a.steps, time_limit=a.time_limit, bach=a.bach, piano=a.piano,
                  progress=not a.quiet)
    except NotelmError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
