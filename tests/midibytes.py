"""MIDI files written byte by byte, for the cases symusic will not write (bad headers, absurd values).

    data = smf([[(0, tempo(0)), (0, note_on(60)), (480, note_off(60))]], division=480)

A track is a list of ``(delta_ticks, event_bytes)``; ``smf`` adds the End of Track
event and the chunk lengths.  Everything is plain bytes: no MIDI library involved.
"""

from __future__ import annotations

import struct


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity (7 bits per byte, high bit = more bytes follow)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def header(fmt: int = 0, n_tracks: int = 1, division: int = 480) -> bytes:
    return b"MThd" + struct.pack(">IHHH", 6, fmt, n_tracks, division & 0xFFFF)


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body)) + body


def track(events, end: bool = True) -> bytes:
    body = b"".join(vlq(delta) + bytes(event) for delta, event in events)
    return chunk(b"MTrk", body + (b"\x00\xff\x2f\x00" if end else b""))


def smf(tracks, fmt: int | None = None, division: int = 480) -> bytes:
    """A whole Standard MIDI File; format 0 for one track, 1 for several, unless given."""
    fmt = (0 if len(tracks) == 1 else 1) if fmt is None else fmt
    return header(fmt, len(tracks), division) + b"".join(track(t) for t in tracks)


def note_on(pitch: int, velocity: int = 80, channel: int = 0) -> list[int]:
    return [0x90 | channel, pitch, velocity]


def note_off(pitch: int, channel: int = 0) -> list[int]:
    return [0x80 | channel, pitch, 0]


def tempo(mspq: int) -> list[int]:
    """Set Tempo: microseconds per quarter note (3 bytes, so at most 16 777 215)."""
    return [0xFF, 0x51, 0x03, (mspq >> 16) & 0xFF, (mspq >> 8) & 0xFF, mspq & 0xFF]


def time_signature(numerator: int, denominator_power: int) -> list[int]:
    return [0xFF, 0x58, 0x04, numerator, denominator_power, 24, 8]


def melody(pitches, step: int = 480, channel: int = 0, velocity: int = 80) -> list:
    """One note after another, each ``step`` ticks long."""
    events = []
    for p in pitches:
        events += [(0, note_on(p, velocity, channel)), (step, note_off(p, channel))]
    return events
