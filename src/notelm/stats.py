"""``notelm stats``: what is in a corpus - tables, histograms and the most frequent n-grams.

The original experiment's "EDA on n-grams", and more, as a Markdown report with
PNG plots (default ``CORPUS/stats/``)::

    stats.md             every table below, with the plots linked in
    pitch.png            MIDI pitch (0-127) and pitch class of pitched notes
    time.png             note durations and inter-onset intervals (log-spaced bins, quarter notes)
    polyphony.png        notes sounding at each onset
    songs.png            notes per song and tracks per song
    programs.png         notes per General MIDI program
    tempo.png            tempo weighted by time, and each song's first tempo
    tokens_seed.png      token histogram of every stream of the ``seed`` representation
    tokens_events.png    ... and of the ``events`` representation (default settings)

Public functions (each works on its own; ``stats`` runs them all):

* ``size_tables(corpus)``: songs / notes / hours per collection and per split, with totals.
* ``note_histograms(corpus)``: the histograms above as ``Histogram`` counts (no plots).
* ``ngram_tables(encoded, ns, top)``: the most frequent n-grams of pitch classes, of
  duration classes and of (pitch class, duration class) pairs of a ``seed`` encoding.
* ``token_tables(encoded, top)``: per stream token counts of any encoding.
* ``stats(corpus_path, out_dir, top)``: all of it, written and summarized.

Drum notes are left out of everything where pitch or duration matters (their
"pitch" names an instrument, their length means nothing): pitch, pitch class,
duration, polyphony and programs; the inter-onset intervals use all notes, as
``metrics.piece_metrics`` does, and durations / intervals share its log-spaced
bins ``metrics.TIME_BIN_EDGES``.  Everything is vectorized numpy over the whole
note table: loops run per histogram, per n or per stream, never per note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notelm.corpus import SPLITS
from notelm.encoding.vocab import EOS
from notelm.io import NotelmError, atomic_path, write_text
from notelm.metrics import TIME_BIN_EDGES, time_bin_counts
from notelm.names import PITCH_CLASS_NAMES, pitch_name, plural

NGRAM_ORDERS = (2, 3, 4, 5, 6)
NGRAM_REPRESENTATION = "seed"  # the n-gram tables are the original's "EDA on n-grams": pitch and duration classes
NGRAM_KINDS = {"pitch": "pitch classes", "duration": "duration classes", "pair": "(pitch class, duration class) pairs"}
POLYPHONY_CAP = 16  # polyphony and tracks-per-song histograms: the last bin holds this many and more
TEMPO_EDGES = np.arange(20.0, 315.0, 10.0)  # qpm; slower / faster tempos go to the end bins
GM_FAMILIES = ["piano", "chromatic perc.", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed", "pipe",
               "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects"]
PLOT_LAYOUT = {  # PNG name -> the histograms drawn in it, one above the other
    "pitch": ["pitch", "pitch_class"],
    "time": ["duration", "ioi"],
    "polyphony": ["polyphony"],
    "songs": ["notes_per_song", "tracks_per_song"],
    "programs": ["programs"],
    "tempo": ["tempo", "first_tempo"],
}
_SPAN_LIMIT = 2 ** 62  # song * span + tick keys must fit in int64


@dataclass
class Histogram:
    """Counts per bin, with a label per bin (``ticks``: which bins get their label shown on a plot)."""

    title: str
    xlabel: str
    counts: np.ndarray
    labels: list[str]
    ticks: list[int] | None = None  # None: every bin
    ylabel: str = "notes"
    summary: dict = field(default_factory=dict)  # a few key figures for the report ("median": "C4", ...)

    @property
    def total(self) -> int:
        return int(np.sum(self.counts))


# --------------------------------------------------------------------------- tables

def size_tables(corpus) -> dict:
    """Songs, notes and hours per collection (with songs per split) and per split, plus a total row each."""
    songs = corpus.songs
    collection = np.asarray(songs["collection"]).astype(str)
    split = np.asarray(songs["split"]).astype(str)
    n_notes = np.asarray(songs["n_notes"], np.int64)
    seconds = np.asarray(songs["duration_s"], np.float64)

    def rows(keys):
        names, which = np.unique(keys, return_inverse=True) if len(keys) else (np.zeros(0, str), np.zeros(0, np.int64))
        which = which.reshape(-1)
        out = []
        song_counts = np.bincount(which, minlength=len(names))
        note_counts = np.bincount(which, weights=n_notes, minlength=len(names))
        hours = np.bincount(which, weights=seconds, minlength=len(names)) / 3600
        per_split = {s: np.bincount(which[split == s], minlength=len(names)) for s in SPLITS}
        for i, name in enumerate(names):
            out.append({"name": str(name), "songs": int(song_counts[i]), "notes": int(note_counts[i]),
                        "hours": float(hours[i]), **{s: int(per_split[s][i]) for s in SPLITS}})
        return out

    total = {"name": "total", "songs": len(collection), "notes": int(n_notes.sum()),
             "hours": float(seconds.sum() / 3600),
             **{s: int(np.count_nonzero(split == s)) for s in SPLITS}}
    by_split = {r["name"]: r for r in rows(split)}
    group = np.asarray(songs.get("group", songs["collection"])).astype(str)
    return {"collections": rows(collection), "groups": rows(np.char.add(np.char.add(collection, " / "), group)),
            "form": form_rows(songs),
            "splits": [by_split.get(s, {"name": s, "songs": 0, "notes": 0, "hours": 0.0}) for s in SPLITS],
            "total": total}


def form_rows(songs) -> list[dict]:
    """Per collection: its groups, and the most common time signature, key and number of tracks of its songs."""
    collection = np.asarray(songs["collection"]).astype(str)
    group = np.asarray(songs.get("group", songs["collection"])).astype(str)
    out = []
    for name in np.unique(collection):
        mine = collection == name
        out.append({"name": str(name), "groups": sorted(set(group[mine].tolist())),
                    **{column: _most_common(np.asarray(songs[column])[mine]) for column in ("time_signature", "key")},
                    "n_tracks": _most_common(np.asarray(songs["n_tracks"])[mine])})
    return out


def _most_common(values: np.ndarray) -> str:
    """The most common value as text ('-' when there is none; empty strings do not count)."""
    values = values[values != ""] if values.dtype.kind in "OUS" else values
    if not len(values):
        return "-"
    names, counts = np.unique(values.astype(str), return_counts=True)
    return str(names[np.argmax(counts)])


# --------------------------------------------------------------------------- histograms

def _time_labels() -> tuple[list[str], list[int]]:
    """Labels of the log-spaced time bins: whole powers of two as fractions, the bins between unlabeled."""
    centers = np.sqrt(TIME_BIN_EDGES[:-1] * TIME_BIN_EDGES[1:])
    labels, ticks = [], []
    for i, c in enumerate(centers):
        k = np.log2(c)
        if abs(k - round(k)) < 1e-6:
            k = int(round(k))
            labels.append(f"1/{2 ** -k}" if k < 0 else str(2 ** k))
            ticks.append(i)
        else:
            labels.append(f"{c:.3g}")
    labels[0], labels[-1] = f"≤{labels[0]}", f"≥{labels[-1]}"
    return labels, ticks


def _quarters_text(q: float) -> str:
    return "-" if not np.isfinite(q) else f"{q:.3g} quarter{'' if q == 1 else 's'}"


def _capped(values: np.ndarray, first: int, cap: int) -> tuple[np.ndarray, list[str]]:
    """Counts of integer values first..cap, the last bin holding cap and more."""
    counts = np.bincount(np.clip(np.asarray(values, np.int64), first, cap) - first, minlength=cap - first + 1)
    labels = [str(v) for v in range(first, cap)] + [f"{cap}+"]
    return counts, labels


def _song_keys(song: np.ndarray, tick: np.ndarray, span: int) -> np.ndarray:
    return song.astype(np.int64) * span + tick.astype(np.int64)


def _sorted_unique(sorted_keys: np.ndarray) -> np.ndarray:
    """Distinct values of a sorted array (several times faster than ``np.unique``, which sorts again)."""
    keep = np.ones(len(sorted_keys), bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=keep[1:])
    return sorted_keys[keep]


def note_histograms(corpus) -> dict[str, Histogram]:
    """Every histogram of the report, counted over the whole note table at once."""
    n = corpus.all_notes(["song", "onset_tick", "duration_tick", "duration", "pitch", "program", "is_drum"])
    songs = corpus.songs
    tpq = np.maximum(np.asarray(songs["tpq"], np.float64), 1.0)
    pitched = ~np.asarray(n["is_drum"], bool)
    sel = (lambda a: np.asarray(a)) if pitched.all() else (lambda a: np.asarray(a)[pitched])
    song = np.asarray(n["song"], np.int64)
    onset_tick = np.asarray(n["onset_tick"], np.int64)
    end_tick = onset_tick + np.asarray(n["duration_tick"], np.int64)
    span = int(end_tick.max(initial=0)) + 1
    if len(songs["song"]) * span >= _SPAN_LIMIT:
        raise NotelmError(f"{corpus.path}: ticks too large for the statistics' int64 keys")
    out = _pitch_histograms(sel(n["pitch"]).astype(np.int64))
    out.update(_time_histograms(sel(n["duration"]).astype(np.float64), _song_keys(song, onset_tick, span), span, tpq))
    out["polyphony"] = _polyphony_histogram(_song_keys(sel(song), sel(onset_tick), span),
                                            _song_keys(sel(song), sel(end_tick), span))
    out.update(_song_histograms(songs))
    out["programs"] = _program_histogram(sel(n["program"]), np.count_nonzero(~pitched))
    out.update(_tempo_histograms(corpus, tpq))
    return out


def _pitch_histograms(pitch: np.ndarray) -> dict[str, Histogram]:
    """MIDI pitch and pitch class of the pitched notes."""
    counts = np.bincount(np.clip(pitch, 0, 127), minlength=128)
    summary = {}
    if len(pitch):
        summary = {"lowest": pitch_name(int(pitch.min())), "highest": pitch_name(int(pitch.max())),
                   "median": pitch_name(int(np.median(pitch))), "most common": pitch_name(int(np.argmax(counts)))}
    out = {"pitch": Histogram("pitch (pitched notes)", "MIDI pitch", counts, [pitch_name(p) for p in range(128)],
                              list(range(0, 128, 12)), summary=summary)}
    counts = np.bincount(pitch % 12, minlength=12)
    out["pitch_class"] = Histogram("pitch class (pitched notes)", "pitch class", counts, list(PITCH_CLASS_NAMES),
                                   summary={"most common": PITCH_CLASS_NAMES[int(np.argmax(counts))]}
                                   if len(pitch) else {})
    return out


def _time_histograms(duration: np.ndarray, onset_keys: np.ndarray, span: int, tpq: np.ndarray) -> dict:
    """Durations of pitched notes and inter-onset intervals of all notes, on the log-spaced time bins of
    ``metrics.py``; ``onset_keys``: song * span + onset tick of every note."""
    labels, ticks = _time_labels()
    out = {"duration": Histogram("note duration (pitched notes)", "quarter notes (log-spaced bins)",
                                 time_bin_counts(duration), labels, ticks,
                                 summary={"median": _quarters_text(np.median(duration) if len(duration) else np.nan)})}
    onsets = _sorted_unique(np.sort(onset_keys))  # distinct onsets of every song, drums too
    onset_song = onsets // span
    same = onset_song[1:] == onset_song[:-1]
    ioi = np.diff(onsets)[same] / tpq[onset_song[1:][same]]
    out["ioi"] = Histogram("inter-onset interval (distinct onsets within a song)", "quarter notes (log-spaced bins)",
                           time_bin_counts(ioi), labels, ticks, ylabel="intervals",
                           summary={"median": _quarters_text(float(np.median(ioi)) if len(ioi) else np.nan)})
    return out


def _polyphony_histogram(on_keys: np.ndarray, off_keys: np.ndarray) -> Histogram:
    """Pitched notes sounding at each distinct pitched onset (on <= t < off), from song-and-tick keys."""
    on, off = np.sort(on_keys), np.sort(off_keys)
    at = _sorted_unique(on)
    sounding = np.searchsorted(on, at, side="right") - np.searchsorted(off, at, side="right")
    counts, labels = _capped(sounding, 1, POLYPHONY_CAP)
    return Histogram("polyphony: pitched notes sounding at each onset", "notes sounding", counts, labels,
                     ylabel="onsets", summary={"mean": f"{sounding.mean():.2f}" if len(sounding) else "-",
                                               "median": f"{np.median(sounding):g}" if len(sounding) else "-"})


def _song_histograms(songs) -> dict[str, Histogram]:
    """Notes per song (log2 bins) and tracks per song."""
    per_song = np.asarray(songs["n_notes"], np.int64)
    top = max(int(per_song.max(initial=1)), 1)
    n_bins = int(np.ceil(np.log2(top + 1)))
    edges = 2 ** np.arange(n_bins + 1)  # [1, 2), [2, 4), ...
    bins = np.clip(np.searchsorted(edges, np.maximum(per_song, 1), side="right") - 1, 0, n_bins - 1)
    out = {"notes_per_song": Histogram("notes per song", "notes (bins from 2^k up to 2^(k+1), labelled by 2^k)",
                                       np.bincount(bins, minlength=n_bins), [f"{edges[i]:,}" for i in range(n_bins)],
                                       ylabel="songs",
                                       summary={"median": f"{np.median(per_song):,.0f}" if len(per_song) else "-",
                                                "largest": f"{per_song.max(initial=0):,}"})}
    counts, labels = _capped(songs["n_tracks"], 0, POLYPHONY_CAP)
    median = f"{np.median(songs['n_tracks']):g}" if len(per_song) else "-"
    out["tracks_per_song"] = Histogram("tracks per song", "tracks with notes", counts, labels, ylabel="songs",
                                       summary={"median": median})
    return out


def _program_histogram(program: np.ndarray, drum_notes: int) -> Histogram:
    """Notes per General MIDI program (0-127) of the pitched notes, drums as a 129th bin."""
    counts = np.append(np.bincount(np.asarray(program).astype(np.int64).clip(0, 127), minlength=128), drum_notes)
    labels = [f"{p} {GM_FAMILIES[p // 8]}" for p in range(128)] + ["drums"]
    return Histogram("notes per General MIDI program (number, family)", "program", counts, labels,
                     summary={"programs used": str(int(np.count_nonzero(counts[:128]))),
                              "drum notes": f"{int(counts[128]):,}",
                              "most common": labels[int(np.argmax(counts))] if counts.any() else "-"})


def _tempo_histograms(corpus, tpq: np.ndarray) -> dict[str, Histogram]:
    """Tempo weighted by time (quarter notes played at each tempo), and each song's first tempo."""
    qpm, quarters = _tempo_spans(corpus, tpq)
    axis = "quarter notes per minute (10-qpm bins, labelled by their lower edge)"
    ticks = list(range(0, len(TEMPO_EDGES) - 1, 2))
    first = np.asarray(corpus.songs["qpm"], np.float64)
    return {"tempo": Histogram("tempo, weighted by time", axis, _tempo_counts(qpm, quarters), _tempo_labels(), ticks,
                               ylabel="quarter notes",
                               summary={"weighted median": _weighted_median_text(qpm, quarters)}),
            "first_tempo": Histogram("first tempo of each song", axis, _tempo_counts(first, np.ones(len(first))),
                                     _tempo_labels(), ticks, ylabel="songs",
                                     summary={"median": f"{np.median(first):.0f} qpm" if len(first) else "-"})}


def _tempo_counts(qpm: np.ndarray, weights: np.ndarray) -> np.ndarray:
    n_bins = len(TEMPO_EDGES) - 1
    bins = np.clip(np.searchsorted(TEMPO_EDGES, qpm, side="right") - 1, 0, n_bins - 1)
    return np.bincount(bins, weights=weights, minlength=n_bins)


def _tempo_labels() -> list[str]:
    labels = [f"{e:.0f}" for e in TEMPO_EDGES[:-1]]
    labels[0], labels[-1] = f"<{TEMPO_EDGES[1]:.0f}", f"{TEMPO_EDGES[-2]:.0f}+"
    return labels


def _weighted_median_text(values: np.ndarray, weights: np.ndarray) -> str:
    if not len(values) or weights.sum() <= 0:
        return "-"
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return f"{values[order][np.searchsorted(cum, cum[-1] / 2)]:.0f} qpm"


def _tempo_spans(corpus, tpq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every tempo of every song and how many quarter notes it lasts (to the next change or the song's end).

    Reads the corpus's ``tempos.arrow`` (song, tick, qpm); like ``notes.seconds_at``, a song
    plays at 120 qpm until its first tempo change.
    """
    import pyarrow as pa
    import pyarrow.ipc

    from notelm.notes import DEFAULT_QPM

    try:
        table = pa.ipc.open_file(pa.memory_map(str(corpus.path / "tempos.arrow"), "r")).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        raise NotelmError(f"{corpus.path / 'tempos.arrow'}: cannot read the tempo table: {e}") from None
    n_songs = len(tpq)
    col = lambda name: table.column(name).to_numpy()
    song = np.concatenate([np.arange(n_songs), col("song").astype(np.int64)])
    tick = np.concatenate([np.zeros(n_songs), col("tick").astype(np.float64)])
    qpm = np.concatenate([np.full(n_songs, DEFAULT_QPM), col("qpm").astype(np.float64)])
    own = np.concatenate([np.zeros(n_songs), np.ones(table.num_rows)])
    order = np.lexsort((own, tick, song))
    song, tick, qpm = song[order], tick[order], qpm[order]
    song_end = np.asarray(corpus.songs["duration_q"], np.float64) * tpq  # in the song's ticks
    next_tick = np.append(tick[1:], 0.0)
    last = np.append(song[1:] != song[:-1], True)
    next_tick[last] = song_end[song[last]]
    quarters = np.maximum(np.minimum(next_tick, song_end[song]) - tick, 0.0) / tpq[song]
    return qpm, quarters


# --------------------------------------------------------------------------- n-grams and tokens

def _ngram_starts(rows: np.ndarray, offsets, n: int) -> np.ndarray:
    """Where the n-grams ``top_ngrams`` counts start: n events inside one song, none of them PAD/BOS/EOS.

    ``rows``: ``[N, S]`` (one column per stream); ``offsets``: song boundaries, or None.
    """
    n_windows = len(rows) - n + 1
    if n_windows <= 0:
        return np.zeros(0, np.int64)
    regular = np.all(rows > EOS, axis=1)
    irregular = np.concatenate([[0], np.cumsum(~regular)])
    valid = irregular[n:] - irregular[:n_windows] == 0
    if offsets is not None:
        song = np.repeat(np.arange(len(offsets) - 1), np.diff(np.asarray(offsets, np.int64)))
        valid &= song[:n_windows] == song[n - 1:]
    return np.flatnonzero(valid)


def _packed_ranks(columns: list[np.ndarray], width: int | None = None) -> tuple[np.ndarray, int]:
    """One int64 key per row of ``columns`` that sorts like the rows (lexicographically).

    Columns are packed base ``width`` (default: each column's max + 1); whenever the next
    column would overflow int64 the keys so far are replaced by their ranks (``np.unique``),
    so any number of columns works.  Returns ``(keys, bound)`` with every key < bound.
    """
    keys, bound = np.zeros(len(columns[0]), np.int64), 1
    for column in columns:
        base = int(column.max(initial=0)) + 1 if width is None else width
        if bound * base >= 2 ** 62:
            keys = np.unique(keys, return_inverse=True)[1].reshape(-1)
            bound = int(keys.max(initial=0)) + 1
        keys, bound = keys * base + column, bound * base
    return keys, bound


def top_ngrams(tokens: np.ndarray, offsets=None, n: int = 2, k: int = 20) -> list[tuple[tuple, int]]:
    """The ``k`` most frequent n-grams with their counts, most frequent first (ties: smallest first).

    ``tokens``: one stream ``[N]``, or stacked streams ``[N, S]`` to count whole events
    (then each n-gram item is a tuple of stream values).  N-grams never cross a song
    boundary (``offsets``) and never contain PAD, BOS or EOS.
    """
    if n < 1 or k < 1:
        raise NotelmError(f"top_ngrams needs n >= 1 and k >= 1, got n={n}, k={k}")
    tokens = np.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise NotelmError("top_ngrams: tokens must be [N] or [N, streams]")
    rows = tokens.reshape(len(tokens), -1).astype(np.int64)
    starts = _ngram_starts(rows, offsets, n)
    if len(starts) == 0:
        return []
    event, n_events = _packed_ranks([rows[:, s] for s in range(rows.shape[1])])
    gram, _ = _packed_ranks([event[starts + j] for j in range(n)], n_events)
    _, first, counts = np.unique(gram, return_index=True, return_counts=True)
    best = np.lexsort((np.arange(len(counts)), -counts))[:k]  # ranks keep lexicographic order: ties by n-gram
    item = (lambda r: int(r[0])) if tokens.ndim == 1 else (lambda r: tuple(int(x) for x in r))
    return [(tuple(item(rows[starts[first[g]] + j]) for j in range(n)), int(counts[g])) for g in best]


def ngram_tables(encoded, ns=NGRAM_ORDERS, top: int = 10, progress: bool = False) -> dict:
    """The ``top`` most frequent n-grams of a ``seed`` encoding, by kind and n.

    Returns ``{"pitch" | "duration" | "pair": {n: [(text, count, share), ...]}, "totals": {n: windows}}``;
    ``text`` names the tokens ("C E G", "quarter eighth", "C/quarter E/eighth"), ``share`` is the
    count over all n-grams of that length (n-grams never cross a song boundary).
    """
    from tqdm import tqdm

    pitch_stream, duration_stream = encoded.vocab.stream("pitch"), encoded.vocab.stream("duration")
    pitch = np.asarray(encoded.streams["pitch"])
    duration = np.asarray(encoded.streams["duration"])
    pairs = np.stack([pitch, duration], axis=1)
    name = {"pitch": pitch_stream.name_of, "duration": duration_stream.name_of,
            "pair": lambda t: f"{pitch_stream.name_of(t[0])}/{duration_stream.name_of(t[1])}"}
    tokens = {"pitch": pitch, "duration": duration, "pair": pairs}
    out: dict = {kind: {} for kind in NGRAM_KINDS}
    out["totals"] = {}
    jobs = [(kind, n) for n in ns for kind in NGRAM_KINDS]
    for kind, n in tqdm(jobs, desc="n-grams", unit="table", disable=not progress, dynamic_ncols=True, leave=False):
        if n not in out["totals"]:
            out["totals"][n] = len(_ngram_starts(pairs, encoded.offsets, n))
        total = max(out["totals"][n], 1)
        found = top_ngrams(tokens[kind], encoded.offsets, n=n, k=top)
        out[kind][n] = [(" ".join(name[kind](t) for t in gram), count, count / total) for gram, count in found]
    return out


def token_tables(encoded, top: int = 10) -> dict:
    """Per stream: all token counts (``counts``, ``tokens``; BOS/EOS/PAD left out) and the ``top`` most common."""
    out = {}
    for stream in encoded.vocab.streams:
        counts = encoded.token_counts(stream.name)
        names = list(counts)
        values = np.array([counts[k] for k in names], np.int64)
        total = max(int(values.sum()), 1)
        best = np.lexsort((np.arange(len(values)), -values))[:top]
        out[stream.name] = {"tokens": names, "counts": values,
                            "top": [(names[i], int(values[i]), values[i] / total) for i in best if values[i] > 0]}
    return out


# --------------------------------------------------------------------------- plots

def _figure(n_rows: int, n_cols: int = 1, width: float = 11.0, row_height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, row_height * n_rows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    return fig, axes


def _draw(ax, h: Histogram, color: str = "C0", log_y: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter, NullLocator

    counts = np.asarray(h.counts, np.float64)
    x = np.arange(len(counts))
    ax.bar(x, counts, width=0.85, color=color)
    ticks = h.ticks if h.ticks is not None else list(range(len(counts)))
    rotate = max((len(h.labels[i]) for i in ticks), default=0) * len(ticks) > 90
    ax.set_xticks(ticks, [h.labels[i] for i in ticks], rotation=60 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=8 if rotate else 9)
    pad = max(8 - len(counts), 0) / 2  # a few bars stay bar-shaped, centred
    ax.set_xlim(-0.7 - pad, len(counts) - 0.3 + pad)
    if log_y and counts.max(initial=0) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks cost a second per figure and add nothing here
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(_count_text))
    ax.set_title(f"{h.title}: {h.total:,} {h.ylabel}", fontsize=11)
    ax.set_xlabel(h.xlabel)
    ax.set_ylabel(h.ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _count_text(value, _pos=None) -> str:
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:g}M"
    if a >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_histograms(hists: dict[str, Histogram], out_dir) -> dict[str, Path]:
    """The note histograms as PNGs (one figure per topic); returns {topic: path}."""
    out_dir = Path(out_dir)
    written = {}
    for topic, names in PLOT_LAYOUT.items():
        fig, axes = _figure(len(names))
        for ax, name, color in zip(axes, names, ("C0", "C1")):
            h = hists[name]
            if name == "programs":  # only the programs that occur, most notes first
                used = np.flatnonzero(h.counts)
                used = used[np.argsort(-h.counts[used], kind="stable")][:40]
                h = Histogram(h.title, h.xlabel, h.counts[used], [h.labels[i] for i in used], ylabel=h.ylabel)
            _draw(ax, h, color)
        written[topic] = _save(fig, out_dir / f"{topic}.png")
    return written


def plot_tokens(tables: dict, representation: str, path, config: dict | None = None) -> Path:
    """One bar chart per stream of the token counts of one representation (``config``: its settings, for the axis)."""
    names = list(tables)
    spq = (config or {}).get("steps_per_quarter")
    fig, axes = _figure(len(names), row_height=3.2)
    for i, (ax, name) in enumerate(zip(axes, names)):
        t = tables[name]
        n = len(t["tokens"])
        step = max(1, int(np.ceil(n / 40)))
        axis = f"token (grid steps, {spq} per quarter)" if spq and name in ("shift", "duration") else "token"
        h = Histogram(f"{representation}: stream '{name}' ({n} tokens)", axis, t["counts"], t["tokens"],
                      list(range(0, n, step)), ylabel="events")
        _draw(ax, h, f"C{i}", log_y=_skewed(t["counts"]))
    return _save(fig, Path(path))


def _skewed(counts: np.ndarray) -> bool:
    """A log scale when a few tokens dwarf the rest (e.g. time shift 0 in a polyphonic corpus)."""
    used = np.asarray(counts)[np.asarray(counts) > 0]
    return len(used) > 1 and used.max() > 50 * np.median(used)


# --------------------------------------------------------------------------- report

def _md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _size_rows(rows: list[dict], splits: bool) -> list[list]:
    return [[f"**{r['name']}**" if r["name"] == "total" else r["name"], f"{r['songs']:,}", f"{r['notes']:,}",
             f"{r['hours']:.2f}", *([f"{r[s]:,}" for s in SPLITS] if splits else [])] for r in rows]


def _names_text(names: list[str], shown: int = 8) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def render_markdown(result: dict) -> str:
    """The report ``stats.md`` from what ``stats`` computed."""
    t, h = result["tables"], result["histograms"]
    total = t["total"]
    out = [f"# Corpus statistics: {result['corpus']}", "",
           f"{plural(total['songs'], 'song')} in {plural(len(t['collections']), 'collection')}, "
           f"{plural(total['notes'], 'note')} "
           f"({result['pitched_notes']:,} pitched), {total['hours']:.2f} hours. Made by `notelm stats` in "
           f"{result['seconds']:.1f} s.", "",
           "## Songs, notes and hours", "", "### Per split", "",
           _md_table(["split", "songs", "notes", "hours"], _size_rows(t["splits"] + [total], False)), "",
           "### Per collection", "",
           _md_table(["collection", "songs", "notes", "hours", *(f"{s} songs" for s in SPLITS)],
                     _size_rows(t["collections"] + [total], True)), ""]
    if len(t["groups"]) > len(t["collections"]):
        out += ["### Per collection and group (the folder under the source: composer, tune book)", "",
                _md_table(["collection / group", "songs", "notes", "hours", *(f"{s} songs" for s in SPLITS)],
                          _size_rows(t["groups"], True)), ""]
    out += ["### Form per collection", "",
            "The names a model trained on this corpus is conditioned on (`--condition collection=NAME`, or "
            "`group=NAME` with `data.condition = \"group\"`), and the most common time signature, key and "
            "number of tracks of their songs.", "",
            _md_table(["collection", "groups", "time signature", "key", "tracks"],
                      [[r["name"], _names_text(r["groups"]), r["time_signature"], r["key"], r["n_tracks"]]
                       for r in t["form"]]), ""]

    out += ["## Notes", "", "Drum notes are left out of pitch, duration, polyphony and program counts; inter-onset "
            "intervals use all notes. Durations and intervals use the log-spaced bins of `metrics.TIME_BIN_EDGES` "
            "(whole powers of two in quarter notes; dotted and triplet values fall in the bins between).", "",
            _md_table(["histogram", "counted", "key figures"],
                      [[x.title,
                        f"{x.total:,} {x.ylabel}" if x.ylabel != "quarter notes" else f"{x.total:,.0f} {x.ylabel}",
                        ", ".join(f"{k} {v}" for k, v in x.summary.items())] for x in h.values()], "lrl"), "",
            "Share of pitched notes per pitch class:", "",
            _md_table(list(PITCH_CLASS_NAMES),
                      [[f"{100 * c / max(h['pitch_class'].total, 1):.1f} %" for c in h["pitch_class"].counts]],
                      "r" * 12), ""]
    for topic, caption in (("pitch", "pitch and pitch class"), ("time", "durations and inter-onset intervals"),
                           ("polyphony", "polyphony"), ("songs", "notes and tracks per song"),
                           ("programs", "programs"), ("tempo", "tempo")):
        out += [f"![{caption}]({topic}.png)", ""]

    ng = result["ngrams"]
    out += ["## Most frequent n-grams", "",
            f"From the `{NGRAM_REPRESENTATION}` representation (the original experiment: pitch class and duration "
            "class 16th/eighth/quarter/half/whole per event, chords reduced to their root, notes of other durations "
            f"dropped, events in onset order; {result['encodings'][NGRAM_REPRESENTATION]['events']:,} events from "
            f"{result['pitched_notes']:,} "
            "pitched notes). N-grams never cross a song boundary; the share is of all n-grams of that length "
            f"({', '.join(f'n={n}: {c:,}' for n, c in ng['totals'].items())}).", ""]
    for kind, title in NGRAM_KINDS.items():
        out += [f"### {title[0].upper() + title[1:]}", ""]
        for n, rows in ng[kind].items():
            out += [f"**n = {n}**", "", _md_table(["#", "n-gram", "count", "share"],
                                                  [[i + 1, f"`{text}`", f"{c:,}", f"{100 * s:.2f} %"]
                                                   for i, (text, c, s) in enumerate(rows)], "rlrr"), ""]

    out += ["## Tokens per stream", "",
            "Token counts of each encoded representation (default settings; BOS/EOS/PAD left out): the most common "
            "tokens of every stream with their share of the stream's events.", ""]
    for rep, tables in result["tokens"].items():
        info = result["encodings"][rep]
        sizes = ", ".join(f"{name}: {len(v['tokens'])} tokens" for name, v in tables.items())
        out += [f"### {rep}", "", f"{info['events']:,} events in {info['streams']} streams ({sizes}).", ""]
        depth = max((len(v["top"]) for v in tables.values()), default=0)
        rows = [[i + 1, *(f"`{v['top'][i][0]}` {100 * v['top'][i][2]:.1f} %" if i < len(v["top"]) else ""
                          for v in tables.values())] for i in range(depth)]
        out += [_md_table(["#", *tables], rows, "r" + "l" * len(tables)), "", f"![{rep} tokens](tokens_{rep}.png)", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- the verb

def stats(corpus_path, out_dir=None, top: int = 10, progress: bool = True, log=print) -> dict:
    """``notelm stats``: compute everything, write ``stats.md`` and the PNGs, print a summary.

    Returns a dict with ``tables`` (``size_tables``), ``histograms`` (``note_histograms``),
    ``ngrams`` (``ngram_tables``), ``tokens`` ({representation: ``token_tables``}, every
    representation of ``encoding.REPRESENTATIONS``), ``files`` (paths written), ``out_dir``,
    ``seconds`` and the corpus totals.
    """
    from tqdm import tqdm

    from notelm.corpus import Corpus
    from notelm.encoding import REPRESENTATIONS

    if top < 1:
        raise NotelmError(f"--top {top}: must be at least 1")
    corpus_path = Path(corpus_path)
    if not corpus_path.is_dir():
        raise NotelmError(f"{corpus_path}: no such corpus folder; make one with "
                          f"`notelm prepare SOURCE -o {corpus_path}`")
    started = time.perf_counter()
    corpus = Corpus(corpus_path)
    out_dir = Path(out_dir) if out_dir else corpus_path / "stats"
    steps = ["tables", "histograms", *(f"encode {rep}" for rep in REPRESENTATIONS), "n-grams", "plots", "report"]
    bar = tqdm(steps, desc="stats", unit="step", disable=not progress, dynamic_ncols=True)
    result: dict = {"corpus": str(corpus_path), "out_dir": out_dir}
    encoded: dict = {}
    for step in bar:
        bar.set_postfix_str(step, refresh=True)
        if step == "tables":
            result["tables"] = size_tables(corpus)
        elif step == "histograms":
            result["histograms"] = note_histograms(corpus)
            result["pitched_notes"] = result["histograms"]["pitch"].total
        elif step.startswith("encode "):
            _encoding_tables(corpus_path, step.removeprefix("encode "), top, result, encoded, progress, log)
        elif step == "n-grams":
            result["ngrams"] = ngram_tables(encoded[NGRAM_REPRESENTATION], NGRAM_ORDERS, top, progress=progress)
        elif step == "plots":
            files = list(plot_histograms(result["histograms"], out_dir).values())
            files += [plot_tokens(result["tokens"][rep], rep, out_dir / f"tokens_{rep}.png", encoded[rep].vocab.config)
                      for rep in encoded]
        else:  # the report
            result["seconds"] = time.perf_counter() - started
            report = out_dir / "stats.md"
            write_text(report, render_markdown(result) + "\n")
            result["files"] = [report, *files]
    result["seconds"] = time.perf_counter() - started
    log(summary_text(result))
    total = result["tables"]["total"]
    log(f"stats: {plural(total['songs'], 'song')}, {plural(total['notes'], 'note')}, {total['hours']:.1f} h in "
        f"{result['seconds']:.1f} s -> {report} (+ {len(files)} PNGs)")
    return result


def _encoding_tables(corpus_path, rep: str, top: int, result: dict, encoded: dict, progress: bool, log) -> None:
    """Encode the corpus with ``rep`` (default settings) and count its tokens into ``result``."""
    from notelm.encoding import load_or_encode

    result.setdefault("tokens", {})
    result.setdefault("encodings", {})
    encoded[rep] = load_or_encode(corpus_path, rep, progress=progress, log=log)
    result["tokens"][rep] = token_tables(encoded[rep], top)
    result["encodings"][rep] = {"events": encoded[rep].n_events, "streams": len(encoded[rep].vocab.streams)}


def summary_text(result: dict, shown: int = 3) -> str:
    """What ``notelm stats`` prints before its summary line: the split table and the top trigrams."""
    t, h, ng = result["tables"], result["histograms"], result["ngrams"]
    lines = [f"{'split':<8}{'songs':>9}{'notes':>14}{'hours':>9}"]
    for r in t["splits"] + [t["total"]]:
        lines.append(f"{r['name']:<8}{r['songs']:>9,}{r['notes']:>14,}{r['hours']:>9.1f}")
    lines.append(f"{plural(len(t['collections']), 'collection')}: "
                 + "; ".join(f"{r['name']} ({plural(r['songs'], 'song')}"
                             + (f", groups {_names_text(f['groups'], 4)}" if f["groups"] != [r["name"]] else "") + ")"
                             for r, f in zip(t["collections"], t["form"])))
    lines.append(f"pitch {h['pitch'].summary.get('lowest', '-')}.."
                 f"{h['pitch'].summary.get('highest', '-')} (median {h['pitch'].summary.get('median', '-')}), "
                 f"median duration {h['duration'].summary['median']}, mean polyphony {h['polyphony'].summary['mean']}")
    for kind, title in NGRAM_KINDS.items():
        rows = ng[kind].get(3, [])[:shown]
        found = "; ".join(f"{text} ({count:,}, {100 * share:.2f} %)" for text, count, share in rows) or "none"
        lines.append(f"top trigrams of {title}: {found}")
    return "\n".join(lines)


__all__ = ["Histogram", "size_tables", "note_histograms", "ngram_tables", "token_tables", "plot_histograms",
           "plot_tokens", "render_markdown", "summary_text", "stats"]
