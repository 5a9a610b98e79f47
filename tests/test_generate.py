"""Generation: incremental = recompute, seeds, prompts, conditions, sampling filters, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from notelm import notes as nt
from notelm.checkpoint import save_model
from notelm.cli import main
from notelm.config import SamplingConfig
from notelm.encoding import get_representation
from notelm.encoding.vocab import BOS
from notelm.generate import (
    OutputOptions,
    PieceOptions,
    PromptOptions,
    default_model_path,
    generate,
    prompt_from_notes,
    sample,
)
from notelm.guidance import Guided, guide
from notelm.io import NotelmError
from notelm.models import build_model
from notelm.models.lstm import LSTMConfig
from notelm.models.ngram import NGramModel
from notelm.models.transformer import TransformerConfig
from notelm.sampling import SmoothingFloor, TopK, TopP, apply_processors, build_processors, draw

from conftest import scale_tune, write_midi


def events_model(family="lstm", heads="ordered", conditions=("folk", "jigs"), relative_pitch=0):
    vocab = get_representation("events", {"velocity_bins": 4}).vocab(list(conditions))
    torch.manual_seed(0)
    small = {"heads": heads, "hidden": 32, "embed_dim": 8, "layers": 2, "relative_pitch": relative_pitch}
    cfg = TransformerConfig(n_heads=2, context=64, **small) if family == "transformer" else LSTMConfig(**small)
    return build_model(vocab, cfg)


def filtered(lp, cfg):
    """The sampling chain of ``cfg`` applied to log-probabilities (no history)."""
    return apply_processors(build_processors(cfg), lp.copy(), np.zeros((len(lp), 0), np.int64), np.zeros(0, np.int64))


def random_song(vocab, length, rng):
    streams = {s.name: np.r_[BOS, rng.integers(3, s.size, length - 2), 2] for s in vocab.streams}
    return streams


@pytest.mark.parametrize("family,heads,relative", [("lstm", "independent", 0), ("lstm", "ordered", 0),
                                                   ("transformer", "independent", 0), ("transformer", "ordered", 0),
                                                   ("lstm", "ordered", 3), ("transformer", "independent", 2)])
def test_incremental_logprobs_equal_full_recompute(family, heads, relative):
    model = events_model(family, heads, relative_pitch=relative)
    if relative:  # the interval scores start at zero: make them count
        torch.nn.init.normal_(model.net.relative.intervals.weight, std=0.5)
    song = random_song(model.vocab, 50, np.random.default_rng(1))
    full = model.predict(song, cond=2)
    state = model.begin({k: v[None, :1] for k, v in song.items()}, np.array([2]))
    names = model.vocab.names
    for t in range(1, 50):
        chosen = []
        for k, name in enumerate(names):
            lp = model.stream_logprobs(state, k, chosen)[0]
            np.testing.assert_allclose(lp, full[name][t - 1], atol=2e-5, err_msg=f"{name} at {t}")
            chosen.append(np.array([song[name][t]]))
        state = model.advance(state, {n: np.array([song[n][t]]) for n in names})


def test_transformer_past_its_context_keeps_sampling():
    model = events_model("transformer")
    pieces = sample(model, 2, 150, cfg=SamplingConfig(seed=3))  # context is 64: the cache is re-encoded twice
    assert all(len(p.streams["pitch"]) == 151 for p in pieces)


def test_same_seed_same_pieces_and_batch_of_distinct_pieces():
    model = events_model()
    a = sample(model, 3, 40, cfg=SamplingConfig(seed=7))
    b = sample(model, 3, 40, cfg=SamplingConfig(seed=7))
    c = sample(model, 3, 40, cfg=SamplingConfig(seed=8))
    assert all(np.array_equal(x.streams["pitch"], y.streams["pitch"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x.streams["pitch"], y.streams["pitch"]) for x, y in zip(a, c))
    assert not np.array_equal(a[0].streams["pitch"], a[1].streams["pitch"])
    for piece in a:  # never a special id inside a piece
        assert all((v[1:] >= 3).all() for v in piece.streams.values())


def test_guidance_is_the_renormalized_extrapolation_from_unconditioned_to_conditioned():
    cond, none = np.log([[0.5, 0.25, 0.25]]), np.log([[0.25, 0.25, 0.5]])
    np.testing.assert_allclose(np.exp(guide(cond, none, 2.0)), [[1 / 1.375, 0.25 / 1.375, 0.125 / 1.375]])  # c^2/n
    np.testing.assert_allclose(guide(cond, none, 1.0), cond)
    np.testing.assert_allclose(guide(cond, none, 0.0), none)
    with np.errstate(divide="ignore"):  # impossible given the condition: stays impossible; only without it: cond
        cond, none = np.log([[0.5, 0.5, 0.0]]), np.log([[0.0, 0.5, 0.5]])
    np.testing.assert_allclose(np.exp(guide(cond, none, 3.0)), [[0.5, 0.5, 0.0]])

    model = events_model()
    prompt = {name: np.array([[BOS]]) for name in model.vocab.names}
    guided = Guided(model, 2.5)
    state = guided.begin(prompt, np.array([2]))
    with_cond, without = model.begin(prompt, np.array([2])), model.begin(prompt, np.array([0]))
    np.testing.assert_allclose(guided.stream_logprobs(state, 0, []),
                               guide(model.stream_logprobs(with_cond, 0, []), model.stream_logprobs(without, 0, []),
                                     2.5), atol=1e-5)
    plain = sample(model, 2, 30, cond=2, cfg=SamplingConfig(seed=3))
    pushed = sample(model, 2, 30, cond=2, cfg=SamplingConfig(seed=3, guidance=4.0))
    again = sample(model, 2, 30, cond=2, cfg=SamplingConfig(seed=3, guidance=4.0))
    assert all(np.array_equal(a.streams["pitch"], b.streams["pitch"]) for a, b in zip(pushed, again))
    assert not all(np.array_equal(a.streams["pitch"], b.streams["pitch"]) for a, b in zip(plain, pushed))
    with pytest.raises(NotelmError, match="guidance"):
        SamplingConfig(guidance=-1.0).validate()


def test_guidance_is_refused_for_a_model_that_never_trained_without_its_condition(tmp_path, capsys):
    save_model(events_model(), tmp_path / "run" / "best")
    (tmp_path / "run" / "run.json").write_text('{"train": {"cond_dropout": 0.0}}')
    rc, _, err = cli(capsys, "--model", tmp_path / "run", "-o", tmp_path / "out", "--condition", "jigs",
                     "--guidance", "2")
    assert rc == 1 and "never learned to write without its condition (train.cond_dropout = 0)" in err
    assert not (tmp_path / "out").exists()
    rc, _, err = cli(capsys, "--model", tmp_path / "run", "-o", tmp_path / "out", "--condition", "jigs",
                     "--guidance", "1", "--num", "1", "--length", "8")
    assert rc == 0, err


def test_top_k_top_p_and_temperature_processors():
    lp = np.log(np.array([[1e-9, 1e-9, 1e-9, 0.5, 0.3, 0.15, 0.05]]))  # PAD, BOS, EOS, then four values
    assert np.isfinite(filtered(lp, SamplingConfig(top_k=2))).tolist() == [[False] * 3 + [True, True, False, False]]
    assert np.isfinite(filtered(lp, SamplingConfig(top_p=0.7))).tolist() == [[False] * 3 + [True, True, False, False]]
    assert np.isfinite(filtered(lp, SamplingConfig(top_p=0.5))).tolist() == [[False] * 3 + [True, False, False, False]]
    assert [type(p).__name__ for p in build_processors(SamplingConfig(top_k=2, top_p=0.5, max_repeat=2))] == \
        ["SuppressSpecials", "MaxRepeat", "TopK", "TopP"]  # only the processors that change something, in order
    cold = filtered(lp, SamplingConfig(temperature=0.01))
    rng = np.random.default_rng(0)
    assert set(draw(np.repeat(cold, 200, 0), rng).tolist()) == {3}
    counts = np.bincount(draw(np.repeat(filtered(lp, SamplingConfig()), 20000, 0), rng), minlength=7) / 20000
    np.testing.assert_allclose(counts, [0, 0, 0, 0.5, 0.3, 0.15, 0.05], atol=0.02)
    for bad, message in ((dict(top_p=0), "--top-p must be in (0, 1]"), (dict(top_k=-1), "--top-k must be >= 0"),
                         (dict(temperature=0.0), "--temperature must be > 0"), (dict(max_repeat=-2), "--max-repeat"),
                         (dict(repetition_penalty=0.5), "--repetition-penalty must be >= 1"),
                         (dict(top_k="3"), "--top-k = '3': expected an integer")):
        with pytest.raises(NotelmError) as error:
            SamplingConfig(**bad).validate()
        assert message in str(error.value)
    with pytest.raises(NotelmError, match="top-p"):
        TopP(1.5)
    assert TopK(10)(lp.copy(), None, None).tolist() == lp.tolist()  # k beyond the vocabulary: nothing cut


def test_max_repeat_forbids_a_note_repeated_forever():
    vocab = get_representation("seed").vocab()
    model = NGramModel(vocab, order=2)
    song = {"pitch": np.r_[BOS, np.full(200, 3), 2], "duration": np.r_[BOS, np.full(200, 5), 2]}
    model.fit({k: v for k, v in song.items()}, np.array([0, 202]))
    def longest_run(pitch):
        return np.diff(np.flatnonzero(np.diff(np.r_[-1, pitch, -1]) != 0)).max()

    stuck = sample(model, 2, 60, cfg=SamplingConfig(seed=0))
    assert longest_run(stuck[0].streams["pitch"][1:]) >= 20  # the n-gram knows almost only one note...
    guarded = sample(model, 2, 60, cfg=SamplingConfig(seed=0, max_repeat=3))
    assert all(longest_run(p.streams["pitch"][1:]) <= 3 for p in guarded)  # ...max_repeat breaks every run


def test_prompt_continuation_keeps_the_prompt_notes_exactly(tmp_path):
    model = events_model()
    prompt_file = write_midi(tmp_path / "p.mid", scale_tune(60, 8, chord_every=4))
    notes, _ = nt.read_midi(prompt_file)
    rep = get_representation("events", model.vocab.config)
    expected = rep.quantize(notes)
    report = generate_with(model, tmp_path, prompt={"prompt": str(prompt_file)}, length=30, num=2)
    for row in report["pieces"]:
        out, _ = nt.read_midi(row["midi"])
        out = rep.quantize(out)
        first = nt.take(out, np.argsort(out["onset"], kind="stable")[: nt.num_notes(expected)])
        key = lambda t: sorted(zip(t["onset"].round(6), t["pitch"], np.round(t["duration"], 6)))
        assert key(first) == key(expected)
        assert row["prompt_events"] == len(rep.encode_song(notes)["pitch"]) - 2
    short = prompt_from_notes(model.vocab, notes, max_notes=5)
    assert len(short["pitch"]) == 6 and short["pitch"][0] == BOS


def generate_with(model, tmp_path, prompt=None, **pieces):
    """One generation into tmp_path/out, replacing the one before it (--force)."""
    save_model(model, tmp_path / "model")
    return generate(tmp_path / "model", tmp_path / "out", PieceOptions(**pieces), PromptOptions(**(prompt or {})),
                    SamplingConfig(seed=1), OutputOptions(force=True), log=lambda *_: None)


def test_conditions_limits_and_files(tmp_path):
    model = events_model()
    report = generate_with(model, tmp_path, num=2, length=20, condition="collection=jigs")
    assert report["condition"] == "collection=jigs" and len(report["pieces"]) == 2
    for row in report["pieces"]:
        notes, _ = nt.read_midi(row["midi"])
        assert nt.num_notes(notes) == row["notes"] > 0
    assert (tmp_path / "out" / "generation.json").exists()
    with pytest.raises(NotelmError, match="valid names: folk, jigs"):
        generate_with(model, tmp_path, condition="collection=reels")
    with pytest.raises(NotelmError, match="between 1 and"):
        sample(model, 1000, 10)
    with pytest.raises(NotelmError, match="between 1 and"):
        sample(model, 1, 10**6)
    report = generate_with(model, tmp_path, num=1, seconds=3.0)
    assert 0 < report["pieces"][0]["seconds"] <= 3.0


def test_ngram_models_generate_through_the_same_sampler():
    vocab = get_representation("seed").vocab()
    rng = np.random.default_rng(0)
    songs = [random_song(vocab, 40, rng) for _ in range(5)]
    streams = {n: np.concatenate([s[n] for s in songs]) for n in vocab.names}
    offsets = np.arange(0, 201, 40)
    for joint in (False, True):
        model = NGramModel(vocab, order=3, joint=joint).fit(streams, offsets)
        pieces = sample(model, 3, 25, cfg=SamplingConfig(seed=0, top_k=4))
        assert len(pieces) == 3 and all(len(p.streams["duration"]) == 26 for p in pieces)


def test_default_model_generates_from_the_cli(tmp_path, capsys):
    if not (default_model_path() / "model.safetensors").exists():
        pytest.fail("the default model must ship in the package")
    assert main(["generate", "-o", str(tmp_path), "--num", "2", "--length", "32", "--png", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "piece_00" in out and "repeated notes" in out and "generated 2 pieces" in out
    assert (tmp_path / "piece_01.mid").exists() and (tmp_path / "piece_01.png").exists()
    # it ships with the copy index of its training songs: the copy guard is on, and says what it did
    report = json.loads((tmp_path / "generation.json").read_text())
    assert report["copy_guard"]["longest"] == 16 and "drawn again" in out
    assert main(["generate", "-o", str(tmp_path), "--length", "lots"]) == 1
    assert "--length 'lots'" in capsys.readouterr().err
    assert main(["generate", "-o", str(tmp_path), "--num", "1", "--length", "8", "-q", "--force"]) == 0
    assert "generated 1 piece " in capsys.readouterr().out
    assert main(["generate", "runs/mine", "-o", str(tmp_path)]) == 1  # the model given without --model
    assert "notelm generate --model runs/mine" in capsys.readouterr().err


# --------------------------------------------------------------------------- what people expect of `generate`

@pytest.fixture
def tiny_model(tmp_path):
    save_model(events_model(), tmp_path / "model")
    return str(tmp_path / "model")


def test_the_smoothing_floor_is_taken_back_so_sampling_draws_from_the_models_own_guess(tiny_model, tmp_path,
                                                                                     capsys):
    import json

    q = np.array([[0.0, 0.6, 0.3, 0.1, 0.0]])  # PAD impossible; the last value never in the music
    smoothed = 0.8 * q + 0.2 / 4 * np.array([[0, 1, 1, 1, 1]])  # label smoothing 0.2 over the 4 possible values
    with np.errstate(divide="ignore"):
        lp = np.log(smoothed)
    back = np.exp(SmoothingFloor(0.2)(lp.copy(), None, None))
    np.testing.assert_allclose(back / back.sum(), q, atol=1e-12)  # the model's guess exactly, the floor gone
    assert [type(p).__name__ for p in build_processors(SamplingConfig(smoothing_floor=0.1, top_k=2))] == \
        ["SmoothingFloor", "SuppressSpecials", "TopK"]  # first: the floor is the model's, not a sampling choice
    with pytest.raises(NotelmError, match="smoothing-floor"):
        SamplingConfig(smoothing_floor=1.0).validate()
    model = Path(tiny_model)
    (model / "run.json").write_text(json.dumps({"train": {"label_smoothing": 0.2}}))  # a run's own settings
    for args, floor in (((), 0.2), (("--smoothing-floor", 0), 0.0)):  # the model's own unless told
        out = tmp_path / f"floor{floor}"
        assert cli(capsys, "--model", model, "-o", out, "--num", "1", "--length", "8", *args)[0] == 0
        assert json.loads((out / "generation.json").read_text())["sampling"]["smoothing_floor"] == floor
    (model / "run.json").unlink()
    config = json.loads((model / "config.json").read_text())
    for smoothing, floor in ((0.3, 0.3), ("lots", None)):  # a shipped model keeps its run as trained_with
        config["trained_with"] = {"train": {"label_smoothing": smoothing}}
        (model / "config.json").write_text(json.dumps(config))
        out = tmp_path / f"shipped{floor}"
        rc, _, err = cli(capsys, "--model", model, "-o", out, "--num", "1", "--length", "8")
        if floor is None:
            assert rc != 0 and "train.label_smoothing = 'lots'" in err
        else:
            assert rc == 0 and json.loads((out / "generation.json").read_text())["sampling"]["smoothing_floor"] == floor


def cli(capsys, *args):
    """`notelm generate ARGS`: (exit status, stdout, stderr)."""
    rc = main(["generate", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_the_seed_is_random_by_default_printed_saved_and_repeats_a_run_exactly(tiny_model, tmp_path, capsys):
    import json
    import re

    seeds = []
    for name in ("a", "b"):
        rc, out, _ = cli(capsys, "--model", tiny_model, "-o", tmp_path / name, "--num", "2", "--length", "24")
        assert rc == 0
        shown = int(re.search(r"seed (\d+) \(--seed \1 repeats it\)", out).group(1))
        report = json.loads((tmp_path / name / "generation.json").read_text())
        assert report["seed"] == report["sampling"]["seed"] == shown
        seeds.append(shown)
        # a model saved without its training songs' copy index: generate says the guard is off
        assert report["copy_guard"] is None and "copy guard: off (no copy index" in out
    assert seeds[0] != seeds[1]  # a new seed each run (the same one twice: a chance of 1 in 2**32)
    assert (tmp_path / "a" / "piece_00.mid").read_bytes() != (tmp_path / "b" / "piece_00.mid").read_bytes()
    rc, out, _ = cli(capsys, "--model", tiny_model, "-o", tmp_path / "again", "--num", "2", "--length", "24",
                     "--seed", seeds[0])
    assert rc == 0 and f"seed {seeds[0]}" in out
    for i in range(2):  # the same seed: the same files, byte for byte
        assert (tmp_path / "again" / f"piece_{i:02d}.mid").read_bytes() == \
            (tmp_path / "a" / f"piece_{i:02d}.mid").read_bytes()
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "a new one each run" in " ".join(capsys.readouterr().out.split())


def test_a_second_run_into_the_same_folder_never_mixes_with_the_first(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(capsys, "--model", tiny_model, "-o", out, "--num", "3", "--length", "16", "--png", "--seed", 1)[0] == 0
    (out / "my notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = cli(capsys, "--model", tiny_model, "-o", out, "--num", "1", "--length", "16", "--seed", 2)
    assert rc == 1 and err.count("\n") == 1
    assert "already holds an earlier generation (3 pieces, 7 files)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing touched
    rc, _, _ = cli(capsys, "--model", tiny_model, "-o", out, "--num", "1", "--length", "16", "--seed", 2, "--force")
    assert rc == 0  # replaced: no stale piece, WAV or piano roll of the first run stays
    assert sorted(p.name for p in out.iterdir()) == ["generation.json", "my notes.txt", "piece_00.mid"]
    assert (out / "piece_00.mid").read_bytes() != before["piece_00.mid"]
    rc, _, err = cli(capsys, "--model", tiny_model, "-o", out / "piece_00.mid", "--num", "1")
    assert rc == 1 and "piece_00.mid: a file, not a folder" in err


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed must be >= 0 (got -1)"),
    (["--seed", str(2**32)], f"--seed must be <= {2**32 - 1}"),
    (["--qpm", "-120"], "--qpm -120: the tempo must be between 10 and 1000"),
    (["--qpm", "0"], "--qpm 0: the tempo must be between"),
    (["--qpm", "nan"], "--qpm nan: the tempo must be between"),
    (["--qpm", "1e9"], "--qpm 1e+09: the tempo must be between"),
    (["--prompt-notes", "0"], "--prompt-notes must be >= 1"),
    (["--prompt-bars", "0"], "--prompt-bars must be > 0"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--guidance", "nan"], "--guidance = nan: expected a finite number"),
])
def test_generate_arguments_are_checked_before_any_work(tiny_model, tmp_path, capsys, monkeypatch, args, message):
    import notelm.generate as gen

    monkeypatch.setattr(gen, "load_model", lambda *a: pytest.fail("the model was loaded"))
    rc, _, err = cli(capsys, "--model", tiny_model, "-o", tmp_path / "out", *args)
    assert rc == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_length_counts_the_new_notes_after_a_prompt_bounded_alike_everywhere(tiny_model, tmp_path, capsys):
    import json

    from notelm.generate import DEFAULT_PROMPT_NOTES

    tune = write_midi(tmp_path / "long.mid", scale_tune(48, 150, chord_every=3))  # 150 + 150 chord notes
    runs = {"default": [], "short": ["--prompt-notes", "10"], "bars": ["--prompt-bars", "2"], "none": None}
    for name, extra in runs.items():
        prompt = [] if extra is None else ["--prompt", tune, *extra]
        rc, out, _ = cli(capsys, "--model", tiny_model, "-o", tmp_path / name, "--num", "3", "--length", "40",
                         "--seed", 5, *prompt)
        assert rc == 0
        report = json.loads((tmp_path / name / "generation.json").read_text())
        expected_prompt = {"default": DEFAULT_PROMPT_NOTES, "short": 10, "bars": 8 + 3 * 3, "none": 0}[name]
        assert report["length"] == {"new_notes": 40}
        for row in report["pieces"]:
            notes, _ = nt.read_midi(row["midi"])
            assert (row["prompt_notes"], row["new_notes"]) == (expected_prompt, 40)  # exactly, whatever the rests
            assert nt.num_notes(notes) == row["notes"] == expected_prompt + 40
        line = "40 notes" if name == "none" else f"{expected_prompt} prompt notes + 40 new notes"
        assert f"piece_02: {line}, " in out
    rc, _, _ = cli(capsys, "--model", tiny_model, "-o", tmp_path / "secs", "--num", "2", "--length", "3s",
                   "--prompt", tune, "--prompt-notes", "20", "--seed", 5)
    report = json.loads((tmp_path / "secs" / "generation.json").read_text())
    assert rc == 0 and report["length"] == {"new_seconds": 3.0}
    for row in report["pieces"]:  # 3 seconds of new music after the prompt's 20 notes (6.5 beats: 3.25 s)
        assert row["prompt_notes"] == 20 and 0 < row["new_seconds"] <= 3.0 and row["seconds"] > 3.25


def test_counting_notes_is_bounded_for_a_model_that_writes_only_rests():
    rep = get_representation("events")
    vocab = rep.vocab()
    rest = {name: np.r_[BOS, np.full(300, int(rep.rest_ids()[0]) if name == "pitch" else 3), 2]
            for name in vocab.names}
    model = NGramModel(vocab, order=2).fit(rest, np.array([0, 302]))
    pieces = sample(model, 2, 10, cfg=SamplingConfig(seed=0, temperature=0.01), unit="notes")  # rests only
    assert [len(p.streams["pitch"]) - 1 for p in pieces] == [2 * 10 + 64] * 2  # stopped at its bound
    assert all(nt.num_notes(rep.decode(p.streams)) == 0 for p in pieces)


def test_rope_rotates_each_channel_pair_by_its_position_angle():
    from notelm.models.transformer import apply_rope, rope_tables

    positions, dim = torch.arange(5), 8
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    out = apply_rope(x, *(t.double() for t in rope_tables(positions, dim)))
    half = dim // 2
    angle = positions[:, None].double() / 10000.0 ** (torch.arange(half).double() * 2 / dim)  # [T, half]
    a, b = x[..., :half], x[..., half:]  # channel pairs (i, i + half) as complex numbers a + ib
    rotated = torch.complex(a, b) * torch.exp(1j * angle)
    assert torch.allclose(out, torch.cat([rotated.real, rotated.imag], -1), atol=1e-6)
    # so q·k depends on how far apart the two positions are, not on where they are
    q, k = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    qs, ks = (apply_rope(v.expand(5, dim), *(t.double() for t in rope_tables(positions, dim))) for v in (q, k))
    assert torch.allclose(qs[2] @ ks[0], qs[4] @ ks[2]) and not torch.allclose(qs[2] @ ks[0], qs[3] @ ks[0])


def test_relative_pitch_scores_land_on_the_pitch_each_interval_leads_to():
    model = events_model("lstm", relative_pitch=3)
    rel, pitch = model.net.relative, model.vocab.stream("pitch")
    with torch.no_grad():
        rel.intervals.weight.zero_()
        bias = rel.intervals.bias.zero_().view(3, 255)  # [reference, interval + 127]
        bias[0, 127 + 7] = 1.0  # a fifth above the newest note
        bias[1, 127 - 2] = 10.0  # a tone below the one before it
        bias[0, 127 - 127] = 100.0  # leads below pitch 0 from every reference used here but pitch 127
        bias[2, 127] = 1000.0  # the third reference is NONE below: never counted
    refs = torch.tensor([[[60, 64, -1], [0, 127, -1], [127, -1, -1]]])
    with torch.no_grad():
        logits = rel(torch.zeros(1, 3, rel.intervals.in_features), refs, torch.zeros(1, 3, pitch.size))[0].numpy()
    placed = {(int(t), pitch.name_of(i)): float(logits[t, i]) for t, i in zip(*np.nonzero(logits))}
    assert placed == {(0, "67"): 1.0, (0, "62"): 10.0, (1, "7"): 1.0, (1, "125"): 10.0, (2, "0"): 100.0}


def test_relative_pitch_windows_and_their_gradient_equal_a_gather_summed_over_references():
    from notelm.models.neural import Windows

    rng = torch.Generator().manual_seed(0)
    refs, groups = 3, 40
    scores = torch.randn(groups * refs, 255, generator=rng, dtype=torch.float64, requires_grad=True)
    start = torch.randint(0, 128, (groups * refs,), generator=rng)
    start[::7] = -1  # NONE references: their window counts as zeros, and gets no gradient
    weight = torch.randn(groups, 128, generator=rng, dtype=torch.float64)
    out = Windows.apply(scores, start, refs)
    (grad,) = torch.autograd.grad((out * weight).sum(), scores)
    index = start.clamp(min=0)[:, None] + torch.arange(128)
    expected_rows = scores.gather(1, index) * (start >= 0)[:, None]
    expected = expected_rows.view(groups, refs, 128).sum(1)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), scores)
    assert torch.equal(out, expected) and torch.equal(grad, expected_grad)
    assert (grad[start < 0] == 0).all() and (grad[start >= 0] != 0).sum() == (start >= 0).sum() * 128


def test_relative_pitch_references_are_the_last_notes_newest_first():
    model = events_model("lstm", relative_pitch=3)
    rel, pitch = model.net.relative, model.vocab.stream("pitch")
    rest = pitch.id_of("rest")
    ids = torch.tensor([[pitch.id_of("60"), pitch.id_of("62"), rest, pitch.id_of("64"), pitch.id_of("65")]])
    assert rel.references(ids)[0].tolist() == [[60, -1, -1], [62, 60, -1], [62, 60, -1], [64, 62, 60], [65, 64, 62]]
    refs = torch.full((1, 3), -1)
    for t in range(5):  # generation keeps the same references one event at a time
        refs = rel.advance(refs, ids[:, t])
    assert refs.tolist() == [[65, 64, 62]]
    with pytest.raises(NotelmError, match="model.relative_pitch: the pitch stream has no MIDI pitch 0"):
        build_model(get_representation("seed").vocab(), LSTMConfig(relative_pitch=1))
