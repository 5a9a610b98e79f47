"""The piano-roll benchmark: .mat files in, the ``steps`` representation, the per-step metric and its baselines."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

scipy_io = pytest.importorskip("scipy.io")

from notelm import notes as nt  # noqa: E402
from notelm.corpus import Corpus  # noqa: E402
from notelm.encoding import encode_corpus, get_representation, load_or_encode  # noqa: E402
from notelm.encoding.steps import STEP_ID  # noqa: E402
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL  # noqa: E402
from notelm.models.base import NextEventModel  # noqa: E402
from notelm.rollmetrics import bernoulli_nll, markov_nll, split_songs, step_nll  # noqa: E402

from conftest import prepare_quietly, quiet  # noqa: E402

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "polyphonic"


def key_id(pitch: int) -> int:
    return N_SPECIAL + pitch - 21


def cells(rolls) -> np.ndarray:
    out = np.empty((1, len(rolls)), object)
    for i, r in enumerate(rolls):
        out[0, i] = np.asarray(r, np.uint8)
    return out


def random_rolls(rng, n: int) -> list[np.ndarray]:
    rolls = []
    for _ in range(n):
        roll = (rng.random((int(rng.integers(3, 14)), 88)) < 0.06).astype(np.uint8)
        roll[-1, int(rng.integers(88))] = 1  # ends with a sounding step (trailing silence is not kept)
        rolls.append(roll)
    return rolls


def write_mat(path: Path, splits: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), {key: cells(rolls) for key, rolls in splits.items()})
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A benchmark file of 12 / 4 / 4 random rolls, prepared: (rolls by split, corpus path)."""
    rng = np.random.default_rng(3)
    held = np.zeros((6, 88), np.uint8)
    held[[0, 1, 3], 19] = 1  # key 40 held for two steps, silent, struck again: two notes
    held[2:6, 0] = held[5, 87] = 1  # the lowest and the highest key; the piece starts silent in both
    rolls = {"traindata": [held, *random_rolls(rng, 11)], "validdata": random_rolls(rng, 4),
             "testdata": random_rolls(rng, 4)}
    root = tmp_path_factory.mktemp("mat")
    write_mat(root / "Tiny_Set.mat", rolls)
    out = root / "corpus"
    prepare_quietly(root / "Tiny_Set.mat", out)
    return rolls, out


def test_a_mat_file_becomes_songs_of_its_own_split_that_decode_to_the_identical_roll(tiny):
    rolls, path = tiny
    corpus = Corpus(path)
    assert corpus.collections == ["Tiny_Set"]  # the collection is the dataset's name
    expected = ["train"] * 12 + ["valid"] * 4 + ["test"] * 4  # the file's split, never the hash split
    assert list(corpus.songs["split"]) == expected
    encoded = load_or_encode(path, "steps")
    rep = get_representation("steps")
    every = rolls["traindata"] + rolls["validdata"] + rolls["testdata"]
    for i, roll in enumerate(every):
        np.testing.assert_array_equal(rep.roll(encoded.song(i)), roll)
    held = corpus.notes(0)  # consecutive steps of a key are one note; the benchmark cannot tell held from struck
    rows = sorted(zip(held["onset_tick"].tolist(), held["duration_tick"].tolist(), held["pitch"].tolist()))
    assert rows == [(0, 2, 40), (2, 4, 21), (3, 1, 40), (5, 1, 108)]
    assert held["onset"][list(held["pitch"]).index(21)] == 1.0  # a step is an eighth note


def test_a_file_that_is_no_benchmark_roll_is_one_failure_with_its_reason(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "noise.mat").write_bytes(b"MATLAB? no: just bytes " * 40)
    scipy_io.savemat(str(tmp_path / "src" / "other.mat"), {"weights": np.eye(3)})
    write_mat(tmp_path / "src" / "wide.mat", {"traindata": [np.ones((3, 12), np.uint8)]})
    write_mat(tmp_path / "src" / "good.mat", {"testdata": random_rolls(np.random.default_rng(0), 2)})
    manifest = prepare_quietly(tmp_path / "src", tmp_path / "c")
    reasons = {Path(f["path"]).name: f["reason"] for f in manifest["failures"]}
    assert reasons["noise.mat"].startswith("not a readable MATLAB file")
    assert reasons["other.mat"] == "no traindata, validdata or testdata in this MATLAB file (not a piano-roll " \
                                   "benchmark file)"
    assert reasons["wide.mat"] == "traindata: a sequence of shape (3, 12) is not a 0/1 roll of 88 keys"
    assert manifest["counts"]["songs"] == 2 and manifest["counts"]["test_songs"] == 2


def test_steps_writes_each_step_as_its_keys_ascending_then_an_end_of_step_token():
    rep = get_representation("steps")
    notes = {"onset": np.array([0.0, 0.0, 0.5, 2.0]), "duration": np.array([1.0, 0.5, 0.5, 0.25]),
             "pitch": np.array([64, 60, 67, 72]), "is_drum": np.zeros(4, bool)}
    tokens = rep.encode_song(notes)["pitch"].tolist()
    step = STEP_ID
    assert tokens == [BOS, key_id(60), key_id(64), step, key_id(64), key_id(67), step, step, step, key_id(72), step,
                      EOS]
    assert rep.vocab().stream("pitch").tokens[-1] == "step" and len(rep.vocab().stream("pitch").tokens) == 89


def test_decoding_the_encoding_gives_the_notes_as_the_roll_holds_them():
    rng = np.random.default_rng(1)
    n = 300
    notes = {"onset": rng.integers(0, 80, n) / 4, "duration": rng.integers(1, 12, n) / 4,
             "pitch": rng.integers(15, 115, n), "is_drum": rng.random(n) < 0.05}
    notes = {k: np.asarray(v) for k, v in notes.items()}
    full = {**nt.empty_notes(), **{k: notes[k].astype(nt.NOTE_COLUMNS[k]) for k in notes}}
    full["onset_tick"] = (notes["onset"] * 480).astype(np.int64)
    for k in ("track", "duration_tick", "velocity", "program"):
        full[k] = np.zeros(n, nt.NOTE_COLUMNS[k])
    rep = get_representation("steps")
    quantized = rep.quantize(full)
    decoded = rep.decode(rep.encode_song(full))

    def rows(x):
        return sorted(zip(x["onset_tick"].tolist(), x["duration_tick"].tolist(), x["pitch"].tolist()))

    assert rows(decoded) == rows(quantized) and len(rows(decoded)) > 50
    assert min(quantized["pitch"]) >= 21 and max(quantized["pitch"]) <= 108  # the piano's 88 keys
    # a roll cannot hold two notes of one key in one step: the cells of notes and of the decoded notes agree
    np.testing.assert_array_equal(rep.roll(rep.encode_song(full)), rep.roll(rep.encode_song(decoded)))


def test_both_baselines_give_known_answers_on_a_tiny_roll():
    train = np.zeros((4, 88), np.uint8)
    train[:3, 0] = 1  # key 0 sounds in steps 1-3 and stops in step 4
    test = np.zeros((2, 88), np.uint8)
    test[1, 0] = 1  # silent, then key 0
    # Bernoulli: key 0 on in 2 of the 3 training steps 2..4: p = 2.5 / 4; the others p = 0.5 / 4
    assert bernoulli_nll([train], [test]) == pytest.approx(-math.log(2.5 / 4) + 87 * math.log(8 / 7))
    # given the previous step: key 0 was never off before in training: p(on | off) = 0.5 / 1; others as above
    assert markov_nll([train], [test]) == pytest.approx(math.log(2) + 87 * math.log(8 / 7))


class Uniform(NextEventModel):
    """A model that gives every id of the vocabulary the same probability."""

    def predict(self, streams, cond=0):
        tokens = streams["pitch"]
        return {"pitch": np.full((len(tokens) - 1, STEP_ID + 1), -math.log(STEP_ID + 1), np.float32)}


def test_nats_per_step_sum_the_tokens_of_steps_2_to_t_renormalized_over_what_a_step_holds():
    step = STEP_ID
    song = {"pitch": np.array([BOS, key_id(60), step, key_id(60), key_id(64), step, step, EOS])}
    # steps 2 and 3 are predicted: 3 + 1 tokens, each one of the 89 ids a step can hold
    assert step_nll(Uniform(), [song], [0], step) == pytest.approx(4 * math.log(89) / 2)
    two = {"pitch": np.array([BOS, key_id(60), step, step, EOS])}
    assert step_nll(Uniform(), [song, two], [0, 0], step) == pytest.approx(5 * math.log(89) / 3)


def test_the_song_cache_blends_what_followed_the_longest_earlier_match_into_each_token_exactly():
    step, a = STEP_ID, key_id(60)
    song = {"pitch": np.array([BOS, a, step, a, step, a, step, EOS])}  # one key held for three steps
    assert step_nll(Uniform(), [song], [0], step, song_cache=0.0) == pytest.approx(4 * math.log(89) / 2)
    # the scored tokens (steps 2 and 3): a after "a STEP" -- no STEP before it, the model alone; STEP
    # after "a" (1 token matched, STEP followed it once); a after "a STEP" (2 matched); STEP after
    # "a STEP a" (3 matched): the cache is certain each time, with weight 0.1 per matched token
    expected = -(math.log(1 / 89) + math.log(0.9 / 89 + 0.1) + math.log(0.8 / 89 + 0.2) + math.log(0.7 / 89 + 0.3))
    assert step_nll(Uniform(), [song], [0], step, song_cache=0.1) == pytest.approx(expected / 2)
    # the blend never goes past MAX_WEIGHT (0.9): the model keeps a tenth
    heavy = -(math.log(1 / 89) + 3 * math.log(0.1 / 89 + 0.9))
    assert step_nll(Uniform(), [song], [0], step, song_cache=5.0) == pytest.approx(heavy / 2)


def test_the_steps_model_rules_out_what_the_representation_never_writes(tiny):
    from notelm.config import load_config
    from notelm.models import build_model

    _, path = tiny
    encoded = load_or_encode(path, "steps")
    run = load_config("steps", ["model.hidden=16", "model.embed_dim=8"])
    model = build_model(encoded.vocab, run.model)
    song = encoded.song(0)  # held roll: step 1 silent, then key 21, key 21 + 40...
    tokens = np.asarray(song["pitch"], np.int64)
    lp = model.predict({"pitch": tokens})["pitch"]
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(1), 1.0, atol=1e-5)
    assert np.isneginf(lp[:, [0, BOS]]).all()  # PAD and BOS are never written
    for row, token in enumerate(tokens[:-1]):
        if N_SPECIAL <= token < STEP_ID:  # after a key: only higher keys or the end of the step
            assert np.isneginf(lp[row, N_SPECIAL:token + 1]).all() and np.isneginf(lp[row, EOS])
            assert np.isfinite(lp[row, token + 1:]).all()


def test_evaluate_and_generate_on_a_steps_corpus(tiny, tmp_path):
    from notelm.config import load_config
    from notelm.evaluate import EvalOptions, evaluate
    from notelm.generate import generate
    from notelm.train import train

    rolls, path = tiny
    run = load_config("steps", ["model.hidden=16", "model.embed_dim=8", "train.steps=4", "train.eval_every=2",
                                "train.batch_size=4", "train.context=32", "train.eval_crops=4"])
    train(path, run, tmp_path / "run", progress=False, log=quiet)
    report = evaluate(tmp_path / "run", EvalOptions(split="test"), progress=False, log=quiet)
    per_step = report["per_step"]
    assert per_step["steps"] == sum(len(r) - 1 for r in rolls["testdata"])
    train_rolls = rolls["traindata"]
    assert per_step["bernoulli"] == pytest.approx(bernoulli_nll(train_rolls, rolls["testdata"]))
    assert per_step["markov"] == pytest.approx(markov_nll(train_rolls, rolls["testdata"]))
    assert 0 < per_step["model"] < 200 and per_step["best_ngram"].startswith("ngram")
    assert "Per time step" in (tmp_path / "run" / "eval" / "evaluation.md").read_text()
    out = generate(tmp_path / "run" / "best", tmp_path / "gen", log=quiet)
    assert out["pieces"] and all(row["notes"] > 0 for row in out["pieces"])


def test_every_family_scores_a_steps_corpus_per_step(tiny):
    """The n-gram, LSTM and transformer read the serialization too; nats per step come out finite."""
    from notelm.config import load_config
    from notelm.models import build_model
    from notelm.models.ngram import NGramModel

    _, path = tiny
    encoded = encode_corpus(Corpus(path), "steps")
    songs = split_songs(encoded, "test")
    ngram = NGramModel(encoded.vocab, order=4).fit(encoded.streams, encoded.offsets, encoded.ids("train"))
    scores = {"ngram": step_nll(ngram, songs, np.zeros(len(songs)), STEP_ID)}
    for family in ("lstm", "transformer"):
        run = load_config(None, ['data.representation="steps"', f'model.family="{family}"', "model.hidden=16"])
        scores[family] = step_nll(build_model(encoded.vocab, run.model), songs, np.zeros(len(songs)), STEP_ID)
    assert all(0 < v < 100 for v in scores.values()), scores


@pytest.mark.slow
@pytest.mark.skipif(not REAL.exists(), reason="the shared polyphonic data is not here")
def test_the_baselines_on_the_real_files_equal_the_rows_of_source_md(tmp_path):
    bernoulli = {"JSB_Chorales": 11.09, "Nottingham": 10.26, "Piano_midi": 11.05, "MuseData": 11.51}
    markov = {"JSB_Chorales": 10.49, "Nottingham": 5.15, "Piano_midi": 8.26, "MuseData": 8.56}
    rep = get_representation("steps")
    for name in bernoulli:
        prepare_quietly(REAL / f"{name}.mat", tmp_path / name)
        encoded = load_or_encode(tmp_path / name, "steps")
        rolls = {s: [rep.roll(song) for song in split_songs(encoded, s)] for s in ("train", "test")}
        assert round(bernoulli_nll(rolls["train"], rolls["test"]), 2) == bernoulli[name]
        assert round(markov_nll(rolls["train"], rolls["test"]), 2) == markov[name]


def test_crops_by_length_draw_each_song_with_the_chance_of_its_length():
    from notelm.data import CropSampler, crop_weights

    lengths = np.array([20, 40, 200])  # crops of 16: 5, 25 and 185 full crops
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    stream = np.arange(offsets[-1])
    rng = np.random.default_rng(0)
    uniform = CropSampler([stream], offsets, np.arange(3), 16)
    weights = crop_weights("by_length", lengths, np.zeros(3))
    by_length = CropSampler([stream], offsets, np.arange(3), 16, song_weights=weights)
    share = {name: np.bincount(s.sample(rng, 20000)[1], minlength=3) / 20000
             for name, s in (("uniform", uniform), ("by_length", by_length))}
    np.testing.assert_allclose(share["uniform"], [5 / 215, 25 / 215, 185 / 215], atol=0.01)
    np.testing.assert_allclose(share["by_length"], lengths / lengths.sum(), atol=0.01)
    tokens, songs = by_length.sample(rng, 500)  # every crop lies inside its song
    assert ((tokens[:, 0, 0] >= offsets[songs]) & (tokens[:, -1, 0] < offsets[songs + 1])).all()


def test_valid_crops_like_train_are_drawn_the_way_training_crops_are(tiny):
    """Uniform valid crops would judge checkpoints mostly on the longest valid songs."""
    from notelm.config import load_config
    from notelm.train import _batches

    _, path = tiny
    encoded = load_or_encode(path, "steps")
    valid_ids = encoded.ids("valid")
    lengths = np.diff(encoded.offsets)[valid_ids]
    windows = np.maximum(lengths - 24, 1)  # crops of context 24 + 1 tokens
    share = {}
    for crops, valid_crops in (("uniform", "like_train"), ("by_length", "like_train"), ("by_length", "uniform")):
        cfg = load_config("steps", [f'train.crops="{crops}"', f'train.valid_crops="{valid_crops}"', "train.context=24",
                                    "train.batch_size=4000", "train.eval_crops=4000"]).train
        (tokens, songs), = _batches(encoded, encoded.vocab, cfg).valid
        share[crops, valid_crops] = np.array([np.mean(songs == i) for i in valid_ids])
    np.testing.assert_allclose(share["uniform", "like_train"], windows / windows.sum(), atol=0.02)
    np.testing.assert_allclose(share["by_length", "like_train"], lengths / lengths.sum(), atol=0.02)
    assert np.abs(share["uniform", "like_train"] - share["by_length", "like_train"]).max() > 0.1
    # the default keeps valid crops uniform whatever the training crops (runs made before reproduce)
    np.testing.assert_array_equal(share["by_length", "uniform"], share["uniform", "like_train"])


def test_balanced_crops_give_each_label_the_square_root_of_its_size():
    from notelm.data import CropSampler, crop_weights

    # label 0: one song of 100 events; label 1: three songs, 900 events. By length: 10 % / 90 %;
    # balanced: sqrt(100) : sqrt(900) = 1 : 3, so 25 % / 75 %, and within label 1 each song by its length
    lengths = np.array([100, 300, 200, 400])
    labels = np.array([0, 1, 1, 1])
    assert crop_weights("uniform", lengths, labels) is None
    weights = crop_weights("balanced", lengths, labels)
    np.testing.assert_allclose(weights / weights.sum(), [0.25, 0.75 / 3, 0.75 * 2 / 9, 0.75 * 4 / 9])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sampler = CropSampler([np.arange(offsets[-1])], offsets, np.arange(4), 32, song_weights=weights)
    share = np.bincount(sampler.sample(np.random.default_rng(1), 40000)[1], minlength=4) / 40000
    np.testing.assert_allclose(share, weights / weights.sum(), atol=0.01)


def test_a_mixture_of_models_and_transpositions_is_exact_and_reduces_to_its_parts(tiny):
    """One model mixed with itself, or with the identity transposition, scores what it scores alone; a
    shift that takes a key off the keyboard gives that key probability 0 and then falls silent."""
    from notelm.config import load_config
    from notelm.models import build_model
    from notelm.rollmetrics import component_logprobs, scored_rows

    _, path = tiny
    encoded = load_or_encode(path, "steps")
    # fp32: bf16 products differ with the batch size (by up to 0.01 nats a token), and the mixture is one batch
    model = build_model(encoded.vocab, load_config("steps", ["model.hidden=16", "model.embed_dim=8",
                                                             "model.bf16=false"]).model)
    songs = split_songs(encoded, "test")
    conds = np.zeros(len(songs))
    alone = step_nll(model, songs, conds, STEP_ID)
    tables = get_representation("steps").transpositions()
    assert step_nll([model, model], songs, conds, STEP_ID) == pytest.approx(alone, rel=1e-6)
    assert step_nll(model, songs, conds, STEP_ID, tables=[None, tables[0]]) == pytest.approx(alone, rel=1e-6)
    # a song whose 4th token is the lowest key: a shift down cannot say anything after it
    song = np.array([BOS, key_id(60), STEP_ID, key_id(21), STEP_ID, key_id(62), STEP_ID, EOS])
    rows = scored_rows(song, STEP_ID)
    (down,), (up,) = component_logprobs(model, song, rows, 0, [tables[-1]]), component_logprobs(model, song, rows, 0,
                                                                                                  [tables[1]])
    assert rows.tolist() == [2, 3, 4, 5]
    assert np.isneginf(down[0]) and np.isnan(down[1:]).all() and np.isfinite(up).all()
    # mixed: the first token is the mean of the identity's and the shift up's probabilities (the shift down
    # gives it 0), each token after it the mean of the two that still read the song
    (same,) = component_logprobs(model, song, rows, 0)
    together = component_logprobs(model, song, rows, 0, [None, tables[1], tables[-1]])  # one batch, same numbers
    np.testing.assert_allclose(together, np.stack([same, up, down]), rtol=1e-5)
    mixed = step_nll(model, [{"pitch": song}], [0], STEP_ID, tables=[None, tables[1], tables[-1]])
    first = np.log((np.exp(same[0]) + np.exp(up[0])) / 3)
    rest = np.logaddexp(same[1:], up[1:]) - np.log(2)
    assert mixed == pytest.approx(-(first + rest.sum()) / 2)


def test_start_crops_begin_that_share_of_crops_at_the_first_event_of_their_song():
    from notelm.data import CropSampler

    lengths = np.array([1000, 3000])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sampler = CropSampler([np.arange(offsets[-1])], offsets, np.arange(2), 64, start_share=0.25)
    tokens, songs = sampler.sample(np.random.default_rng(2), 20000)
    at_start = tokens[:, 0, 0] == offsets[songs]
    # a quarter chosen to begin there, plus the 1 in ~940 / ~2940 that a uniform start puts there anyway
    assert at_start.mean() == pytest.approx(0.25 + 0.75 * (0.25 / 937 + 0.75 / 2937), abs=0.01)
    # uniform crops already open every song equally often, so the start crops go half to each song
    assert np.bincount(songs[at_start], minlength=2) / at_start.sum() == pytest.approx([0.5, 0.5], abs=0.02)
    assert np.bincount(songs, minlength=2)[1] / 20000 == pytest.approx(0.75 * 2937 / (937 + 2937) + 0.125, abs=0.01)


def test_opening_weights_fill_the_songs_that_open_least_up_to_one_level():
    from notelm.data import opening_weights

    # natural openings 0.5 * (0.5 / 1, 0.5 / 10) = 0.25, 0.025; the budget 0.5 lifts both to (0.5 + 0.275) / 2
    extra = opening_weights(np.array([0.5, 0.5]), np.array([1, 10]), np.zeros(2, int), 0.5)
    assert extra == pytest.approx([0.3875 - 0.25, 0.3875 - 0.025])
    # a small budget lifts only the song that opens least, and not past the other
    extra = opening_weights(np.array([0.5, 0.5]), np.array([1, 10]), np.zeros(2, int), 0.1)
    assert extra == pytest.approx([0.0, 0.1])
    # each label spends its own part of the budget: label 1 has 3/4 of the chance, so 3/4 of the start crops
    extra = opening_weights(np.array([0.125, 0.125, 0.75]), np.array([1, 1, 4]), np.array([0, 0, 1]), 0.4)
    assert extra[:2].sum() == pytest.approx(0.1) and extra[2] == pytest.approx(0.3)
    assert extra[0] == pytest.approx(extra[1])


def test_start_crops_drawn_by_length_open_a_short_and_a_long_song_equally_often():
    from notelm.data import CropSampler, crop_weights

    # crops of 257 events, drawn by length: the 200-event song is always cropped from its first event, the
    # 300-event one from any of 44 starts; without start crops the short one opens 30 times as often
    lengths = np.array([200, 300, 300])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    weights = crop_weights("by_length", lengths, np.zeros(3, int))
    opens = {}
    for share in (0.0, 0.5):
        sampler = CropSampler([np.arange(offsets[-1])], offsets, np.arange(3), 257, song_weights=weights,
                              start_share=share)
        tokens, songs = sampler.sample(np.random.default_rng(0), 40000)
        opens[share] = np.bincount(songs[tokens[:, 0, 0] == offsets[songs]], minlength=3) / 40000
    assert opens[0.0][0] / opens[0.0][1] == pytest.approx(200 / 300 * 44, rel=0.15)
    assert opens[0.5] == pytest.approx(np.full(3, opens[0.5].mean()), rel=0.05)
    assert opens[0.5].sum() == pytest.approx(0.5 + 0.5 * (200 + 600 / 44) / 800, abs=0.01)


def test_evaluate_ensemble_scores_the_mixture_and_refuses_a_run_of_another_corpus(tiny, tmp_path):
    from notelm.checkpoint import load_model
    from notelm.config import load_config
    from notelm.evaluate import EvalOptions, evaluate
    from notelm.io import NotelmError
    from notelm.train import train

    _, path = tiny
    settings = ["model.hidden=16", "model.embed_dim=8", "train.steps=4", "train.eval_every=2", "train.batch_size=4",
                "train.context=32", "train.eval_crops=4"]
    for seed in (0, 1):
        train(path, load_config("steps", [*settings, f"train.seed={seed}"]), tmp_path / f"run{seed}", progress=False,
              log=quiet)
    report = evaluate(tmp_path / "run0", EvalOptions(split="test", ensemble=str(tmp_path / "run1")), progress=False,
                      log=quiet)
    encoded = load_or_encode(path, "steps")
    songs = split_songs(encoded, "test")
    models = [load_model(tmp_path / f"run{seed}") for seed in (0, 1)]
    cond = np.full(len(songs), models[0].vocab.condition_id("Tiny_Set"))
    assert report["per_step"]["model"] == pytest.approx(step_nll(models, songs, cond, STEP_ID), rel=1e-5)
    cached = evaluate(tmp_path / "run0", EvalOptions(split="test", ensemble=str(tmp_path / "run1"), song_cache=0.05),
                      tmp_path / "cached", progress=False, log=quiet)["per_step"]
    assert cached["model"] == pytest.approx(step_nll(models, songs, cond, STEP_ID, song_cache=0.05), rel=1e-5)
    assert cached["ngram"] == report["per_step"]["ngram"]  # the n-gram alone, and beside it with the same cache
    assert cached["ngram_song_cache"] != cached["ngram"]
    assert "| model + song cache 0.05 |" in (tmp_path / "cached" / "evaluation.md").read_text()
    assert report["model"]["label"].startswith("steps_lstm x 2 runs")
    other = tmp_path / "other"
    shutil.copytree(path, other)
    train(other, load_config("steps", settings), tmp_path / "elsewhere", progress=False, log=quiet)
    with pytest.raises(NotelmError, match="not on .*the songs scored may be among its training songs"):
        evaluate(tmp_path / "run0", EvalOptions(ensemble=str(tmp_path / "elsewhere")), progress=False, log=quiet)


def test_evaluate_mixes_in_the_ngram_and_fits_the_song_cache_on_valid_for_the_per_step_metric(tiny, tmp_path):
    from notelm.checkpoint import load_model
    from notelm.config import load_config
    from notelm.evaluate import EvalOptions, evaluate
    from notelm.io import NotelmError
    from notelm.rollmetrics import blend_scored, fit_song_cache, fit_step_ngrams, mixture_logprobs, nats_per_step
    from notelm.train import train

    _, path = tiny
    settings = ["model.hidden=16", "model.embed_dim=8", "train.steps=4", "train.eval_every=2", "train.batch_size=4",
                "train.context=32", "train.eval_crops=4"]
    train(path, load_config("steps", settings), tmp_path / "run", progress=False, log=quiet)
    report = evaluate(tmp_path / "run", EvalOptions(split="test", ngram_blend=0.2, song_cache_fit=True),
                      tmp_path / "eval", progress=False, log=quiet)["per_step"]
    encoded = load_or_encode(path, "steps")
    model = load_model(tmp_path / "run")
    best, ngrams = fit_step_ngrams(encoded, STEP_ID)

    def scored(split):
        songs = split_songs(encoded, split)
        cond = np.full(len(songs), model.vocab.condition_id("Tiny_Set"))
        ngram = mixture_logprobs(ngrams[best], songs, np.zeros(len(songs)), STEP_ID)
        return blend_scored(mixture_logprobs(model, songs, cond, STEP_ID), ngram, 0.2), ngram

    (valid, valid_ngram), (test, test_ngram) = scored("valid"), scored("test")
    shares = fit_song_cache(valid)  # fitted on the valid split, used on test
    assert report["model"] == pytest.approx(nats_per_step(test, STEP_ID, shares), rel=1e-5)
    assert report["model"] != pytest.approx(nats_per_step(test, STEP_ID), rel=1e-5)
    assert report["song_cache"] == pytest.approx(np.round(shares, 4).tolist(), abs=1e-4)
    assert report["ngram_song_cache"] == pytest.approx(
        nats_per_step(test_ngram, STEP_ID, fit_song_cache(valid_ngram)), rel=1e-5)
    assert f"| model + {best} 0.2 + song cache fitted on valid |" in (tmp_path / "eval" / "evaluation.md").read_text()
    on_valid = evaluate(tmp_path / "run", EvalOptions(split="valid", ngram_blend=0.2, song_cache_fit=True),
                        tmp_path / "eval_valid", progress=False, log=quiet)["per_step"]  # fitted and scored on valid
    assert on_valid["model"] == pytest.approx(nats_per_step(valid, STEP_ID, shares), rel=1e-5)
    assert on_valid["ngram_song_cache"] == pytest.approx(
        nats_per_step(valid_ngram, STEP_ID, fit_song_cache(valid_ngram)), rel=1e-5)
    with pytest.raises(NotelmError, match="--song-cache-fit .* no --song-cache beside it"):
        evaluate(tmp_path / "run", EvalOptions(song_cache=0.1, song_cache_fit=True), tmp_path / "x", progress=False,
                 log=quiet)
