"""N-gram models and dummy baselines: counts, smoothing, normalization, song boundaries,
joint marginals, incremental generation, persistence, n-gram EDA."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notelm.checkpoint import load_model, save_model
from notelm.encoding.vocab import BOS, EOS, Stream, Vocab
from notelm.evaluate import fit_models
from notelm.io import NotelmError
from notelm.models.baselines import MajorityModel, StratifiedModel
from notelm.models.ngram import NGramModel, _kn_discounts
from notelm.stats import top_ngrams

SEED_VOCAB = Vocab("seed", {}, [Stream("pitch", [str(i) for i in range(12)]),
                                Stream("duration", ["16th", "8th", "q", "h", "w"])])
P_SIZE, D_SIZE = 15, 8  # 12 / 5 values + PAD, BOS, EOS


def corpus(songs):
    """``songs``: list of (pitches, durations) without BOS/EOS -> (streams, offsets)."""
    pitch = [np.concatenate([[BOS], p, [EOS]]) for p, _ in songs]
    duration = [np.concatenate([[BOS], d, [EOS]]) for _, d in songs]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pitch])]).astype(np.int64)
    streams = {"pitch": np.concatenate(pitch).astype(np.uint8), "duration": np.concatenate(duration).astype(np.uint8)}
    return streams, offsets


def song(streams, offsets, i):
    return {name: v[offsets[i]:offsets[i + 1]] for name, v in streams.items()}


def random_songs(rng, n, lo=3, hi=30):
    return [(rng.integers(3, P_SIZE, L), rng.integers(3, D_SIZE, L)) for L in rng.integers(lo, hi, n)]


def probs_of(logprobs):
    return np.exp(logprobs.astype(np.float64))


# ---------------------------------------------------------------------------- counting and add-k


def test_counts_and_add_one_probabilities():
    streams, offsets = corpus([([3, 4, 3], [3, 3, 3]), ([3, 4], [3, 3])])
    model = NGramModel(SEED_VOCAB, order=2, smoothing="addk", k_add=1.0).fit(streams, offsets)
    ngrams, counts = model.ngram_counts("pitch")
    assert dict(zip(map(tuple, ngrams.tolist()), counts.tolist())) == {
        (BOS, 3): 2, (3, 4): 2, (4, 3): 1, (3, EOS): 1, (4, EOS): 1}
    outcomes = P_SIZE - 2  # every id but PAD and BOS
    test = {"pitch": np.array([BOS, 3, 4, 5, EOS]), "duration": np.array([BOS, 3, 3, 3, EOS])}
    p = probs_of(model.predict(test)["pitch"])
    expected = [(2 + 1) / (2 + outcomes),   # 3 after BOS
                (2 + 1) / (3 + outcomes),   # 4 after 3 (3 was followed by 4, 4, EOS)
                (0 + 1) / (2 + outcomes),   # 5 after 4
                1 / outcomes]               # EOS after 5: context never seen -> uniform
    np.testing.assert_allclose(p[np.arange(4), test["pitch"][1:]], expected, rtol=1e-6)
    assert np.all(p[:, :2] == 0)  # PAD and BOS are never predicted


def test_trigram_counts_are_bos_padded():
    streams, offsets = corpus([([3, 4], [3, 3])])
    ngrams, counts = NGramModel(SEED_VOCAB, order=3).fit(streams, offsets).ngram_counts("pitch")
    assert sorted(map(tuple, ngrams.tolist())) == [(BOS, BOS, 3), (BOS, 3, 4), (3, 4, EOS)]
    assert counts.tolist() == [1, 1, 1]


# ---------------------------------------------------------------------------- Kneser-Ney


def reference_kn(songs, order, size, bos=BOS, first=EOS):
    """A plain-Python interpolated modified Kneser-Ney, written from the textbook definition."""
    grams = Counter()
    for s in songs:
        padded = [bos] * (order - 1) + list(s)
        for j in range(1, len(s)):
            grams[tuple(padded[j:j + order])] += 1
    adjusted = {order: dict(grams)}
    higher = grams
    for n in range(order - 1, 0, -1):
        raw, continuation = Counter(), Counter()
        for g, c in higher.items():
            raw[g[1:]] += c
            continuation[g[1:]] += 1
        adjusted[n] = {g: (raw[g] if n >= 2 and g[0] == bos else continuation[g]) for g in raw}
        higher = raw
    discounts = {n: _kn_discounts(np.array(list(a.values()), float)) for n, a in adjusted.items()}

    def prob(context, w, n=order):
        a, d = adjusted[n], discounts[n]
        h = tuple(context[len(context) - (n - 1):]) if n > 1 else ()
        successors = {g[-1]: c for g, c in a.items() if g[:-1] == h}
        total = sum(successors.values())
        lower = prob(context, w, n - 1) if n > 1 else (1.0 / (size - first) if w >= first else 0.0)
        if total == 0:
            return lower
        cut = {v: min(d[min(int(c), 3) - 1], c) for v, c in successors.items()}
        gamma = sum(cut.values()) / total
        return (successors.get(w, 0) - cut.get(w, 0)) / total + gamma * lower
    return prob


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_matches_reference(order):
    rng = np.random.default_rng(order)
    songs = [(rng.integers(3, 7, L), rng.integers(3, 5, L)) for L in rng.integers(2, 25, 20)]  # small alphabet: repeats
    streams, offsets = corpus(songs)
    model = NGramModel(SEED_VOCAB, order=order).fit(streams, offsets)
    reference = reference_kn([np.concatenate([[BOS], p, [EOS]]) for p, _ in songs], order, P_SIZE)
    test = np.array([BOS, 3, 4, 5, 3, 6, 9, 3, EOS])  # 9 never seen: unseen contexts too
    durations = np.r_[BOS, [3] * (len(test) - 2), EOS]
    got = probs_of(model.predict({"pitch": test, "duration": durations})["pitch"])
    padded = [BOS] * (order - 1) + test.tolist()
    for j in range(1, len(test)):
        context = padded[j:j + order - 1]
        want = [reference(context, w) for w in range(P_SIZE)]
        np.testing.assert_allclose(got[j - 1], want, rtol=1e-5, atol=1e-7)


song_lists = st.lists(st.lists(st.integers(3, P_SIZE - 1), min_size=0, max_size=12), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(songs=song_lists, order=st.integers(1, 4), joint=st.booleans(), smoothing=st.sampled_from(["kn", "addk"]),
       query=st.lists(st.integers(1, P_SIZE - 1), min_size=1, max_size=20), seed=st.integers(0, 2 ** 16))
def test_distributions_are_normalized(songs, order, joint, smoothing, query, seed):
    rng = np.random.default_rng(seed)
    pairs = [(np.array(p, np.int64), rng.integers(3, D_SIZE, len(p))) for p in songs]
    streams, offsets = corpus(pairs)
    model = NGramModel(SEED_VOCAB, order=order, joint=joint, smoothing=smoothing, k_add=0.3).fit(streams, offsets)
    # a query song of arbitrary (often unseen) values, BOS-started: every row of every stream sums to 1
    test = {"pitch": np.array([BOS] + query), "duration": np.r_[BOS, rng.integers(1, D_SIZE, len(query))]}
    for logprobs in model.predict(test).values():
        p = probs_of(logprobs)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(p[:, :2] == 0) and np.all(p[:, 2:] > 0)  # every predictable id keeps some mass


# ---------------------------------------------------------------------------- behaviour


def test_bigram_learns_a_cycle_and_beats_the_unigram():
    songs = [(np.tile([3, 4, 5], 10), np.tile([3, 4], 15)) for _ in range(10)]
    streams, offsets = corpus(songs)
    bigram = NGramModel(SEED_VOCAB, order=2).fit(streams, offsets)
    unigram = NGramModel(SEED_VOCAB, order=1).fit(streams, offsets)
    test = song(streams, offsets, 0)
    for name in ("pitch", "duration"):
        target = test[name][1:].astype(np.int64)
        regular = target > EOS
        lp2, lp1 = bigram.predict(test)[name], unigram.predict(test)[name]
        assert np.all(lp2.argmax(1)[regular] == target[regular])
        nll = lambda lp, target=target: -np.take_along_axis(lp, target[:, None], 1).mean()
        assert nll(lp2) < nll(lp1) - 0.5


def test_order_one_equals_stratified_prior():
    rng = np.random.default_rng(1)
    streams, offsets = corpus(random_songs(rng, 40))
    train = np.arange(0, 40, 2)
    prior = StratifiedModel(SEED_VOCAB, alpha=0.5).fit(streams, offsets, train)
    addk = NGramModel(SEED_VOCAB, order=1, smoothing="addk", k_add=0.5).fit(streams, offsets, train)
    kn = NGramModel(SEED_VOCAB, order=1).fit(streams, offsets, train)
    test = song(streams, offsets, 1)
    want, got_addk, got_kn = prior.predict(test), addk.predict(test), kn.predict(test)
    for name in SEED_VOCAB.names:
        np.testing.assert_allclose(got_addk[name], want[name], rtol=1e-6)  # identical estimator
        np.testing.assert_allclose(probs_of(got_kn[name]), probs_of(want[name]), atol=0.02)  # differs only by smoothing


def test_contexts_do_not_cross_song_boundaries():
    # The first song starts with 5, the twenty after it with 3.  A model that padded
    # only the corpus start (or read the previous song's end as context) would see
    # the (BOS, BOS) context once, followed by 5, and predict 5 for a new song.
    songs = [([5, 6], [3, 3])] + [([3, 6], [3, 3])] * 20
    streams, offsets = corpus(songs)
    for joint in (False, True):
        model = NGramModel(SEED_VOCAB, order=3, joint=joint).fit(streams, offsets)
        p = probs_of(model.predict(song(streams, offsets, 0))["pitch"])
        assert p[0].argmax() == 3 and p[0, 3] > 0.8
    ngrams, _ = NGramModel(SEED_VOCAB, order=3).fit(streams, offsets).ngram_counts("pitch")
    assert not np.any(ngrams[:, :-1] == EOS)  # nothing is ever conditioned on a previous song's end


def test_fitting_a_subset_equals_fitting_that_subset_alone():
    rng = np.random.default_rng(2)
    songs = random_songs(rng, 12)
    streams, offsets = corpus(songs)
    chosen = [7, 2, 9]
    alone_streams, alone_offsets = corpus([songs[i] for i in chosen])
    test = song(streams, offsets, 0)
    for joint in (False, True):
        a = NGramModel(SEED_VOCAB, order=3, joint=joint).fit(streams, offsets, chosen).predict(test)
        b = NGramModel(SEED_VOCAB, order=3, joint=joint).fit(alone_streams, alone_offsets).predict(test)
        for name in SEED_VOCAB.names:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("smoothing", ["kn", "addk"])
def test_joint_marginals_are_consistent(smoothing):
    rng = np.random.default_rng(3)
    streams, offsets = corpus(random_songs(rng, 30, hi=15))
    model = NGramModel(SEED_VOCAB, order=3, joint=True, smoothing=smoothing).fit(streams, offsets, np.arange(25))
    assert model.ordered
    test = song(streams, offsets, 27)  # held out: contains unseen events and contexts
    test["pitch"] = test["pitch"].copy()
    test["pitch"][3] = 14  # a value rare enough to make an unseen event
    logprobs = model.predict(test)
    p0 = probs_of(logprobs["pitch"])
    np.testing.assert_allclose(p0.sum(1), 1.0, atol=1e-5)
    t = np.arange(len(test["pitch"]) - 1)
    chain = (logprobs["pitch"][t, test["pitch"][1:]].astype(np.float64)
             + logprobs["duration"][t, test["duration"][1:]].astype(np.float64))
    np.testing.assert_allclose(chain, model.logprob_events(test), atol=1e-5)  # P(s0) P(s1|s0) = P(s0, s1)


def test_joint_distribution_sums_to_one_over_all_events():
    rng = np.random.default_rng(4)
    streams, offsets = corpus(random_songs(rng, 15, hi=10))
    model = NGramModel(SEED_VOCAB, order=2, joint=True).fit(streams, offsets)
    prompt = {name: v[None, :4] for name, v in song(streams, offsets, 0).items()}
    state = model.begin(prompt, np.zeros(1, np.int64))
    total = 0.0
    p0 = probs_of(model.stream_logprobs(state, 0, []))[0]
    for v in range(2, P_SIZE):  # sum over every (pitch, duration) of P(pitch) P(duration | pitch)
        total += p0[v] * probs_of(model.stream_logprobs(state, 1, [np.array([v])]))[0].sum()
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("joint", [False, True])
def test_incremental_generation_matches_predict(joint):
    rng = np.random.default_rng(5)
    streams, offsets = corpus(random_songs(rng, 20, lo=12))
    model = NGramModel(SEED_VOCAB, order=3, joint=joint).fit(streams, offsets, np.arange(15))
    length = 10
    pieces = [{name: v[:length] for name, v in song(streams, offsets, i).items()} for i in (3, 17)]  # seen and held out
    expected = [model.predict(piece) for piece in pieces]
    for prompt_length in (1, 4):
        prompt = {name: np.stack([piece[name][:prompt_length] for piece in pieces]) for name in SEED_VOCAB.names}
        state = model.begin(prompt, np.zeros(2, np.int64))
        for t in range(prompt_length - 1, length - 1):
            chosen = []
            for k, name in enumerate(SEED_VOCAB.names):
                got = model.stream_logprobs(state, k, chosen)
                for b in range(2):
                    np.testing.assert_allclose(got[b], expected[b][name][t], rtol=1e-6, atol=1e-6)
                chosen.append(np.array([piece[name][t + 1] for piece in pieces]))
            state = model.advance(state, dict(zip(SEED_VOCAB.names, chosen)))


@pytest.mark.parametrize("make", [
    lambda: NGramModel(SEED_VOCAB, order=4),
    lambda: NGramModel(SEED_VOCAB, order=2, smoothing="addk", k_add=0.1),
    lambda: NGramModel(SEED_VOCAB, order=3, joint=True),
    lambda: MajorityModel(SEED_VOCAB),
    lambda: StratifiedModel(SEED_VOCAB),
])
def test_save_load_round_trip(tmp_path, make):
    rng = np.random.default_rng(6)
    streams, offsets = corpus(random_songs(rng, 20))
    model = make().fit(streams, offsets, np.arange(15))
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    for i in (0, 18):
        want, got = model.predict(song(streams, offsets, i)), loaded.predict(song(streams, offsets, i))
        for name in SEED_VOCAB.names:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_saved_model_missing_its_tables_or_folder_fails_clearly(tmp_path):
    from safetensors.numpy import save_file

    streams, offsets = corpus(random_songs(np.random.default_rng(0), 3))
    save_model(NGramModel(SEED_VOCAB, order=2).fit(streams, offsets), tmp_path / "m")
    save_file({"pitch/context1": np.zeros(3, np.int64)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(NotelmError, match="m: n-gram model file lacks the table .pitch/ngram_keys."):
        load_model(tmp_path / "m")
    with pytest.raises(NotelmError, match="no such model or run directory"):
        load_model(tmp_path / "nothing")


def test_n_gram_models_saved_by_older_notelm_still_load(tmp_path):
    """Older notelm wrote n-gram and dummy settings at the top of config.json, not under "model"."""
    import json

    streams, offsets = corpus(random_songs(np.random.default_rng(0), 3))
    model = NGramModel(SEED_VOCAB, order=2, smoothing="addk", k_add=0.5).fit(streams, offsets)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    flat = {"family": "ngram", **{k: v for k, v in config["model"].items() if k != "family"}, "vocab": config["vocab"]}
    (tmp_path / "m" / "config.json").write_text(json.dumps(flat))
    assert load_model(tmp_path / "m").cfg == model.cfg


# ---------------------------------------------------------------------------- baselines


def test_majority_and_stratified_baselines():
    # pitch targets: 3 x6, 4 x2, EOS x2 -> mode 3, prior (.6, .2, .2)
    streams, offsets = corpus([([3, 3, 3, 4], [3, 3, 3, 3]), ([3, 3, 3, 4], [4, 4, 4, 4])])
    majority = MajorityModel(SEED_VOCAB).fit(streams, offsets)
    assert majority.modes()["pitch"] == 3
    p = probs_of(majority.predict(song(streams, offsets, 0))["pitch"])
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert np.all(p.argmax(1) == 3) and p[0, 3] == pytest.approx(1 - majority.eps)
    stratified = StratifiedModel(SEED_VOCAB, alpha=0.0).fit(streams, offsets)
    assert stratified.expected_accuracy()["pitch"] == pytest.approx(0.6 ** 2 + 0.2 ** 2 + 0.2 ** 2)
    expected = 0.6 * 0.6 + 0.2 * 0.2 + 0.2 * 0.2
    assert stratified.expected_accuracy(streams, offsets, [0])["pitch"] == pytest.approx(expected)
    prior = probs_of(stratified.predict(song(streams, offsets, 0))["pitch"])[0, [2, 3, 4]]
    np.testing.assert_allclose(prior, [.2, .6, .2], rtol=1e-6)


def test_fit_models_names():
    streams, offsets = corpus(random_songs(np.random.default_rng(0), 6))
    models = fit_models(SEED_VOCAB, streams, offsets, [0, 1, 2], orders=(2, 3), joint_orders=(2,))
    assert sorted(models) == ["joint2", "majority", "ngram2", "ngram3", "stratified"]


# ---------------------------------------------------------------------------- errors


def test_bad_input_is_a_clear_error():
    streams, offsets = corpus(random_songs(np.random.default_rng(0), 3))
    with pytest.raises(NotelmError, match=r"model.order must be >= 1 \(got 0\)"):
        NGramModel(SEED_VOCAB, order=0)
    with pytest.raises(NotelmError, match="model.order = 2.5: expected an integer"):
        NGramModel(SEED_VOCAB, order=2.5)
    with pytest.raises(NotelmError, match="model.smoothing = 'witten-bell': expected one of 'kn', 'addk'"):
        NGramModel(SEED_VOCAB, smoothing="witten-bell")
    with pytest.raises(NotelmError, match="model.eps must be < 1.0"):
        MajorityModel(SEED_VOCAB, eps=1.0)
    with pytest.raises(NotelmError, match="streams"):
        NGramModel(SEED_VOCAB).fit({"pitch": streams["pitch"]}, offsets)
    with pytest.raises(NotelmError, match="offsets"):
        NGramModel(SEED_VOCAB).fit(streams, offsets[:-1])
    with pytest.raises(NotelmError, match="not been fitted"):
        NGramModel(SEED_VOCAB).predict(song(streams, offsets, 0))
    model = NGramModel(SEED_VOCAB).fit(streams, offsets)
    with pytest.raises(NotelmError, match="BOS"):
        model.predict({name: v[1:] for name, v in song(streams, offsets, 0).items()})
    with pytest.raises(NotelmError, match="outside"):
        model.predict({"pitch": np.array([BOS, 99]), "duration": np.array([BOS, 3])})
    broken = {name: v.copy() for name, v in streams.items()}
    broken["pitch"][offsets[1] - 1] = 5  # song 0 no longer ends with EOS
    with pytest.raises(NotelmError, match="song 0"):
        NGramModel(SEED_VOCAB).fit(broken, offsets)


# ---------------------------------------------------------------------------- EDA


def test_top_ngrams_known_counts():
    streams, offsets = corpus([([3, 4, 3, 4], [3, 3, 3, 3]), ([4, 3, 4], [3, 4, 3])])
    assert top_ngrams(streams["pitch"], offsets, n=2, k=5) == [((3, 4), 3), ((4, 3), 2)]
    assert top_ngrams(streams["pitch"], offsets, n=3) == [((4, 3, 4), 2), ((3, 4, 3), 1)]
    assert top_ngrams(streams["pitch"], offsets, n=5) == []  # no song has five regular events
    events = np.stack([streams["pitch"], streams["duration"]], axis=1)
    assert top_ngrams(events, offsets, n=1, k=2) == [(((4, 3),), 4), (((3, 3),), 2)]  # (pitch, duration) events
    # without offsets the BOS/EOS between songs still stop n-grams at the boundary
    assert top_ngrams(streams["pitch"], None, n=2) == top_ngrams(streams["pitch"], offsets, n=2)
