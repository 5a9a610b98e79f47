"""Generation: incremental = recompute, seeds, prompts, conditions, sampling filters, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from notelm import notes as nt
from notelm.checkpoint import save_model
from notelm.cli import main
from notelm.config import SamplingConfig
from notelm.encoding import get_representation
from notelm.encoding.vocab import BOS
from notelm.generate import PieceOptions, PromptOptions, default_model_path, generate, prompt_from_notes, sample
from notelm.io import NotelmError
from notelm.models import build_model
from notelm.models.lstm import LSTMConfig
from notelm.models.ngram import NGramModel
from notelm.models.transformer import TransformerConfig
from notelm.sampling import TopK, TopP, apply_processors, build_processors, draw

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
    short = prompt_from_notes(model.vocab, notes, events=5)
    assert len(short["pitch"]) == 6 and short["pitch"][0] == BOS


def generate_with(model, tmp_path, prompt=None, **pieces):
    save_model(model, tmp_path / "model")
    return generate(tmp_path / "model", tmp_path / "out", PieceOptions(**pieces), PromptOptions(**(prompt or {})),
                    SamplingConfig(seed=1), log=lambda *_: None)


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
    assert main(["generate", "-o", str(tmp_path), "--length", "lots"]) == 1
    assert "--length 'lots'" in capsys.readouterr().err
    assert main(["generate", "-o", str(tmp_path), "--num", "1", "--length", "8", "-q"]) == 0
    assert "generated 1 piece " in capsys.readouterr().out
    assert main(["generate", "runs/mine", "-o", str(tmp_path)]) == 1  # the model given without --model
    assert "notelm generate --model runs/mine" in capsys.readouterr().err


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
