"""Hear and see a note table: WAV through a General MIDI SoundFont, piano-roll PNG.

Audio comes from symusic's SoundFont synthesizer (pinned to 0.5.8: 0.6.0's render
cannot hand its audio back).  Piano rolls are drawn with matplotlib's object API on
an Agg canvas, so nothing needs a display and no global pyplot state is touched.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import wave
from pathlib import Path

import numpy as np

from notelm.io import NotelmError, atomic_path, printable
from notelm.names import pitch_name
from notelm.notes import (
    DEFAULT_QPM,
    DEFAULT_TPQ,
    Notes,
    SongMeta,
    check_qpm,
    num_notes,
    read_midi,
    seconds_at,
    to_score,
)

SOUNDFONT_ENV = "NOTELM_SOUNDFONT"
# Searched in order after an explicit path and $NOTELM_SOUNDFONT; "{prefix}" is sys.prefix,
# where scripts/get-soundfont.sh puts Debian's TimGM6mb.sf2 (the venv's share/notelm).
SOUNDFONT_PATTERNS = [
    "{prefix}/share/notelm/*.sf2",
    "{prefix}/share/notelm/*.sf3",
    "/usr/share/sounds/sf2/*.sf2",
    "/usr/share/sounds/sf3/*.sf3",
]
HOW_TO_GET_SOUNDFONT = ("install one with `apt install timgm6mb-soundfont`, or run "
                        "`scripts/get-soundfont.sh .venv/share/notelm`, or set NOTELM_SOUNDFONT=/path/to/file.sf2")

PEAK_TARGET = 10 ** (-1 / 20)  # -1 dBFS: loud but with headroom against inter-sample clipping
# The longest audio rendered: the synthesizer holds it all as float32 samples (an hour of 44.1 kHz
# stereo is 1.3 GB, its WAV 0.6 GB).  Checked before synthesizing, so a slow tempo cannot ask for more.
MAX_WAV_SECONDS = 3600.0
SAMPLE_RATES = (8000, 192000)
RELEASE_SECONDS = 2.0  # what the synthesizer adds after the last note ends (its release tail), at most


# --------------------------------------------------------------------------- SoundFont

def find_soundfont(explicit: str | None = None) -> Path:
    """The SoundFont to synthesize with: explicit path, $NOTELM_SOUNDFONT, then the usual places.

    A path the user named that does not exist is an error, not a reason to look elsewhere:
    silently using another SoundFont would hide the typo.
    """
    for source, named in (("--soundfont", explicit), (SOUNDFONT_ENV, os.environ.get(SOUNDFONT_ENV))):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise NotelmError(f"SoundFont not found: {path} (from {source}); {HOW_TO_GET_SOUNDFONT}")
            return path
    patterns = [p.format(prefix=sys.prefix) for p in SOUNDFONT_PATTERNS]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    looked = ", ".join(patterns) or "nowhere"
    raise NotelmError(f"no SoundFont for WAV rendering (looked in {looked}); {HOW_TO_GET_SOUNDFONT}")


@functools.lru_cache(maxsize=4)
def _synthesizer(soundfont: str, sample_rate: int):
    import symusic

    try:
        return symusic.Synthesizer(soundfont, sample_rate=sample_rate)
    except Exception as e:  # a truncated or non-SoundFont file
        raise NotelmError(f"{soundfont}: cannot load SoundFont ({e})") from None


# --------------------------------------------------------------------------- WAV

def song_seconds(notes: Notes, qpm: float = DEFAULT_QPM, meta: SongMeta | None = None) -> float:
    """When the last note ends, in seconds: through ``meta``'s tempo map when it has one, else at ``qpm``."""
    if num_notes(notes) == 0:
        return 0.0
    end_q = float(np.max(np.asarray(notes["onset"], np.float64) + np.asarray(notes["duration"], np.float64)))
    if meta is None or not len(meta.tempo_qpm):
        return end_q * 60.0 / check_qpm(qpm)
    end_tick = np.array([end_q * meta.tpq])
    return float(seconds_at(np.zeros(1, np.int64), end_tick, np.zeros(len(meta.tempo_tick), np.int64),
                            meta.tempo_tick, meta.tempo_qpm, np.array([meta.tpq]))[0])


def check_wav_seconds(seconds: float, name: str = "audio", max_seconds: float = MAX_WAV_SECONDS) -> None:
    """A one-line NotelmError when audio of ``seconds`` would be longer than ``max_seconds``."""
    if not seconds <= max_seconds:  # NaN too
        raise NotelmError(f"{name}: {seconds:,.0f} s of audio is over the {max_seconds:,.0f} s limit "
                          "(a slower tempo makes longer audio; choose a faster one or fewer notes)")


def render_wav(notes: Notes, path, qpm: float = DEFAULT_QPM, sample_rate: int = 44100,
               soundfont: str | None = None, meta: SongMeta | None = None,
               max_seconds: float = MAX_WAV_SECONDS) -> dict:
    """Synthesize a note table to a 16-bit stereo WAV; returns its path, seconds, RMS and peak.

    RMS and peak are of the written audio in [0, 1] (full scale), so a caller can tell
    the user the file is not silent.  Audio that would clip is scaled to peak at -1 dBFS.
    Audio longer than ``max_seconds`` is refused before anything is synthesized.
    """
    path = Path(path)
    if num_notes(notes) == 0:
        raise NotelmError(f"{printable(path.name)}: no notes to render")
    if not SAMPLE_RATES[0] <= sample_rate <= SAMPLE_RATES[1]:
        raise NotelmError(f"sample rate {sample_rate}: between {SAMPLE_RATES[0]} and {SAMPLE_RATES[1]} Hz")
    check_wav_seconds(song_seconds(notes, qpm, meta) + RELEASE_SECONDS, printable(path.name), max_seconds)
    font = find_soundfont(soundfont)
    tpq = meta.tpq if meta is not None else DEFAULT_TPQ  # meta's tempo ticks are in its own resolution
    score = to_score(notes, qpm=qpm, tpq=tpq, meta=meta)
    audio = np.asarray(_synthesizer(str(font.resolve()), int(sample_rate)).render(score, stereo=True), np.float32)
    if not audio.flags.writeable:
        audio = audio.copy()
    pcm = _to_pcm16(audio)  # (samples, channels): interleaved L R L R ... as a WAV holds them
    del audio
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(pcm.shape[1])
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(memoryview(pcm).cast("B"))
    rms, peak = _level(pcm)
    return {"path": path, "seconds": pcm.shape[0] / sample_rate, "rms": rms, "peak": peak}


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float audio [channels, samples] -> int16 [samples, channels], scaled down to -1 dBFS if it would
    clip; in place where it can (an hour of audio is over a gigabyte)."""
    peak = float(max(audio.max(), -audio.min())) if audio.size else 0.0
    if peak > 1.0:
        audio *= PEAK_TARGET / peak
    np.clip(audio, -1.0, 1.0, out=audio)
    audio *= 32767
    np.rint(audio, out=audio)
    pcm = np.empty(audio.shape[::-1], "<i2")
    pcm[...] = audio.T
    return pcm


def _level(pcm: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """(RMS, peak) of int16 audio on the [0, 1] full scale, a block at a time (no float copy of it all)."""
    flat = pcm.reshape(-1)
    if not flat.size:
        return 0.0, 0.0
    energy = sum(float(np.dot(part, part)) for part in (flat[i:i + block].astype(np.float64)
                                                       for i in range(0, flat.size, block)))
    peak = max(int(flat.max()), -int(flat.min()))
    return float(np.sqrt(energy / flat.size)) / 32767, min(peak / 32767, 1.0)


# --------------------------------------------------------------------------- piano roll

BLACK_KEYS = np.array([1, 3, 6, 8, 10])
DRUM_COLOR = (0.15, 0.15, 0.15)
MAX_BAR_LINES = 400  # a roll 1200 px wide shows no more (a time signature of 1/16384 would ask for billions)


def _note_boxes(start, length, pitch, height=0.8):
    """Rectangles as an (n, 4, 2) vertex array for one PolyCollection call."""
    lo, hi = pitch - height / 2, pitch + height / 2
    end = start + length
    return np.stack([np.stack([start, lo], 1), np.stack([end, lo], 1),
                     np.stack([end, hi], 1), np.stack([start, hi], 1)], 1)


def bar_lines(end: float, meta: SongMeta | None) -> np.ndarray:
    """Where the bars start, in quarter notes, up to ``end``: from the first time signature (4/4 without
    one; 6/8 is a bar every 3 quarters); every k-th bar when there would be more than ``MAX_BAR_LINES``."""
    from notelm.form import beats_per_bar

    bar = beats_per_bar(meta)
    step = bar * max(1, int(np.ceil(end / bar / MAX_BAR_LINES)))
    return np.arange(0, end, step)


def render_pianoroll(notes: Notes, path, title: str | None = None, qpm: float = DEFAULT_QPM,
                     meta: SongMeta | None = None, prompt_end: float | None = None, width: int = 1200,
                     height: int = 500, scale: float = 1.0) -> Path:
    """Draw a piano roll PNG (``width`` x ``height`` px, times ``scale``): time in beats across, MIDI pitch up.

    One color per track (named in a legend with its program), opacity by velocity; drum
    hits are dark diamonds at their onsets (their pitch is an instrument, their length
    meaningless); bar lines from the time signature of ``meta``.  ``prompt_end`` (a beat)
    shades the prompt.  ``scale`` (a screen's pixel ratio) adds pixels, not text size.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgba_array
    from matplotlib.figure import Figure

    path = Path(path)
    if num_notes(notes) == 0:
        raise NotelmError(f"{printable(path.name)}: no notes to draw")
    onset = np.asarray(notes["onset"], np.float64)
    length = np.maximum(np.asarray(notes["duration"], np.float64), 1e-3)
    pitch = np.asarray(notes["pitch"], np.float64)
    alpha = 0.35 + 0.65 * np.clip(notes["velocity"], 0, 127) / 127
    drum = np.asarray(notes["is_drum"], bool)
    end = float((onset + length).max())
    low, high = int(pitch.min()) - 2, int(pitch.max()) + 2

    fig = Figure(figsize=(width / 100, height / 100), dpi=100 * scale)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(-0.01 * end, end * 1.01)  # a small margin so hits at 0 and the last note's edge show
    ax.set_ylim(low - 0.5, high + 0.5)

    # black-key lanes and bar lines behind the notes, like a sequencer's grid
    lanes = np.arange(low, high + 1)
    lanes = lanes[np.isin(lanes % 12, BLACK_KEYS)].astype(np.float64)
    ax.add_collection(PolyCollection(_note_boxes(np.full(len(lanes), -end), np.full(len(lanes), 3 * end), lanes, 1.0),
                                     facecolors=(0.93, 0.93, 0.95), edgecolors="none", zorder=0))
    ax.vlines(bar_lines(end, meta), low - 0.5, high + 0.5, colors=(0.6, 0.6, 0.7), linewidth=0.8, zorder=1)

    if prompt_end is not None:
        _mark_prompt(ax, -0.01 * end, prompt_end, high + 0.5)
    palette = to_rgba_array([f"C{i}" for i in range(10)])
    tracks = np.unique(notes["track"][~drum])
    for i, track in enumerate(tracks):
        rows = (notes["track"] == track) & ~drum
        colors = np.repeat(palette[i % 10][None], rows.sum(), 0)
        colors[:, 3] = alpha[rows]
        edge = palette[i % 10] * [0.6, 0.6, 0.6, 1.0]  # darker outline: repeated notes stay apart
        program = int(notes["program"][rows][0])
        ax.add_collection(PolyCollection(_note_boxes(onset[rows], length[rows], pitch[rows]), facecolors=colors,
                                         edgecolors=edge, linewidths=0.7, zorder=2,
                                         label=f"track {track} (program {program})"))
    if drum.any():
        colors = np.repeat(np.array([[*DRUM_COLOR, 1.0]]), drum.sum(), 0)
        colors[:, 3] = alpha[drum]
        ax.scatter(onset[drum], pitch[drum], marker="D", s=14, c=colors, edgecolors="none", zorder=3, label="drums")

    c_pitches = np.arange((low + 11) // 12 * 12, high + 1, 12)
    ax.set_yticks(c_pitches, [pitch_name(int(p)) for p in c_pitches])
    meter = f", {meta.time_signature} bars" if meta is not None and meta.time_signature else ""
    ax.set_xlabel(f"beats (quarter notes, {meta.first_qpm if meta is not None else qpm:g} qpm{meter})")
    ax.set_ylabel("pitch")
    ax.set_title(title or f"{num_notes(notes)} notes")
    if len(tracks) + int(drum.any()) > 1:
        # outside the axes, so it never hides notes
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False, borderaxespad=0)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # no bbox_inches="tight": keep the pixel size fixed
    return path


def _mark_prompt(ax, left: float, start: float, top: float) -> None:
    """Shade the prompt (up to beat ``start``) and draw a line where the continuation starts."""
    ax.axvspan(left, start, color=(0.55, 0.6, 0.7), alpha=0.16, linewidth=0, zorder=0.5)
    ax.axvline(start, color=(0.2, 0.25, 0.35), linewidth=1.4, linestyle="--", zorder=4)
    ax.annotate("prompt | continuation", (start, top), xytext=(0, -2), textcoords="offset points", ha="center",
                va="top", fontsize=8, color=(0.2, 0.25, 0.35), zorder=5,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


# --------------------------------------------------------------------------- files

def render_file(midi_path, out_dir=".", wav: bool = False, png: bool = False, soundfont: str | None = None) -> dict:
    """Render a MIDI file to FILE.wav and/or FILE.png (both when neither is asked for).

    Outputs go into ``out_dir`` (default: the current folder), never silently beside
    the input, which may sit in a dataset's folder.  Returns {"wav": render_wav's
    dict, "png": path} for what was written.
    """
    midi_path = Path(midi_path)
    shown = printable(midi_path)
    if not wav and not png:
        wav = png = True
    if not midi_path.exists():
        raise NotelmError(f"{shown}: no such file")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotelmError(f"-o {printable(out_dir)}: a file, not a folder; name a folder for the output")
    if wav:
        soundfont = str(find_soundfont(soundfont))  # fail before any work when there is none
    try:
        notes, meta = read_midi(midi_path)
    except Exception as e:
        raise NotelmError(f"{shown}: not a readable MIDI file ({e})") from None
    if num_notes(notes) == 0:
        raise NotelmError(f"{shown}: no notes to render")
    written = {}
    if wav:
        written["wav"] = render_wav(notes, out_dir / f"{midi_path.stem}.wav", qpm=meta.first_qpm,
                                    soundfont=soundfont, meta=meta)
    if png:
        written["png"] = render_pianoroll(notes, out_dir / f"{midi_path.stem}.png", title=midi_path.name,
                                          qpm=meta.first_qpm, meta=meta)
    return written
