"""Training throughput: the original scheme (materialized 32-note windows, one target each)
against notelm's full-sequence training (random crops, a target at every position).

Both train the same model (the seed preset's LSTM: embeddings -> LSTM 256 -> two
heads) on the same songs (the seed representation of a prepared corpus), with
the same batch size and window length, in one run.  Reported: targets per
second of training and bytes of training data held in memory per corpus note.

    python benchmarks/train_throughput.py           # piano_midi_de
    python benchmarks/train_throughput.py --quick   # under a minute

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def original_windows(streams: list[np.ndarray], offsets: np.ndarray, songs: np.ndarray, window: int):
    """What the original pipeline built: every `window`-note sequence and the note after it, as int64."""
    xs, ys = [], []
    for s in songs:  # the original looped over songs too; the window copy is the point here
        a, b = int(offsets[s]) + 1, int(offsets[s + 1]) - 1  # the notes, without BOS/EOS
        n = b - a - window
        if n <= 0:
            continue
        idx = a + np.arange(n)[:, None] + np.arange(window + 1)
        seq = np.stack([st[idx] for st in streams], -1).astype(np.int64)  # [n, window + 1, S]
        xs.append(seq[:, :window])
        ys.append(seq[:, window])
    return np.concatenate(xs), np.concatenate(ys)


def timed_steps(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a prepared corpus (default: prepare piano_midi_de into a temp dir)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per scheme (default 20; 6 with --quick)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)

    from notelm.config import load_config
    from notelm.corpus import prepare
    from notelm.data import CropSampler
    from notelm.encoding import load_or_encode
    from notelm.models import build_model
    from notelm.train import batch_loss

    torch.manual_seed(0)
    steps = a.steps or (6 if a.quick else 20)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = a.corpus
        if corpus is None:
            corpus = Path(tmp) / "corpus"
            source = DATA / ("nottingham" if a.quick else "piano_midi_de")
            prepare([str(source)], corpus, progress=False, log=lambda *_: None)
        run = load_config("seed")
        encoded = load_or_encode(corpus, "seed", run.encoding)
        vocab = encoded.vocab
        streams = [np.asarray(encoded.streams[n]) for n in vocab.names]
        songs = encoded.ids("train")
        n_notes = int(sum(encoded.offsets[s + 1] - encoded.offsets[s] - 2 for s in songs))

        # -- the original: materialize windows, one target per window
        t = time.perf_counter()
        x, y = original_windows(streams, encoded.offsets, songs, a.window)
        build_s = time.perf_counter() - t
        windows_bytes = x.nbytes + y.nbytes
        model = build_model(vocab, run.model)
        opt = torch.optim.AdamW(model.net.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)

        def original_step():
            i = rng.integers(0, len(x), a.batch)
            xb, yb = torch.as_tensor(x[i]), torch.as_tensor(y[i])
            logits, _ = model.net(xb, None, targets=yb[:, None, :].expand(-1, xb.shape[1], -1))
            loss = sum(F.cross_entropy(lg[:, -1], yb[:, k]) for k, lg in enumerate(logits))
            opt.zero_grad()
            loss.backward()
            opt.step()

        original_s = timed_steps(original_step, 2, steps)

        # -- notelm: crops from the encoded streams, a target at every position
        sampler = CropSampler(streams, encoded.offsets, songs, a.window + 1)
        model2 = build_model(vocab, run.model)
        opt2 = torch.optim.AdamW(model2.net.parameters(), lr=1e-3)

        def notelm_step():
            tokens, _ = sampler.sample(rng, a.batch)
            loss, _ = batch_loss(model2.net, torch.as_tensor(tokens), None, "full")
            opt2.zero_grad()
            loss.backward()
            opt2.step()

        notelm_s = timed_steps(notelm_step, 2, steps)
        notelm_bytes = sum(s.nbytes for s in streams) + encoded.offsets.nbytes

    result = {
        "notes": n_notes,
        "windows_targets_per_s": round(a.batch / original_s, 1),
        "notelm_targets_per_s": round(a.batch * a.window / notelm_s, 1),
        "targets_per_s_vs_windows": round((a.batch * a.window / notelm_s) / (a.batch / original_s), 2),
        "windows_bytes_per_note": round(windows_bytes / n_notes, 1),
        "notelm_bytes_per_note": round(notelm_bytes / n_notes, 2),
    }
    print(f"{n_notes:,} training notes; batch {a.batch}, window {a.window}, same LSTM; {steps} timed steps each")
    print(f"{'scheme':<40}{'s/step':>9}{'targets/s':>12}{'bytes/note':>12}")
    print(f"{'original: materialized windows, last':<40}{original_s:>9.3f}{result['windows_targets_per_s']:>12,.0f}"
          f"{result['windows_bytes_per_note']:>12,.1f}   (building the windows took {build_s:.1f} s)")
    print(f"{'notelm: crops, loss at every position':<40}{notelm_s:>9.3f}{result['notelm_targets_per_s']:>12,.0f}"
          f"{result['notelm_bytes_per_note']:>12,.2f}")
    print(f"targets/s: {result['targets_per_s_vs_windows']}x the original; memory per note: "
          f"{result['windows_bytes_per_note'] / result['notelm_bytes_per_note']:.0f}x less")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
