"""Training: crops, objectives, configs, checkpoints, resume after kill -9, fine-tuning, torchrun."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from notelm.checkpoint import load_model, load_tensors
from notelm.config import load_config
from notelm.copyguard import CopyGuard
from notelm.data import CropSampler, window_splits
from notelm.encoding import load_or_encode
from notelm.io import NotelmError, read_json, write_json
from notelm.models import trainable_families
from notelm.train import lr_at, resume_config, train

from conftest import melody_corpus, quiet

FROZEN = ["train.steps=1", "train.lr=0.0", "train.min_lr=0.0", "train.warmup=1"]  # one step that changes nothing
TINY = ["model.hidden=32", "model.embed_dim=8", "train.batch_size=8", "train.context=16", "train.eval_every=10",
        "train.eval_crops=16", "train.log_every=5", "train.threads=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 melodies of 24 eighth notes in two collections."""
    def melody(rng):
        return [(float(t), 0.5, int(60 + rng.integers(-5, 8)), 80) for t in range(24)]

    return melody_corpus(tmp_path_factory, 40, 0, melody, collections=("jigs", "folk"), prefix="t")


def weights(run_dir, which="checkpoint"):
    return load_tensors(run_dir / which / "model.safetensors")


def test_crop_sampler_cuts_windows_inside_songs_and_pads_short_ones():
    stream = np.array([1, 5, 6, 7, 2, 1, 8, 2], np.uint8)  # two songs: [1 5 6 7 2] and [1 8 2]
    offsets = np.array([0, 5, 8])
    sampler = CropSampler([stream], offsets, np.array([0, 1]), length=4)
    assert sampler.n_windows == 3  # song 0 has 5 - 4 + 1 = 2 starts; song 1 is shorter than a crop: 1 padded crop
    tokens, songs = sampler.at(np.array([0, 1, 2]))
    assert tokens[..., 0].tolist() == [[1, 5, 6, 7], [5, 6, 7, 2], [1, 8, 2, 0]]
    assert songs.tolist() == [0, 0, 1]
    splits = window_splits(1000)
    assert sum(len(v) for v in splits.values()) == 1000 and len(splits["train"]) > 700
    assert not set(splits["train"]) & set(splits["test"])


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_its_share_scaled_up_and_draws_again_after_a_restored_generator(bit_generator, dtype):
    from notelm.models.neural import Dropout

    drop = Dropout(0.25)  # threshold 64 of 256: keeps 3/4, scaled by 4/3
    drop.rng = np.random.Generator(bit_generator(7))
    state = drop.rng.bit_generator.state
    x = torch.ones(64, 128, 96, dtype=dtype)
    out = drop(x).float()
    assert set(out.unique().tolist()) == {0.0, float(torch.tensor(4 / 3, dtype=dtype))}
    assert abs((out > 0).float().mean().item() - 0.75) < 0.005  # 786,432 draws: 0.005 is ~10 sd
    drop.rng.bit_generator.state = state  # a resumed run restores the generator: the same mask again
    assert torch.equal(drop(x).float(), out)
    assert not torch.equal(drop(x).float(), out)  # and the next draw is a new one
    locked = Dropout(0.25, locked=True)  # one mask per sequence and channel, shared by every step
    kept = locked(x).float() > 0
    assert torch.equal(kept, kept[:, :1].expand_as(kept)) and 0.7 < kept.float().mean() < 0.8
    drop.eval()
    assert drop(x) is x


def test_schedule_warms_up_then_decays():
    cfg = load_config(None, ["train.lr=0.01", "train.min_lr=0.001", "train.warmup=10", "train.steps=110"]).train
    assert lr_at(0, cfg) == pytest.approx(0.001)
    assert lr_at(9, cfg) == pytest.approx(0.01)
    assert lr_at(60, cfg) == pytest.approx(0.0055)
    assert lr_at(110, cfg) == pytest.approx(0.001)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(NotelmError, match="unknown train setting.*lerning_rate"):
        load_config("seed", ["train.lerning_rate=0.1"])
    with pytest.raises(NotelmError, match=r"train.steps = 'many': expected an integer"):
        load_config("seed", ["train.steps=many"])
    with pytest.raises(NotelmError, match="no such file or preset"):
        load_config("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nfamily = 'gru'\n")
    with pytest.raises(NotelmError, match="model.family = 'gru': expected one of " +
                       ", ".join(repr(f) for f in trainable_families())):
        load_config(str(bad))
    with pytest.raises(NotelmError, match=r"unknown model setting\(s\): n_heads"):  # a transformer setting
        load_config("lstm", ["model.n_heads=2"])
    for preset in ("seed", "seed_fullseq", "lstm", "transformer", "default"):
        load_config(preset)


@pytest.mark.parametrize("preset,extra", [
    ("seed", []),
    ("seed_fullseq", ["model.heads='ordered'"]),
    ("lstm", ["data.encoding.velocity_bins=0"]),
    ("transformer", ["model.layers=1", "model.n_heads=2", "model.context=16"]),
])
def test_every_preset_trains_and_writes_a_loadable_model(corpus, tmp_path, preset, extra):
    run = load_config(preset, TINY + ["train.steps=30", "train.time_limit=0.0"] + extra)
    summary = train(corpus, run, tmp_path / "run", progress=False, log=quiet)
    assert summary["steps"] == 30
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [r["loss"] for r in records if r["split"] == "valid"]
    assert len(valid) == 3 and valid[-1] < valid[0]  # it learns something
    model = load_model(tmp_path / "run")
    assert model.family == run.model.family and model.vocab.representation == run.representation
    assert model.vocab.conditions == ["folk", "jigs"]
    # the copy index of its training songs, written when the run began: generate keeps clear of long copies
    encoded = load_or_encode(corpus, run.representation, run.encoding, condition=run.data.condition)
    expected = CopyGuard.build([encoded.song(int(i)) for i in encoded.ids("train")], model.vocab)
    assert model.copy_guard.keys.tolist() == expected.keys.tolist() and len(expected.keys) > 0


def test_resume_after_kill_continues_to_the_same_result(corpus, tmp_path):
    overrides = TINY + ["train.steps=60", "model.dropout=0.2", "train.transpose=true"]
    train(corpus, load_config("seed_fullseq", overrides), tmp_path / "straight", progress=False, log=quiet)

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "notelm", "train", str(corpus), "--config", "seed_fullseq", "-o", str(run_dir), "-q"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill -9 once a checkpoint exists, mid-run
        cfg = run_dir / "checkpoint" / "config.json"
        if cfg.exists() and read_json(cfg)["train_state"]["step"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_json(run_dir / "checkpoint" / "config.json")["train_state"]["step"]
    assert 20 <= step < 60, "the run must be killed before it finished"

    refused = subprocess.run(cmd + ["--resume", "--set", "train.lr=0.1"], capture_output=True, text=True)
    assert refused.returncode == 1 and "can only raise train.steps or train.time_limit" in refused.stderr
    assert "train.lr 0.003 -> 0.1" in refused.stderr and refused.stderr.count("\n") == 1
    # what a writer killed mid-write leaves (host-pid of a process that is gone); the kill above may leave one too
    (run_dir / f".best.{socket.gethostname()}-999999999.x.tmp").mkdir()
    resume = [sys.executable, "-m", "notelm", "train", str(corpus), "-o", str(run_dir), "--resume", "-q"]
    out = subprocess.run(resume, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not list(run_dir.glob(".*.tmp")), "the resumed run removed what the killed one was writing"
    a, b = weights(tmp_path / "straight"), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x)["step"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert steps == straight  # the log has no duplicated or missing lines


def test_half_written_checkpoint_is_never_loaded(corpus, tmp_path):
    train(corpus, load_config("seed", TINY + ["train.steps=10"]), tmp_path / "run", progress=False, log=quiet)
    # a crash during the atomic write leaves only a hidden temp dir; the real checkpoint stays whole
    (tmp_path / "run" / ".checkpoint.x.tmp").mkdir()
    (tmp_path / "run" / ".checkpoint.x.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    assert load_model(tmp_path / "run").family == "lstm"
    (tmp_path / "run" / "best" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(NotelmError, match="not a readable safetensors file"):
        load_model(tmp_path / "run")


def test_finetune_starts_from_the_model_and_checks_the_vocabulary(corpus, tmp_path):
    base = tmp_path / "base"
    train(corpus, load_config("seed_fullseq", TINY + ["train.steps=20"]), base, progress=False, log=quiet)
    tuned = tmp_path / "tuned"
    train(corpus, load_config(None, TINY + FROZEN), tuned,
          init=str(base), progress=False, log=quiet)
    a, b = weights(base, "best"), weights(tuned)
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: fine-tuning starts exactly from the base weights
    assert read_json(tuned / "run.json")["data"]["representation"] == "seed"

    config = read_json(base / "best" / "config.json")
    config["vocab"]["streams"][1]["tokens"][-1] = "breve"  # a model whose durations this encoder cannot produce
    write_json(base / "best" / "config.json", config)
    with pytest.raises(NotelmError, match="cannot be read by the model: stream 'duration'.*not known to the model: "
                                          "whole"):
        train(corpus, load_config(None, TINY + ["train.steps=1"]), tmp_path / "t2", init=str(base), progress=False,
              log=quiet)


def test_finetune_from_the_shipped_default_model(corpus, tmp_path):
    from notelm.generate import default_model_path

    tuned = tmp_path / "tuned"
    train(corpus, load_config(None, TINY + FROZEN), tuned,
          init="default", progress=False, log=quiet)
    from notelm.models.lstm import LSTMNet

    # float16 in the package, and possibly written before the LSTM's layers were separate modules
    shipped = LSTMNet.upgrade_keys(load_tensors(default_model_path() / "model.safetensors"))
    tuned_weights = weights(tuned)
    assert shipped.keys() == tuned_weights.keys()
    assert all(torch.equal(shipped[k].float(), tuned_weights[k]) for k in shipped)
    assert read_json(tuned / "run.json")["data"]["representation"] == "events"


def test_refuses_to_overwrite_a_run_or_resume_nothing(corpus, tmp_path):
    train(corpus, load_config("seed", TINY + ["train.steps=5"]), tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(NotelmError, match="already there"):
        train(corpus, load_config("seed", TINY + ["train.steps=5"]), tmp_path / "run", progress=False, log=quiet)
    with pytest.raises(NotelmError, match="nothing to resume"):
        train(corpus, load_config("seed"), tmp_path / "empty", resume=True, progress=False, log=quiet)


def test_resume_raises_steps_or_time_limit_and_refuses_other_changes(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(corpus, load_config("seed", TINY + ["train.steps=10"]), run_dir, progress=False, log=quiet)
    said = []
    assert train(corpus, resume_config(run_dir), run_dir, resume=True, progress=False, log=said.append)["steps"] == 10
    assert "nothing left to train (all 10 steps done)" in said[0]
    with pytest.raises(NotelmError, match="can raise train.steps, not lower it"):
        train(corpus, resume_config(run_dir, None, ["train.steps=5"]), run_dir, resume=True, progress=False, log=quiet)
    with pytest.raises(NotelmError, match="cannot change model.hidden 32 -> 64"):
        train(corpus, resume_config(run_dir, None, ["model.hidden=64"]), run_dir, resume=True, progress=False,
              log=quiet)
    summary = train(corpus, resume_config(run_dir, None, ["train.steps=20"]), run_dir, resume=True, progress=False,
                    log=quiet)
    assert summary["steps"] == 20 and read_json(run_dir / "run.json")["train"]["steps"] == 20
    # a run cut short by its time limit goes on once the limit is raised (0: none)
    cut = tmp_path / "cut"
    settings = TINY + ["train.steps=30", "train.patience=100", "train.time_limit=0.001"]
    first = train(corpus, load_config("seed", settings), cut, progress=False, log=quiet)
    assert first["stopped"].startswith("time limit") and first["steps"] < 30
    again = train(corpus, resume_config(cut, "seed", settings + ["train.time_limit=0"]), cut, resume=True,
                  progress=False, log=quiet)
    assert again["steps"] == 30 and again["stopped"] == "completed"


def test_a_run_whose_valid_loss_turns_nan_stops_and_keeps_its_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    import notelm.train as training

    real = training._evaluate
    calls = []

    def diverging(s):  # the second evaluation (step 20) finds the weights ruined
        calls.append(s.state["step"])
        return real(s) if len(calls) == 1 else {**real(s), "loss": float("nan")}

    monkeypatch.setattr(training, "_evaluate", diverging)
    said = []
    summary = train(corpus, load_config("seed", TINY + ["train.steps=40", "train.patience=100"]), tmp_path / "run",
                    progress=False, log=said.append)
    assert calls == [10, 20] and summary["steps"] == 20
    assert summary["stopped"].startswith("diverged: the valid loss is nan at step 20; lower train.lr")
    assert "20 of 40 steps (diverged" in said[0]
    saved = read_json(tmp_path / "run" / "checkpoint" / "config.json")
    assert saved["train_state"]["step"] == 10 and math.isfinite(summary["best_valid_loss"])


def test_ctrl_c_prints_a_command_that_resumes(corpus, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "notelm", "train", str(corpus), "--config", "seed", "-o", str(run_dir), "-q"]
    # 2,000 tiny steps take ~8 s: time enough for the signal to land mid-run even when this process is slow to
    # see the first checkpoint (with 400, a CI run once sent it only after the last step)
    for o in TINY + ["train.steps=2000", "train.patience=1000"]:
        cmd += ["--set", o]
    # a shell that starts this test in the background (cmd &) hands its children SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: give the child the default action back, as a terminal would
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint" / "config.json").exists():
        time.sleep(0.02)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert proc.returncode == 130, (still_running, err, steps[-3:], (run_dir / "summary.json").exists())
    printed = err.strip().splitlines()[-1].split("continue from the last checkpoint with: ")[1]
    args = shlex.split(printed)
    assert args == ["notelm", "train", str(corpus), "-o", str(run_dir), "--resume"]
    again = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert read_json(run_dir / "summary.json")["steps"] == 2000


@pytest.mark.slow
def test_torchrun_two_processes_gloo(corpus, tmp_path):
    run_dir = tmp_path / "ddp"
    port = str(29500 + os.getpid() % 1000)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", port,
           "-m", "notelm", "train", str(corpus), "--config", "seed_fullseq", "-o", str(run_dir), "-q"]
    for o in TINY + ["train.steps=20"]:
        cmd += ["--set", o]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert read_json(run_dir / "run.json")["world_size"] == 2
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 20
    # both ranks draw their own crops: 2 x batch x context targets per step
    assert read_json(run_dir / "checkpoint" / "config.json")["train_state"]["events"] == 20 * 2 * 8 * 16
    assert load_model(run_dir).family == "lstm"


def test_label_smoothing_spreads_a_share_of_the_loss_over_the_values_a_head_can_give():
    from notelm.train import batch_loss

    logits = torch.log(torch.tensor([[[0.0, 0.5, 0.25, 0.25], [0.0, 0.1, 0.6, 0.3]]]))  # value 0 (PAD): impossible

    def net(x, cond, targets=None):
        return [logits], None

    tokens = torch.tensor([[[1], [1], [3]]])  # targets 1 then 3 (the first token is only read)
    plain, stats = batch_loss(net, tokens, torch.zeros(1, dtype=torch.long), "full")
    nll = -(math.log(0.5) + math.log(0.3)) / 2
    assert float(plain) == pytest.approx(nll, rel=1e-6)
    smoothed, smoothed_stats = batch_loss(net, tokens, torch.zeros(1, dtype=torch.long), "full", smoothing=0.1)
    spread = -(math.log(0.5) + 2 * math.log(0.25) + math.log(0.1) + math.log(0.6) + math.log(0.3)) / 3 / 2
    assert float(smoothed) == pytest.approx(0.9 * nll + 0.1 * spread, rel=1e-6)  # finite and exact
    assert float(smoothed_stats[0][0]) == pytest.approx(float(stats[0][0]))  # what is reported stays the NLL
