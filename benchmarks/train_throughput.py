"""Training throughput, in one run:

1. the original scheme (materialized 32-note windows, one target each) against
   notelm's full-sequence training (random crops, a target at every position):
   the same model (the seed preset's LSTM) on the same songs (the seed
   representation), the same batch size and window length; targets per second
   and bytes of training data held in memory per corpus note;
2. fp32 against bf16 autocast (``train.precision``) for the ``lstm`` and
   ``transformer`` presets (events representation, the presets' batch size and
   context): the training step of ``notelm train`` (forward, loss, backward,
   clipping, AdamW), fp32 and bf16 blocks alternating so that both see the same
   machine load; targets/s are the median of the rounds, the ratio the median
   of the rounds' ratios (a round's two blocks run a minute apart at most).

    python benchmarks/train_throughput.py           # piano_midi_de
    python benchmarks/train_throughput.py --quick   # under a minute
    python benchmarks/train_throughput.py --precision-only --profile 25   # where a step's time goes
    python benchmarks/train_throughput.py --precision-only --presets transformer --set model.hidden=256
    python benchmarks/train_throughput.py --precision-only --presets transformer --free layernorm,gelu,dropout

``--free`` times the step with some operations made free of cost (each layer norm,
GELU or dropout an identity, attention returning its values): the step then
computes another model, so its figures are not a training speed but a ceiling,
what the fastest possible kernels for those operations could give.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
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


FREE_PARTS = ("layernorm", "gelu", "dropout", "attention")


def free(net, parts) -> None:
    """Replace every module of the kinds named in ``parts`` (FREE_PARTS) by an identity, in place."""
    from notelm.models.neural import Dropout

    kinds = tuple(kind for name, kind in (("layernorm", torch.nn.LayerNorm), ("gelu", torch.nn.GELU),
                                          ("dropout", Dropout)) if name in parts)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if kinds and isinstance(child, kinds):
                setattr(module, name, torch.nn.Identity())


def preset_step(encoded, preset: str, precision: str, seed: int = 0, overrides=(), free_parts=()):
    """One ``notelm train`` step of a preset (events representation; ``overrides``: ``section.key=value``
    as ``notelm train --set``) as a function, and its targets per step.  ``free_parts``: operations made
    free of cost (``free``; "attention": each attention returns its values)."""
    from notelm.config import load_config
    from notelm.data import CropSampler
    from notelm.models import build_model
    from notelm.precision import autocast
    from notelm.train import _optimizer, batch_loss

    run = load_config(preset, overrides)
    cfg = run.train
    torch.manual_seed(seed)
    model = build_model(encoded.vocab, run.model)
    rng = np.random.default_rng(seed)
    model.net.use_rng(rng)
    model.net.train()
    free(model.net, free_parts)
    opt = _optimizer(model.net, cfg)
    streams = [encoded.streams[n] for n in encoded.vocab.names]
    sampler = CropSampler(streams, encoded.offsets, encoded.ids("train"), cfg.context + 1)
    batches = [torch.as_tensor(sampler.sample(rng, cfg.batch_size)[0]) for _ in range(8)]
    cond = torch.zeros(cfg.batch_size, dtype=torch.long)
    count = [0]

    def step():
        tokens = batches[count[0] % len(batches)]
        count[0] += 1
        with autocast("cpu", precision), _values_for_attention("attention" in free_parts):
            loss, _ = batch_loss(model.net, tokens, cond, "full")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), cfg.clip)
        opt.step()

    return step, cfg.batch_size * cfg.context


@contextlib.contextmanager
def _values_for_attention(on: bool):
    """While on, the transformer's attention returns its values v (no products, no softmax)."""
    import notelm.models.transformer as transformer

    real = transformer.attention
    if on:
        transformer.attention = lambda q, k, v, **_: v
    try:
        yield
    finally:
        transformer.attention = real


def precision_throughput(encoded, preset: str, rounds: int, steps: int, profile: int = 0, overrides=(),
                         free_parts=()) -> dict:
    """Targets/s of a preset in fp32 and in bf16 (median of ``rounds`` alternating blocks of ``steps`` steps)."""
    runs = {p: preset_step(encoded, preset, p, overrides=overrides, free_parts=free_parts) for p in ("fp32", "bf16")}
    rates = {p: [] for p in runs}
    for _ in range(rounds):
        for precision, (step, targets) in runs.items():
            rates[precision].append(targets / timed_steps(step, 1, steps))
    out = {p: float(np.median(r)) for p, r in rates.items()}
    # the ratio of each round's two adjacent blocks, then the median: the machine's speed drifts by
    # a third from minute to minute on a shared host, and a round's two blocks see the same drift
    ratio = float(np.median(np.array(rates["bf16"]) / np.array(rates["fp32"])))
    label = f"{preset} (free: {','.join(free_parts)})" if free_parts else preset
    print(f"{label:<12} fp32 {out['fp32']:>9,.0f}  bf16 {out['bf16']:>9,.0f} targets/s  "
          f"bf16/fp32 {ratio:.2f}x   (rounds: "
          f"{', '.join(f'{a:,.0f}/{b:,.0f}' for a, b in zip(rates['fp32'], rates['bf16']))})", flush=True)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        for precision, (step, _) in runs.items():
            with profiler(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step()
            print(f"==== {preset} {precision}: {steps} steps, ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile))
    return {f"{preset}_fp32_targets_per_s": round(out["fp32"], 1),
            f"{preset}_bf16_targets_per_s": round(out["bf16"], 1),
            f"{preset}_bf16_vs_fp32": round(ratio, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", help="a prepared corpus (default: prepare piano_midi_de into a temp dir)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per scheme, and per precision in a round (default 20; 6 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="fp32/bf16 rounds per preset (default 7; 1 with --quick)")
    ap.add_argument("--presets", default="lstm,transformer", help="presets timed in fp32 and bf16")
    ap.add_argument("--precision-only", action="store_true", help="skip the windows-vs-crops comparison")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="change every timed preset as `notelm train --set` does (e.g. model.hidden=256)")
    ap.add_argument("--free", default="", metavar="PARTS",
                    help=f"make these operations free (a ceiling, not a speed; any of {','.join(FREE_PARTS)})")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also print the N costliest ops per precision")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    free_parts = [p for p in a.free.split(",") if p]
    unknown = sorted(set(free_parts) - set(FREE_PARTS))
    if unknown:
        ap.error(f"--free: unknown part(s) {', '.join(unknown)}; expected any of {', '.join(FREE_PARTS)}")

    from notelm.corpus import prepare
    from notelm.encoding import load_or_encode

    steps = a.steps or (6 if a.quick else 20)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = a.corpus
        if corpus is None:
            corpus = Path(tmp) / "corpus"
            source = DATA / ("nottingham" if a.quick else "piano_midi_de")
            prepare([str(source)], corpus, progress=False, log=lambda *_: None)
        if not a.precision_only:
            result.update(windows_vs_crops(corpus, a.batch, a.window, steps))
        encoded = load_or_encode(corpus, "events", {"velocity_bins": 8})
        print(f"fp32 vs bf16 autocast, {steps} timed steps per round, {torch.get_num_threads()} threads")
        for preset in a.presets.split(","):
            result.update(precision_throughput(encoded, preset, a.rounds or (1 if a.quick else 7), steps, a.profile,
                                               a.overrides, free_parts))
    print(json.dumps(result))
    return result


def windows_vs_crops(corpus, batch: int, window: int, steps: int) -> dict:
    """The original's materialized windows against notelm's crops: the same LSTM, the same songs."""
    from notelm.config import load_config
    from notelm.data import CropSampler
    from notelm.encoding import load_or_encode
    from notelm.models import build_model
    from notelm.train import batch_loss

    a = argparse.Namespace(batch=batch, window=window)
    torch.manual_seed(0)
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
    return result


if __name__ == "__main__":
    main()
