"""Training: random crops of whole songs, loss at every position, checkpoints you can resume.

One loop serves every neural model and every machine: CPU here, CUDA with bf16
autocast where present, many GPUs or nodes under ``torchrun`` (each rank draws
its own crops; rank 0 evaluates and writes).  Crops are cut from the encoded
streams with index arithmetic, so no window is ever materialized: memory per
corpus event is the few bytes of its streams.

Objectives: ``full`` (loss at every position of a crop: L targets per crop) and
``last`` (loss on the event after a window only: the original experiment's one
target per 32-note window, kept for a faithful reproduction).

A run directory holds ``metrics.jsonl``, ``checkpoint/`` (latest state, written
atomically at every evaluation) and ``best/`` (lowest validation loss).
``--resume`` restores weights, optimizer, schedule and every random generator,
so a killed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from notelm.encoding.vocab import PAD, Vocab
from notelm.io import NotelmError, atomic_path, write_json
from notelm.models.neural import ModelConfig, NeuralModel, _typed

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    objective: str = "full"  # "full": loss at every position; "last": next event after a window only
    context: int = 128  # events per crop (the window length for "last")
    batch_size: int = 32
    steps: int = 2000
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    transpose: bool = True  # random transposition of every crop (where the representation allows)
    cond_dropout: float = 0.2  # chance of training a crop unconditioned
    eval_every: int = 200
    eval_crops: int = 256
    patience: int = 5  # evaluations without improvement before stopping early
    log_every: int = 20
    seed: int = 0
    split: str = "song"  # "song": train/valid/test by song; "window": the original's random split of windows (leaks)
    time_limit: float = 0.0  # seconds; 0 = none
    threads: int = 0  # torch CPU threads; 0 = all cores

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        cfg = _typed(cls, d, "train")
        if cfg.objective not in ("full", "last"):
            raise NotelmError(f"train.objective {cfg.objective!r}: expected 'full' or 'last'")
        if cfg.split not in ("song", "window"):
            raise NotelmError(f"train.split {cfg.split!r}: expected 'song' or 'window'")
        for name in ("context", "batch_size", "steps", "eval_every", "eval_crops", "patience", "log_every"):
            if getattr(cfg, name) < 1:
                raise NotelmError(f"train.{name} must be >= 1")
        return cfg


@dataclass
class RunConfig:
    representation: str = "events"
    encoding: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> dict:
        return {"data": {"representation": self.representation, "encoding": self.encoding},
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}


# --------------------------------------------------------------------------- configs

def load_config(name_or_path: str | None, overrides: list[str] = ()) -> RunConfig:
    """A TOML preset (a name in configs/ or a path) with ``section.key=value`` overrides."""
    import tomllib

    raw: dict = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.exists():
            path = CONFIG_DIR / (name_or_path if name_or_path.endswith(".toml") else f"{name_or_path}.toml")
        if not path.exists():
            presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
            raise NotelmError(f"config {name_or_path!r}: no such file or preset (presets: {presets})")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise NotelmError(f"{path}: invalid TOML: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise NotelmError(f"--set {item!r}: expected section.key=value, e.g. train.steps=500")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value  # a bare word: take it as a string
        *sections, leaf = key.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = parsed
    return parse_config(raw)


def parse_config(raw: dict) -> RunConfig:
    unknown = sorted(set(raw) - {"data", "model", "train"})
    if unknown:
        raise NotelmError(f"unknown config section(s): {', '.join(unknown)}; valid: data, model, train")
    data = dict(raw.get("data", {}))
    bad = sorted(set(data) - {"representation", "encoding"})
    if bad:
        raise NotelmError(f"unknown key(s) in [data]: {', '.join(bad)}; valid keys: representation, encoding")
    representation = data.get("representation", "events")
    if representation not in ("seed", "events"):
        raise NotelmError(f"data.representation {representation!r}: expected 'seed' or 'events'")
    encoding = data.get("encoding", {})
    if not isinstance(encoding, dict):
        raise NotelmError("[data.encoding] must be a table of encoder settings")
    from notelm.encoding import get_representation

    get_representation(representation, encoding)  # unknown setting or wrong type: refused now, not after loading data
    return RunConfig(representation, dict(encoding), ModelConfig.from_dict(raw.get("model", {})).validate(),
                     TrainConfig.from_dict(raw.get("train", {})))


# --------------------------------------------------------------------------- data

class CropSampler:
    """Random crops of ``length`` events from a set of songs, cut from contiguous streams.

    Every start position of every song is equally likely (as if all windows had
    been materialized and shuffled, without materializing them).  Songs shorter
    than a crop give one crop padded with PAD.
    """

    def __init__(self, streams: list[np.ndarray], offsets: np.ndarray, songs: np.ndarray, length: int,
                 windows: np.ndarray | None = None):
        self.streams, self.length = streams, length
        self.windows = windows  # if given, only these window indices are ever drawn
        self.songs = np.asarray(songs, np.int64)
        if not len(self.songs):
            raise NotelmError("no songs to train on in this split")
        self.start = offsets[self.songs]
        self.end = offsets[self.songs + 1]
        n_starts = np.maximum(self.end - self.start - length + 1, 1)
        self.cum = np.concatenate([[0], np.cumsum(n_starts)])

    @property
    def n_windows(self) -> int:
        return int(self.cum[-1])

    def sample(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [batch, length, S] int64, song index [batch])."""
        if self.windows is not None:
            return self.at(self.windows[rng.integers(0, len(self.windows), batch)])
        return self.at(rng.integers(0, self.n_windows, batch))

    def at(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The crops with the given window indices (0 .. n_windows-1)."""
        k = np.searchsorted(self.cum, window, side="right") - 1
        first = self.start[k] + (window - self.cum[k])
        index = first[:, None] + np.arange(self.length)
        valid = index < self.end[k][:, None]
        index = np.minimum(index, len(self.streams[0]) - 1)
        tokens = np.stack([np.where(valid, s[index], PAD) for s in self.streams], -1).astype(np.int64)
        return tokens, self.songs[k]


def window_splits(n_windows: int, fractions=(0.8, 0.1, 0.1), seed: int = 1234) -> dict[str, np.ndarray]:
    """The original experiment's split: every window independently to train/valid/test at random.

    Overlapping windows of one song land on both sides, so test windows share
    31 of their 32 notes with training windows: the leak a song-level split avoids.
    """
    code = np.random.default_rng(seed).choice(3, n_windows, p=fractions)
    return {name: np.flatnonzero(code == i) for i, name in enumerate(("train", "valid", "test"))}


def pitch_shift_tables(vocab: Vocab) -> dict[int, np.ndarray] | None:
    """Lookup tables id -> transposed id for shifts -6..+5 of the pitch stream, or None.

    Seed pitch classes rotate (always valid); MIDI pitches move and a shift that
    would leave 0..127 maps to -1 so the caller can pick another.
    """
    if "pitch" not in vocab.names:
        return None
    stream = vocab.stream("pitch")
    tables = {}
    for k in range(-6, 6):
        table = np.arange(stream.size)
        for i, tok in enumerate(stream.tokens):
            idx = 3 + i
            if vocab.representation == "seed":
                names = stream.tokens
                table[idx] = 3 + (names.index(tok) + k) % len(names)
            elif tok.lstrip("-").isdigit():
                p = int(tok) + k
                table[idx] = stream.id_of(str(p)) if str(p) in stream.tokens else -1
        tables[k] = table
    return tables


def transpose_batch(tokens: np.ndarray, pitch_index: int, tables, rng: np.random.Generator) -> np.ndarray:
    """Shift each crop's pitch stream by its own random k (re-drawn where out of range)."""
    shifts = np.array(sorted(tables))
    stacked = np.stack([tables[k] for k in shifts])  # [12, V]
    pitch = tokens[..., pitch_index]
    choice = rng.integers(0, len(shifts), len(tokens))
    moved = stacked[choice[:, None], pitch]
    bad = (moved < 0).any(axis=1)
    moved[bad] = pitch[bad]  # no shift fits this crop: leave it as it is
    tokens = tokens.copy()
    tokens[..., pitch_index] = moved
    return tokens


# --------------------------------------------------------------------------- loop helpers

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def batch_loss(net, tokens: torch.Tensor, cond: torch.Tensor, objective: str):
    """(mean loss summed over streams, per-stream (loss sum, correct, count)) for one batch."""
    x, y = tokens[:, :-1], tokens[:, 1:]
    logits, _ = net(x, cond, targets=y)
    if objective == "last":
        logits = [lg[:, -1:] for lg in logits]
        y = y[:, -1:]
    total, stats = 0.0, []
    for k, lg in enumerate(logits):
        target = y[..., k]
        mask = target != PAD
        n = mask.sum()
        loss = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), target.reshape(-1), ignore_index=PAD, reduction="sum")
        total = total + loss / n.clamp(min=1)
        correct = ((lg.argmax(-1) == target) & mask).sum()
        stats.append((loss.detach(), correct.detach(), n.detach()))
    return total, stats


class Dist:
    """torchrun / DistributedDataParallel when WORLD_SIZE > 1; a no-op otherwise."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, net):
        if self.world == 1:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net, device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- checkpoints

def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            out[f"{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state = opt.state_dict()
    restored: dict = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        restored.setdefault(int(i), {})[name] = value
    state["state"] = restored
    opt.load_state_dict(state)


def save_checkpoint(run_dir: Path, model: NeuralModel, opt, run: RunConfig, state: dict, rng_states: list) -> None:
    from notelm.checkpoint import save_weights

    torch_states = {f"rank{r}.torch": torch.as_tensor(s["torch"]) for r, s in enumerate(rng_states)}
    config = {**model.config_json(), "run": run.to_json(),
              "train_state": {**state, "numpy_rng": [s["numpy"] for s in rng_states]}}
    save_weights(run_dir / "checkpoint", model.net.state_dict(), config,
                 extra={"optimizer": _optimizer_tensors(opt), "rng": torch_states})


# --------------------------------------------------------------------------- the run

def train(corpus_path, run: RunConfig, out_dir, resume: bool = False, init: str | None = None,
          progress: bool = True, log=print) -> dict:
    """Train a neural model on a corpus's train split; returns the final summary."""
    from tqdm import tqdm

    from notelm.checkpoint import load_model, load_neural, load_tensors, read_config, resolve
    from notelm.encoding import load_or_encode

    out_dir = Path(out_dir)
    dist = Dist()
    cfg = run.train
    torch.manual_seed(cfg.seed + dist.rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    checkpoint_dir = out_dir / "checkpoint"
    if resume:
        if not (checkpoint_dir / "config.json").exists():
            raise NotelmError(f"{out_dir}: nothing to resume (no checkpoint/ yet); run without --resume")
        saved = read_config(checkpoint_dir)
        run = parse_config(saved["run"])
        cfg = run.train
    elif (out_dir / "metrics.jsonl").exists() or checkpoint_dir.exists():
        raise NotelmError(f"{out_dir}: a run is already there; pass --resume to continue it or choose another -o")

    # the model and its vocabulary: fresh, from --init, or from the checkpoint being resumed
    base = None
    if resume:  # validated like any model: shapes, vocabulary, settings
        base = load_neural(checkpoint_dir, saved, device=str(dist.device))
    elif init:
        base = load_model(resolve(init), device=str(dist.device))
        if not isinstance(base, NeuralModel):
            raise NotelmError(f"--init {init}: only neural models can be fine-tuned (this is {base.family})")
        run = dataclasses.replace(run, representation=base.vocab.representation, encoding=dict(base.vocab.config), model=base.cfg)
    encoded = load_or_encode(corpus_path, run.representation, run.encoding)
    vocab = base.vocab if base is not None else encoded.vocab
    problems = vocab.differences(encoded.vocab)
    if problems:
        raise NotelmError(f"{corpus_path}: this corpus cannot be read by the model: {'; '.join(problems)}")
    cond_map = np.array([0] + [vocab.conditions.index(c) + 1 if c in vocab.conditions else 0 for c in encoded.vocab.conditions])
    if init and not resume:
        unknown = [c for c in encoded.vocab.conditions if c not in vocab.conditions]
        if unknown and vocab.conditions:
            log(f"note: collections not known to the model are trained unconditioned: {', '.join(unknown[:8])}")

    model = base or NeuralModel(vocab, run.model, device=str(dist.device))
    net = model.net
    ddp = dist.wrap(net)
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98))

    streams = [encoded.streams[n] for n in vocab.names]
    length = cfg.context + 1
    train_ids, valid_ids = encoded.ids("train"), encoded.ids("valid")
    if not len(valid_ids):
        valid_ids = train_ids  # tiny corpora: watch the training loss rather than fail
    if cfg.split == "window":
        every = encoded.ids("all")
        windows = window_splits(CropSampler(streams, encoded.offsets, every, length).n_windows)
        sampler = CropSampler(streams, encoded.offsets, every, length, windows=windows["train"])
        valid = CropSampler(streams, encoded.offsets, every, length, windows=windows["valid"])
    else:
        sampler = CropSampler(streams, encoded.offsets, train_ids, length)
        valid = CropSampler(streams, encoded.offsets, valid_ids, length)
    eval_rng = np.random.default_rng(12345)
    eval_batches = [valid.sample(eval_rng, min(cfg.batch_size, cfg.eval_crops))
                    for _ in range(max(1, cfg.eval_crops // cfg.batch_size))]
    tables = pitch_shift_tables(vocab) if cfg.transpose else None
    pitch_index = vocab.names.index("pitch") if tables else -1
    cond_of_song = cond_map[np.asarray(encoded.cond, np.int64)]

    rng = np.random.default_rng([cfg.seed, dist.rank])
    state = {"step": 0, "best_valid": float("inf"), "bad_evals": 0, "elapsed": 0.0, "events": 0, "stopped": ""}
    if resume:
        try:
            state.update({k: v for k, v in saved["train_state"].items() if k in state})
            rng.bit_generator.state = saved["train_state"]["numpy_rng"][dist.rank]
            torch.set_rng_state(load_tensors(checkpoint_dir / "rng.safetensors")[f"rank{dist.rank}.torch"])
            _load_optimizer(opt, load_tensors(checkpoint_dir / "optimizer.safetensors"))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise NotelmError(f"{checkpoint_dir}: the training state cannot be restored ({type(e).__name__}: {e}); "
                              "the checkpoint is damaged or from another run") from None
        _truncate_log(out_dir / "metrics.jsonl", state["step"])
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "run.json", {"corpus": str(corpus_path), "init": init, **run.to_json(),
                                          "vocab": vocab.to_json(), "world_size": dist.world})
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda" else _null()
    per_step = cfg.batch_size * (cfg.context if cfg.objective == "full" else 1)

    def evaluate() -> dict:
        net.eval()
        sums = np.zeros((len(vocab.names), 3))
        with torch.no_grad(), autocast:
            for tokens, songs in eval_batches:
                t = torch.as_tensor(tokens, device=dist.device)
                c = torch.as_tensor(cond_of_song[songs], device=dist.device)
                _, stats = batch_loss(net, t, c, cfg.objective)
                sums += np.array([[float(a), float(b), float(n)] for a, b, n in stats])
        net.train()
        out = {"loss": float(sum(sums[:, 0] / np.maximum(sums[:, 2], 1)))}
        for name, (loss, correct, n) in zip(vocab.names, sums):
            out[f"loss_{name}"] = loss / max(n, 1)
            out[f"acc_{name}"] = correct / max(n, 1)
        return out

    bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", unit="step", disable=not (progress and dist.main),
               dynamic_ncols=True)
    started = time.perf_counter() - state["elapsed"]
    window_t, window_events = time.perf_counter(), 0
    net.train()
    while state["step"] < cfg.steps and not state["stopped"]:
        step = state["step"]
        tokens, songs = sampler.sample(rng, cfg.batch_size)
        if tables:
            tokens = transpose_batch(tokens, pitch_index, tables, rng)
        cond = cond_of_song[songs]
        if cfg.cond_dropout and vocab.conditions:
            cond = np.where(rng.random(len(cond)) < cfg.cond_dropout, 0, cond)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast:
            loss, stats = batch_loss(ddp, torch.as_tensor(tokens, device=dist.device), torch.as_tensor(cond, device=dist.device), cfg.objective)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
        opt.step()
        state["step"] = step = step + 1
        state["events"] += per_step * dist.world
        window_events += per_step * dist.world
        bar.update(1)

        if dist.main and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            rate = window_events / max(now - window_t, 1e-9)
            window_t, window_events = now, 0
            record = {"step": step, "split": "train", "time": round(now - started, 2), "lr": lr_at(step - 1, cfg),
                      "loss": loss.item(), "targets_per_s": round(rate, 1)}
            for name, (l, c, n) in zip(vocab.names, stats):
                record[f"loss_{name}"] = float(l) / max(float(n), 1)
                record[f"acc_{name}"] = float(c) / max(float(n), 1)
            _append(out_dir / "metrics.jsonl", record)
            bar.set_postfix(loss=f"{loss.item():.3f}", ev_s=f"{rate:,.0f}", refresh=False)

        out_of_time = cfg.time_limit and time.perf_counter() - started > cfg.time_limit
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            state["elapsed"] = time.perf_counter() - started
            rng_states = dist.gather({"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()})
            if dist.main:
                metrics = evaluate()
                _append(out_dir / "metrics.jsonl", {"step": step, "split": "valid", "time": round(state["elapsed"], 2), **metrics})
                if metrics["loss"] < state["best_valid"] - 1e-4:
                    state["best_valid"], state["bad_evals"] = metrics["loss"], 0
                    model.save(out_dir / "best")
                else:
                    state["bad_evals"] += 1
                    if state["bad_evals"] >= cfg.patience:
                        state["stopped"] = f"early stop: no validation improvement in {cfg.patience} evaluations"
                if out_of_time and not state["stopped"]:
                    state["stopped"] = f"time limit of {cfg.time_limit:g} s reached"
                save_checkpoint(out_dir, model, opt, run, state, rng_states)
                bar.set_postfix(loss=f"{loss.item():.3f}", valid=f"{metrics['loss']:.3f}", refresh=False)
            state["stopped"] = dist.broadcast(state["stopped"])
    bar.close()
    dist.close()
    elapsed = time.perf_counter() - started
    summary = {"steps": state["step"], "best_valid_loss": state["best_valid"], "seconds": round(elapsed, 1),
               "targets_per_s": round(state["events"] / max(elapsed, 1e-9), 1), "stopped": state["stopped"] or "completed"}
    if dist.main:
        write_json(out_dir / "summary.json", summary)
        log(f"trained {run.model.family} ({sum(p.numel() for p in net.parameters()):,} parameters) for {state['step']} steps "
            f"in {elapsed:.0f} s, {summary['targets_per_s']:,.0f} targets/s; best valid loss {state['best_valid']:.4f} "
            f"({summary['stopped']}) -> {out_dir}")
    return summary


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise NotelmError(f"{run_dir}: no metrics.jsonl (is this a training run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(run_dir, out: str | None = None) -> Path:
    """Learning curves (loss and accuracy per stream, train and valid) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out_path = Path(out) if out else Path(run_dir) / "learning_curves.png"
    names = sorted({k[4:] for r in records for k in r if k.startswith("acc_")})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for split, style in (("train", "-"), ("valid", "o-")):
        rows = [r for r in records if r.get("split") == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        for name in names:
            axes[0].plot(steps, [r[f"loss_{name}"] for r in rows], style, ms=3, alpha=0.4 if split == "train" else 1, label=f"{split} {name}")
            axes[1].plot(steps, [r[f"acc_{name}"] for r in rows], style, ms=3, alpha=0.4 if split == "train" else 1, label=f"{split} {name}")
    axes[0].set(title="cross-entropy (nats per event)", xlabel="step")
    axes[1].set(title="accuracy", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_path
