"""The README's tables of the default model, from what scripts/default_model.sh and scripts/ood_pop909.sh wrote.

    python scripts/default_model_tables.py [WORK_DIR]     # default: work

Per collection: the model's bits per event on the collection's test split beside the
best n-gram fitted on that collection's train split (chosen on its valid split), and how
many percent fewer bits the model needs.  Out of domain: the model trained without
POP909, scored on POP909, beside the stratified dummy and the best n-gram fitted on the
three collections it was trained on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLLECTIONS = ("bach", "piano_midi_de", "nottingham", "pop909")


def row(report: dict, name: str) -> str:
    best = report["baselines"]["best_ngram"]
    model = report["results"]["model"]["total"]["bits"]
    ngram = report["results"][best]["total"]["bits"]
    dummy = report["results"]["stratified"]["total"]["bits"]
    return (f"| {name} | {report['songs']} songs, {report['targets']:,} events | **{model:.3f}** | {ngram:.3f} "
            f"({best}) | {100 * (1 - model / ngram):.1f} % | {dummy:.3f} |")


def main(argv=None) -> int:
    work = Path((argv or sys.argv[1:] or ["work"])[0])
    header = ("| {} | scored | model bits/event | best n-gram | model: fewer bits | stratified dummy |\n"
              "|---|---|---:|---:|---:|---:|")
    print(header.format("collection (test split)"))
    for name in COLLECTIONS:
        file = work / "runs" / "default" / f"eval_{name}" / "evaluation.json"
        if file.exists():
            print(row(json.loads(file.read_text()), name))
    file = work / "runs" / "ood_pop909" / "eval_pop909" / "evaluation.json"
    if file.exists():
        report = json.loads(file.read_text())
        print()
        print(header.format("out of domain"))
        print(row(report, f"pop909, model trained without it (baselines fitted on `{report['baselines']['corpus']}`)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
