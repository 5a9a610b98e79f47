"""The song cache: known answers for its counts and its blend, and its place in evaluation."""

import numpy as np
import pytest

from notelm.models.song_cache import LENGTH_EDGES, MAX_WEIGHT, cache_counts, event_ids, fit_shares, mix, shares


def test_counts_follow_the_longest_earlier_context():
    # rows predict event t + 1 from events 0..t; 9 plays BOS
    events = np.array([9, 1, 2, 1, 2, 1, 3])
    k, counts = cache_counts(events, 10)
    assert k.tolist() == [0, 0, 0, 1, 2, 3]  # [1] seen at 1; [1 2] at 1..2; [1 2 1] at 1..3
    assert counts[:3].sum() == 0
    assert np.flatnonzero(counts[3]).tolist() == [2] and counts[3, 2] == 1  # after "1": 2
    assert np.flatnonzero(counts[4]).tolist() == [1] and counts[4, 1] == 1  # after "1 2": 1
    assert np.flatnonzero(counts[5]).tolist() == [2] and counts[5, 2] == 1  # after "1 2 1": 2


def test_counts_add_up_every_earlier_occurrence_and_never_the_future():
    events = np.array([9, 1, 2, 1, 3, 1, 4])
    k, counts = cache_counts(events, 10)
    assert k[5] == 1 and counts[5].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]  # "1" was followed by 2 and by 3
    assert counts[3].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # at row 3 only the first "1" is in the past
    # changing the last event (what row 5 predicts) changes no row's counts
    _, other = cache_counts(np.array([9, 1, 2, 1, 3, 1, 2]), 10)
    np.testing.assert_array_equal(counts, other)


def test_max_context_limits_the_match():
    events = np.array([9, 1, 2, 3, 4, 1, 2, 3, 5])  # row 7 ends with "1 2 3", seen at 1..3 (then 4)
    assert cache_counts(events, 10)[0][-1] == 3
    assert cache_counts(events, 10, max_context=2)[0][-1] == 2
    assert cache_counts(events, 10, max_context=2)[1][-1, 4] == 1


def test_contexts_are_matched_exactly_however_far_back():
    # a phrase of 30 distinct events (1..30) sung three times after BOS (0), the third time cut after 20
    phrase = np.arange(30) + 1
    events = np.concatenate([[0], phrase, phrase, phrase[:20]])
    k, counts = cache_counts(events, 31, max_context=48)
    # the second phrase's 25th event (row 55): its 25 events were sung once before, the 26th back (30, the
    # first phrase's end) is not the BOS that came before the first phrase's start
    assert k[55] == 25 and counts[55].tolist() == [0] * 26 + [1] + [0] * 4
    # the last row (predicting the last event, 20) matches 48 events back, the longest read: 29 of the second
    # phrase and 19 of the third stood once before, as 29 of the first and 19 of the second, and 20 followed
    assert k[-1] == 48 and np.flatnonzero(counts[-1]).tolist() == [20] and counts[-1, 20] == 1
    # a shorter reach finds both earlier occurrences of the last 12 events
    k12, counts12 = cache_counts(events, 31, max_context=12)
    assert k12[-1] == 12 and counts12[-1, 20] == 2 and k12[55] == 12


def test_fitted_shares_maximise_the_held_out_likelihood_per_match_length():
    # the model gives the token that came 0.1; in one bucket the cache is right 80 % of the time, in another
    # 20 %.  The likelihood of a share s: f log(0.1 + 0.9 s) + (1 - f) log(0.1 (1 - s)), highest at
    # s = f - (1 - f) 0.1 / 0.9 (0 when that is negative)
    k = np.array([1] * 100 + [30] * 100 + [0] * 50)
    cache_prob = np.concatenate([np.repeat([1.0, 0.0], [20, 80]), np.repeat([1.0, 0.0], [80, 20]), np.ones(50)])
    fitted = fit_shares(np.full(len(k), 0.1), cache_prob, k, iterations=500)
    assert fitted[0] == pytest.approx(0.2 - 0.8 * 0.1 / 0.9, abs=1e-3)  # bucket of k = 1
    assert fitted[-1] == pytest.approx(0.8 - 0.2 * 0.1 / 0.9, abs=1e-3)  # bucket of k = 25..48
    assert np.all(fitted[1:-1] == 0)  # buckets without a token
    got = shares(fitted, k)
    assert got[0] == fitted[0] and got[150] == fitted[-1] and got[-1] == 0  # no match: the model alone
    assert shares(0.1, np.array([0, 1, 3, 20])).tolist() == pytest.approx([0, 0.1, 0.3, MAX_WEIGHT])
    assert len(LENGTH_EDGES) == len(fitted)


def test_event_ids_are_mixed_radix():
    tokens = np.array([[1, 1], [4, 3], [14, 7]])
    assert event_ids(tokens, [15, 8]).tolist() == [1 * 8 + 1, 4 * 8 + 3, 14 * 8 + 7]


def test_mix_blends_each_stream_with_the_marginal_of_the_counts():
    # two streams of 2 and 3 values; the song (a, x) (b, y) (a, x) (b, ?): row 2 has seen "(a, x)" -> (b, y)
    tokens = np.array([[0, 0], [1, 1], [0, 0], [1, 2]])
    rows = np.arange(3)
    uniform = {"p": np.log(np.full((3, 2), 1 / 2)), "d": np.log(np.full((3, 3), 1 / 3))}
    out = mix(uniform, tokens, rows, ["p", "d"], [2, 3], weight=0.25)
    np.testing.assert_allclose(np.exp(out["p"][:2]), 1 / 2)  # rows 0 and 1: nothing matched, unchanged
    np.testing.assert_allclose(np.exp(out["p"][2]), [0.75 * 0.5, 0.75 * 0.5 + 0.25])
    np.testing.assert_allclose(np.exp(out["d"][2]), [0.75 / 3, 0.75 / 3 + 0.25, 0.75 / 3])
    # a long match is trusted at most MAX_WEIGHT
    strong = mix(uniform, tokens, rows, ["p", "d"], [2, 3], weight=5.0)
    np.testing.assert_allclose(np.exp(strong["p"][2]), [(1 - MAX_WEIGHT) * 0.5, (1 - MAX_WEIGHT) * 0.5 + MAX_WEIGHT])



def test_mix_counts_only_the_songs_own_events_so_a_large_vocabulary_fits():
    # four streams of 300 values: 8.1e9 possible whole events, which the cache must never lay out
    rng = np.random.default_rng(0)
    phrase = rng.integers(3, 300, (8, 4))
    tokens = np.concatenate([phrase, phrase, phrase[:1]])  # the phrase twice: its second time repeats the first
    rows = np.arange(len(tokens) - 1)
    uniform = {n: np.log(np.full((len(rows), 300), 1 / 300)) for n in "abcd"}
    out = mix(uniform, tokens, rows, list("abcd"), [300] * 4, weight=0.1)
    # row 8 (after the phrase's first event again, context k = 1 .. up to 8) predicts the phrase's second event
    for s, name in enumerate("abcd"):
        p = np.exp(out[name][8])
        assert p.argmax() == phrase[1, s] and p.sum() == pytest.approx(1.0)
