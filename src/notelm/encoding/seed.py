"""``seed``: the original experiment's encoding - pitch class and one of five durations per event.

Streams::

    pitch     "C" "C#" "D" "D#" "E" "F" "F#" "G" "G#" "A" "A#" "B"  (a chord: its root)
    duration  "16th" "eighth" "quarter" "half" "whole"  (0.25 0.5 1 2 4 quarters)

The original read each MIDI file with music21 and walked its notes and chords.
This module reproduces what music21's MIDI import does to a track, on the
whole note table at once:

* **Quantization** (``quarterLengthDivisors=(4, 3)``): onsets and durations
  snap to the nearest multiple of 1/4 or 1/3 quarter (the smaller error wins,
  1/4 on a tie; a halfway value rounds down).  A duration never snaps to 0, and
  it prefers the grid that exactly fills the gap to the next onset of its
  track, as music21 >= 7 does.
* **Chords**: notes of one track that start together *and end together* become
  one chord; music21 puts notes that start together but end apart in separate
  voices, so they stay separate notes here too.  A chord's duration is
  therefore the common duration of its notes.  Its pitch class is its root by
  music21's rules (``Chord.root()``: the note with most thirds stacked above
  it, with music21's MIDI spelling C C# D E- E F F# G G# A B- B), looked up in a
  table made once with music21 (``scripts/make_chord_roots.py``,
  ``assets/chord_roots.npy``) indexed by (bass pitch class, pitch-class set).
  music21 breaks ties between equally good roots by note order; the table asks
  with the bass first and the other notes stacked above it in close position.
* Drum-track notes are unpitched in music21 and are skipped, as the original's
  ``isinstance(element, note.Note / chord.Chord)`` test skipped them.

Settings:

* ``durations = "drop"`` (default) | ``"nearest"``.  The original looked
  durations up in a five-entry table; a note with any other value (dotted,
  triplet, tied over 4 quarters) had no class and was left out.  ``drop`` keeps
  that behaviour so the ``seed`` preset measures the same task the original
  reported; ``nearest`` instead maps every duration to the nearest class in
  log2 space (1.5 -> half, 3 -> whole, 0.75 -> quarter, 1/3 -> 16th...), keeping
  every note.
* ``order = "onset"`` (default) | ``"parts"``.  ``onset`` puts all events of
  a piece in time order (ties: track, then duration, then pitch), which is what
  a listener hears and what every other representation does.  ``parts`` is the
  original's order: the parts (tracks) one after another, each in time order.

Known differences from music21 itself: music21 also splits notes at bar lines
(``makeTies``; the pieces appear as separate notes), gathers chords from notes
that start and end within a 16th of each other on raw ticks before quantizing
(so two fast notes can become one chord), and orders the voices of a part its
own way; notelm quantizes first and keeps whole notes.  Measured against
music21 10.5 itself (``order=parts, durations=drop``, every 40th file): on
Nottingham 25 of 26 files give identical sequences once music21's ties are
joined (``stripTies``), 98.4 % sequence similarity without joining them; on
piano_midi_de (performed MIDI) 96-97 %.  ``durations=drop`` leaves out 14 % of
the events of both corpora.

``decode`` turns the two streams back into a playable melody: onsets are the
running sum of durations, each pitch class goes in the octave nearest the
previous note (the first nearest C4), velocity 80, program 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from notelm import notes as nt
from notelm.encoding.base import SHIFTS, EventColumns, Representation, group_starts, notes_from_columns, single_song
from notelm.encoding.vocab import N_SPECIAL, Stream, Vocab
from notelm.names import PITCH_CLASS_NAMES
from notelm.settings import Settings, setting

DURATION_NAMES = ["16th", "eighth", "quarter", "half", "whole"]
DURATION_QUARTERS = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
TWELFTHS_PER_QUARTER = 12  # both music21 grids (1/4, 1/3 quarter) are whole numbers of twelfths
DECODE_VELOCITY = 80
CHORD_ROOTS_PATH = Path(__file__).resolve().parents[1] / "assets" / "chord_roots.npy"


@lru_cache(maxsize=1)
def chord_roots() -> np.ndarray:
    """``uint8 [12, 4096]``: root pitch class by (bass pitch class, pitch-class bit mask)."""
    return np.load(CHORD_ROOTS_PATH)


@dataclass
class SeedSettings(Settings):
    """The ``seed`` representation's settings (see the module's docstring)."""

    section: ClassVar[str] = "seed"
    durations: str = setting("drop", "'drop': notes of no duration class are left out, as the original's lookup "
                                     "table left them out; 'nearest': the nearest class in log2 space",
                             choices=("drop", "nearest"))
    order: str = setting("onset", "'onset': all events in time order; 'parts': the parts one after another "
                                  "(the original's order)", choices=("onset", "parts"))


class Seed(Representation):
    name = "seed"
    settings_class = SeedSettings
    note_columns = ("track", "onset", "duration", "pitch", "is_drum")
    pitch_stream = "pitch"

    def vocab(self, conditions=()) -> Vocab:
        streams = [Stream("pitch", list(PITCH_CLASS_NAMES)), Stream("duration", list(DURATION_NAMES))]
        return Vocab(self.name, dict(self.config), streams, sorted(conditions))

    def transpositions(self) -> dict[int, np.ndarray]:
        """Pitch classes rotate: every shift fits every piece."""
        specials = np.arange(N_SPECIAL)
        return {k: np.concatenate([specials, N_SPECIAL + (np.arange(12) + k) % 12]) for k in SHIFTS}

    # ------------------------------------------------------------------ encode
    def encode_events(self, notes: nt.Notes, n_songs: int):
        pitched = ~np.asarray(notes["is_drum"], bool)
        song = np.asarray(notes["song"], np.int64)[pitched]
        track = np.asarray(notes["track"], np.int64)[pitched]
        onset = np.asarray(notes["onset"], np.float64)[pitched]
        duration = np.asarray(notes["duration"], np.float64)[pitched]
        pitch = np.asarray(notes["pitch"], np.int64)[pitched]

        # music21 quantizes onsets, then durations knowing the gap to the next onset of the part
        start = music21_quantize(onset)
        order = np.lexsort((pitch, start, track, song))
        song, track, start, duration, pitch = song[order], track[order], start[order], duration[order], pitch[order]
        length = music21_quantize(duration, zero_allowed=False, gap=_gap_to_next_onset(song, track, start))

        # a chord: same song, track, onset and length (sorted so that its notes are adjacent)
        order = np.lexsort((pitch, length, start, track, song))
        song, track, start, length, pitch = song[order], track[order], start[order], length[order], pitch[order]
        first = group_starts(song, track, start, length)
        mask = np.bitwise_or.reduceat(np.left_shift(1, pitch % 12), first) if len(first) else np.zeros(0, np.int64)
        bass = pitch[first] % 12  # notes are sorted by pitch within a chord
        root = chord_roots()[bass, mask].astype(np.int64)
        song, track, start, length = song[first], track[first], start[first], length[first]

        duration_class = self._duration_class(length)
        keep = duration_class >= 0
        song, track, start, length, root, duration_class = (
            song[keep], track[keep], start[keep], length[keep], root[keep], duration_class[keep])
        if self.config["order"] == "onset":  # events are in part order now; "onset" interleaves the parts
            order = np.lexsort((np.arange(len(song)), start, song))
            song, root, duration_class = song[order], root[order], duration_class[order]
        return EventColumns(song, {"pitch": N_SPECIAL + root, "duration": N_SPECIAL + duration_class})

    def _duration_class(self, twelfths: np.ndarray) -> np.ndarray:
        """Duration class 0..4 of quantized durations (in twelfths of a quarter); -1 = dropped."""
        exact = np.full(4 * TWELFTHS_PER_QUARTER + 1, -1, np.int64)
        exact[(DURATION_QUARTERS * TWELFTHS_PER_QUARTER).astype(int)] = np.arange(len(DURATION_QUARTERS))
        if self.config["durations"] == "drop":
            longest = 4 * TWELFTHS_PER_QUARTER
            return np.where(twelfths <= longest, exact[np.minimum(twelfths, longest)], -1)
        # nearest in log2 space: classes are 0.25 * 2**k; a tie (a geometric midpoint) goes to the shorter one
        k = np.log2(np.maximum(twelfths, 1) / (0.25 * TWELFTHS_PER_QUARTER))
        return np.clip(np.ceil(k - 0.5), 0, len(DURATION_QUARTERS) - 1).astype(np.int64)

    # ------------------------------------------------------------------ decode
    def decode(self, streams: dict[str, np.ndarray]) -> nt.Notes:
        """One song's streams -> a melody: running-sum onsets, each pitch class nearest the previous note."""
        v = single_song(streams, ["pitch", "duration"])
        pitch_class, duration_class = v["pitch"], v["duration"]
        length = (DURATION_QUARTERS[duration_class] * TWELFTHS_PER_QUARTER).astype(np.int64)
        onset = np.concatenate([[0], np.cumsum(length)[:-1]]) if len(length) else length
        # step to the nearest octave of the next pitch class (a tritone goes down), starting from C4 = 60
        step = (np.diff(pitch_class, prepend=0) + 6) % 12 - 6
        pitch = 60 + np.cumsum(step)
        pitch = 36 + (pitch - 36) % 60  # keep a wandering melody within C2..B6
        return notes_from_columns(onset, length, pitch, DECODE_VELOCITY, 0, False, 0, TWELFTHS_PER_QUARTER)


# --------------------------------------------------------------------------- music21's quantization

def music21_quantize(quarters: np.ndarray, zero_allowed: bool = True, gap: np.ndarray | None = None) -> np.ndarray:
    """Quarter lengths -> twelfths of a quarter, as ``Stream.quantize(quarterLengthDivisors=(4, 3))``.

    Per value, each grid (1/4, 1/3) offers its nearest multiple (halfway rounds
    down; 0 becomes one grid step when ``zero_allowed`` is false).  The winner
    has, in this order: the smaller remaining gap (0 when the grid divides
    ``gap``, the distance to the next onset; else how far the match falls short
    of it), the smaller error rounded to 7 digits, the finer grid.  ``gap`` < 0
    means no next onset.  The float arithmetic mirrors music21's own.
    """
    x = np.asarray(quarters, np.float64)
    candidates = []
    for tick in (0.25, 1 / 3):  # finer grid first: it wins ties
        mult = np.floor(x / tick)
        low, high = tick * mult, tick * (mult + 1)
        use_low = x <= low + tick / 2.0
        match = np.where(use_low, low, high)
        if not zero_allowed:
            match = np.where(match == 0, tick, match)
        error = np.abs(np.round(x - match, 7))
        if gap is None:
            remaining = np.zeros_like(x)
        else:
            gap_q = np.asarray(gap, np.float64) / TWELFTHS_PER_QUARTER
            fills = (gap < 0) | (np.remainder(gap_q, tick) == 0)
            remaining = np.where(fills, 0.0, np.maximum(gap_q - match, 0.0))
        candidates.append((remaining, error, match))
    (rem_a, err_a, match_a), (rem_b, err_b, match_b) = candidates
    take_b = (rem_b < rem_a) | ((rem_b == rem_a) & (err_b < err_a))
    return np.round(np.where(take_b, match_b, match_a) * TWELFTHS_PER_QUARTER).astype(np.int64)


def _gap_to_next_onset(song: np.ndarray, track: np.ndarray, start: np.ndarray) -> np.ndarray:
    """For notes sorted by (song, track, start): twelfths to the next later onset of the track, -1 if none."""
    n = len(start)
    if n == 0:
        return np.zeros(0, np.int64)
    first = group_starts(song, track, start)  # distinct onsets of each track
    part_end = np.append(first[1:], n)
    next_start = np.full(len(first), -1, np.int64)
    same_part = np.zeros(len(first), bool)
    same_part[:-1] = (song[first[1:]] == song[first[:-1]]) & (track[first[1:]] == track[first[:-1]])
    next_start[:-1] = start[first[1:]]
    gap_of_onset = np.where(same_part, next_start - start[first], -1)
    return np.repeat(gap_of_onset, part_end - first)
