"""Evaluation metrics.

Music metrics (this section and the two after it) describe pieces by what they
sound like and compare a set of generated pieces with a set of real ones:

- ``piece_metrics(notes)``: the MusPy / mgeval family of per-piece metrics.
- ``compare_sets(generated, reference)``: one distance per metric between two
  sets; ``format_table`` lays several comparisons side by side in Markdown.
- ``longest_shared_run`` / ``copy_report`` / ``CorpusIndex``: how long a run of
  events a generated piece copies from any training piece.
- ``repeated_note_share(notes)``: how much of a piece is one note repeated (the one
  definition of a repeated note: the same pitch as the previous note of its track).

Next-event prediction (the last section) scores a model's log-probabilities
against the events that came next: ``accuracy``, ``bits_per_event``,
``perplexity``, ``expected_accuracy``, and ``PredictionScores`` to sum them
over a whole split chunk by chunk; ``prediction_table`` prints them.

Everything works on note tables (see ``notelm.notes``) or integer event arrays
and is vectorized numpy: loops run per piece, never per note.
"""

from __future__ import annotations

import math

import numpy as np

from notelm.notes import Notes

# =============================================================================
# Music metrics of one piece (MusPy / mgeval definitions)
# =============================================================================
#
# References:
#   MusPy metrics, muspy/metrics/metrics.py (Dong et al., "MusPy: A toolkit for
#   symbolic music generation", ISMIR 2020);
#   mgeval (Yang & Lerch, "On the evaluation of generative models in music",
#   Neural Computing and Applications 2018).
# Drum notes are left out of every pitch metric (their "pitch" names an
# instrument) and of the duration histogram (drum durations mean nothing);
# rhythm metrics (empty beats, inter-onset intervals) and velocity use all notes.

# Log-spaced bins for durations and inter-onset intervals, in quarter notes.
# Bin centres are 2**-4 .. 2**4 in half-octave steps: straight values (1/16 ..
# 16 quarters) fall into the whole-power bins, dotted values (x1.5) and
# triplets (x2/3) into the half-power bins between them.  Values outside the
# range are counted in the first / last bin.
TIME_BIN_EDGES = 2.0 ** np.arange(-4.25, 4.5, 0.5)
TIME_BIN_CENTERS = 2.0 ** np.arange(-4.0, 4.5, 0.5)

# Times are compared on an integer grid of a millionth of a quarter note:
# durations are float32 in the note table, so note ends carry ~1e-7 noise that
# would otherwise make notes that touch overlap by a hair.
_TIME_UNITS_PER_QUARTER = 1_000_000

_MAJOR_SCALE = np.array([1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1], bool)  # C D E F G A B
_MINOR_SCALE = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 0], bool)  # C D Eb F G Ab Bb (natural)
# 24 rows: the 12 major scales (rows 0-11, root = row), then the 12 natural minor ones.
SCALE_MASKS = np.array([np.roll(_MAJOR_SCALE, root) for root in range(12)]
                       + [np.roll(_MINOR_SCALE, root) for root in range(12)])

SCALAR_METRICS = (
    "pitch_range", "n_pitches_used", "n_pitch_classes_used", "pitch_entropy", "pitch_class_entropy",
    "scale_consistency", "polyphony", "polyphony_rate", "empty_beat_rate", "mean_velocity",
    "repeated_note_share",
)
HISTOGRAM_METRICS = ("pitch_class_histogram", "pitch_histogram", "duration_histogram", "ioi_histogram")

_REQUIRED_COLUMNS = ("track", "onset", "duration", "pitch", "velocity", "is_drum")


def piece_metrics(notes: Notes) -> dict:
    """The music metrics of one piece: scalars (float) and normalized histograms (np.ndarray).

    Definitions (MusPy's unless said otherwise; drums excluded from pitch metrics):

    - ``pitch_class_histogram`` (12) / ``pitch_histogram`` (128): share of pitched
      notes per pitch class / MIDI pitch (mgeval's ``total_pitch_class_histogram``).
    - ``pitch_range``: highest minus lowest pitch; 0 without notes (as MusPy).
    - ``n_pitches_used`` / ``n_pitch_classes_used``: distinct pitches / pitch classes.
    - ``pitch_entropy`` / ``pitch_class_entropy``: Shannon entropy in bits of the
      two histograms.
    - ``scale_consistency``: the largest share of notes inside one scale, over the
      24 major and natural-minor scales (as MusPy; each natural minor holds the same
      notes as its relative major, so this equals the maximum over the 12 major scales).
    - ``polyphony``: mean number of distinct pitches sounding, averaged over the time
      during which at least one sounds (MusPy: piano-roll rows with a note on).
    - ``polyphony_rate``: share of the piece's time (0 to the last note end) with at
      least 2 distinct pitches sounding.  MusPy's docstring says "multiple pitches";
      its code counts ``> threshold`` with ``threshold=2``, i.e. 3 or more.
    - ``empty_beat_rate``: share of quarter-note beats [b, b+1), b = 0 .. ceil(end)-1,
      in which no note (drums included) sounds.  A note sounds on [onset, onset +
      duration), as in a piano roll (Pypianoroll, which MusPy cites); MusPy's own
      loop also counts the beat in which a note *ends*, so it misses a one-beat rest
      after a note ending on the beat.
    - ``duration_histogram`` / ``ioi_histogram``: durations of pitched notes and
      intervals between successive distinct onset times (all notes), counted in
      ``TIME_BIN_EDGES``.  mgeval has both as linear 12-class histograms; the
      log-spaced bins here fit any tick resolution.
    - ``mean_velocity``: mean MIDI velocity of all notes.
    - ``repeated_note_share``: see ``repeated_note_share``.

    Scalars that need a note are NaN for a piece without one; histograms are then all zero.
    """
    _check_note_table(notes)
    pitched = ~np.asarray(notes["is_drum"], bool)
    pitch = np.asarray(notes["pitch"], np.int64)[pitched]
    if len(pitch) and (pitch.min() < 0 or pitch.max() > 127):
        raise ValueError(f"note table has pitches outside 0-127 (from {pitch.min()} to {pitch.max()})")
    onset, end = _time_units(notes)
    if len(onset) and onset.min() < 0:
        raise ValueError(f"note table has a negative onset ({onset.min() / _TIME_UNITS_PER_QUARTER} quarters)")

    pitch_counts = np.bincount(pitch, minlength=128)
    class_counts = np.bincount(pitch % 12, minlength=12)
    n_pitched = len(pitch)
    metrics: dict = {
        "pitch_class_histogram": _normalized(class_counts),
        "pitch_histogram": _normalized(pitch_counts),
        "pitch_range": float(pitch.max() - pitch.min()) if n_pitched else 0.0,
        "n_pitches_used": float(np.count_nonzero(pitch_counts)),
        "n_pitch_classes_used": float(np.count_nonzero(class_counts)),
        "pitch_entropy": _entropy_bits(pitch_counts),
        "pitch_class_entropy": _entropy_bits(class_counts),
        # in-scale note counts for all 24 scales at once
        "scale_consistency": float((SCALE_MASKS @ class_counts).max() / n_pitched) if n_pitched else math.nan,
    }
    piece_end = end.max(initial=0)  # over all notes, drums too: the length of MusPy's piano roll
    metrics["polyphony"], metrics["polyphony_rate"] = _polyphony(onset[pitched], end[pitched], pitch, piece_end)
    metrics["empty_beat_rate"] = _empty_beat_rate(onset, end)
    metrics["duration_histogram"] = log_time_histogram(np.asarray(notes["duration"], np.float64)[pitched])
    metrics["ioi_histogram"] = log_time_histogram(np.diff(np.unique(onset)) / _TIME_UNITS_PER_QUARTER)
    velocity = np.asarray(notes["velocity"], np.float64)
    metrics["mean_velocity"] = float(velocity.mean()) if len(velocity) else math.nan
    metrics["repeated_note_share"] = repeated_note_share(notes)
    return metrics


def time_bin_counts(quarters: np.ndarray) -> np.ndarray:
    """Counts of times in quarter notes over ``TIME_BIN_EDGES`` (outliers go to the end bins)."""
    n_bins = len(TIME_BIN_EDGES) - 1
    bins = np.clip(np.searchsorted(TIME_BIN_EDGES, np.asarray(quarters, np.float64), side="right") - 1, 0, n_bins - 1)
    return np.bincount(bins, minlength=n_bins)


def log_time_histogram(quarters: np.ndarray) -> np.ndarray:
    """Normalized ``time_bin_counts``."""
    return _normalized(time_bin_counts(quarters))


def repeated_note_share(notes: Notes) -> float:
    """Share of pitched notes whose pitch equals the previous note's in the same track.

    Notes are taken in onset order within each track (ties low to high); the
    share is over the notes that have a previous note in their track, so a piece
    that is one pitch hammered over and over scores 1.0.  NaN when no track has
    two pitched notes.  Drums are left out: a repeated kick drum is normal.
    """
    _check_note_table(notes)
    pitched = ~np.asarray(notes["is_drum"], bool)
    track = np.asarray(notes["track"], np.int64)[pitched]
    pitch = np.asarray(notes["pitch"], np.int64)[pitched]
    onset = np.asarray(notes["onset"], np.float64)[pitched]
    order = np.lexsort((pitch, onset, track))
    track, pitch = track[order], pitch[order]
    has_previous = track[1:] == track[:-1]
    if not has_previous.any():
        return math.nan
    return float(np.count_nonzero(has_previous & (pitch[1:] == pitch[:-1])) / np.count_nonzero(has_previous))


def _check_note_table(notes: Notes) -> None:
    if not isinstance(notes, dict):
        raise ValueError(f"expected a note table (dict of numpy arrays), got {type(notes).__name__}")
    missing = [name for name in _REQUIRED_COLUMNS if name not in notes]
    if missing:
        raise ValueError(f"note table is missing column(s) {', '.join(missing)}")
    lengths = {name: len(notes[name]) for name in _REQUIRED_COLUMNS}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"note table columns have different lengths: {lengths}")


def _time_units(notes: Notes) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and ends on the integer time grid."""
    onset = np.asarray(notes["onset"], np.float64)
    end = onset + np.asarray(notes["duration"], np.float64)
    return (np.rint(onset * _TIME_UNITS_PER_QUARTER).astype(np.int64),
            np.rint(end * _TIME_UNITS_PER_QUARTER).astype(np.int64))


def _normalized(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts))


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _polyphony(onset: np.ndarray, end: np.ndarray, pitch: np.ndarray, piece_end: int) -> tuple[float, float]:
    """(polyphony, polyphony rate) from pitched notes on the integer time grid.

    This is MusPy's binary piano roll without building it: the time axis is cut
    at every note start and end, and each segment knows how many distinct
    pitches sound during it.
    """
    sounding = end > onset  # a zero-length note never shows in a piano roll
    onset, end, pitch = onset[sounding], end[sounding], pitch[sounding]
    if len(onset) == 0:
        return math.nan, (0.0 if piece_end > 0 else math.nan)
    # A piano roll is binary per pitch: merge overlapping notes of one pitch so a
    # doubled pitch (two tracks in unison) counts once.
    order = np.lexsort((onset, pitch))
    onset, end, pitch = onset[order], end[order], pitch[order]
    # running max of note ends within each pitch; shifting each pitch's times
    # above all lower pitches' lets one accumulate cover every pitch
    shift = (pitch - pitch[0]) * (end.max() - end.min() + 1)
    reach = np.maximum.accumulate(end + shift) - shift
    starts_run = np.ones(len(onset), bool)
    starts_run[1:] = (pitch[1:] != pitch[:-1]) | (onset[1:] > reach[:-1])
    first = np.flatnonzero(starts_run)
    run_onset, run_end = onset[first], np.maximum.reduceat(end, first)

    times, where = np.unique(np.concatenate([run_onset, run_end]), return_inverse=True)
    step = np.bincount(where, weights=np.repeat([1.0, -1.0], len(run_onset)), minlength=len(times))
    n_sounding = np.rint(np.cumsum(step)[:-1]).astype(np.int64)  # on [times[k], times[k+1])
    length = np.diff(times)
    time_with_sound = length[n_sounding > 0].sum()
    polyphony = float((n_sounding * length).sum() / time_with_sound)
    polyphony_rate = float(length[n_sounding >= 2].sum() / piece_end)
    return polyphony, polyphony_rate


def _empty_beat_rate(onset: np.ndarray, end: np.ndarray) -> float:
    """Share of quarter-note beats [b, b+1) from 0 to the piece's end in which nothing sounds."""
    beat = _TIME_UNITS_PER_QUARTER
    piece_end = end.max(initial=0)
    if piece_end <= 0:
        return math.nan
    n_beats = -(-piece_end // beat)  # ceil
    sounding = end > onset
    first_beat = onset[sounding] // beat
    stop_beat = -(-end[sounding] // beat)  # ceil: one past the last beat the note touches
    # +1 where a note starts covering beats, -1 after; a running sum > 0 marks covered beats
    cover = np.bincount(first_beat, minlength=n_beats + 1) - np.bincount(stop_beat, minlength=n_beats + 1)
    covered = np.cumsum(cover)[:n_beats] > 0
    return float(1.0 - covered.mean())


# =============================================================================
# Comparing a set of generated pieces with a set of real ones
# =============================================================================

_KL_FLOOR = 1e-6  # added to every histogram bin so KL stays finite where one set has no mass


def compare_sets(generated: list[Notes], reference: list[Notes]) -> dict[str, dict]:
    """For every metric of ``piece_metrics``, how close ``generated`` is to ``reference``.

    Histogram metrics: each set's mean histogram (the mean over its pieces of each
    piece's normalized histogram; pieces without any note left out), their
    overlapping area ``oa`` = sum(min(p, q)) (1 = identical, 0 = disjoint) and
    ``kl`` = KL(reference || generated) in bits, after adding 1e-6 to every bin.
    Result keys: ``kind="histogram"``, ``oa``, ``kl``, ``generated_hist``,
    ``reference_hist``, ``n_generated``, ``n_reference``.

    Scalar metrics: the overlapping area of the two sets' distributions of the
    per-piece values, each estimated with a Gaussian kernel density (Scott's
    bandwidth, as mgeval through scipy's ``gaussian_kde``), plus each set's mean
    and standard deviation.  Pieces where a metric is NaN are left out of it.
    Result keys: ``kind="scalar"``, ``oa``, ``generated_mean``, ``generated_std``,
    ``reference_mean``, ``reference_std``, ``n_generated``, ``n_reference``.
    """
    if not generated or not reference:
        raise ValueError(f"compare_sets needs pieces in both sets (got {len(generated)} generated, "
                         f"{len(reference)} reference)")
    generated_metrics = [piece_metrics(notes) for notes in generated]
    reference_metrics = [piece_metrics(notes) for notes in reference]
    results: dict[str, dict] = {}
    for name in HISTOGRAM_METRICS:
        p_gen, n_gen = _mean_histogram([m[name] for m in generated_metrics])
        p_ref, n_ref = _mean_histogram([m[name] for m in reference_metrics])
        usable = n_gen > 0 and n_ref > 0
        results[name] = {
            "kind": "histogram",
            "oa": histogram_overlap(p_gen, p_ref) if usable else math.nan,
            "kl": kl_divergence_bits(p_ref, p_gen) if usable else math.nan,
            "generated_hist": p_gen, "reference_hist": p_ref, "n_generated": n_gen, "n_reference": n_ref,
        }
    for name in SCALAR_METRICS:
        gen = _finite([m[name] for m in generated_metrics])
        ref = _finite([m[name] for m in reference_metrics])
        results[name] = {
            "kind": "scalar",
            "oa": overlap_area_kde(gen, ref),
            "generated_mean": _mean(gen), "generated_std": _std(gen),
            "reference_mean": _mean(ref), "reference_std": _std(ref),
            "n_generated": len(gen), "n_reference": len(ref),
        }
    return results


def histogram_overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Overlapping area of two normalized histograms: sum of the bin-wise minimum."""
    return float(np.minimum(p, q).sum())


def kl_divergence_bits(p: np.ndarray, q: np.ndarray, floor: float = _KL_FLOOR) -> float:
    """KL(p || q) in bits, after adding ``floor`` to every bin of both and renormalizing."""
    p = np.asarray(p, np.float64) + floor
    q = np.asarray(q, np.float64) + floor
    p, q = p / p.sum(), q / q.sum()
    return float(max((p * np.log2(p / q)).sum(), 0.0))  # max: rounding can give -1e-17


def overlap_area_kde(a: np.ndarray, b: np.ndarray, grid_per_bandwidth: int = 5) -> float:
    """Overlapping area of the Gaussian kernel densities of samples ``a`` and ``b``.

    Bandwidth per sample by Scott's rule (std * n**-0.2, scipy's default), but at
    least 1 % of the pooled range so that a set of equal values is a narrow bump
    rather than a spike.  The densities are integrated on a uniform grid
    (``grid_per_bandwidth`` points per the smaller bandwidth; at most a few
    thousand points).  1.0 when every value in both sets is the same; NaN when a
    set is empty.
    """
    a, b = _finite(a), _finite(b)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    span = high - low
    if span == 0:
        return 1.0
    floor = span / 100
    bandwidth_a, bandwidth_b = max(_scott_bandwidth(a), floor), max(_scott_bandwidth(b), floor)
    widest = max(bandwidth_a, bandwidth_b)
    step = min(bandwidth_a, bandwidth_b) / grid_per_bandwidth
    grid = np.arange(low - 5 * widest, high + 5 * widest + step, step)
    overlap = np.minimum(_gaussian_kde(a, bandwidth_a, grid), _gaussian_kde(b, bandwidth_b, grid))
    return float(min(np.trapezoid(overlap, grid), 1.0))


def _scott_bandwidth(x: np.ndarray) -> float:
    return float(x.std(ddof=1) * len(x) ** -0.2) if len(x) > 1 else 0.0


def _gaussian_kde(samples: np.ndarray, bandwidth: float, grid: np.ndarray, chunk: int = 256) -> np.ndarray:
    density = np.zeros(len(grid))
    for start in range(0, len(samples), chunk):  # chunks keep the grid x samples matrix small
        z = (grid[:, None] - samples[None, start:start + chunk]) / bandwidth
        density += np.exp(-0.5 * z * z).sum(1)
    return density / (len(samples) * bandwidth * math.sqrt(2 * math.pi))


def _mean_histogram(histograms: list[np.ndarray]) -> tuple[np.ndarray, int]:
    stacked = np.stack(histograms)
    nonempty = stacked[stacked.sum(1) > 0]
    if len(nonempty) == 0:
        return np.zeros(stacked.shape[1]), 0
    return nonempty.mean(0), len(nonempty)


def _finite(values) -> np.ndarray:
    values = np.asarray(values, np.float64).ravel()
    return values[np.isfinite(values)]


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _std(x: np.ndarray) -> float:
    return float(x.std()) if len(x) else math.nan


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """A Markdown table of several ``compare_sets`` results side by side.

    ``results`` maps a column title (e.g. "model vs real") to a ``compare_sets``
    result; rows are the metrics.  Histogram cells read ``OA 0.912 · KL 0.051``;
    scalar cells ``OA 0.83 · 4.21±1.10 vs 4.50±0.90`` (generated vs reference
    mean ± std).  A legend line follows the table.
    """
    if not results:
        raise ValueError("format_table needs at least one comparison")
    titles = list(results)
    metric_names = list(dict.fromkeys(name for result in results.values() for name in result))
    lines = ["| metric | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for name in metric_names:
        cells = [_format_cell(results[title].get(name)) for title in titles]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("OA: overlapping area (1 = same distribution, 0 = disjoint); KL: KL(reference ‖ generated) "
                 "in bits; scalars show generated vs reference mean ± std.")
    return "\n".join(lines)


def _format_cell(entry: dict | None) -> str:
    if entry is None:
        return ""
    if entry["kind"] == "histogram":
        return f"OA {_num(entry['oa'])} · KL {_num(entry['kl'])}"
    return (f"OA {_num(entry['oa'])} · {_num(entry['generated_mean'])}±{_num(entry['generated_std'])}"
            f" vs {_num(entry['reference_mean'])}±{_num(entry['reference_std'])}")


def _num(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


# =============================================================================
# Copying: the longest run of events a generated piece shares with the corpus
# =============================================================================
#
# A window of n events is identified by a 62-bit hash (two polynomial hashes
# modulo primes below 2**31, so every product fits in int64; a false match
# between two given windows has probability ~2**-62).  Any window's hash comes
# from prefix sums in O(1), so checking all windows of one length n against the
# whole corpus is a few vector operations over the corpus.  The longest shared
# run of a piece is found by a search over n (doubling, then bisection); all
# pieces are searched together, so each corpus pass serves every piece that
# needs that n.

_HASH_PRIMES = (2_147_483_647, 2_147_483_629)
_HASH_BASES = (1_000_003, 998_244_353)  # fixed: the same input always gives the same hashes
_CORPUS_CHUNK = 1 << 20  # windows hashed per step of a corpus pass (bounds temporary memory)
_FILTER_SIZE = 1 << 22  # slots of the bitmap that screens corpus windows before the exact search


class _PrefixHash:
    """Hashes of all windows of an integer sequence (values in [0, 2**31)), from prefix sums.

    For each prime p with base B: prefix[i] = sum_{j<i} x[j] B^j mod p, and the
    window x[s:s+n] hashes to (prefix[s+n] - prefix[s]) * B^-s mod p, which does
    not depend on where the window sits.  Stored as uint32 to halve memory.
    """

    def __init__(self, values: np.ndarray):
        values = np.asarray(values, np.int64)
        self.prefix, self.inverse_power = [], []
        for p, base in zip(_HASH_PRIMES, _HASH_BASES):
            prefix = np.zeros(len(values) + 1, np.int64)
            np.cumsum(values * _powers_mod(base, len(values), p) % p, out=prefix[1:])  # < 2**31 * len: no overflow
            self.prefix.append((prefix % p).astype(np.uint32))
            self.inverse_power.append(_powers_mod(pow(base, -1, p), len(values), p).astype(np.uint32))

    def window_keys(self, first: int, stop: int, n: int) -> np.ndarray:
        """int64 keys of the windows of length n starting at first, ..., stop - 1."""
        key = np.zeros(max(stop - first, 0), np.int64)
        for p, prefix, inverse_power in zip(_HASH_PRIMES, self.prefix, self.inverse_power):
            # difference + p lies in (0, 2p) < 2**32, times a power < 2**31: still below 2**63
            difference = prefix[first + n:stop + n].astype(np.int64) - prefix[first:stop] + p
            key = (key << 31) | (difference * inverse_power[first:stop] % p)
        return key


def _powers_mod(base: int, count: int, p: int) -> np.ndarray:
    """base**i mod p for i < count, as int64: a row of small powers times a column of big ones."""
    block = max(1, math.isqrt(count) + 1)
    small, big = [1], [1]
    for _ in range(block - 1):
        small.append(small[-1] * base % p)
    step = small[-1] * base % p  # base**block
    for _ in range(-(-count // block) - 1):
        big.append(big[-1] * step % p)
    table = np.array(big, np.int64)[:, None] * np.array(small, np.int64)[None, :] % p
    return table.ravel()[:count]


class CorpusIndex:
    """The training corpus, ready to find the longest run a piece shares with it.

    ``tokens``: one int id per event, all songs one after another; ``offsets``:
    where each song starts (a trailing ``len(tokens)``, as in CSR offsets, is
    accepted; 0 may be left out).  Runs never cross from one song into the next.
    Build it once and ask it about as many pieces as needed.  Memory: about 20
    bytes per corpus event (more while it is being built).
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        tokens = _event_array(tokens, "corpus_tokens")
        boundaries = _song_boundaries(offsets, len(tokens))
        self.n_events = len(tokens)
        self.longest_song = int(np.diff(boundaries).max(initial=0))
        # ids -> 1..V so that 0 can stand for an id the corpus never uses
        self.vocabulary = np.unique(tokens)
        self._hash = _PrefixHash(np.searchsorted(self.vocabulary, tokens) + 1)
        # events left in the song from each position: a window of n fits where room >= n
        song_end = np.repeat(boundaries[1:], np.diff(boundaries))
        room_dtype = np.int32 if self.longest_song < 2**31 else np.int64
        self._room = (song_end - np.arange(len(tokens))).astype(room_dtype)

    def longest_shared_runs(self, pieces: list[np.ndarray]) -> np.ndarray:
        """For every piece, the length of its longest run of events found contiguously in one song."""
        encoded = [self._encode(_event_array(piece, "generated piece")) for piece in pieces]
        lengths = np.array([len(piece) for piece in encoded], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        query_hash = _PrefixHash(np.concatenate(encoded) if encoded else np.zeros(0, np.int64))

        shared = np.zeros(len(pieces), np.int64)  # a run this long is known to be shared
        bound = np.minimum(lengths, self.longest_song)  # no run can be longer
        doubling = np.ones(len(pieces), bool)  # first double n until a test fails, then bisect
        while (open_ := shared < bound).any():
            target = np.where(doubling, np.maximum(2 * shared, 1), (shared + bound + 1) // 2)
            target = np.minimum(target, bound)
            for n in np.unique(target[open_]):
                group = np.flatnonzero(open_ & (target == n))
                matches = self._match_windows(query_hash, starts[group], lengths[group], int(n))
                for piece, matched in zip(group, matches):
                    if matched.any():
                        shared[piece] = n
                        # a shared run of length L >= n is L - n + 1 consecutive matched n-windows
                        bound[piece] = min(bound[piece], n - 1 + _longest_true_run(matched))
                    else:
                        bound[piece] = n - 1
                        doubling[piece] = False
        return shared

    def _encode(self, piece: np.ndarray) -> np.ndarray:
        position = np.minimum(np.searchsorted(self.vocabulary, piece), max(len(self.vocabulary) - 1, 0))
        known = self.vocabulary[position] == piece if len(self.vocabulary) else np.zeros(len(piece), bool)
        return np.where(known, position + 1, 0)

    def _match_windows(self, query_hash: _PrefixHash, starts, lengths, n: int) -> list[np.ndarray]:
        """For each piece, which of its length-n windows occur in the corpus (one pass over the corpus)."""
        keys = [query_hash.window_keys(start, start + length - n + 1, n) for start, length in zip(starts, lengths)]
        wanted, which = np.unique(np.concatenate(keys), return_inverse=True)
        found = np.zeros(len(wanted), bool)
        # A bitmap over the keys' low bits sends only the few corpus windows that
        # may match on to the (much slower) binary search.
        maybe_wanted = np.zeros(_FILTER_SIZE, bool)
        maybe_wanted[wanted & (_FILTER_SIZE - 1)] = True
        n_windows = self.n_events - n + 1
        for first in range(0, max(n_windows, 0), _CORPUS_CHUNK):
            stop = min(first + _CORPUS_CHUNK, n_windows)
            corpus_keys = self._hash.window_keys(first, stop, n)
            corpus_keys = corpus_keys[maybe_wanted[corpus_keys & (_FILTER_SIZE - 1)] & (self._room[first:stop] >= n)]
            slot = np.minimum(np.searchsorted(wanted, corpus_keys), len(wanted) - 1)
            found[slot[wanted[slot] == corpus_keys]] = True
            if found.all():  # short windows are all found early on: the rest of the corpus can't add anything
                break
        return np.split(found[which], np.cumsum([len(k) for k in keys])[:-1])


def longest_shared_run(generated: np.ndarray, corpus_tokens: np.ndarray, corpus_offsets: np.ndarray) -> int:
    """Length of the longest run of consecutive events of ``generated`` that occurs
    contiguously inside one song of the corpus (see ``CorpusIndex`` for the arguments).

    Builds an index each call: for many pieces use ``copy_report`` or a ``CorpusIndex``.
    """
    return int(CorpusIndex(corpus_tokens, corpus_offsets).longest_shared_runs([generated])[0])


def copy_report(generated_pieces: list[np.ndarray], corpus_tokens: np.ndarray, corpus_offsets: np.ndarray,
                index: CorpusIndex | None = None) -> dict:
    """Longest shared run of every generated piece with the corpus, and a summary.

    Returns ``per_piece`` (int array), ``piece_lengths``, ``share_of_piece`` (run /
    piece length), ``min`` / ``median`` / ``mean`` / ``max`` of the runs, and
    ``histogram``: ``{"edges": [0, 1, 2, 4, 8, ...], "counts": ...}`` with bins
    [edges[i], edges[i+1]).  Pass ``index`` to reuse a ``CorpusIndex`` built before
    (``corpus_tokens`` / ``corpus_offsets`` are then ignored).
    """
    if not generated_pieces:
        raise ValueError("copy_report needs at least one generated piece")
    index = index if index is not None else CorpusIndex(corpus_tokens, corpus_offsets)
    runs = index.longest_shared_runs(generated_pieces)
    lengths = np.array([len(piece) for piece in generated_pieces], np.int64)
    edges = np.concatenate([[0], 2 ** np.arange(int(runs.max()).bit_length() + 1)])
    counts = np.bincount(np.searchsorted(edges, runs, side="right") - 1, minlength=len(edges) - 1)
    return {
        "per_piece": runs,
        "piece_lengths": lengths,
        "share_of_piece": np.divide(runs, lengths, out=np.zeros(len(runs)), where=lengths > 0),
        "min": int(runs.min()), "median": float(np.median(runs)), "mean": float(runs.mean()), "max": int(runs.max()),
        "histogram": {"edges": edges, "counts": counts},
    }


def _event_array(values, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
        raise ValueError(f"{what} must be a 1-D array of integer event ids, got dtype {values.dtype} "
                         f"and shape {values.shape}")
    return values.astype(np.int64, copy=False)


def _song_boundaries(offsets, n_events: int) -> np.ndarray:
    """0, every song start, n_events: sorted and without repeats."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or not (np.issubdtype(offsets.dtype, np.integer) or offsets.size == 0):
        raise ValueError(f"corpus_offsets must be a 1-D integer array of song starts, got dtype {offsets.dtype} "
                         f"and shape {offsets.shape}")
    offsets = offsets.astype(np.int64)
    if len(offsets) and (offsets.min() < 0 or offsets.max() > n_events):
        raise ValueError(f"corpus_offsets must lie in 0..{n_events} (the number of corpus events), "
                         f"got values from {offsets.min()} to {offsets.max()}")
    if (np.diff(offsets) < 0).any():
        raise ValueError("corpus_offsets must be sorted: they are the positions where songs start")
    return np.unique(np.concatenate([[0], offsets, [n_events]]))


def _longest_true_run(mask: np.ndarray) -> int:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=0))


# =============================================================================
# Next-event prediction: accuracy, bits per event, perplexity
# =============================================================================
#
# A model's prediction for one target is a row of log-probabilities (natural
# log) over a stream's vocabulary; the target is the id that came next.
#   accuracy           share of targets that are the row's argmax (ties: lowest id)
#   expected accuracy  mean probability of the target: the accuracy of a guess drawn
#                      from the distribution (sklearn's "stratified" dummy scores
#                      this on average: sum_i p_i * f_i)
#   bits per event     mean of -log2 p(target): the cross-entropy in bits
#   perplexity         2 ** bits: the number of equally likely choices that would be as uncertain
# Summing the bits of every stream of an event gives the NLL of the whole event
# (the chain rule for ordered heads, the product of the marginals otherwise).

LOG2_E = 1.0 / math.log(2.0)


def target_logprobs(logprobs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Natural-log probability of each target, float64 ``[N]``, from ``logprobs [N, V]`` and ``targets [N]``."""
    logprobs = np.asarray(logprobs)
    targets = np.asarray(targets, np.int64)
    if logprobs.ndim != 2 or targets.shape != logprobs.shape[:1]:
        raise ValueError(f"expected log-probabilities [N, V] and targets [N], got {logprobs.shape} and {targets.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= logprobs.shape[1]):
        raise ValueError(f"targets must be ids in 0..{logprobs.shape[1] - 1}")
    return np.take_along_axis(logprobs, targets[:, None], 1)[:, 0].astype(np.float64)


def accuracy(logprobs: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose most likely id is the target (NaN without targets)."""
    targets = np.asarray(targets, np.int64)
    target_logprobs(logprobs, targets)  # validates shapes and ranges
    return float(np.mean(np.argmax(logprobs, axis=1) == targets)) if len(targets) else math.nan


def expected_accuracy(logprobs: np.ndarray, targets: np.ndarray) -> float:
    """Mean probability of the target: the accuracy of sampling from the predicted distribution."""
    p = np.exp(target_logprobs(logprobs, targets))
    return float(p.mean()) if len(p) else math.nan


def bits_per_event(logprobs: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log2-likelihood of the targets (inf if a target had probability 0)."""
    lp = target_logprobs(logprobs, targets)
    return float(-lp.mean() * LOG2_E) if len(lp) else math.nan


def perplexity(bits: float) -> float:
    """``2 ** bits``: 4.0 for 2 bits (a uniform guess among 4)."""
    return float(2.0 ** bits) if math.isfinite(bits) else math.inf


class PredictionScores:
    """Running sums of accuracy and NLL per stream over many batches of predictions.

    ``add({stream: logprobs [N, V]}, {stream: targets [N]})`` as often as needed,
    then ``result()``.  Only four numbers per stream (and two for whole events) are
    kept, so a whole corpus can be scored chunk by chunk.  A whole event is right
    when every stream's most likely value is its target (``total.accuracy``); its
    expected accuracy is the mean product of the streams' target probabilities.
    """

    def __init__(self, streams: list[str]):
        self.streams = list(streams)
        self.n = 0
        self.correct = dict.fromkeys(self.streams, 0)
        self.nll_bits = dict.fromkeys(self.streams, 0.0)
        self.target_prob = dict.fromkeys(self.streams, 0.0)
        self.joint_correct = 0
        self.joint_prob = 0.0

    def add(self, logprobs: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> None:
        lengths = {len(np.asarray(targets[name])) for name in self.streams}
        if len(lengths) != 1:
            raise ValueError(f"every stream needs the same number of targets, got {sorted(lengths)}")
        n = lengths.pop()
        all_right, joint_lp = np.ones(n, bool), np.zeros(n)
        for name in self.streams:
            lp = target_logprobs(logprobs[name], targets[name])
            right = np.argmax(logprobs[name], axis=1) == np.asarray(targets[name])
            self.correct[name] += int(np.count_nonzero(right))
            self.nll_bits[name] += float(-lp.sum() * LOG2_E)
            self.target_prob[name] += float(np.exp(lp).sum())
            all_right &= right
            joint_lp += lp
        self.joint_correct += int(np.count_nonzero(all_right))
        self.joint_prob += float(np.exp(joint_lp).sum())
        self.n += n

    def result(self) -> dict[str, dict]:
        """``{stream: {accuracy, expected_accuracy, bits, perplexity}, "total": {bits, perplexity, accuracy,
        expected_accuracy}, "targets": N}``; ``total`` is the whole event (every stream)."""
        out: dict = {}
        n = max(self.n, 1)
        for name in self.streams:
            bits = self.nll_bits[name] / n if self.n else math.nan
            out[name] = {"accuracy": self.correct[name] / n if self.n else math.nan,
                         "expected_accuracy": self.target_prob[name] / n if self.n else math.nan,
                         "bits": bits, "perplexity": perplexity(bits)}
        total = sum(out[name]["bits"] for name in self.streams)
        out["total"] = {"bits": total, "perplexity": perplexity(total),
                        "accuracy": self.joint_correct / n if self.n else math.nan,
                        "expected_accuracy": self.joint_prob / n if self.n else math.nan}
        out["targets"] = self.n
        return out


def prediction_table(results: dict[str, dict], streams: list[str], marks: dict[str, str] | None = None,
                     accuracy_key: dict[str, str] | None = None) -> str:
    """A Markdown table: one row per model (``results`` maps a name to ``PredictionScores.result()``),
    per stream accuracy / bits / perplexity, then the total bits and perplexity of a whole event.

    ``marks``: text appended to a model's name (e.g. " ★"); ``accuracy_key``: per model,
    which accuracy to show ("accuracy" by default, "expected_accuracy" for a guess drawn
    from the distribution, as the stratified dummy).
    """
    marks, accuracy_key = marks or {}, accuracy_key or {}
    header = (["model"] + [f"{s} {what}" for s in streams for what in ("acc", "bits", "ppl")]
              + ["total bits", "total ppl"])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, result in results.items():
        key = accuracy_key.get(name, "accuracy")
        cells = [f"{name}{marks.get(name, '')}"]
        for s in streams:
            cells += [_fixed(result[s][key], 3), _fixed(result[s]["bits"], 3), _fixed(result[s]["perplexity"], 2)]
        cells += [_fixed(result["total"]["bits"], 3), _fixed(result["total"]["perplexity"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fixed(x: float, digits: int) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
