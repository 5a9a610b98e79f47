"""Generation speed, in one run on the same models:

(a) the original scheme: for every new note, run the seed LSTM over the whole last-32-note window;
(b) notelm, incremental (the LSTM carries its state), one piece;
(c) notelm, incremental, 64 pieces as one batch;
(e) a bare PyTorch loop of the same LSTM (embedding, one LSTM step, two heads, sampling): the floor
    for per-step overhead;
(d) the transformer preset at its full context: KV-cache decoding against recomputing the whole
    context for every new event.

Speed does not depend on training, so the models are freshly initialized with the presets' sizes.

    python benchmarks/generate.py           # full run
    python benchmarks/generate.py --quick   # under a minute

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from notelm.config import SamplingConfig, load_config
from notelm.encoding import get_representation
from notelm.encoding.vocab import BOS
from notelm.generate import sample
from notelm.models import build_model
from notelm.models.neural import NeuralModel
from notelm.sampling import draw


def model_for(preset: str) -> NeuralModel:
    run = load_config(preset)
    rep = get_representation(run.representation, run.encoding)
    torch.manual_seed(0)
    return build_model(rep.vocab(), run.model)


def rate(fn, notes: int, repeat: int = 2) -> float:
    """Notes per second, best of `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return notes / best


@torch.inference_mode()
def recompute_window(model: NeuralModel, n_notes: int, window: int, rng) -> None:
    """The original scheme: the whole last window goes through the model for every new note."""
    net = model.net.eval()
    seq = [np.full(len(model.vocab.names), BOS)]
    for _ in range(n_notes):
        x = torch.as_tensor(np.array(seq[-window:])[None])
        logits, _ = net(x, None)
        event = [int(draw(torch.log_softmax(lg[:, -1].double(), -1).numpy(), rng)[0]) for lg in logits]
        seq.append(np.array(event))


@torch.inference_mode()
def bare_loop(model: NeuralModel, n_notes: int, rng) -> None:
    """The least a Python loop can do per note with this LSTM: no checks, no masks, no filters."""
    net = model.net.eval()
    x = torch.full((1, 1, len(model.vocab.names)), BOS)
    state = None
    for _ in range(n_notes):
        h, state = net.features(net.embed(x, None), state)
        ids = [torch.multinomial(torch.softmax(head(h[:, -1]), -1), 1) for head in net.heads]
        x = torch.stack(ids, -1)


@torch.inference_mode()
def transformer_rates(model: NeuralModel, new: int, rng, pieces: int = 1) -> tuple[float, float]:
    """(KV cache, full recompute) events/s for the last `new` events up to the full context."""
    context = model.cfg.context
    names = model.vocab.names
    prompt_len = context - new
    prompt = {n: np.concatenate([[BOS], rng.integers(3, model.vocab.stream(n).size, prompt_len - 1)]) for n in names}
    cfg = SamplingConfig(seed=0)

    def cached():
        sample(model, pieces, new, prompt=prompt, cfg=cfg)

    def recompute():
        net = model.net.eval()
        seq = np.repeat(np.stack([prompt[n] for n in names], -1)[None], pieces, 0)
        for _ in range(new):
            tokens = torch.as_tensor(seq)
            h, _ = net.features(net.embed(tokens, None))
            refs = net.references(tokens)  # the relative-pitch head's last notes (None without one)
            refs = refs[:, -1] if refs is not None else None
            chosen = []
            for k in range(len(names)):
                lp = torch.log_softmax(net.head(h[:, -1], k, chosen, refs).double(), -1).numpy()
                chosen.append(torch.as_tensor(draw(lp, rng)))
            seq = np.concatenate([seq, torch.stack(chosen, -1).numpy()[:, None]], 1)

    return rate(cached, pieces * new, 1), rate(recompute, pieces * new, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=None,
                    help="notes per single-piece run (default 2000; 400 with --quick)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    cores = torch.get_num_threads()
    torch.set_num_threads(1)  # one stream of decoding: threads only add overhead at these sizes
    n = a.notes or (400 if a.quick else 2000)
    rng = np.random.default_rng(0)
    seed = model_for("seed")
    cfg = SamplingConfig(seed=0)

    recompute = rate(lambda: recompute_window(seed, n // 4, 32, rng), n // 4)
    single = rate(lambda: sample(seed, 1, n, cfg=cfg), n)
    torch.set_num_threads(cores)  # 64 pieces per step is matrix work worth every core
    batch = rate(lambda: sample(seed, 64, n // 4, cfg=cfg), 64 * (n // 4))
    torch.set_num_threads(1)
    bare = rate(lambda: bare_loop(seed, n, rng), n)
    transformer = model_for("transformer")
    new = transformer.cfg.context // (4 if a.quick else 2)
    kv, full = transformer_rates(transformer, new, rng)
    torch.set_num_threads(cores)
    kv16, full16 = transformer_rates(transformer, new, rng, pieces=16)

    result = {
        "recompute_notes_per_s": round(recompute, 1),
        "notes_per_s_single": round(single, 1),
        "notes_per_s_batch64": round(batch, 1),
        "bare_torch_notes_per_s": round(bare, 1),
        "incremental_vs_recompute": round(single / recompute, 2),
        "kv_cache_notes_per_s": round(kv, 1),
        "full_recompute_notes_per_s": round(full, 1),
        "kv_cache_vs_recompute": round(kv / full, 2),
        "kv_cache_batch16_notes_per_s": round(kv16, 1),
        "full_recompute_batch16_notes_per_s": round(full16, 1),
        "kv_cache_vs_recompute_batch16": round(kv16 / full16, 2),
    }
    print(f"{'seed LSTM (hidden 256)':<52}{'notes/s':>12}")
    print(f"{'(a) original: recompute the last 32 notes per note':<52}{recompute:>12,.0f}")
    print(f"{'(b) notelm incremental, 1 piece':<52}{single:>12,.0f}   {single / recompute:.1f}x (a)")
    print(f"{'(c) notelm incremental, 64 pieces in a batch':<52}{batch:>12,.0f}")
    print(f"{'(e) bare PyTorch loop, 1 piece (overhead floor)':<52}{bare:>12,.0f}   "
          f"notelm at {single / bare:.0%} of it")
    print(f"transformer preset (context {transformer.cfg.context}, {transformer.cfg.layers} layers), "
          f"the last {new} events up to full context:")
    print(f"{'(d) KV cache':<52}{kv:>12,.0f}")
    print(f"{'    full recompute per event':<52}{full:>12,.0f}   KV cache {kv / full:.1f}x faster")
    print(f"{'(d) KV cache, 16 pieces in a batch':<52}{kv16:>12,.0f}")
    print(f"{'    full recompute per event, 16 pieces':<52}{full16:>12,.0f}   KV cache {kv16 / full16:.1f}x faster")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
