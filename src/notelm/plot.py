"""``notelm plot``: a run's learning curves as a PNG.

Training writes ``metrics.jsonl`` (one JSON object per line: ``step``, ``split``
``train`` or ``valid``, and per stream ``loss_<stream>`` in nats and
``acc_<stream>``).  The plot shows the losses in bits per event, the unit
``notelm evaluate`` reports, and the accuracies, for both splits.
"""

from __future__ import annotations

from pathlib import Path

from notelm.io import NotelmError, atomic_path, printable, read_jsonl
from notelm.metrics import LOG2_E


def read_metrics(run_dir) -> list[dict]:
    """The records of a run's ``metrics.jsonl``: objects with an integer ``step``, a ``split`` and numbers.
    Anything else is a one-line error naming the file and the line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise NotelmError(f"{printable(run_dir)}: no metrics.jsonl (is this a training run directory?)")
    records = read_jsonl(path)
    for number, r in enumerate(records, start=1):
        ok = isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("split"), str)
        ok = ok and all(_is_number(v) for k, v in r.items() if k.startswith(("loss_", "acc_")))
        if not ok:
            raise NotelmError(f"{printable(path)}: record {number} is not a metrics line "
                              "(an object with an integer step, a split and numbers)")
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curves(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """``{"bits" | "accuracy": {"<split> <stream>": (steps, values)}}`` from the records of metrics.jsonl
    (a value a record lacks is a gap in its curve)."""
    names = sorted({k[4:] for r in records for k in r if k.startswith("acc_")})
    out: dict = {"bits": {}, "accuracy": {}}
    nan = float("nan")
    for split in ("train", "valid"):
        rows = [r for r in records if r.get("split") == split]
        steps = [r["step"] for r in rows]
        for name in names if rows else ():
            out["bits"][f"{split} {name}"] = (steps, [r.get(f"loss_{name}", nan) * LOG2_E for r in rows])
            out["accuracy"][f"{split} {name}"] = (steps, [r.get(f"acc_{name}", nan) for r in rows])
    return out


def plot(run_dir, out: str | None = None) -> Path:
    """Learning curves (bits per event and accuracy per stream, train and valid) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = curves(read_metrics(run_dir))
    if not lines["bits"]:  # an empty plot (and a warning from matplotlib) would say nothing
        raise NotelmError(f"{printable(Path(run_dir) / 'metrics.jsonl')}: no learning curve yet (training writes "
                          "a line every train.log_every steps)")
    out_path = Path(out) if out else Path(run_dir) / "learning_curves.png"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (what, title) in zip(axes, (("bits", "cross-entropy (bits per event)"), ("accuracy", "accuracy"))):
        for label, (steps, values) in lines[what].items():
            train = label.startswith("train")
            ax.plot(steps, values, "-" if train else "o-", ms=3, alpha=0.4 if train else 1, label=label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(printable(run_dir))
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_path
