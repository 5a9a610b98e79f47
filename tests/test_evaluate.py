"""Evaluation: metric functions on hand-computed inputs, and `evaluate` against the model's own predictions."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from notelm.checkpoint import load_model
from notelm.config import load_config
from notelm.data import CropSampler, window_splits
from notelm.encoding import from_vocab, load_or_encode
from notelm.encoding.vocab import EOS
from notelm.evaluate import (
    EvalOptions,
    blend_logprobs,
    compare,
    evaluate,
    fit_models,
    predict_rows,
    predict_rows_transposed,
    song_targets,
    window_targets,
)
from notelm.io import NotelmError
from notelm.metrics import PredictionScores, accuracy, bits_per_event, expected_accuracy, perplexity, prediction_table
from notelm.models.base import NextEventModel
from notelm.models.baselines import MajorityModel, StratifiedModel
from notelm.models.ngram import NGramModel
from notelm.models.song_cache import mix
from notelm.train import train

from conftest import melody_corpus, quiet

CONTEXT = 8
TINY = ["model.hidden=16", "model.embed_dim=4", "train.batch_size=8", f"train.context={CONTEXT}", "train.steps=4",
        "train.eval_every=4", "train.eval_crops=8", "train.log_every=2", "train.threads=1", "train.warmup=1"]
LN2 = math.log(2)


# ---------------------------------------------------------------------------- fixtures: a tiny corpus, tiny runs

@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """20 random melodies in two collections (durations the seed representation keeps), split 50/25/25."""
    def melody(rng):
        n = int(rng.integers(12, 30))
        durations = rng.choice([0.25, 0.5, 1.0, 2.0], n)
        onsets = np.concatenate([[0], np.cumsum(durations)[:-1]])
        return [(float(t), float(d), int(rng.integers(55, 75)), 80) for t, d in zip(onsets, durations)]

    return melody_corpus(tmp_path_factory, 20, 7, melody, collections=("b", "a"), split=(0.5, 0.25, 0.25))


@pytest.fixture(scope="session")
def runs(corpus, tmp_path_factory):
    """Tiny runs: the seed preset on the song split and on the window split, and seed_fullseq with ordered heads."""
    base = tmp_path_factory.mktemp("runs")
    settings = {"song": ("seed", []), "window": ("seed", ['train.split="window"']),
                "ordered": ("seed_fullseq", ['model.heads="ordered"'])}
    for name, (preset, extra) in settings.items():
        train(corpus, load_config(preset, TINY + extra), base / name, progress=False, log=quiet)
    return {name: base / name for name in settings}


@pytest.fixture(scope="session")
def encoded(corpus):
    encoded = load_or_encode(corpus, "seed", {"order": "parts"})
    assert all(len(encoded.ids(s)) for s in ("train", "valid", "test")), "the fixture needs songs in every split"
    return encoded


def song_of(encoded, i):
    return {name: np.asarray(v, np.int64) for name, v in encoded.song(int(i)).items()}


# ---------------------------------------------------------------------------- metric functions


def test_uniform_over_four_is_two_bits_and_perplexity_four():
    logprobs = np.log(np.full((3, 4), 0.25))
    targets = np.array([0, 2, 3])
    assert bits_per_event(logprobs, targets) == pytest.approx(2.0)
    assert perplexity(2.0) == pytest.approx(4.0)
    assert expected_accuracy(logprobs, targets) == pytest.approx(0.25)
    assert accuracy(logprobs, targets) == pytest.approx(1 / 3)  # a tie goes to the lowest id: only target 0 is "right"


def test_accuracy_and_bits_on_a_skewed_distribution():
    logprobs = np.log(np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    targets = np.array([0, 1])
    assert accuracy(logprobs, targets) == 0.5
    assert bits_per_event(logprobs, targets) == pytest.approx((1 + 2) / 2)  # -log2 .5 = 1, -log2 .25 = 2
    assert expected_accuracy(logprobs, targets) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError):
        accuracy(logprobs, np.array([0, 3]))


def test_prediction_scores_add_up_streams_and_chunks():
    pitch = np.log(np.full((4, 4), 0.25))  # 2 bits each
    duration = np.log(np.array([[0.5, 0.5]] * 4))  # 1 bit each
    targets = {"pitch": np.array([0, 1, 2, 3]), "duration": np.array([0, 0, 1, 1])}
    whole = PredictionScores(["pitch", "duration"])
    whole.add({"pitch": pitch, "duration": duration}, targets)
    chunked = PredictionScores(["pitch", "duration"])
    for part in (slice(0, 1), slice(1, 4)):
        chunked.add({"pitch": pitch[part], "duration": duration[part]}, {k: v[part] for k, v in targets.items()})
    for scores in (whole, chunked):
        result = scores.result()
        assert result["targets"] == 4
        assert result["pitch"]["bits"] == pytest.approx(2.0) and result["duration"]["bits"] == pytest.approx(1.0)
        assert result["total"]["bits"] == pytest.approx(3.0) and result["total"]["perplexity"] == pytest.approx(8.0)
        assert result["pitch"]["accuracy"] == pytest.approx(0.25)
        assert result["duration"]["accuracy"] == pytest.approx(0.5)
    table = prediction_table({"m": whole.result()}, ["pitch", "duration"], marks={"m": " ★"})
    assert "| m ★ | 0.250 | 2.000 | 4.00 | 0.500 | 1.000 | 2.00 | 3.000 | 8.00 |" in table



def test_prediction_scores_whole_event_accuracy_needs_every_stream_right():
    # argmax pitch: 0, 1, 1; argmax duration: 0, 0, 1 -> targets (0, 0), (1, 1), (1, 1): events 0 and 2 right
    pitch = np.log(np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]))
    duration = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.5 - 1e-3, 0.5 + 1e-3]]))
    targets = {"pitch": np.array([0, 1, 1]), "duration": np.array([0, 1, 1])}
    scores = PredictionScores(["pitch", "duration"])
    scores.add({"pitch": pitch, "duration": duration}, targets)
    total = scores.result()["total"]
    assert scores.result()["pitch"]["accuracy"] == pytest.approx(1.0)
    assert scores.result()["duration"]["accuracy"] == pytest.approx(2 / 3)
    assert total["accuracy"] == pytest.approx(2 / 3)
    assert total["expected_accuracy"] == pytest.approx((0.6 * 0.9 + 0.7 * 0.4 + 0.8 * (0.5 + 1e-3)) / 3)


# ---------------------------------------------------------------------------- evaluate vs. the model's own predictions


def test_evaluate_equals_hand_computation_from_predict(runs, encoded, tmp_path):
    report = evaluate(runs["song"], EvalOptions(split="test"), out_dir=tmp_path, progress=False, log=quiet)
    model = load_model(runs["song"])
    test = encoded.ids("test")
    correct, nll, n = {"pitch": 0, "duration": 0}, {"pitch": 0.0, "duration": 0.0}, 0
    both = 0
    for i in test:
        song = song_of(encoded, i)
        logprobs = model.predict(song)
        right = []
        for name in ("pitch", "duration"):
            target = song[name][1:]  # every event after BOS, EOS included
            right.append(logprobs[name].argmax(1) == target)
            correct[name] += int(right[-1].sum())
            nll[name] -= float(logprobs[name][np.arange(len(target)), target].sum()) / LN2
        both += int((right[0] & right[1]).sum())
        n += len(song["pitch"]) - 1
    assert report["targets"] == n and report["songs"] == len(test)
    for name in ("pitch", "duration"):
        got = report["results"]["model"][name]
        assert got["accuracy"] == pytest.approx(correct[name] / n)
        assert got["bits"] == pytest.approx(nll[name] / n, rel=1e-5)
        assert got["perplexity"] == pytest.approx(2 ** (nll[name] / n), rel=1e-5)
    assert report["results"]["model"]["total"]["bits"] == pytest.approx(sum(nll.values()) / n, rel=1e-5)
    assert report["results"]["model"]["total"]["accuracy"] == pytest.approx(both / n)

    # the baselines on the same targets: fitted on the train split
    train_ids = encoded.ids("train")
    stratified = StratifiedModel(encoded.vocab).fit(encoded.streams, encoded.offsets, train_ids)
    expected = stratified.expected_accuracy(encoded.streams, encoded.offsets, test)
    majority = MajorityModel(encoded.vocab).fit(encoded.streams, encoded.offsets, train_ids).modes()
    for name in ("pitch", "duration"):
        assert report["results"]["stratified"][name]["expected_accuracy"] == pytest.approx(expected[name])
        truth = np.concatenate([song_of(encoded, i)[name][1:] for i in test])
        assert report["results"]["majority"][name]["accuracy"] == pytest.approx(np.mean(truth == majority[name]))
    best = report["baselines"]["best_ngram"]
    chosen = report["baselines"]["selection"]["total_bits"]
    assert chosen[best] == min(chosen.values())  # lowest bits on the valid split
    assert {"ngram2", "ngram5", "joint2", "joint5"} <= set(report["results"])
    for file in ("evaluation.json", "evaluation.md", "evaluation.png"):
        assert (tmp_path / file).stat().st_size > 0
    assert "★" in (tmp_path / "evaluation.md").read_text()


def test_context_one_equals_a_first_order_prediction(runs, encoded):
    model = load_model(runs["ordered"])  # ordered heads: the later stream sees the true earlier one
    song = song_of(encoded, encoded.ids("test")[0])
    rows = np.arange(len(song["pitch"]) - 1)
    windowed = predict_rows(model, song, 0, rows, context=1)
    tokens = torch.as_tensor(np.stack([song["pitch"], song["duration"]], -1))
    with torch.no_grad():  # every event alone, as a batch of one-event sequences
        no_condition = torch.zeros(len(rows), dtype=torch.long)
        logits, _ = model.net.eval()(tokens[:-1, None], no_condition, targets=tokens[1:, None])
    for name, lg in zip(("pitch", "duration"), logits):
        direct = torch.log_softmax(lg[:, 0].float(), -1).numpy()
        np.testing.assert_allclose(windowed[name], direct, atol=1e-5)
    # and with the whole song as context it is the plain prediction
    plain = model.predict(song)
    np.testing.assert_allclose(predict_rows(model, song, 0, rows)["pitch"], plain["pitch"])


def test_context_limits_the_ngrams_too(runs, tmp_path):
    report = evaluate(runs["song"], EvalOptions(context=1), out_dir=tmp_path, progress=False, log=quiet)
    assert report["context"] == 1
    assert {name for name in report["results"] if name.startswith(("ngram", "joint"))} == {"ngram2", "joint2"}


class RotatingModel(NextEventModel):
    """Exactly transposition-equivariant: the next pitch class is the previous one + 2 with probability 0.6."""

    family = "rotating"

    def __init__(self, vocab):
        self.vocab = vocab

    def predict(self, streams, cond=0):
        pitch = np.asarray(streams["pitch"])[:-1]
        out = np.full((len(pitch), 15), 0.4 / 12)
        out[:, :2] = 0
        regular = pitch >= 3
        out[np.flatnonzero(regular), 3 + (pitch[regular] - 3 + 2) % 12] += 0.6
        out[~regular, 3:] = 1 / 12
        out /= out.sum(1, keepdims=True)
        duration = np.tile([0, 0, 0.1, 0.3, 0.3, 0.1, 0.1, 0.1], (len(pitch), 1))
        with np.errstate(divide="ignore"):
            return {"pitch": np.log(out).astype(np.float32), "duration": np.log(duration).astype(np.float32)}


def test_transpose_average_of_an_equivariant_model_is_its_plain_prediction(encoded):
    model = RotatingModel(encoded.vocab)
    song = song_of(encoded, encoded.ids("test")[0])
    rows = np.arange(len(song["pitch"]) - 1)
    tables = from_vocab(encoded.vocab).transpositions()
    averaged, used = predict_rows_transposed(model, song, 0, rows, None, tables)
    plain = predict_rows(model, song, 0, rows)
    assert used == 12
    for name in ("pitch", "duration"):
        np.testing.assert_allclose(np.exp(averaged[name]), np.exp(plain[name]), atol=1e-6)


def test_transpose_average_of_a_prior_spreads_it_over_pitch_classes(encoded):
    prior = StratifiedModel(encoded.vocab).fit(encoded.streams, encoded.offsets, encoded.ids("train"))
    song = song_of(encoded, encoded.ids("test")[0])
    tables = from_vocab(encoded.vocab).transpositions()
    averaged, _ = predict_rows_transposed(prior, song, 0, np.arange(3), None, tables)
    p = prior.prior("pitch")
    expected = np.concatenate([[0, 0, p[EOS]], np.full(12, p[3:].mean())])  # every rotation of the prior, averaged
    np.testing.assert_allclose(np.exp(averaged["pitch"][0]), expected, atol=1e-6)


def test_evaluate_blends_the_song_cache(runs, encoded, tmp_path):
    report = evaluate(runs["song"], EvalOptions(song_cache=0.1), out_dir=tmp_path, progress=False, log=quiet)
    assert report["song_cache"] == 0.1 and "song cache 0.1" in report["model"]["label"]
    model, names = load_model(runs["song"]), encoded.vocab.names
    right, n = 0, 0
    for i in song_targets(encoded, "test").songs:
        song = song_of(encoded, i)
        rows = np.arange(len(song["pitch"]) - 1)
        tokens = np.stack([song[name] for name in names], -1)
        blended = mix(model.predict(song), tokens, rows, names, encoded.vocab.sizes, 0.1)
        right += int((blended["pitch"].argmax(1) == song["pitch"][1:]).sum())
        n += len(rows)
    assert report["results"]["model"]["pitch"]["accuracy"] == pytest.approx(right / n)
    # like for like: the best n-gram with the same cache is a row of its own, its bits those of the blend
    best = report["baselines"]["best_ngram"]
    ngram = fit_models(encoded.vocab, encoded.streams, encoded.offsets, encoded.ids("train"), orders=(2, 3, 4, 5),
                       joint_orders=(2, 3, 4, 5))[best]
    nats, n = 0.0, 0
    for i in song_targets(encoded, "test").songs:
        song = song_of(encoded, i)
        rows = np.arange(len(song["pitch"]) - 1)
        blended = mix(ngram.predict(song), np.stack([song[name] for name in names], -1), rows, names,
                      encoded.vocab.sizes, 0.1)
        nats -= sum(float(blended[name][rows, song[name][1:]].sum()) for name in names)
        n += len(rows)
    assert report["results"][f"{best} + song cache"]["total"]["bits"] == pytest.approx(nats / n / np.log(2), rel=1e-5)
    with pytest.raises(NotelmError, match="--song-cache.*--context"):
        evaluate(runs["song"], EvalOptions(song_cache=0.1, context=4), out_dir=tmp_path, progress=False, log=quiet)


def test_blend_logprobs_mixes_probabilities():
    with np.errstate(divide="ignore"):
        a = {"pitch": np.log(np.array([[0.5, 0.5, 0.0]]))}
        b = {"pitch": np.log(np.array([[0.0, 0.2, 0.8]]))}
    mixed = blend_logprobs(a, b, 0.25)
    np.testing.assert_allclose(np.exp(mixed["pitch"]), [[0.375, 0.425, 0.2]], rtol=1e-6)


def test_evaluate_mixes_in_the_best_ngram_before_the_song_cache(runs, encoded, tmp_path):
    report = evaluate(runs["song"], EvalOptions(ngram_blend=0.4, song_cache=0.1), out_dir=tmp_path, progress=False,
                      log=quiet)
    best = report["baselines"]["best_ngram"]
    assert report["ngram_blend"] == 0.4 and f"blended with {best} 0.4" in report["model"]["label"]
    model, names = load_model(runs["song"]), encoded.vocab.names
    ngram = NGramModel(encoded.vocab, order=int(best[-1]), joint=best.startswith("joint"))
    ngram.fit(encoded.streams, encoded.offsets, encoded.ids("train"))
    right, n = 0, 0
    for i in song_targets(encoded, "test").songs:
        song = song_of(encoded, i)
        rows = np.arange(len(song["pitch"]) - 1)
        mixed = blend_logprobs(model.predict(song), ngram.predict(song), 0.4)
        mixed = mix(mixed, np.stack([song[name] for name in names], -1), rows, names, encoded.vocab.sizes, 0.1)
        right += int((mixed["pitch"].argmax(1) == song["pitch"][1:]).sum())
        n += len(rows)
    assert report["results"]["model"]["pitch"]["accuracy"] == pytest.approx(right / n)


def test_song_cache_flag_of_the_command(runs, tmp_path):
    from notelm.cli import main

    assert main(["evaluate", str(runs["song"]), "--song-cache", "0.05", "--ngram-blend", "0.3", "--transpose-average",
                 "-o", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["song_cache"] == 0.05 and report["ngram_blend"] == 0.3 and report["transpose_average"]
    assert "blended with the song cache (weight 0.05 per matched event)" in (tmp_path / "evaluation.md").read_text()


def test_window_split_scores_only_the_test_windows(runs, encoded, tmp_path):
    report = evaluate(runs["window"], out_dir=tmp_path, progress=False, log=quiet)
    assert report["split_kind"] == "window" and report["context"] == CONTEXT
    # the same windows, found one by one: every start of every song, crops of CONTEXT + 1
    offsets = encoded.offsets
    windows = [(s, first) for s in range(len(encoded))
               for first in range(offsets[s], max(offsets[s + 1] - CONTEXT, offsets[s] + 1))]
    streams = [encoded.streams[n] for n in encoded.vocab.names]
    assert len(windows) == CropSampler(streams, offsets, encoded.ids("all"), CONTEXT + 1).n_windows
    split = window_splits(len(windows))
    wanted = {first + CONTEXT for s, first in np.array(windows)[split["test"]] if first + CONTEXT < offsets[s + 1]}
    targets = window_targets(encoded, "test", CONTEXT)
    got = targets.positions(offsets)
    assert sorted(got.tolist()) == sorted(wanted) and report["targets"] == len(wanted)
    train_targets = set(window_targets(encoded, "train", CONTEXT).positions(offsets).tolist())
    assert not train_targets & wanted
    with pytest.raises(NotelmError, match="window"):
        evaluate(runs["window"], EvalOptions(context=3), out_dir=tmp_path, progress=False, log=quiet)


def test_window_baselines_are_fitted_on_the_training_windows_only(encoded):
    positions = window_targets(encoded, "train", CONTEXT).positions(encoded.offsets)
    counted = MajorityModel(encoded.vocab).fit(encoded.streams, encoded.offsets, positions=positions).counts["pitch"]
    assert counted.sum() == len(positions)
    np.testing.assert_array_equal(counted, np.bincount(encoded.streams["pitch"][positions], minlength=15))
    every = song_targets(encoded, "all").positions(encoded.offsets)
    for joint in (False, True):  # restricting to every target changes nothing
        a = NGramModel(encoded.vocab, order=3, joint=joint).fit(encoded.streams, encoded.offsets)
        b = NGramModel(encoded.vocab, order=3, joint=joint).fit(encoded.streams, encoded.offsets, positions=every)
        song = song_of(encoded, 0)
        np.testing.assert_array_equal(a.predict(song)["pitch"], b.predict(song)["pitch"])


def test_generation_report_and_compare(runs, tmp_path):
    report = evaluate(runs["ordered"], EvalOptions(transpose_average=True, generate=2, generate_length=12),
                      out_dir=tmp_path / "ev", progress=False, log=quiet)
    generation = report["generation"]
    assert len(generation["metrics"]) == 3 and "pitch_class_histogram" in next(iter(generation["metrics"].values()))
    assert len(generation["copy"]["model"]["per_piece"]) == 2
    assert all(0 <= run <= 12 for run in generation["copy"]["model"]["per_piece"])
    assert "Copying" in (tmp_path / "ev" / "evaluation.md").read_text()
    table = compare([tmp_path / "ev"], out=tmp_path / "cmp.md", log=quiet)
    assert "lstm" in table and (tmp_path / "cmp.md").read_text() == table
    with pytest.raises(NotelmError, match="no such run"):
        compare([runs["song"].parent / "nothing-here"], log=quiet)
    with pytest.raises(NotelmError, match="not evaluated yet"):
        compare([runs["window"]], log=quiet)  # its evaluations above went to tmp folders


def test_unknown_split_and_missing_corpus_are_clear_errors(runs, tmp_path):
    with pytest.raises(NotelmError, match="--split = 'dev': expected one of 'train', 'valid', 'test', 'all'"):
        evaluate(runs["song"], EvalOptions(split="dev"), progress=False, log=quiet)
    with pytest.raises(NotelmError, match=r"--context must be >= 1 \(got 0\)"):
        evaluate(runs["song"], EvalOptions(context=0), progress=False, log=quiet)
    shutil.copytree(runs["song"] / "best", tmp_path / "model")
    with pytest.raises(NotelmError, match="--corpus"):
        evaluate(tmp_path / "model", progress=False, log=quiet)  # a model folder alone names no corpus


def test_song_cache_fit_is_refused_on_a_corpus_that_is_no_piano_roll(runs, tmp_path, capsys):
    from notelm.cli import main

    assert main(["evaluate", str(runs["song"]), "--song-cache-fit", "-o", str(tmp_path), "--quiet"]) != 0
    assert "--song-cache-fit fits the song cache of the piano-roll metric: it needs a corpus of the steps" in (
        capsys.readouterr().err)
    assert not (tmp_path / "evaluation.json").exists()
