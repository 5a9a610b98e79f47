"""Fuzzing the MIDI path: bytes -> load_file -> note table -> encode (events, seed) -> decode -> MIDI -> read.

Any input must end in a clean ``IngestError`` (one line) or in a note table that keeps
every promise of the format, whose ``events`` encoding decodes to exactly its
quantized notes, and whose decoded notes survive a trip through a MIDI file.

CI runs a bounded, fixed set of examples (derandomized: the same inputs every run).
A long run draws fresh ones::

    NOTELM_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics

Inputs are structured random MIDI (every kind of event, absurd values, wrong chunk
lengths, bytes over 127 where data should be) and valid files mutated byte by byte
(bit flips, overwrites, insertions, deletions, truncations), with the chunk lengths
repaired half the time so that the damage reaches the event parser.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notelm import notes as nt
from notelm.encoding import get_representation
from notelm.ingest import IngestError, load_chunk, load_file

from midibytes import chunk, header, melody, note_off, note_on, smf, tempo, time_signature, vlq

EXAMPLES = int(os.environ.get("NOTELM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 150, deadline=None, derandomize=not EXAMPLES, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
WORK = Path(tempfile.mkdtemp(prefix="notelm-fuzz-"))
EVENTS = get_representation("events")
EVENTS_FULL = get_representation("events", {"velocity_bins": 8, "program": True})
SEED = get_representation("seed")
OUTCOMES: Counter = Counter()  # what the inputs came to, for the long run's report


# --------------------------------------------------------------------------- inputs

def _data(draw, n: int) -> list[int]:
    """Data bytes are 0..127; now and then one over 127, which malformed files carry."""
    return [draw(st.integers(128, 255) if draw(st.integers(0, 299)) == 0 else st.integers(0, 127)) for _ in range(n)]


def _channel_event(draw, running: int) -> tuple[bytes, int]:
    """(bytes, status now in effect); with a running status, sometimes its data bytes alone."""
    if running and draw(st.integers(0, 3)) == 0:
        return bytes(_data(draw, 1 if 0xC0 <= running < 0xE0 else 2)), running
    status = draw(st.sampled_from([0x80, 0x90, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0])) | draw(st.integers(0, 15))
    return bytes([status, *_data(draw, 1 if 0xC0 <= status < 0xE0 else 2)]), status


def _meta_event(draw) -> bytes:
    kind = draw(st.sampled_from([0x51, 0x58, 0x59, 0x01, 0x03, 0x2F, 0x7F, 0x20]))
    size = {0x51: 3, 0x58: 4, 0x59: 2, 0x2F: 0}.get(kind, 5)
    if draw(st.integers(0, 29)) == 0:
        size = draw(st.integers(0, 300))  # a declared size that does not fit the type
    payload = draw(st.binary(min_size=size, max_size=size))
    return bytes([0xFF, kind]) + vlq(size) + payload


@st.composite
def track_body(draw) -> bytes:
    out, running = b"", 0
    for _ in range(draw(st.integers(0, 40))):
        delta = draw(st.one_of(st.integers(0, 500), st.integers(0, 500), st.integers(0, 0x0FFFFFFF)))
        which = draw(st.integers(0, 99))
        if which < 50:  # a note: press, then release after a while (or not)
            channel, pitch = draw(st.integers(0, 15)), draw(st.integers(0, 127))
            event = bytes([0x90 | channel, pitch, draw(st.integers(0, 127))]) + vlq(draw(st.integers(0, 2000)))
            event += bytes([0x80 | channel, pitch, 0])
            running = 0x80 | channel
        elif which < 80:
            event, running = _channel_event(draw, running)
        elif which < 94:
            event = _meta_event(draw)
        elif which < 99:
            data = draw(st.binary(max_size=8))
            event = bytes([draw(st.sampled_from([0xF0, 0xF7]))]) + vlq(len(data)) + data
            running = 0  # system exclusive ends a running status
        else:
            event = draw(st.binary(min_size=1, max_size=4))  # anything at all
        out += vlq(delta) + event
    if draw(st.booleans()):
        out += b"\x00\xff\x2f\x00"
    return out


@st.composite
def structured_midi(draw) -> bytes:
    """A MIDI file assembled from random events: right or wrong in any part."""
    bodies = draw(st.lists(track_body(), max_size=3))
    fmt = draw(st.sampled_from([0, 1, 1, 1, 1, 1, 2, 3]))
    n_tracks = len(bodies) if draw(st.integers(0, 19)) else draw(st.integers(0, 5))
    usual = draw(st.integers(0, 9))
    division = draw(st.sampled_from([1, 24, 96, 480, 960, 32767])) if usual else draw(st.integers(0, 0xFFFF))
    data = header(fmt, n_tracks, division)
    for body in bodies:
        length = len(body) if draw(st.integers(0, 19)) else draw(st.integers(0, len(body) + 10))
        data += b"MTrk" + struct.pack(">I", length) + body
    return data + (draw(st.binary(max_size=6)) if draw(st.integers(0, 9)) == 0 else b"")


SOURCES = [  # valid files to damage: metas, chords, drums, running status, several tracks
    [[(0, tempo(500_000)), (0, time_signature(3, 2)), (0, [0xFF, 0x59, 0x02, 0xFE, 0x01]), (0, [0xC0, 19])]
     + melody([60, 64, 67, 72, 71, 67]), melody([36, 38, 42, 38], step=240, channel=9)],
    [[(0, note_on(p)) for p in (48, 52, 55)] + [(960, note_off(48)), (0, [52, 0]), (0, [55, 0])]
     + melody([60, 62, 64], step=120, velocity=100)],
    [[(0, [0xB0, 64, 127]), (0, note_on(70)), (5, [72, 90]), (5, [74, 90]), (100, [70, 0]), (0, [72, 0]), (0, [74, 0]),
      (0, [0xE0, 0, 64]), (0, [0xF0, 0x03, 0x7E, 0x7F, 0xF7])], melody([40, 41], step=1920)],
]


@st.composite
def mutated_midi(draw) -> bytes:
    """A valid file with a few bytes damaged, inside one track (chunk lengths repaired) or anywhere."""
    tracks = SOURCES[draw(st.integers(0, len(SOURCES) - 1))]
    bodies = [bytearray(smf([t])[22:]) for t in tracks]  # event bytes of each track, with End of Track
    inside = draw(st.booleans())
    whole = None if inside else bytearray(smf(tracks, division=draw(st.sampled_from([96, 480]))))
    buf = bodies[draw(st.integers(0, len(bodies) - 1))] if inside else whole
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            buf[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xC0, 0xF0, 0xF7, 0xFF]))
        elif op == 2:
            buf[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == 3:
            del buf[i:i + draw(st.integers(1, 4))]
        else:
            del buf[i:]  # truncated
    if inside:
        return header(1, len(bodies), 480) + b"".join(chunk(b"MTrk", bytes(b)) for b in bodies)
    return bytes(whole)


# --------------------------------------------------------------------------- the properties

def _rows(notes: dict, columns) -> Counter:
    return Counter(zip(*(np.asarray(notes[c]).tolist() for c in columns)))


def check_pipeline(data: bytes) -> None:
    path = WORK / "input.mid"
    path.write_bytes(data)
    try:
        _, raws = load_file(str(path))
    except IngestError as e:
        reason = str(e)
        assert reason and "\n" not in reason and len(reason) <= 300, reason
        OUTCOMES["refused: " + re.sub(r"\d+", "N", reason.split(":")[0].split(" (")[0])] += 1
        return
    OUTCOMES["read"] += 1

    # the note table keeps every promise of the format
    notes = nt.assemble(raws)
    notes.pop("song")
    n = nt.num_notes(notes)
    assert all(len(v) == n for v in notes.values())
    if n:
        assert notes["pitch"].min() >= 0 and notes["pitch"].max() <= 127
        assert notes["velocity"].min() >= 1 and notes["velocity"].max() <= 127
        assert notes["duration_tick"].min() > 0 and notes["onset_tick"].min() >= 0
        assert (notes["onset"] + notes["duration"]).max() < nt.MAX_QUARTERS
        assert np.isfinite(notes["onset"]).all() and np.isfinite(notes["duration"]).all()
        for r in raws:
            assert np.isfinite(r.meta.tempo_qpm).all() and (r.meta.tempo_qpm > 0).all()
            den = r.meta.timesig_den.astype(np.int64)
            assert (den > 0).all() and (den & (den - 1) == 0).all() and (r.meta.timesig_num > 0).all()
            assert (np.abs(r.meta.key_sharps) <= 7).all()
    # the same file through ingest's chunk assembly: a clean failure or finite song figures, never a crash
    built = load_chunk([(0, str(path), "fuzz", "fuzz")])
    assert not any(f["reason"].startswith("parser error") for f in built.failures), built.failures
    for rec in built.records:
        assert np.isfinite([rec["duration_q"], rec["duration_s"], rec["qpm"]]).all() and rec["qpm"] > 0
    if not n:
        return
    OUTCOMES["with notes"] += 1

    # events: decode(encode(x)) == quantize(x), exactly, as a multiset of notes
    for rep in (EVENTS, EVENTS_FULL):
        streams = rep.encode_song(notes)
        rep.vocab().check_ids(streams)
        back = rep.decode(streams)
        assert _rows(back, nt.NOTE_COLUMNS) == _rows(rep.quantize(notes), nt.NOTE_COLUMNS)
    # seed: ids in range, one decoded note per event, pitches within its melody range
    streams = SEED.encode_song(notes)
    SEED.vocab().check_ids(streams)
    melody_notes = SEED.decode(streams)
    assert nt.num_notes(melody_notes) == len(streams["pitch"]) - 2
    assert nt.num_notes(melody_notes) == 0 or (36 <= melody_notes["pitch"].min() and melody_notes["pitch"].max() <= 95)
    # the decoded events survive a MIDI file: same onsets and pitches (durations of overlapping
    # notes of one pitch may pair differently: MIDI cannot tell them apart)
    back = EVENTS.decode(EVENTS.encode_song(notes))
    out = WORK / "decoded.mid"
    nt.write_midi(back, out)
    again, _ = nt.read_midi(out)
    assert _rows(again, ["onset", "pitch"]) == _rows(back, ["onset", "pitch"])
    assert np.isclose(again["duration"].sum(), back["duration"].sum())


@FUZZ
@given(structured_midi())
def test_fuzz_structured_midi(data):
    check_pipeline(data)


@FUZZ
@given(mutated_midi())
def test_fuzz_mutated_midi(data):
    check_pipeline(data)


def test_fuzz_sources_are_valid():
    """The files the mutations start from are read as they were written."""
    for tracks in SOURCES:
        path = WORK / "source.mid"
        path.write_bytes(smf(tracks))
        _, raws = load_file(str(path))
        assert nt.num_notes(nt.assemble(raws)) > 0


def teardown_module():
    if EXAMPLES:
        print(f"\nfuzz outcomes: {dict(OUTCOMES)}")
