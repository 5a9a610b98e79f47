"""Loss curves of the same run in fp32 and in bf16 autocast (``train.precision``), on a real corpus.

Both runs start from the same weights and see the same crops in the same order;
only the arithmetic differs.  Writes a PNG of the two curves (training loss and
valid loss, bits per event) and prints, as its last line, one JSON object with
the final losses and the training seconds of each.

    python benchmarks/precision_curves.py --corpus CORPUS --preset lstm --steps 300 -o precision_curves.png
    python benchmarks/precision_curves.py --quick    # a tiny model, under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOG2_E = 1 / math.log(2)


def run_pair(corpus, preset: str, steps: int, extra: list[str], work: Path) -> dict:
    from notelm.config import load_config
    from notelm.plot import read_metrics
    from notelm.train import train

    out = {}
    for precision in ("fp32", "bf16"):
        settings = [f"train.steps={steps}", f"train.eval_every={max(steps // 6, 1)}", "train.log_every=10",
                    f"train.precision={precision}", "train.compare_ngram=false", "train.time_limit=0",
                    f"train.patience={steps}"] + extra
        summary = train(corpus, load_config(preset, settings), work / precision, progress=False, log=print)
        records = read_metrics(work / precision)
        out[precision] = {
            "seconds": summary["seconds"], "targets_per_s": summary["targets_per_s"],
            "train": [(r["step"], r["loss"] * LOG2_E) for r in records if r["split"] == "train"],
            "valid": [(r["step"], r["loss"] * LOG2_E) for r in records if r["split"] == "valid"],
        }
    return out


def draw(curves: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for precision, color in (("fp32", "tab:blue"), ("bf16", "tab:orange")):
        c = curves[precision]
        ax.plot(*zip(*c["train"]), "-", color=color, alpha=0.6, label=f"{precision} train")
        ax.plot(*zip(*c["valid"]), "o-", color=color, label=f"{precision} valid")
    ax.set(xlabel="step", ylabel="bits per event", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a prepared corpus (default: prepare nottingham into a temp dir)")
    ap.add_argument("--preset", default="lstm")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--set", action="append", default=[], help="more section.key=value settings of both runs")
    ap.add_argument("-o", "--output", default="precision_curves.png")
    ap.add_argument("--quick", action="store_true", help="a tiny model for 60 steps")
    a = ap.parse_args(argv)
    from notelm.corpus import prepare

    extra = list(a.set)
    if a.quick:
        a.steps = 60
        extra += ["model.hidden=64", "train.batch_size=8", "train.context=64", "train.eval_crops=16"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = a.corpus
        if corpus is None:
            corpus = Path(tmp) / "corpus"
            prepare([str(DATA / "nottingham")], corpus, progress=False, log=lambda *_: None)
        curves = run_pair(corpus, a.preset, a.steps, extra, Path(tmp))
    draw(curves, f"{a.preset} preset on {Path(corpus).name}: fp32 vs bf16 autocast", Path(a.output))
    result = {}
    for p, c in curves.items():
        last = [v for _, v in c["train"][-5:]]
        result.update({f"{p}_train_bits_last50": round(sum(last) / len(last), 4),
                       f"{p}_valid_bits": round(c["valid"][-1][1], 4), f"{p}_seconds": c["seconds"],
                       f"{p}_targets_per_s": c["targets_per_s"]})
    result["valid_bits_bf16_minus_fp32"] = round(result["bf16_valid_bits"] - result["fp32_valid_bits"], 4)
    print(f"wrote {a.output}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
