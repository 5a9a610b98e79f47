"""``notelm plot``: a run's learning curves as a PNG.

Training writes ``metrics.jsonl`` (one JSON object per line: ``step``, ``split``
``train`` or ``valid``, and per stream ``loss_<stream>`` in nats and
``acc_<stream>``).  The plot shows the losses in bits per event, the unit
``notelm evaluate`` reports, and the accuracies, for both splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from notelm.io import NotelmError, atomic_path
from notelm.metrics import LOG2_E


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise NotelmError(f"{run_dir}: no metrics.jsonl (is this a training run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves(records: list[dict]) -> dict[str, dict[str, tuple[list, list]]]:
    """``{"bits" | "accuracy": {"<split> <stream>": (steps, values)}}`` from the records of metrics.jsonl."""
    names = sorted({k[4:] for r in records for k in r if k.startswith("acc_")})
    out: dict = {"bits": {}, "accuracy": {}}
    for split in ("train", "valid"):
        rows = [r for r in records if r.get("split") == split]
        steps = [r["step"] for r in rows]
        for name in names if rows else ():
            out["bits"][f"{split} {name}"] = (steps, [r[f"loss_{name}"] * LOG2_E for r in rows])
            out["accuracy"][f"{split} {name}"] = (steps, [r[f"acc_{name}"] for r in rows])
    return out


def plot(run_dir, out: str | None = None) -> Path:
    """Learning curves (bits per event and accuracy per stream, train and valid) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = curves(read_metrics(run_dir))
    out_path = Path(out) if out else Path(run_dir) / "learning_curves.png"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (what, title) in zip(axes, (("bits", "cross-entropy (bits per event)"), ("accuracy", "accuracy"))):
        for label, (steps, values) in lines[what].items():
            train = label.startswith("train")
            ax.plot(steps, values, "-" if train else "o-", ms=3, alpha=0.4 if train else 1, label=label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_path
