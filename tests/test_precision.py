"""Precision (fp32 / bf16 autocast / auto), checkpoints that do not depend on it, and what a run says about its
budget and about the n-gram at the end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from notelm import precision
from notelm.checkpoint import load_model, load_tensors
from notelm.config import SamplingConfig, load_config
from notelm.evaluate import EvalOptions, evaluate
from notelm.generate import sample
from notelm.io import NotelmError
from notelm.train import resume_config, train

from conftest import melody_corpus, quiet

TINY = ["model.hidden=32", "model.embed_dim=8", "train.batch_size=8", "train.context=16", "train.eval_every=10",
        "train.eval_crops=16", "train.log_every=5", "train.threads=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 melodies of 24 eighth notes (a scale walk with random steps) in two collections."""
    def melody(rng):
        pitch = 60 + np.cumsum(rng.choice([-2, -1, 1, 2], 24)).clip(-12, 12)
        return [(float(t), 0.5, int(p), 80) for t, p in enumerate(pitch)]

    return melody_corpus(tmp_path_factory, 40, 0, melody, collections=("jigs", "folk"), prefix="p")


def test_precision_settings_are_validated():
    assert load_config("lstm").train.precision == "auto"
    assert load_config("lstm", ["train.precision=bf16"]).train.precision == "bf16"
    with pytest.raises(NotelmError, match=r"train.precision = 'fp16'.*'auto', 'fp32', 'bf16'"):
        load_config("lstm", ["train.precision=fp16"])
    with pytest.raises(NotelmError, match=r"--precision = 'half'"):
        SamplingConfig(precision="half").validate()
    with pytest.raises(ValueError, match="precision 'fp16'"):
        precision.resolve("fp16", "cpu")


@pytest.mark.parametrize("flags,train_choice,generate_choice", [
    ({"amx_bf16", "avx512_bf16"}, "bf16", "fp32"),  # AMX: measured ~2x faster training
    ({"avx512_bf16"}, "fp32", "fp32"),  # bf16 vector instructions without AMX: not measured, so fp32
    (set(), "fp32", "fp32"),
])
def test_auto_picks_bf16_only_where_it_was_measured_to_help(monkeypatch, flags, train_choice, generate_choice):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve("auto", "cpu", "train") == train_choice
    assert precision.resolve("auto", "cpu", "generate") == generate_choice
    assert precision.resolve("fp32", "cpu", "train") == "fp32"
    assert precision.resolve("bf16", "cpu", "generate") == "bf16"  # asked for explicitly: always


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve("auto", "cuda", "train") == "bf16"
    assert precision.resolve("auto", "cuda", "generate") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve("auto", "cuda", "train") == "fp32"


def test_autocast_runs_matrix_products_in_bf16_and_leaves_fp32_alone():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with precision.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with precision.autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32


def test_bf16_training_attention_matches_fp32_flash_attention_and_its_gradients():
    """bf16 training attends with explicit products (transformer.attention); outputs and gradients stay
    within bf16 rounding of fp32 flash attention, and the future stays masked."""
    from notelm.models.transformer import attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 16, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 4, 40, 16)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    reference.backward(grad)
    expected = [t.grad.clone() for t in (q, k, v)]
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    with precision.autocast("cpu", "bf16"):
        out = attention(*low, is_causal=True)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.03
    out.backward(grad.bfloat16())
    for got, want in zip(low, expected):
        assert (got.grad.float() - want).abs().max() < 0.05 * want.abs().max()
    changed = v.detach().bfloat16().clone()
    changed[:, :, 20:] += 5.0  # later values must not reach earlier positions
    with torch.no_grad(), precision.autocast("cpu", "bf16"):
        before = attention(*[t.detach() for t in low[:2]], low[2].detach(), is_causal=True)
    with torch.enable_grad(), precision.autocast("cpu", "bf16"):
        after = attention(low[0].detach(), low[1].detach(), changed, is_causal=True)
    assert torch.equal(after[:, :, :20].float(), out[:, :, :20].detach().float())
    assert (before.float() - reference.detach()).abs().max() < 0.03  # the no-grad path: bf16 flash


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_checkpoints_do_not_depend_on_precision(corpus, tmp_path, family):
    extra = ["model.n_heads=2", "model.context=16"] if family == "transformer" else []
    settings = TINY + extra + ["train.steps=10", "train.precision=bf16"]
    run_dir = tmp_path / "bf16"
    summary = train(corpus, load_config(family, settings), run_dir, progress=False, log=quiet)
    assert summary["precision"] == "bf16"
    tensors = load_tensors(run_dir / "checkpoint" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}  # fp32 master weights, whatever the arithmetic

    model = load_model(run_dir)  # evaluation runs in fp32 by default
    assert model.precision == "fp32"
    song = {name: np.asarray(corpus_song(run_dir, name)) for name in model.vocab.names}
    fp32 = model.predict(song)
    model.use_precision("bf16")
    bf16 = model.predict(song)
    for name in model.vocab.names:  # the same model in the other arithmetic: close, not equal
        assert np.abs(np.exp(fp32[name]) - np.exp(bf16[name])).max() < 0.05
        assert not np.array_equal(fp32[name], bf16[name])

    # a bf16 run resumes in fp32 (and the other way round): precision may change, the weights carry on
    more = train(corpus, resume_config(run_dir, None, ["train.steps=20", "train.precision=fp32"]), run_dir,
                 resume=True, progress=False, log=quiet)
    assert more["steps"] == 20 and more["precision"] == "fp32"
    back = train(corpus, resume_config(run_dir, None, ["train.steps=30", "train.precision=bf16"]), run_dir,
                 resume=True, progress=False, log=quiet)
    assert back["steps"] == 30 and back["precision"] == "bf16"

    pieces = sample(model, n=2, length=12, cfg=SamplingConfig(precision="bf16", seed=1))
    assert model.precision == "bf16" and all(len(p.streams["pitch"]) == 13 for p in pieces)


def corpus_song(run_dir, name):
    """The first valid song of the run's corpus, stream ``name``."""
    from notelm.encoding import load_or_encode

    run = json.loads((run_dir / "run.json").read_text())
    encoded = load_or_encode(run["corpus"], run["data"]["representation"], run["data"]["encoding"])
    song = int(encoded.ids("valid")[0])
    return encoded.streams[name][encoded.offsets[song]:encoded.offsets[song + 1]]


def test_bf16_learns_like_fp32(corpus, tmp_path):
    """A few hundred steps of a tiny LSTM: the bf16 loss curve follows the fp32 one within noise."""
    curves = {}
    for p in ("fp32", "bf16"):
        settings = TINY + ["train.steps=300", "train.eval_every=100", "train.lr=0.01", f"train.precision={p}",
                           "train.compare_ngram=false", "model.dropout=0.0"]
        train(corpus, load_config("lstm", settings), tmp_path / p, progress=False, log=quiet)
        records = [json.loads(x) for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
        curves[p] = np.array([r["loss"] for r in records if r["split"] == "train"])
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 60
    assert fp32[-10:].mean() < 0.6 * fp32[:3].mean()  # it learned
    # step by step the two runs differ only by rounding; averaged over 50 steps the curves agree within 3 %
    assert abs(bf16[-10:].mean() - fp32[-10:].mean()) < 0.03 * fp32[-10:].mean()
    assert np.abs(bf16[10:] - fp32[10:]).mean() < 0.03 * fp32[10:].mean()
    assert not np.array_equal(fp32, bf16)  # really two arithmetics


def test_a_run_cut_by_its_time_cap_says_so_with_how_far_it_got(corpus, tmp_path):
    said = []
    settings = TINY + ["train.steps=40", "train.patience=100", "train.time_limit=0.001"]
    summary = train(corpus, load_config("lstm", settings), tmp_path / "cut", progress=False, log=said.append)
    assert summary["stopped"].startswith("time limit") and summary["steps"] < 40 and summary["steps_budget"] == 40
    steps = summary["steps"]
    assert said[0].startswith("trained lstm (") and f"for only {steps} of its 40 steps in " in said[0]
    share = f"{100 * steps / 40:.0f} %"
    assert said[1] == (f"CUT SHORT by the time limit of 0.001 s after {steps} of its 40 steps ({share} of the budget): "
                       "the model is undertrained; finish it with the same command and --resume --set "
                       "train.time_limit=0")
    verdict = said[-1]  # a model of a step or two is behind the n-gram, and the advice says why
    assert verdict.startswith("NOT ahead of the n-gram: ") and "valid songs against" in verdict
    assert verdict.endswith("finish the step budget (--resume --set train.time_limit=0)")
    assert summary["valid_vs_ngram"]["model_bits"] > summary["valid_vs_ngram"]["ngram_bits"]


def test_a_finished_run_compares_itself_with_the_ngram_on_the_valid_songs(corpus, tmp_path):
    said = []
    settings = TINY + ["train.steps=200", "train.lr=0.01", "train.eval_every=50", "model.dropout=0.0"]
    summary = train(corpus, load_config("lstm", settings), tmp_path / "run", progress=False, log=said.append)
    assert "for all 200 steps in" in said[-2]
    v = summary["valid_vs_ngram"]
    report = evaluate(tmp_path / "run", EvalOptions(split="valid"), progress=False, log=quiet)
    assert v["best_ngram"] == report["baselines"]["best_ngram"] and v["songs"] == report["songs"]
    assert v["ngram_bits"] == pytest.approx(report["results"][v["best_ngram"]]["total"]["bits"])
    assert v["model_bits"] == pytest.approx(report["results"]["model"]["total"]["bits"])  # what evaluate says
    gain = 100 * (1 - v["model_bits"] / v["ngram_bits"])
    if gain > 0:
        assert said[-1] == (f"ahead of the n-gram: {v['model_bits']:.3f} bits/event on the {v['songs']} valid songs "
                            f"against {v['ngram_bits']:.3f} for the best n-gram ({v['best_ngram']}, fitted on the "
                            f"same train split), {gain:.1f} % fewer bits")
    else:
        assert said[-1].startswith("NOT ahead") and "train longer (--resume --set train.steps=400)" in said[-1]
    off = train(corpus, load_config("lstm", TINY + ["train.steps=5", "train.compare_ngram=false"]), tmp_path / "off",
                progress=False, log=quiet)
    assert "valid_vs_ngram" not in off


def test_the_progress_bar_eta_respects_the_time_cap():
    import io
    import time
    from types import SimpleNamespace

    from notelm.train import _progress_bar

    def eta(time_limit, seconds_in):
        s = SimpleNamespace(cfg=SimpleNamespace(steps=10**9, time_limit=time_limit), state={"step": 0},
                            started=time.perf_counter() - seconds_in)
        out = io.StringIO()
        bar = _progress_bar(s, disable=False, file=out)
        time.sleep(0.01)
        bar.update(10)
        shown = bar.format_dict["eta"]
        bar.close()
        return shown, out.getvalue()

    shown, drawn = eta(60.0, 30.0)  # a billion steps left, but the cap ends the run in 30 s
    assert shown in ("00:30 cap", "00:29 cap") and "cap" in drawn
    shown, _ = eta(0.0, 30.0)  # no cap: the steps left at the current rate (days)
    assert "cap" not in shown and shown.count(":") >= 2
