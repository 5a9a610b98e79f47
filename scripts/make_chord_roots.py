"""Regenerate ``src/notelm/assets/chord_roots.npy``: the root of every chord, as music21 finds it.

The ``seed`` representation reduces a chord to its root the way the original
experiment did: ``music21.chord.Chord(...).root()`` on pitches spelled as
music21's MIDI import spells them (C C# D E- E F F# G G# A B- B).  Calling
music21 per chord is far too slow for a corpus, so this script asks it once
for every (bass pitch class, pitch-class set) pair and stores the answers in a
``uint8 [12, 4096]`` table: ``table[bass_pc, mask]`` is the root's pitch class,
where bit ``k`` of ``mask`` is set when pitch class ``k`` sounds.  Entries whose
bass is not in the set are 255 (never looked up).

music21's answer is not a function of the pitch-class set alone: it breaks
ties between equally "rooty" notes by note order, and returns the bass for
seven-step chords.  Asking with the bass first and the other pitch classes
stacked above it in close position reproduces music21 for chords listed low to
high; other voicings of ambiguous sets (clusters, chords with both C and C#)
can differ (see the seed module docstring for the measured agreement).

    .venv/bin/python scripts/make_chord_roots.py     # ~10 s
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from music21 import chord, pitch

OUT = Path(__file__).resolve().parents[1] / "src" / "notelm" / "assets" / "chord_roots.npy"


def music21_root(midi_pitches) -> int:
    pitches = []
    for m in midi_pitches:
        p = pitch.Pitch()
        p.midi = int(m)  # spelled as music21's MIDI import spells it
        pitches.append(p)
    return chord.Chord(pitches).root().pitchClass


def close_voicing(bass: int, mask: int) -> list[int]:
    """The bass at C3..B3, the other pitch classes of ``mask`` stacked above it within an octave."""
    above = sorted((pc - bass) % 12 for pc in range(12) if mask >> pc & 1 and pc != bass)
    return [48 + bass] + [48 + bass + step for step in above]


def build() -> np.ndarray:
    table = np.full((12, 4096), 255, np.uint8)
    for mask in range(1, 4096):
        for bass in range(12):
            if mask >> bass & 1:
                table[bass, mask] = music21_root(close_voicing(bass, mask))
    return table


if __name__ == "__main__":
    table = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.save(OUT, table)
    print(f"wrote {OUT} ({table.nbytes} bytes)")
