"""Standard MIDI File bytes checked before symusic parses them: one rule for every reader.

``midi_problem`` says why a file must not be parsed ('' when it may be): not a MIDI file, cut
short, a format other than 0 and 1 (and 2 with one track), a time division that is not ticks per
quarter note, and, when asked, malformed events.  Ingest, ``notes.read_midi`` (prompts, ``render``)
and web uploads all ask it, so a file is refused or accepted the same way everywhere.

Why the event walk: symusic 0.5.8 indexes a [channel][pitch] table with a note's pitch byte
unchecked: a pitch byte over 127 on channel 16 makes it write outside the table and crash the
process.  It also reads the standard's 0xF7 escape event as a single byte, loses its place and may
then meet such a byte anywhere (both found by tests/test_fuzz.py).  ``midi_event_problem`` walks
every event first, the way symusic does, and refuses what it cannot read safely.  It costs a few
times symusic's own parse, so ingest workers, where a crash costs one file, skip it; every reader
inside a long-lived process (prompts, web uploads, render, load_file in-process) runs it.
"""

from __future__ import annotations

import re

MIDI_HEADER = b"MThd"


def midi_problem(data: bytes, walk_events: bool = True) -> str:
    """Why ``data`` must not be parsed as MIDI ('' when it may be); see the module's docstring."""
    if data[:4] != MIDI_HEADER:
        return "not a MIDI file (no MThd header)"
    problem = header_problem(data) or chunks_problem(data)
    if not problem and walk_events:
        problem = midi_event_problem(data)
    return problem


def header_problem(data: bytes) -> str:
    """The header chunk: its length, the format and the time division (one tick rule for all readers)."""
    if len(data) < 14:
        return f"truncated MIDI: {len(data)} bytes, shorter than a MIDI header"
    size = int.from_bytes(data[4:8], "big")
    if size < 6:
        return f"malformed MIDI header: its chunk holds {size} bytes, fewer than the 6 it needs"
    fmt, n_tracks, division = (int.from_bytes(data[k:k + 2], "big") for k in (8, 10, 12))
    if fmt > 2:
        return f"unknown MIDI format {fmt} (the standard has 0, 1 and 2)"
    if fmt == 2 and n_tracks > 1:
        return f"MIDI format 2 ({n_tracks} independent sequences) is not supported"
    if division & 0x8000:
        return f"unreadable MIDI: SMPTE time division ({division:#06x}), not ticks per quarter note"
    if division == 0:
        return "invalid ticks per quarter note (0)"
    return ""


def chunks_problem(data: bytes) -> str:
    """Truncation: symusic quietly keeps whatever part of a cut file it can read."""
    n_tracks = int.from_bytes(data[10:12], "big")
    pos, found = 8 + int.from_bytes(data[4:8], "big"), 0
    while found < n_tracks:
        if pos + 8 > len(data):
            return f"truncated MIDI: header announces {n_tracks} tracks, the file ends after {found}"
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + length > len(data):
            return f"truncated MIDI: chunk {found + 1} announces {length} bytes, only {len(data) - pos - 8} present"
        found += data[pos:pos + 4] == b"MTrk"
        pos += 8 + length
    return ""


# --------------------------------------------------------------------------- the event walk


_VLQ = rb"[\x80-\xff]{0,3}[\x00-\x7f]"
_DATA = rb"[\x00-\x7f]"
# runs of channel events: a status byte, its data bytes, then the running-status events that reuse it
_CHANNEL_RUN = re.compile(rb"(?:" + _VLQ + rb"(?:([\x80-\xbf\xe0-\xef])" + _DATA + rb"{2}(?:" + _VLQ + _DATA
                          + rb"{2})*|([\xc0-\xdf])" + _DATA + rb"(?:" + _VLQ + _DATA + rb")*))*")
_META_SIZE = {0x51: 3, 0x58: 4, 0x59: 2}  # tempo, time signature, key signature: bytes symusic reads
_RUNNING = {1: re.compile(rb"(?:" + _VLQ + _DATA + rb")*"), 2: re.compile(rb"(?:" + _VLQ + _DATA + rb"{2})*")}


def midi_event_problem(data: bytes) -> str:
    """Why the events of a MIDI file are malformed ('' when they are not): every track, every event.

    Channel events are matched by a regular expression (C speed); meta and system-exclusive
    events, and whatever the expression stops at, one by one here.
    """
    pos, track, n_tracks = 8 + int.from_bytes(data[4:8], "big"), 0, int.from_bytes(data[10:12], "big")
    while pos + 8 <= len(data) and track < n_tracks:  # symusic reads the announced number of MTrk chunks
        kind, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
        start, pos = pos + 8, pos + 8 + length
        if kind == b"MTrk":
            track += 1
            problem = _track_problem(data, start, min(pos, len(data)))
            if problem:
                return f"malformed MIDI event in track {track}: {problem}"
    return ""


def _track_problem(data: bytes, pos: int, end: int) -> str:
    status = 0  # the running status
    while pos < end:
        if status:
            pos = _RUNNING[1 if 0xC0 <= status < 0xE0 else 2].match(data, pos, end).end()
        m = _CHANNEL_RUN.match(data, pos, end)
        if m.end() > pos:
            pos = m.end()
            status = data[m.start(1) if m.start(1) > m.start(2) else m.start(2)]
            continue
        if pos >= end:
            break
        at = pos
        pos = _skip_vlq(data, pos, end)
        if pos < 0:
            return f"delta time at byte {at} is cut off or longer than 4 bytes"
        if pos >= end:
            return f"event at byte {at} is cut off by the end of the track"
        kind = data[pos]
        if kind == 0xF7:  # the standard's escape event: symusic 0.5.8 takes it for one byte and loses its place
            return f"system exclusive escape event (0xf7) at byte {pos}, which symusic misreads"
        if kind in (0xFF, 0xF0):
            if kind == 0xFF and pos + 1 < end and data[pos + 1] == 0x2F:
                return ""  # end of track: the parser reads no further
            size_at = pos + (2 if kind == 0xFF else 1)
            payload = _skip_vlq(data, size_at, end)
            size = 0
            for b in data[size_at:max(payload, size_at)]:
                size = (size << 7) | (b & 0x7F)
            if payload < 0 or payload + size > end:
                what = "meta" if kind == 0xFF else "system exclusive"
                return f"{what} event at byte {at} runs past the end of its track"
            needs = _META_SIZE.get(data[pos + 1], 0) if kind == 0xFF else 0
            if size < needs:  # symusic would read past it
                return f"meta event {data[pos + 1]:#04x} at byte {at} holds {size} bytes, fewer than its {needs}"
            pos = payload + size
            if kind != 0xFF:
                status = 0  # system exclusive cancels the running status
            continue
        if kind > 0xF0:
            return f"system message {kind:#04x} at byte {pos} (not allowed in a MIDI file)"
        if kind >= 0x80:
            status, pos = kind, pos + 1
        elif not status:
            return f"data byte {kind:#04x} without a status byte at byte {pos}"
        n = 1 if 0xC0 <= status < 0xE0 else 2
        if pos + n > end:
            return f"event at byte {at} is cut off by the end of the track"
        for k in range(n):
            if data[pos + k] > 0x7F:
                return f"data byte {data[pos + k]:#04x} over 127 at byte {pos + k} (status {status:#04x})"
        pos += n
    return ""


def _skip_vlq(data: bytes, pos: int, end: int) -> int:
    """The position after a variable-length number of at most 4 bytes starting at ``pos``; -1 if none."""
    for k in range(min(4, end - pos)):
        if data[pos + k] < 0x80:
            return pos + k + 1
    return -1
