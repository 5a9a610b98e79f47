"""Words notelm shows to people: pitch names and counted nouns.

One definition each, used by the representations, the statistics report and
the piano roll alike.
"""

from __future__ import annotations

PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(pitch: int) -> str:
    """'C4' for MIDI 60 (the usual scientific pitch names)."""
    return f"{PITCH_CLASS_NAMES[pitch % 12]}{pitch // 12 - 1}"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 piece', '3 pieces', '1,024 songs' (``nouns``: an irregular plural)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
