"""Training: random crops of whole songs, loss at every position, checkpoints you can resume.

One loop serves every neural model and every machine: CPU or CUDA, in bf16
autocast where it pays (``train.precision``, ``precision.py``), many GPUs or
nodes under ``torchrun`` (each rank draws its own crops; rank 0 evaluates and
writes).  Crops are cut from the encoded
streams with index arithmetic (``data.CropSampler``), so no window is ever
materialized: memory per corpus event is the few bytes of its streams.

Objectives: ``full`` (loss at every position of a crop: L targets per crop) and
``last`` (loss on the event after a window only: the original experiment's one
target per 32-note window, kept for a faithful reproduction).

A run directory holds ``metrics.jsonl``, ``checkpoint/`` (latest state, written
atomically at every evaluation) and ``best/`` (lowest validation loss).
``--resume`` restores weights, optimizer, schedule and every random generator,
so a killed run ends exactly where an uninterrupted one would; it may raise
``train.steps`` or ``train.time_limit`` to continue a finished run.

The steps of the loop, in order: ``_prepare`` (config, model, data, optimizer,
restored state), then per step ``_train_step``, ``_log_step`` and, every
``eval_every`` steps, ``_evaluate_and_save``; ``_finish`` writes the summary.
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

from notelm.checkpoint import (
    load_model,
    model_from_directory,
    read_config,
    resolve,
    restore_training_state,
    save_model,
    save_training_checkpoint,
)
from notelm.config import RunConfig, TrainConfig, apply_overrides, check_resume, parse_config, read_preset
from notelm.copyguard import FILE as COPY_INDEX
from notelm.copyguard import write_index
from notelm.data import CropSampler, condition_map, crop_weights, transpose_batch, window_splits
from notelm.encoding import from_vocab, load_or_encode
from notelm.encoding.vocab import PAD, UNCONDITIONED
from notelm.evaluate import valid_against_ngram
from notelm.io import NotelmError, atomic_path, printable, read_jsonl, sweep_dead_temporaries, write_json
from notelm.models import build_model
from notelm.precision import autocast
from notelm.precision import resolve as resolve_precision

TIME_LIMIT_STOP = "time limit"  # how the stop reason of a run cut short by train.time_limit begins
DIVERGED_STOP = "diverged"  # ... and of a run whose valid loss is no longer a number


# --------------------------------------------------------------------------- devices and precision


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

            # every rank past its last collective before any tears the group down: a rank that left early
            # closed gloo's connections under a peer still reading (a SIGABRT seen once on a loaded machine)
            dist.barrier()
            dist.destroy_process_group()


# --------------------------------------------------------------------------- the objective


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def batch_loss(net, tokens: torch.Tensor, cond: torch.Tensor, objective: str, smoothing: float = 0.0):
    """(mean loss summed over streams, per-stream (loss sum, correct, count)) for one batch.

    ``smoothing`` (training only): the loss that is minimized takes that share of the mean -log p over the
    values the head can give (finite log-probabilities), so the model is never certain; the statistics stay
    the plain negative log-likelihood."""
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
        lg = lg.float()  # once: the loss, the smoothing and the argmax (faster in fp32 on a CPU) read it
        loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1), ignore_index=PAD, reduction="sum")
        if smoothing:
            lp = torch.log_softmax(lg, -1)
            finite = torch.isfinite(lp)
            spread = -(torch.where(finite, lp, 0.0).sum(-1) / finite.sum(-1).clamp(min=1))[mask].sum()
            total = total + ((1 - smoothing) * loss + smoothing * spread) / n.clamp(min=1)
        else:
            total = total + loss / n.clamp(min=1)
        correct = ((lg.argmax(-1) == target) & mask).sum()
        stats.append((loss.detach(), correct.detach(), n.detach()))
    return total, stats


# --------------------------------------------------------------------------- what a run is made of


@dataclass
class Batches:
    """Where the loop's batches come from: training crops, fixed valid crops, each song's condition."""

    sampler: CropSampler
    valid: list[tuple[np.ndarray, np.ndarray]]
    cond_of_song: np.ndarray  # the model's condition id of every corpus song
    tables: dict | None = None  # the representation's transposition tables (train.transpose)
    pitch_index: int = -1
    encoded: object = None  # the encoded corpus (encoding.EncodedCorpus)


@dataclass
class Session:
    """One training run in progress: what ``_prepare`` sets up and every step reads and updates."""

    run: RunConfig
    model: object  # a trainable NextEventModel (models.neural.NeuralModel)
    ddp: torch.nn.Module  # model.net, wrapped for DistributedDataParallel under torchrun
    opt: torch.optim.Optimizer
    batches: Batches
    dist: Dist
    out_dir: Path
    rng: np.random.Generator
    state: dict = field(default_factory=lambda: {"step": 0, "best_valid": float("inf"), "bad_evals": 0,
                                                  "elapsed": 0.0, "events": 0, "stopped": ""})
    started: float = 0.0
    precision: str = "fp32"  # train.precision resolved for this device: "fp32" or "bf16"

    @property
    def cfg(self) -> TrainConfig:
        return self.run.train


def resume_config(out_dir, config: str | None = None, overrides=()) -> RunConfig:
    """The config to resume the run in ``out_dir`` with: its saved one, or ``config`` (a preset), with the
    ``--set`` ``overrides``; ``train`` then refuses anything but a higher train.steps or train.time_limit."""
    saved = _saved_run(Path(out_dir))
    base = read_preset(config) if config else saved.to_json()
    return parse_config(apply_overrides(base, overrides), saved=not config)


def _saved_run(out_dir: Path) -> RunConfig:
    checkpoint_dir = out_dir / "checkpoint"
    if not (checkpoint_dir / "config.json").exists():
        raise NotelmError(f"{out_dir}: nothing to resume (no checkpoint/ yet); run without --resume")
    saved = read_config(checkpoint_dir).get("run", {})
    try:
        return parse_config(saved, saved=True)
    except NotelmError as e:
        raise NotelmError(f"{printable(checkpoint_dir / 'config.json')}: the run's settings: {e}") from None


# --------------------------------------------------------------------------- the run


def train(corpus_path, run: RunConfig | None, out_dir, resume: bool = False, init: str | None = None,
          progress: bool = True, log=print) -> dict:
    """Train a neural model on a corpus's train split; returns the final summary.

    ``resume``: continue the run in ``out_dir`` (``run``: None for its saved config, or that config
    with a higher train.steps / train.time_limit).  ``init``: fine-tune the model of this run or
    model directory (``default``: the shipped one).
    """
    dist = Dist()
    s = _prepare(corpus_path, run, Path(out_dir), resume, init, dist, log)
    cfg = s.cfg
    bar = _progress_bar(s, disable=not (progress and dist.main))
    s.started = time.perf_counter() - s.state["elapsed"]
    window = [time.perf_counter(), 0]  # start and targets of the current throughput window
    s.model.net.train()
    while s.state["step"] < cfg.steps and not s.state["stopped"]:
        loss, stats = _train_step(s)
        step = s.state["step"]
        window[1] += _targets_per_step(cfg) * dist.world
        bar.update(1)
        if dist.main and (step % cfg.log_every == 0 or step == cfg.steps):
            rate = _log_step(s, loss, stats, window)
            bar.set_postfix(loss=f"{loss.item():.3f}", ev_s=f"{rate:,.0f}", refresh=False)
        out_of_time = bool(cfg.time_limit) and time.perf_counter() - s.started > cfg.time_limit
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            valid = _evaluate_and_save(s, out_of_time)
            if valid is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", valid=f"{valid:.3f}", refresh=False)
    bar.close()
    dist.close()
    return _finish(s, log)


def _progress_bar(s: Session, disable: bool, file=None):
    """A tqdm bar over the step budget whose ETA respects the time cap: the sooner of the steps left at the
    current rate and the time left before train.time_limit (marked "cap")."""
    from tqdm import tqdm

    class CappedBar(tqdm):
        @property
        def format_dict(self):
            d = super().format_dict
            done, elapsed = d["n"] - d["initial"], d["elapsed"]
            rate = d["rate"] or (done / elapsed if done and elapsed else None)
            left = (d["total"] - d["n"]) / rate if rate else None
            eta = "?" if left is None else tqdm.format_interval(left)
            if s.cfg.time_limit and s.started:
                cap_left = max(0.0, s.cfg.time_limit - (time.perf_counter() - s.started))
                if left is None or cap_left < left:
                    eta = f"{tqdm.format_interval(cap_left)} cap"
            d["eta"] = eta
            return d

    return CappedBar(total=s.cfg.steps, initial=s.state["step"], desc="train", unit="step", dynamic_ncols=True,
                     disable=disable, file=file,
                     bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{eta}{postfix}]")


def _prepare(corpus_path, run: RunConfig | None, out_dir: Path, resume: bool, init: str | None, dist: Dist,
             log) -> Session:
    """Everything the loop needs: the config, the model, its data, the optimizer and (resuming) the saved state."""
    saved = None
    if resume:
        saved_run = _saved_run(out_dir)
        run = run or saved_run
        check_resume(saved_run, run)
        saved = read_config(out_dir / "checkpoint")
        sweep_dead_temporaries(out_dir)  # what a killed run was writing when it died
    elif (out_dir / "checkpoint").exists():
        raise NotelmError(f"{out_dir}: a run is already there; pass --resume to continue it or choose another -o")
    torch.manual_seed(run.train.seed + dist.rank)
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    base, run = _base_model(run, out_dir, saved, init, dist)
    encoded = load_or_encode(corpus_path, run.representation, run.encoding, condition=run.data.condition)
    check_memory(run, base.vocab if base else encoded.vocab, str(dist.device))
    model = base or build_model(encoded.vocab, run.model, device=str(dist.device))
    problems = model.vocab.differences(encoded.vocab)
    if problems:
        raise NotelmError(f"{corpus_path}: this corpus cannot be read by the model: {'; '.join(problems)}")
    if init and not resume:
        unknown = [c for c in encoded.vocab.conditions if c not in model.vocab.conditions]
        if unknown and model.vocab.conditions:
            log(f"note: collections not known to the model are trained unconditioned: {', '.join(unknown[:8])}")
    s = Session(run, model, dist.wrap(model.net), _optimizer(model.net, run.train),
                _batches(encoded, model.vocab, run.train), dist, out_dir,
                np.random.default_rng([run.train.seed, dist.rank]))
    s.precision = resolve_precision(run.train.precision, dist.device, "train")
    model.net.use_rng(s.rng)  # dropout masks come from the loop's generator, saved in every checkpoint
    if saved is not None:
        _restore(s, saved, log)
    elif (out_dir / "metrics.jsonl").exists():
        _truncate_log(out_dir / "metrics.jsonl", 0)  # a run killed before its first checkpoint starts over
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "run.json", {"corpus": str(corpus_path), "init": init, **run.to_json(),
                                          "vocab": model.vocab.to_json(), "world_size": dist.world})
        if not (out_dir / COPY_INDEX).exists():  # what generate keeps its pieces from copying (copyguard.py)
            write_index(out_dir / COPY_INDEX, encoded, model.vocab)
    return s


def _base_model(run: RunConfig, out_dir: Path, saved: dict | None, init: str | None, dist: Dist):
    """(model or None, run): the checkpoint being resumed, the ``--init`` model (whose representation
    and model settings then replace the run's), or None for a fresh model."""
    device = str(dist.device)
    if saved is not None:  # validated like any model: shapes, vocabulary, settings
        return model_from_directory(out_dir / "checkpoint", saved, device=device), run
    if not init:
        return None, run
    base = load_model(resolve(init), device=device)
    if not base.trainable:
        raise NotelmError(f"--init {init}: only neural models can be fine-tuned (this is {base.family})")
    data = dataclasses.replace(run.data, representation=base.vocab.representation, encoding=dict(base.vocab.config))
    return base, dataclasses.replace(run, data=data, model=base.cfg)


def check_memory(run: RunConfig, vocab, device: str) -> None:
    """Refuse a model and batch that cannot fit in this machine's memory before anything is allocated:
    every setting has a bound, but their product can still ask for terabytes.  The need counted is a
    floor (float32 weights, gradients and AdamW's two moments; the backbone's outputs and every stream's
    logits for one batch, with their gradients), so a run refused here could never have trained."""
    from notelm.models import family_class

    with torch.device("meta"):  # shapes only
        parameters = sum(p.numel() for p in family_class(run.family).net_class(vocab, run.model).parameters())
    cfg = run.train
    positions = cfg.batch_size * cfg.context
    need = 16 * parameters + 8 * positions * (sum(vocab.sizes) + run.model.hidden * run.model.layers)
    need += cfg.eval_crops * (cfg.context + 1) * len(vocab.sizes)  # the fixed valid crops, a byte a token at least
    have = _total_memory(device)
    if have and need > have:
        raise NotelmError(f"this run needs at least {need / 1e9:,.1f} GB to train ({parameters:,} parameters, "
                          f"{cfg.batch_size:,} crops of {cfg.context:,} events, {cfg.eval_crops:,} valid crops) and "
                          f"{device} has {have / 1e9:,.1f} GB: lower train.batch_size, train.context, "
                          "train.eval_crops, model.hidden or model.layers")


def _total_memory(device: str) -> int:
    """Bytes of memory of ``device`` (0 when unknown)."""
    try:
        if device.startswith("cuda"):
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, RuntimeError, AssertionError):
        return 0


def _optimizer(net, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, biases and norms do not."""
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
    # fused: one kernel for the whole update instead of a few per tensor (CPU and CUDA)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), fused=True)


def _batches(encoded, vocab, cfg: TrainConfig) -> Batches:
    """Training crops of the train split (or of the training windows), fixed crops of the valid split."""
    streams = [encoded.streams[n] for n in vocab.names]
    length = cfg.context + 1
    cond_of_song = condition_map(vocab, encoded.vocab)[np.asarray(encoded.cond, np.int64)]
    train_ids, valid_ids = encoded.ids("train"), encoded.ids("valid")
    if not len(valid_ids):
        valid_ids = train_ids  # tiny corpora: watch the training loss rather than fail
    if cfg.split == "window":
        every = encoded.ids("all")
        windows = window_splits(CropSampler(streams, encoded.offsets, every, length).n_windows)
        sampler = CropSampler(streams, encoded.offsets, every, length, windows=windows["train"])
        valid = CropSampler(streams, encoded.offsets, every, length, windows=windows["valid"])
    else:
        lengths = np.diff(encoded.offsets)
        weights = crop_weights(cfg.crops, lengths[train_ids], cond_of_song[train_ids])
        sampler = CropSampler(streams, encoded.offsets, train_ids, length, song_weights=weights,
                              start_share=cfg.start_crops, labels=cond_of_song[train_ids])
        # like_train: uniform valid crops would judge checkpoints mostly on the longest valid songs
        valid_mode = cfg.crops if cfg.valid_crops == "like_train" else "uniform"
        valid = CropSampler(streams, encoded.offsets, valid_ids, length,
                            song_weights=crop_weights(valid_mode, lengths[valid_ids], cond_of_song[valid_ids]))
    eval_rng = np.random.default_rng(12345)
    valid_batches = [valid.sample(eval_rng, min(cfg.batch_size, cfg.eval_crops))
                     for _ in range(max(1, cfg.eval_crops // cfg.batch_size))]
    rep = from_vocab(vocab)
    tables = rep.transpositions() if cfg.transpose else None
    pitch_index = vocab.names.index(rep.pitch_stream) if tables else -1
    return Batches(sampler, valid_batches, cond_of_song, tables, pitch_index, encoded)


def _restore(s: Session, saved: dict, log) -> None:
    """The training state of the checkpoint being resumed: step, best loss, optimizer, every random state."""
    checkpoint_dir = s.out_dir / "checkpoint"
    state, numpy_state, torch_state = restore_training_state(checkpoint_dir, saved, s.opt, s.dist.rank)
    try:
        s.state.update({k: v for k, v in state.items() if k in s.state})
        s.rng.bit_generator.state = numpy_state
        torch.set_rng_state(torch_state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise NotelmError(f"{checkpoint_dir}: the training state cannot be restored ({type(e).__name__}: {e}); "
                          "the checkpoint is damaged or from another run") from None
    _truncate_log(s.out_dir / "metrics.jsonl", s.state["step"])
    cfg, stopped = s.cfg, s.state["stopped"]
    if stopped.startswith(TIME_LIMIT_STOP) and (not cfg.time_limit or cfg.time_limit > s.state["elapsed"]):
        s.state["stopped"] = ""  # a higher time limit: go on
    elif stopped or s.state["step"] >= cfg.steps:
        log(f"note: nothing left to train ({stopped or f'all {cfg.steps} steps done'}); "
            "raise train.steps or train.time_limit with --set to go on")


def _targets_per_step(cfg: TrainConfig) -> int:
    return cfg.batch_size * (cfg.context if cfg.objective == "full" else 1)


def _train_step(s: Session):
    """One optimizer step on a fresh batch; returns (loss, per-stream stats)."""
    cfg, device, step = s.cfg, s.dist.device, s.state["step"]
    tokens, songs = s.batches.sampler.sample(s.rng, cfg.batch_size)
    if s.batches.tables:
        tokens = transpose_batch(tokens, s.batches.pitch_index, s.batches.tables, s.rng)
    cond = s.batches.cond_of_song[songs]
    if cfg.cond_dropout and s.model.vocab.conditions:
        cond = np.where(s.rng.random(len(cond)) < cfg.cond_dropout, UNCONDITIONED, cond)
    for group in s.opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    with autocast(device, s.precision):
        loss, stats = batch_loss(s.ddp, torch.as_tensor(tokens, device=device), torch.as_tensor(cond, device=device),
                                 cfg.objective, cfg.label_smoothing)
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(s.model.net.parameters(), cfg.clip)
    s.opt.step()
    s.state["step"] = step + 1
    s.state["events"] += _targets_per_step(cfg) * s.dist.world
    return loss, stats


def _log_step(s: Session, loss, stats, window: list) -> float:
    """One ``train`` line of metrics.jsonl; returns the targets per second since the last one."""
    now = time.perf_counter()
    rate = window[1] / max(now - window[0], 1e-9)
    window[:] = [now, 0]
    step = s.state["step"]
    record = {"step": step, "split": "train", "time": round(now - s.started, 2), "lr": lr_at(step - 1, s.cfg),
              "loss": loss.item(), "targets_per_s": round(rate, 1)}
    for name, (nll, correct, n) in zip(s.model.vocab.names, stats):
        record[f"loss_{name}"] = float(nll) / max(float(n), 1)
        record[f"acc_{name}"] = float(correct) / max(float(n), 1)
    _append(s.out_dir / "metrics.jsonl", record)
    return rate


def _evaluate(s: Session) -> dict:
    """Loss and accuracy per stream on the fixed valid crops."""
    net, device, names = s.model.net, s.dist.device, s.model.vocab.names
    net.eval()
    sums = np.zeros((len(names), 3))
    with torch.no_grad(), autocast(device, s.precision):
        for tokens, songs in s.batches.valid:
            t = torch.as_tensor(tokens, device=device)
            c = torch.as_tensor(s.batches.cond_of_song[songs], device=device)
            _, stats = batch_loss(net, t, c, s.cfg.objective)
            sums += np.array([[float(a), float(b), float(n)] for a, b, n in stats])
    net.train()
    out = {"loss": float(sum(sums[:, 0] / np.maximum(sums[:, 2], 1)))}
    for name, (nll, correct, n) in zip(names, sums):
        out[f"loss_{name}"] = nll / max(n, 1)
        out[f"acc_{name}"] = correct / max(n, 1)
    return out


def _evaluate_and_save(s: Session, out_of_time: bool) -> float | None:
    """Evaluate, keep the best weights, decide on stopping, write the checkpoint; the valid loss on rank 0."""
    cfg, state = s.cfg, s.state
    state["elapsed"] = time.perf_counter() - s.started
    rng_states = s.dist.gather({"numpy": s.rng.bit_generator.state, "torch": torch.get_rng_state()})
    valid = None
    if s.dist.main:
        metrics = _evaluate(s)
        valid = metrics["loss"]
        _append(s.out_dir / "metrics.jsonl", {"step": state["step"], "split": "valid",
                                              "time": round(state["elapsed"], 2), **metrics})
        if not math.isfinite(valid):
            # NaN weights only give NaN: stop, and keep the last checkpoint and best weights as they were
            state["stopped"] = (f"{DIVERGED_STOP}: the valid loss is {valid} at step {state['step']:,}; "
                                "lower train.lr, or train with train.precision = \"fp32\"")
        elif valid < state["best_valid"] - 1e-4:
            state["best_valid"], state["bad_evals"] = valid, 0
            save_model(s.model, s.out_dir / "best")
        else:
            state["bad_evals"] += 1
            if state["bad_evals"] >= cfg.patience:
                state["stopped"] = f"early stop: no validation improvement in {cfg.patience} evaluations"
        if out_of_time and not state["stopped"]:
            state["stopped"] = f"{TIME_LIMIT_STOP} of {cfg.time_limit:g} s reached"
        if not state["stopped"].startswith(DIVERGED_STOP):
            save_training_checkpoint(s.out_dir / "checkpoint", s.model, s.opt, s.run.to_json(), state, rng_states)
    state["stopped"] = s.dist.broadcast(state["stopped"])
    return valid


def _finish(s: Session, log) -> dict:
    """Write summary.json and say what was trained, how far the budget got, how fast, and whether the model
    is ahead of the n-gram."""
    state, cfg = s.state, s.cfg
    elapsed = time.perf_counter() - s.started
    summary = {"steps": state["step"], "steps_budget": cfg.steps, "best_valid_loss": state["best_valid"],
               "seconds": round(elapsed, 1), "targets_per_s": round(state["events"] / max(elapsed, 1e-9), 1),
               "precision": s.precision, "stopped": state["stopped"] or "completed"}
    if s.dist.main:
        parameters = sum(p.numel() for p in s.model.net.parameters())
        log(f"trained {s.run.family} ({parameters:,} parameters, {s.precision}) for {_budget_words(s)} in "
            f"{elapsed:.0f} s, {summary['targets_per_s']:,.0f} targets/s; best valid loss {state['best_valid']:.4f} "
            f"-> {s.out_dir}")
        if state["stopped"].startswith(TIME_LIMIT_STOP):
            step, steps = state["step"], cfg.steps
            log(f"CUT SHORT by the time limit of {cfg.time_limit:g} s after {step:,} of its {steps:,} steps "
                f"({100 * step / steps:.0f} % of the budget): the model is undertrained; finish it with the same "
                "command and --resume --set train.time_limit=0")
        versus = _versus_ngram(s)
        if versus:
            summary["valid_vs_ngram"] = versus
            log(_versus_words(s, versus))
        write_json(s.out_dir / "summary.json", summary)
    return summary


def _budget_words(s: Session) -> str:
    """How far the run got in its budget of steps, and why it stopped there."""
    step, steps, stopped = s.state["step"], s.cfg.steps, s.state["stopped"]
    if stopped.startswith(TIME_LIMIT_STOP):
        return f"only {step:,} of its {steps:,} steps"
    if stopped:
        return f"{step:,} of {steps:,} steps ({stopped})"
    return f"all {steps:,} steps"


def _versus_ngram(s: Session) -> dict | None:
    """The best weights and the n-grams of the train split, scored on the whole valid songs (fp32)."""
    if not s.cfg.compare_ngram or s.cfg.split != "song" or not (s.out_dir / "best").exists():
        return None
    best = load_model(s.out_dir / "best", device=str(s.dist.device))
    return valid_against_ngram(best, s.batches.encoded, s.batches.cond_of_song)


def _versus_words(s: Session, v: dict) -> str:
    """One line: the model against the best n-gram on the valid songs, and what to do when it is not ahead."""
    gain = 100 * (1 - v["model_bits"] / v["ngram_bits"])
    scores = (f"{v['model_bits']:.3f} bits/event on the {v['songs']:,} valid songs against {v['ngram_bits']:.3f} for "
              f"the best n-gram ({v['best_ngram']}, fitted on the same train split)")
    if gain > 0:
        return f"ahead of the n-gram: {scores}, {gain:.1f} % fewer bits"
    if s.state["stopped"].startswith(TIME_LIMIT_STOP):
        advice = "finish the step budget (--resume --set train.time_limit=0)"
    elif s.state["stopped"]:
        advice = "it stopped improving early: try a smaller model (model.hidden, model.layers) or more model.dropout"
    else:
        advice = (f"train longer (--resume --set train.steps={2 * s.cfg.steps}), or try a smaller model "
                  "(model.hidden, model.layers) if the corpus is small")
    return f"NOT ahead of the n-gram: {scores}; {advice}"


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    records = read_jsonl(path)  # a last line cut short by a kill is left out
    if not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in records):
        raise NotelmError(f"{printable(path)}: holds lines that are not metrics records (an object with a step); "
                          "repair or remove it to resume")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= step))
