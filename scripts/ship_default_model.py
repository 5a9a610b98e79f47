"""Copy a trained run's best model into the package as the default model (weights in float16).

    python scripts/ship_default_model.py runs/default

float16 halves the file (a few MB) and changes no sampled note in practice; the
loader casts the weights back to the network's float32.
"""

import sys
from pathlib import Path

from notelm.checkpoint import load_model, resolve, save_model
from notelm.io import read_json

TARGET = Path(__file__).resolve().parents[1] / "src" / "notelm" / "assets" / "default_model"

if __name__ == "__main__":
    source = resolve(sys.argv[1])
    model = load_model(source)
    model.net.half()
    run_json = source.parent / "run.json"
    save_model(model, TARGET, extra_config={"trained_with": read_json(run_json)} if run_json.exists() else None)
    size = sum(f.stat().st_size for f in TARGET.iterdir())
    print(f"shipped {source} -> {TARGET} ({size / 1e6:.1f} MB)")
