"""Copy a trained run's best model into the package as the default model (weights in float16).

    python scripts/ship_default_model.py runs/default

float16 halves the file (a few MB) and changes no sampled note in practice; the
loader casts the weights back to the network's float32.  The run's copy index goes
with it (copyguard.py; built from the run's corpus if the run has none).
"""

import shutil
import sys
from pathlib import Path

from notelm.checkpoint import load_model, resolve, save_model
from notelm.copyguard import FILE as COPY_INDEX
from notelm.copyguard import write_index
from notelm.encoding import load_or_encode
from notelm.io import read_json

TARGET = Path(__file__).resolve().parents[1] / "src" / "notelm" / "assets" / "default_model"

if __name__ == "__main__":
    source = resolve(sys.argv[1])
    model = load_model(source)
    model.net.half()
    run_json = source.parent / "run.json"
    save_model(model, TARGET, extra_config={"trained_with": read_json(run_json)} if run_json.exists() else None)
    index = source.parent / COPY_INDEX  # the copy index of its training songs: generate avoids long copies
    if index.exists():
        shutil.copyfile(index, TARGET / COPY_INDEX)
    else:  # a run trained before train wrote one: built from the run's corpus
        run = read_json(run_json)
        encoded = load_or_encode(run["corpus"], model.vocab.representation, model.vocab.config,
                                 condition=model.vocab.condition_label)
        write_index(TARGET / COPY_INDEX, encoded, model.vocab)
    size = sum(f.stat().st_size for f in TARGET.iterdir())
    print(f"shipped {source} -> {TARGET} ({size / 1e6:.1f} MB)")
