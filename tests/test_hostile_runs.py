"""Hostile input, second round: checkpoints, run folders and settings.

Damaged or forged weights, run files that are not what notelm wrote, and settings that would ask
for more memory than any machine has must each end in one line naming the file or the setting,
never a traceback, a hang or nonsense output.  Everything here is made by the tests themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from notelm import notes as nt
from notelm.cli import main
from notelm.io import NotelmError

from conftest import deadline


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def one_line_error(rc: int, err: str, message: str) -> bool:
    return rc == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `notelm train` leaves it, without training: best/ (a small LSTM), run.json naming
    a corpus that does not exist (every check here comes before the corpus is read) and metrics.jsonl."""
    from notelm.checkpoint import save_model
    from notelm.config import load_config
    from notelm.encoding import get_representation
    from notelm.models import build_model
    from notelm.models.lstm import LSTMConfig

    run = tmp_path / "run"
    vocab = get_representation("seed").vocab(["folk"])
    save_model(build_model(vocab, LSTMConfig(hidden=16, embed_dim=4, cond_dim=4)), run / "best")
    config = load_config("seed")
    (run / "run.json").write_text(json.dumps({"corpus": str(tmp_path / "corpus"), "init": None, **config.to_json()}))
    lines = [{"step": 5, "split": "train", "loss": 2.0, "loss_pitch": 2.0, "acc_pitch": 0.3},
             {"step": 10, "split": "valid", "loss": 1.5, "loss_pitch": 1.5, "acc_pitch": 0.4}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


# --------------------------------------------------------------------------- damaged weights

def _relabel(file: Path, dtype) -> None:
    """The same bytes under another dtype in the header: float32 weights read as int32."""
    from safetensors.numpy import load_file, save_file

    save_file({k: v.view(dtype) for k, v in load_file(str(file)).items()}, str(file))


def _poke(file: Path, value: float) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(file))
    next(iter(weights.values())).view(-1)[3] = value
    save_file(weights, str(file))


def _cut_a_tensor_short(file: Path) -> None:
    """A header whose byte range for the first tensor is shorter than its dtype and shape need."""
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] * 2, *header[name]["shape"][1:]]
    text = json.dumps(header).encode()
    file.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size:])


@pytest.mark.parametrize("damage, message", [
    (lambda f: _relabel(f, np.int32), "tensors of the wrong type for the lstm family (cond_embed.weight: I32"),
    (lambda f: _relabel(f, np.uint32), "tensors of the wrong type for the lstm family"),
    (lambda f: _poke(f, float("nan")), "cond_embed.weight holds 1 NaN or infinite values; the weights are damaged"),
    (lambda f: _poke(f, float("-inf")), "cond_embed.weight holds 1 NaN or infinite values"),
    (_cut_a_tensor_short, "not a readable safetensors file"),
], ids=["f32_as_i32", "f32_as_u32", "nan", "inf", "byte_size"])
def test_damaged_weights_are_refused_naming_the_file(run_dir, tmp_path, damage, message):
    """Before: int32-relabelled weights loaded as nonsense, NaN weights made `generate` write pieces of 0
    notes and `evaluate` end in a TypeError."""
    from notelm.checkpoint import load_model

    weights = run_dir / "best" / "model.safetensors"
    damage(weights)
    with pytest.raises(NotelmError, match="model.safetensors: "):
        load_model(run_dir)
    for args in (("evaluate", run_dir, "-q"), ("generate", "--model", run_dir, "-o", tmp_path / "out", "--num", "1",
                                               "--length", "8")):
        rc, _, err = run_cli(*args)
        assert one_line_error(rc, err, f"{weights}: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_weights_of_another_float_width_still_load(run_dir):
    """The shipped model is float16 on disk: float widths are widened, only other kinds are refused."""
    from safetensors.torch import load_file, save_file

    from notelm.checkpoint import load_model

    file = run_dir / "best" / "model.safetensors"
    before = {k: v.clone() for k, v in load_file(str(file)).items()}
    for dtype in ("float16", "bfloat16", "float64"):
        save_file({k: v.to(getattr(__import__("torch"), dtype)) for k, v in before.items()}, str(file))
        model = load_model(run_dir)
        assert model.tensors()["cond_embed.weight"].dtype == before["cond_embed.weight"].dtype


def test_damaged_count_tables_are_refused(tmp_path):
    """n-gram and dummy models hold counts and keys: floats relabelled as integers, or negative values, are
    refused (they would index outside the tables)."""
    from safetensors.numpy import load_file, save_file

    from notelm.checkpoint import load_model, save_model
    from notelm.encoding import get_representation
    from notelm.models.ngram import NGramModel

    rep = get_representation("events")
    streams = rep.encode_song(nt.make_notes(np.arange(32) * 0.5, 0.5, 60 + np.arange(32) % 12))
    save_model(NGramModel(rep.vocab(), order=2).fit(streams, np.array([0, len(streams["pitch"])])), tmp_path / "ngram")
    file = tmp_path / "ngram" / "model.safetensors"
    tables = load_file(str(file))
    save_file({**tables, "pitch/ngram_counts": tables["pitch/ngram_counts"].astype(np.float64)}, str(file))
    with pytest.raises(NotelmError, match="tensors of the wrong type for the ngram family .*pitch/ngram_counts: F64"):
        load_model(tmp_path / "ngram")
    save_file({**tables, "pitch/ngram_counts": -tables["pitch/ngram_counts"]}, str(file))
    with pytest.raises(NotelmError, match="model.safetensors: pitch/ngram_counts holds negative values"):
        load_model(tmp_path / "ngram")
    save_file(tables, str(file))
    assert load_model(tmp_path / "ngram").family == "ngram"


# --------------------------------------------------------------------------- broken run files

def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("where, damage, message", [
    ("best/config.json", lambda f: f.write_bytes(f.read_bytes().replace(b'"lstm"', b'"lstm\xe9"', 1)),
     "config.json: not readable JSON (not UTF-8 at byte"),
    ("best/config.json", lambda f: f.write_text("[" * 100_000 + "]" * 100_000),
     "config.json: not readable JSON (nested too deep)"),
    ("best/config.json", _fifo, "config.json: not a regular file (a FIFO)"),
    ("run.json", lambda f: f.write_text("{broken"), "run.json: not readable JSON (Expecting property name"),
    ("run.json", lambda f: f.write_text("[1, 2]"), "run.json: expected a JSON object"),
    ("run.json", lambda f: f.write_text('{"corpus": 5}'), "run.json: 'corpus' must be a path (a string), not 5"),
    ("run.json", lambda f: f.write_text('{"corpus": "c", "train": {"cond_dropout": "x"}}'),
     "run.json: train.cond_dropout = 'x': expected a number"),
    ("run.json", lambda f: f.write_text('{"corpus": "c", "train": {"context": NaN}}'),
     "run.json: train.context = nan: expected an integer"),
    ("run.json", lambda f: f.write_text('{"a": ' * 100_000), "run.json: not readable JSON (nested too deep)"),
    ("run.json", _fifo, "run.json: not a regular file (a FIFO)"),
    ("best/config.json", lambda f: f.write_text('{"a": "' + "x" * (65 << 20) + '"}'),
     "config.json: file is 65.0 MB, over the limit of 64.0 MB"),
], ids=["config_not_utf8", "config_deep", "config_fifo", "run_invalid", "run_list", "run_corpus", "run_train_type",
        "run_train_nan", "run_deep", "run_fifo", "config_huge"])
def test_broken_model_and_run_files_are_one_line_errors(run_dir, where, damage, message):
    """Before: UnicodeDecodeError, RecursionError, JSONDecodeError, AttributeError and TypeError tracebacks,
    and a FIFO config.json blocked `evaluate` and `generate` forever."""
    damage(run_dir / where)
    with deadline(60):
        rc, _, err = run_cli("evaluate", run_dir, "-q")
    assert one_line_error(rc, err, message), err
    assert str(run_dir) in err


@pytest.mark.parametrize("text, message", [
    ('{"step": 1,\n', "metrics.jsonl line 1: not readable JSON"),
    ('{"step": 1, "split": "train"}\n[1]\n', "metrics.jsonl: record 2 is not a metrics line"),
    ('{"step": "one", "split": "train"}\n', "metrics.jsonl: record 1 is not a metrics line"),
    ('{"step": 1, "split": "train", "acc_pitch": "high"}\n', "metrics.jsonl: record 1 is not a metrics line"),
    (b'{"step": 1, "split": "tr\xe9in"}\n', "metrics.jsonl: not readable JSON (not UTF-8 at byte 24)"),
    ("", "metrics.jsonl: no learning curve yet"),
], ids=["invalid", "not_object", "step_type", "value_type", "not_utf8", "empty"])
def test_a_broken_metrics_log_is_a_one_line_error(run_dir, text, message):
    """Before: `plot` ended in a JSONDecodeError or KeyError traceback."""
    log = run_dir / "metrics.jsonl"
    log.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, _, err = run_cli("plot", run_dir)
    assert one_line_error(rc, err, message), err


def test_a_metrics_log_being_written_or_cut_by_a_kill_is_read(run_dir):
    """A last line without its newline is a write in progress (`plot` during training) or a kill in the
    middle of one: it is left out, and `--resume` drops it.  Records lacking a stream are gaps."""
    from notelm.train import _truncate_log

    log = run_dir / "metrics.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 15, "split": "train", "loss_pi')
    rc, out, err = run_cli("plot", run_dir)
    assert rc == 0 and "learning_curves.png" in out, err
    _truncate_log(log, 10)
    assert log.read_text() == whole
    log.write_text(whole + '{"step": 15, "split": "valid"}\n')
    assert run_cli("plot", run_dir)[0] == 0
    log.write_text('{"step": 1,\n' + whole)
    with pytest.raises(NotelmError, match="metrics.jsonl line 1: not readable JSON"):
        _truncate_log(log, 10)


def test_a_broken_evaluation_is_a_one_line_error_in_compare(tmp_path):
    report = tmp_path / "a" / "eval" / "evaluation.json"
    report.parent.mkdir(parents=True)
    for text, message in (("{", "evaluation.json: not readable JSON"),
                          ("[]", "evaluation.json: not a notelm evaluation (no list of streams)"),
                          ('{"streams": ["pitch"], "results": 3}', "evaluation.json: not a notelm evaluation")):
        report.write_text(text)
        rc, _, err = run_cli("compare", tmp_path / "a", "-o", tmp_path / "c.md")
        assert one_line_error(rc, err, message), err
    assert not (tmp_path / "c.md").exists()


# --------------------------------------------------------------------------- settings, bounded before allocating

@pytest.mark.parametrize("setting, message", [
    ("train.lr=nan", "train.lr = nan: expected a finite number"),
    ("train.lr=inf", "train.lr = inf: expected a finite number"),
    ("train.lr=-0.1", "train.lr must be >= 0.0 (got -0.1)"),
    ("train.cond_dropout=nan", "train.cond_dropout = nan: expected a finite number"),
    ("train.time_limit=-1", "train.time_limit must be >= 0.0 (got -1.0)"),
    ("train.time_limit=nan", "train.time_limit = nan: expected a finite number"),
    ("model.hidden=1000000", "model.hidden must be <= 16384 (got 1000000)"),
    ("model.embed_dim=100000", "model.embed_dim must be <= 4096"),
    ("model.layers=100000", "model.layers must be <= 256"),
    ("train.batch_size=100000000", "train.batch_size must be <= 65536 (got 100000000)"),
    ("train.context=100000000", "train.context must be <= 65536 (got 100000000)"),
    ("train.eval_crops=100000000", "train.eval_crops must be <= 1000000"),
    ("train.seed=-1", "train.seed must be >= 0 (got -1)"),
    ("train.seed=99999999999999999999", "train.seed must be <= 4294967295"),
    ("train.threads=100000", "train.threads must be <= 1024"),
    ("data.encoding.steps_per_quarter=1000000000", "events.steps_per_quarter must be <= 96"),
    ("data.encoding.max_shift=1000000000", "events.max_shift must be <= 4096"),
    ("data.encoding.max_duration=1000000000", "events.max_duration must be <= 16384"),
    ("data.encoding.durations_per_octave=1000000000", "events.durations_per_octave must be <= 48"),
])
def test_bad_training_settings_are_refused_before_anything_is_allocated(tmp_path, setting, message):
    """Before: NaN learning rates trained to NaN weights, hidden, batch and context sizes asked for 50-190 GB
    before failing, and encoder grids of a billion steps were killed for memory."""
    from notelm.config import load_config

    with pytest.raises(NotelmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("lstm", [setting])
    rc, _, err = run_cli("train", tmp_path / "no_corpus", "-o", tmp_path / "run", "--set", setting)
    assert one_line_error(rc, err, message), err
    assert not (tmp_path / "run").exists()


def test_settings_within_bounds_that_need_more_memory_than_the_machine_has_are_refused(tmp_path):
    from notelm.config import load_config
    from notelm.encoding import get_representation
    from notelm.train import check_memory

    vocab = get_representation("events").vocab(["a"])
    check_memory(load_config("lstm"), vocab, "cpu")  # the presets fit
    huge = load_config("lstm", ["train.batch_size=65536", "train.context=65536"])
    with pytest.raises(NotelmError, match=r"needs at least .* GB to train .* lower train.batch_size"):
        check_memory(huge, vocab, "cpu")
    crops = load_config("lstm", ["train.eval_crops=1000000", "train.context=65536", "train.batch_size=1"])
    with pytest.raises(NotelmError, match=r"needs at least .* GB to train .* 1,000,000 valid crops"):
        check_memory(crops, vocab, "cpu")
    wide = load_config("lstm", ["model.hidden=16384", "model.layers=256"])
    with pytest.raises(NotelmError, match=r"needs at least .* GB to train \(.* parameters"):
        check_memory(wide, vocab, "cpu")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_sampling_temperature_must_be_finite(value):
    from notelm.config import SamplingConfig

    with pytest.raises(NotelmError, match=f"--temperature = {float(value)}: expected a finite number"):
        SamplingConfig(temperature=float(value)).validate()


def test_config_that_is_a_folder_a_fifo_or_not_text_is_a_one_line_error(tmp_path):
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "latin1.toml").write_bytes(b"[train]\nsplit = 'caf\xe9'\n")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    for config, message in ((tmp_path, "not a regular file (a folder)"),
                            (tmp_path / "fifo.toml", "fifo.toml: not a regular file (a FIFO)"),
                            (tmp_path / "latin1.toml", "latin1.toml: not readable TOML (not UTF-8 at byte 20)"),
                            (tmp_path / "deep.toml", "deep.toml: invalid TOML")):
        with deadline(30):
            rc, _, err = run_cli("train", tmp_path / "no_corpus", "-o", tmp_path / "run", "--config", config)
        assert one_line_error(rc, err, message), err


# --------------------------------------------------------------------------- resuming a damaged checkpoint

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A corpus of 12 short melodies and a 4-step run on it (a few seconds)."""
    from notelm.config import load_config
    from notelm.train import train

    from conftest import prepare_quietly, write_midi

    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(3)
    for i in range(12):
        write_midi(root / "ab"[i % 2] / f"m{i}.mid",
                   [(0, False, [(t * 0.5, 0.5, int(60 + rng.integers(-5, 8)), 80) for t in range(16)])])
    corpus = tmp_path_factory.mktemp("corpus") / "c"
    prepare_quietly(root, corpus)
    run = tmp_path_factory.mktemp("run") / "run"
    tiny = ["model.hidden=8", "model.embed_dim=4", "train.batch_size=2", "train.context=8", "train.eval_every=4",
            "train.eval_crops=2", "train.log_every=2", "train.threads=1", "train.steps=4"]
    train(corpus, load_config("seed", tiny), run, progress=False, log=lambda *a: None)
    return corpus, run


def _edit_state(run: Path, edit) -> None:
    file = run / "checkpoint" / "config.json"
    config = json.loads(file.read_text())
    edit(config)
    file.write_text(json.dumps(config))


def _edit_optimizer(run: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    file = run / "checkpoint" / "optimizer.safetensors"
    tensors = load_file(str(file))
    name = next(k for k, v in tensors.items() if v.dim() > 1)
    tensors[name] = edit(tensors[name])
    save_file(tensors, str(file))


def _nan_at_0(t):
    t.view(-1)[0] = float("nan")
    return t


@pytest.mark.parametrize("damage, message", [
    (lambda r: _edit_state(r, lambda c: c["train_state"].update(step=-5)), "train_state.step = -5"),
    (lambda r: _edit_state(r, lambda c: c["train_state"].update(step="x")), "train_state.step = 'x'"),
    (lambda r: _edit_state(r, lambda c: c["train_state"].update(best_valid="low")), "train_state.best_valid = 'low'"),
    (lambda r: _edit_state(r, lambda c: c["train_state"].update(elapsed=float("nan"))), "train_state.elapsed = nan"),
    (lambda r: _edit_state(r, lambda c: c.update(run="x")),
     "checkpoint/config.json: the run's settings: a run config must be a table"),
    (lambda r: _edit_optimizer(r, _nan_at_0), "exp_avg: holds NaN or infinite values"),
    (lambda r: _edit_optimizer(r, lambda t: t.view(__import__("torch").int32)), "exp_avg: int32 where the optimizer"),
    (lambda r: _edit_optimizer(r, lambda t: t[:1].contiguous()), "exp_avg: shape (1, "),
    (lambda r: (os.unlink(r / "checkpoint" / "rng.safetensors"), os.mkfifo(r / "checkpoint" / "rng.safetensors")),
     "rng.safetensors: not a regular file"),
    (lambda r: (r / "metrics.jsonl").write_text('{"step": 1,\n{"step": 2}\n'),
     "metrics.jsonl line 1: not readable JSON"),
], ids=["step_negative", "step_text", "best_text", "elapsed_nan", "run_text", "optimizer_nan", "optimizer_int",
        "optimizer_shape", "rng_fifo", "metrics"])
def test_resuming_a_damaged_checkpoint_is_a_one_line_error(trained, tmp_path, damage, message):
    """Before: TypeError and RuntimeError tracebacks (some at the first step after loading), training on
    from NaN optimizer moments, and a FIFO in place of rng.safetensors blocked forever."""
    import shutil

    corpus, original = trained
    run = tmp_path / "run"
    shutil.copytree(original, run)
    damage(run)
    # a child process: safetensors opens its files in native code, where no alarm can stop a blocked open
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "notelm", "train", str(corpus), "-o", str(run), "--resume",
                           "--set", "train.steps=6", "-q"], capture_output=True, text=True, timeout=120, env=env)
    assert one_line_error(done.returncode, done.stderr, message), done.stderr


def test_resuming_after_a_kill_in_the_middle_of_a_log_line(trained, tmp_path):
    """A kill while metrics.jsonl was appended leaves half a line: --resume drops it and goes on."""
    import shutil

    corpus, original = trained
    run = tmp_path / "run"
    shutil.copytree(original, run)
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole + '{"step": 5, "split": "tra')
    rc, _, err = run_cli("train", corpus, "-o", run, "--resume", "--set", "train.steps=6", "-q")
    assert rc == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6]


@pytest.mark.parametrize("array, damage", [
    ("offsets", lambda a: np.array([0, 10**12])),
    ("pitch", lambda a: np.full_like(a, 250)),
    ("cond", lambda a: np.full_like(a, 10**6)),
    ("split", lambda a: np.full_like(a, 9)),
], ids=["offsets", "ids", "conditions", "splits"])
def test_a_damaged_encoded_cache_is_made_again(trained, tmp_path, array, damage):
    """Before: IndexError tracebacks in `evaluate` and `train` (an id, offset or condition out of range)."""
    import shutil

    from notelm.encoding import load_or_encode
    from notelm.encoding.cache import EncodedCorpus

    corpus = tmp_path / "c"
    shutil.copytree(trained[0], corpus)
    fresh = load_or_encode(corpus, "seed", {"order": "parts"})
    file = fresh.path / f"{array}.npy"
    before = np.load(file)
    np.save(file, damage(before))
    with pytest.raises(NotelmError, match="damaged encoded corpus"):
        EncodedCorpus.load(fresh.path)
    again = load_or_encode(corpus, "seed", {"order": "parts"})
    assert not again.cached and np.array_equal(np.load(file), before)
