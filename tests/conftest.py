"""Shared fixtures and helpers: small MIDI files and corpora made by the tests themselves (no binaries in git)."""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest
import symusic

from notelm.corpus import prepare


def quiet(*_):
    """A ``log`` that prints nothing."""


def prepare_quietly(source, out, **kw):
    """``notelm prepare`` of one folder with one worker and no output: how the tests make a corpus."""
    kw.setdefault("workers", 1)
    return prepare([str(source)], out, progress=False, log=quiet, **kw)


def melody_corpus(tmp_path_factory, n_songs: int, seed: int, melody, collections=("a", "b"), prefix="m", **kw):
    """A corpus of ``n_songs`` one-track melodies, ``melody(rng)`` -> note rows (see ``write_midi``),
    song ``i`` in ``collections[i % len(collections)]``; ``kw`` go to ``prepare``."""
    root = tmp_path_factory.mktemp("music")
    rng = np.random.default_rng(seed)
    for i in range(n_songs):
        write_midi(root / collections[i % len(collections)] / f"{prefix}{i:02d}.mid", [(0, False, melody(rng))])
    out = tmp_path_factory.mktemp("corpus") / "c"
    prepare_quietly(root, out, **kw)
    return out


def write_midi(path, tracks, tpq=480, qpm=120.0, time_signature=(4, 4)):
    """Write a MIDI file.  ``tracks``: list of (program, is_drum, [(onset_q, dur_q, pitch, velocity), ...])."""
    score = symusic.Score(tpq)
    score.tempos.append(symusic.Tempo(0, qpm))
    if time_signature:
        score.time_signatures.append(symusic.TimeSignature(0, *time_signature))
    for program, is_drum, notes in tracks:
        track = symusic.Track(f"p{program}", program=program, is_drum=is_drum)
        if notes:
            a = np.asarray(notes, np.float64)
            track.notes.extend(symusic.Note.from_numpy(
                time=np.round(a[:, 0] * tpq).astype(np.int32), duration=np.round(a[:, 1] * tpq).astype(np.int32),
                pitch=a[:, 2].astype(np.int8), velocity=a[:, 3].astype(np.int8)))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def scale_tune(start_pitch=60, n=8, chord_every=0, tpq=480):
    """A melody of n quarter notes up a C-major-ish scale, optionally with a chord track."""
    steps = [0, 2, 4, 5, 7, 9, 11, 12]
    melody = [(float(i), 1.0, start_pitch + steps[i % 8], 90) for i in range(n)]
    tracks = [(0, False, melody)]
    if chord_every:
        chords = []
        for i in range(0, n, chord_every):
            for p in (48, 52, 55):
                chords.append((float(i), float(chord_every), p, 70))
        tracks.append((0, False, chords))
    return tracks


@pytest.fixture
def midi_folder(tmp_path):
    """Two collections, 5 valid MIDI files (one a duplicate), one corrupt, one non-MIDI.

    Valid note counts: a1=8, a2=12+6 (melody + 2 chords of 3), b1=16, b2=5 notes on 2 tracks; dup of a1.
    """
    root = tmp_path / "music"
    write_midi(root / "alpha" / "a1.mid", scale_tune(60, 8))
    write_midi(root / "alpha" / "a2.mid", scale_tune(62, 12, chord_every=6))
    write_midi(root / "beta" / "b1.mid", scale_tune(65, 16), tpq=96, qpm=90)
    write_midi(root / "beta" / "sub" / "b2.mid", [(40, False, [(0, 2, 55, 80), (2, 2, 57, 80)]),
                                                  (0, True, [(0, 0.5, 36, 100), (1, 0.5, 38, 100), (2, 0.5, 36, 100)])])
    (root / "beta" / "copy_of_a1.mid").write_bytes((root / "alpha" / "a1.mid").read_bytes())
    data = (root / "alpha" / "a2.mid").read_bytes()
    (root / "alpha" / "broken.mid").write_bytes(data[: len(data) // 2])
    (root / "beta" / "notes.mid").write_text("these are my notes, not a MIDI file\n")
    (root / "beta" / "readme.txt").write_text("ignored: not a music file\n")
    return root


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open or read (a FIFO waits for a writer)."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
