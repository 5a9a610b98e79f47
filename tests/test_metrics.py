"""Music metrics, set comparison and copy detection, on tiny hand-checked inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notelm.metrics import (
    TIME_BIN_EDGES,
    CorpusIndex,
    compare_sets,
    copy_report,
    format_table,
    histogram_overlap,
    kl_divergence_bits,
    log_time_histogram,
    longest_shared_run,
    overlap_area_kde,
    piece_metrics,
    repeated_note_share,
)
from notelm.notes import concat, empty_notes, make_notes

C_MAJOR_OCTAVE = [60, 62, 64, 65, 67, 69, 71, 72]  # C4 .. C5


def melody(pitches, duration=1.0, **kwargs):
    """One note per quarter, back to back."""
    return make_notes(np.arange(len(pitches), dtype=float), duration, pitches, **kwargs)


# --- pitch metrics --------------------------------------------------------------------------


def test_c_major_scale_pitch_metrics():
    m = piece_metrics(melody(C_MAJOR_OCTAVE))
    assert m["pitch_range"] == 12
    assert m["n_pitches_used"] == 8
    assert m["n_pitch_classes_used"] == 7
    assert m["scale_consistency"] == 1.0
    assert m["pitch_entropy"] == pytest.approx(3.0)  # 8 equally frequent pitches
    # C twice, six classes once: -(2/8 log2 2/8 + 6 * 1/8 log2 1/8) = 0.5 + 2.25
    assert m["pitch_class_entropy"] == pytest.approx(2.75)
    expected = np.zeros(12)
    expected[[0, 2, 4, 5, 7, 9, 11]] = [2 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
    np.testing.assert_allclose(m["pitch_class_histogram"], expected)
    assert m["pitch_histogram"].shape == (128,) and m["pitch_histogram"][72] == pytest.approx(1 / 8)


def test_seven_note_scale_has_pitch_class_entropy_log2_7():
    m = piece_metrics(melody(C_MAJOR_OCTAVE[:7]))
    assert m["pitch_class_entropy"] == pytest.approx(math.log2(7))


def test_scale_consistency_counts_notes_outside_the_best_scale():
    assert piece_metrics(melody(C_MAJOR_OCTAVE + [66]))["scale_consistency"] == pytest.approx(8 / 9)
    # all 12 pitch classes once: any major or minor scale holds 7 of them
    assert piece_metrics(melody(range(60, 72)))["scale_consistency"] == pytest.approx(7 / 12)
    # A natural minor (A B C D E F G) is found as well as C major
    assert piece_metrics(melody([57, 59, 60, 62, 64, 65, 67]))["scale_consistency"] == 1.0


def test_drums_are_left_out_of_pitch_metrics():
    tune = melody(C_MAJOR_OCTAVE)
    drums = make_notes([0.0, 1.0, 2.0], 0.25, [35, 38, 81], is_drum=True, track=9)
    m = piece_metrics(concat([tune, drums]))
    assert m["pitch_range"] == 12
    assert m["n_pitches_used"] == 8
    assert m["pitch_class_entropy"] == pytest.approx(2.75)


# --- polyphony and empty beats ----------------------------------------------------------


def chord_rest_note():
    """C4+E4 for two beats, a rest on beat 2, G4 on beat 3."""
    return make_notes([0.0, 0.0, 3.0], [2.0, 2.0, 1.0], [60, 64, 67])


def test_polyphony_chord_then_rest_then_note():
    m = piece_metrics(chord_rest_note())
    # 2 pitches for 2 beats, 1 pitch for 1 beat, over the 3 beats with sound
    assert m["polyphony"] == pytest.approx(5 / 3)
    # at least 2 pitches during 2 of the piece's 4 beats
    assert m["polyphony_rate"] == pytest.approx(0.5)
    assert m["empty_beat_rate"] == pytest.approx(1 / 4)


def test_one_beat_rest_after_a_note_ending_on_the_beat_is_empty():
    notes = make_notes([0.0, 2.0], 1.0, [60, 62])
    assert piece_metrics(notes)["empty_beat_rate"] == pytest.approx(1 / 3)


def test_empty_beats_count_drums_and_partly_filled_beats():
    notes = concat([make_notes([0.5], 0.25, [60]), make_notes([2.0], 0.5, [36], is_drum=True, track=9),
                    make_notes([4.0], 1.0, [62])])
    # beats 0 (partly), 2 (drum), 4 sound; 1 and 3 are empty
    assert piece_metrics(notes)["empty_beat_rate"] == pytest.approx(2 / 5)


def test_a_doubled_pitch_counts_once_in_polyphony():
    notes = concat([make_notes([0.0], 2.0, [60], track=0), make_notes([1.0], 2.0, [60], track=1)])
    m = piece_metrics(notes)
    assert m["polyphony"] == pytest.approx(1.0)
    assert m["polyphony_rate"] == 0.0


def test_polyphony_ignores_float32_noise_at_touching_notes():
    third = 1 / 3  # float32 durations make note ends overshoot by ~1e-8
    notes = make_notes(np.arange(9) * third, third, [60, 62] * 4 + [64])
    m = piece_metrics(notes)
    assert m["polyphony"] == 1.0
    assert m["polyphony_rate"] == 0.0


# --- rhythm histograms, velocity ----------------------------------------------------------


def test_time_bins_put_straight_dotted_and_triplet_values_in_their_own_bins():
    bin_of = lambda q: int(np.flatnonzero(log_time_histogram([q]))[0])
    quarter, eighth, dotted_quarter, triplet_quarter = bin_of(1.0), bin_of(0.5), bin_of(1.5), bin_of(2 / 3)
    assert eighth < triplet_quarter < quarter < dotted_quarter
    assert TIME_BIN_EDGES[quarter] < 1.0 < TIME_BIN_EDGES[quarter + 1]
    assert bin_of(1e-6) == 0 and bin_of(1e6) == len(TIME_BIN_EDGES) - 2  # outliers in the end bins


def test_duration_and_ioi_histograms():
    # chord at 0, then onsets 1, 1.5, 3.5: inter-onset intervals 1, 0.5, 2
    notes = make_notes([0.0, 0.0, 1.0, 1.5, 3.5], [1.0, 1.0, 0.5, 2.0, 0.5], [60, 64, 62, 65, 67])
    m = piece_metrics(notes)
    np.testing.assert_allclose(m["ioi_histogram"], log_time_histogram([1.0, 0.5, 2.0]))
    np.testing.assert_allclose(m["duration_histogram"], log_time_histogram([1.0, 1.0, 0.5, 2.0, 0.5]))
    assert m["duration_histogram"].sum() == pytest.approx(1.0)
    assert m["duration_histogram"].max() == pytest.approx(2 / 5)


def test_mean_velocity():
    assert piece_metrics(melody([60, 62], velocity=[60, 100]))["mean_velocity"] == 80.0


def test_empty_piece_gives_nan_scalars_and_zero_histograms():
    m = piece_metrics(empty_notes())
    assert math.isnan(m["polyphony"]) and math.isnan(m["scale_consistency"]) and math.isnan(m["empty_beat_rate"])
    assert m["pitch_range"] == 0 and m["n_pitches_used"] == 0
    assert m["pitch_class_histogram"].sum() == 0


def test_bad_note_table_is_a_clear_error():
    notes = melody([60, 62])
    del notes["pitch"]
    with pytest.raises(ValueError, match="missing column"):
        piece_metrics(notes)


# --- repeated notes -------------------------------------------------------------------------


def test_repeated_note_share_within_a_track():
    assert repeated_note_share(melody([60, 60, 60, 62])) == pytest.approx(2 / 3)
    assert repeated_note_share(melody([60] * 10)) == 1.0
    assert math.isnan(repeated_note_share(melody([60])))


def test_repeated_note_share_does_not_compare_across_tracks():
    # two voices moving in parallel: in time order the pitches read 60 60 62 62, yet no voice repeats
    voices = concat([melody([60, 62], track=0), melody([60, 62], track=1)])
    assert repeated_note_share(voices) == 0.0


# --- comparing sets -------------------------------------------------------------------------


def small_set(seed, n_pieces=12, centre=62):
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(n_pieces):
        n = int(rng.integers(6, 20))
        onset = np.cumsum(rng.choice([0.0, 0.5, 1.0, 2.0], n))
        pieces.append(make_notes(onset, rng.choice([0.5, 1.0, 1.5], n), centre + rng.integers(-7, 8, n)))
    return pieces


def test_identical_sets_overlap_fully():
    pieces = small_set(0)
    results = compare_sets(pieces, pieces)
    for name, entry in results.items():
        assert entry["oa"] == pytest.approx(1.0, abs=2e-3), name
        if entry["kind"] == "histogram":
            assert entry["kl"] == pytest.approx(0.0, abs=1e-12), name
        else:
            assert entry["generated_mean"] == entry["reference_mean"]


def test_disjoint_sets_do_not_overlap():
    low = [melody([40] * 8), melody([41] * 8)]
    high = [melody([80, 92] * 4), melody([81, 93] * 4)]
    results = compare_sets(low, high)
    assert results["pitch_histogram"]["oa"] == 0.0
    assert results["pitch_histogram"]["kl"] > 10  # bits
    assert results["pitch_range"]["oa"] < 1e-3  # ranges 0 vs 12
    assert results["pitch_range"]["generated_mean"] == 0 and results["pitch_range"]["reference_mean"] == 12
    assert results["repeated_note_share"]["oa"] < 1e-3


def test_histogram_overlap_and_kl_by_hand():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.25, 0.25])
    assert histogram_overlap(p, q) == pytest.approx(0.75)
    # KL(p || q) = 0.5 log2(0.5/0.5) + 0.5 log2(0.5/0.25) = 0.5 bit (floor makes it a hair different)
    assert kl_divergence_bits(p, q) == pytest.approx(0.5, abs=1e-4)


def test_kde_overlap_of_two_gaussians():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 3000), rng.normal(1, 1, 3000)
    # overlap of N(0,1) and N(1,1) is 2 * Phi(-1/2) = 0.617
    assert overlap_area_kde(a, b) == pytest.approx(0.617, abs=0.03)
    assert overlap_area_kde(a, a + 100) < 1e-6
    assert overlap_area_kde([3.0, 3.0], [3.0]) == 1.0
    assert math.isnan(overlap_area_kde([], [1.0]))


def test_format_table_puts_comparisons_side_by_side():
    real, other = small_set(0), small_set(1, centre=70)
    table = format_table({"model vs real": compare_sets(other, real), "real vs real": compare_sets(real, real)})
    lines = table.splitlines()
    assert lines[0] == "| metric | model vs real | real vs real |"
    row = next(line for line in lines if line.startswith("| pitch_class_histogram |"))
    assert row.count("OA") == 2 and "KL 0 |" in row  # real vs real: KL exactly 0
    range_row = next(line for line in lines if line.startswith("| pitch_range |"))
    assert "±" in range_row and " vs " in range_row


def test_compare_sets_needs_both_sets():
    with pytest.raises(ValueError, match="both sets"):
        compare_sets([], small_set(0))


# --- copying --------------------------------------------------------------------------------


def test_planted_run_of_five_is_found():
    corpus = np.array([9, 9, 1, 2, 3, 4, 5, 9, 9, 7, 7], np.int64)
    offsets = np.array([0, 9])
    generated = np.array([8, 1, 2, 3, 4, 5, 8], np.int64)
    assert longest_shared_run(generated, corpus, offsets) == 5


def test_a_run_across_a_song_boundary_does_not_count():
    # songs [1 2 3 | 4 5 6]: "2 3 4 5" is contiguous in the array but spans two songs
    corpus = np.array([1, 2, 3, 4, 5, 6], np.int64)
    generated = np.array([2, 3, 4, 5], np.int64)
    assert longest_shared_run(generated, corpus, np.array([0, 3])) == 2
    assert longest_shared_run(generated, corpus, np.array([0, 3, 6])) == 2  # CSR-style offsets
    assert longest_shared_run(generated, corpus, np.array([0])) == 4  # one song: the run counts


def test_copy_edge_cases():
    corpus, offsets = np.array([1, 2, 3], np.int64), np.array([0])
    assert longest_shared_run(np.array([], np.int64), corpus, offsets) == 0
    assert longest_shared_run(np.array([7, 8]), corpus, offsets) == 0  # ids the corpus never uses
    assert longest_shared_run(np.array([1, 2, 3]), corpus, offsets) == 3  # the whole song
    assert longest_shared_run(np.array([1, 2]), np.array([], np.int64), np.array([], np.int64)) == 0


def test_bad_copy_input_is_a_clear_error():
    with pytest.raises(ValueError, match="sorted"):
        longest_shared_run(np.array([1]), np.array([1, 2, 3]), np.array([2, 1]))
    with pytest.raises(ValueError, match="0..3"):
        longest_shared_run(np.array([1]), np.array([1, 2, 3]), np.array([0, 5]))
    with pytest.raises(ValueError, match="integer event ids"):
        longest_shared_run(np.array([1.5]), np.array([1, 2, 3]), np.array([0]))


def brute_force_longest_shared_run(generated, corpus, offsets):
    """O(n^2) dynamic programme per song: longest common substring."""
    bounds = sorted({0, len(corpus), *map(int, offsets)})
    best = 0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        song = corpus[start:stop]
        previous = [0] * (len(song) + 1)
        for g in generated:
            current = [0] * (len(song) + 1)
            for j, s in enumerate(song):
                if g == s:
                    current[j + 1] = previous[j] + 1
                    best = max(best, current[j + 1])
            previous = current
    return best


@settings(max_examples=150, deadline=None)
@given(
    corpus=st.lists(st.integers(0, 3), max_size=40),
    cuts=st.lists(st.integers(0, 40), max_size=5),
    pieces=st.lists(st.lists(st.integers(0, 4), max_size=20), min_size=1, max_size=4),
)
def test_longest_shared_run_agrees_with_brute_force(corpus, cuts, pieces):
    corpus = np.array(corpus, np.int64)
    offsets = np.array(sorted(c for c in cuts if c <= len(corpus)), np.int64)
    found = CorpusIndex(corpus, offsets).longest_shared_runs([np.array(p, np.int64) for p in pieces])
    assert list(found) == [brute_force_longest_shared_run(p, corpus, offsets) for p in pieces]


def test_longest_shared_run_with_long_copies_agrees_with_brute_force():
    rng = np.random.default_rng(7)
    corpus = rng.integers(0, 3, 400)
    offsets = np.sort(rng.choice(400, 5, replace=False))
    pieces = []
    for length in (1, 9, 17, 33, 60):  # copied stretches (maybe across song starts) inside random noise
        start = int(rng.integers(0, 400 - length))
        pieces.append(np.concatenate([rng.integers(0, 5, 10), corpus[start:start + length], rng.integers(0, 5, 10)]))
    found = CorpusIndex(corpus, offsets).longest_shared_runs(pieces)
    assert list(found) == [brute_force_longest_shared_run(p, corpus, offsets) for p in pieces]


def test_copy_report_summarizes_pieces():
    corpus = np.arange(100, dtype=np.int64)
    pieces = [np.arange(10, 20), np.array([5, 50, 51, 52, 99]), np.array([200, 201])]
    report = copy_report(pieces, corpus, np.array([0]))
    assert list(report["per_piece"]) == [10, 3, 0]
    assert (report["min"], report["median"], report["max"]) == (0, 3.0, 10)
    np.testing.assert_allclose(report["share_of_piece"], [1.0, 0.6, 0.0])
    # bins [0,1) [1,2) [2,4) [4,8) [8,16)
    assert list(report["histogram"]["edges"]) == [0, 1, 2, 4, 8, 16]
    assert list(report["histogram"]["counts"]) == [1, 0, 1, 0, 1]
