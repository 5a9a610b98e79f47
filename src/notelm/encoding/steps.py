"""``steps``: a piano roll, time step by time step (the classic polyphonic benchmark's view of music).

One stream, ``pitch``; a song is, for every time step from the start of the
piece to the end of its last note, the keys sounding in that step in ascending
order followed by an end-of-step token::

    BOS  60 64 67 step  60 64 67 step  step  59 62 67 step ... EOS
         '-- step 1 --' '-- step 2 --' (3: silent) '-- step 4 --'

Values: the 88 keys of the piano, MIDI 21 (A0) .. 108 (C8), named "21" .. "108",
then "step".  A time step is ``1 / steps_per_quarter`` quarter notes (default:
an eighth note).  Notes outside the piano's range are left out.

The map between a roll and its tokens is one-to-one, so a model's probability
of a step is exact: the sum of the log-probabilities of its tokens.  The roll
does not tell a held key from a key struck again: ``decode`` (and ``quantize``)
make every run of consecutive steps in which a key sounds one note.  Silent
steps after the last note are not part of a song (a note table has no
"end of piece" to hold them).

``roll(streams)`` gives a song's roll ``[T, 88]`` (uint8, 1 = the key sounds),
which is what the per-step metric and its baselines read (``pianoroll.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from notelm import notes as nt
from notelm.encoding.base import SHIFTS, EventColumns, Representation, notes_from_columns
from notelm.encoding.vocab import EOS, N_SPECIAL, Stream, Vocab
from notelm.settings import Settings, setting

LOWEST_KEY = 21  # A0: column 0 of a roll
KEYS = 88  # A0 .. C8
STEP_ID = N_SPECIAL + KEYS  # the end-of-step token
VELOCITY = 80


@dataclass
class StepsSettings(Settings):
    """The ``steps`` representation's settings (see the module's docstring)."""

    section: ClassVar[str] = "steps"
    steps_per_quarter: int = setting(2, "time steps per quarter note (2: a step is an eighth note, the grid the "
                                        "piano-roll sources are read on)", minimum=1)


class Steps(Representation):
    name = "steps"
    settings_class = StepsSettings
    note_columns = ("onset", "duration", "pitch", "is_drum")
    pitch_stream = "pitch"

    def vocab(self, conditions=()) -> Vocab:
        keys = [str(p) for p in range(LOWEST_KEY, LOWEST_KEY + KEYS)]
        return Vocab(self.name, dict(self.config), [Stream("pitch", keys + ["step"])], sorted(conditions))

    # ------------------------------------------------------------------ what other stages ask
    def transpositions(self) -> dict[int, np.ndarray]:
        """Keys move (-1 where they would leave the piano); the end-of-step token stays."""
        tables = {}
        for k in SHIFTS:
            table = np.arange(STEP_ID + 1)
            moved = np.arange(KEYS) + k
            table[N_SPECIAL:STEP_ID] = np.where((moved >= 0) & (moved < KEYS), N_SPECIAL + moved, -1)
            tables[k] = table
        return tables

    def rest_ids(self) -> np.ndarray:
        return np.array([STEP_ID], np.int64)

    def step_token(self) -> int:
        return STEP_ID

    # ------------------------------------------------------------------ the grid
    def _cells(self, notes: nt.Notes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(song, step, key) of every sounding cell of the roll, unique, sorted by song, step, key."""
        spq = self.config["steps_per_quarter"]
        pitch = np.asarray(notes["pitch"], np.int64)
        keep = ~np.asarray(notes["is_drum"], bool) & (pitch >= LOWEST_KEY) & (pitch < LOWEST_KEY + KEYS)
        onset = np.floor(np.asarray(notes["onset"], np.float64)[keep] * spq + 0.5).astype(np.int64)
        end = np.floor((np.asarray(notes["onset"], np.float64) + notes["duration"])[keep] * spq + 0.5)
        length = np.maximum(end.astype(np.int64) - onset, 1)  # a note shorter than a step still sounds in one
        song = np.asarray(notes["song"], np.int64)[keep] if "song" in notes else np.zeros(len(onset), np.int64)
        first = np.repeat(np.cumsum(length) - length, length)
        step = np.repeat(onset, length) + np.arange(int(length.sum())) - first
        key = np.repeat(pitch[keep] - LOWEST_KEY, length)
        # one int64 per cell (song: 24 bits, step: 32, key: 7), sorted and made unique: overlapping notes merge
        cell = np.unique((np.repeat(song, length) << 39) | (step << 7) | key)
        return cell >> 39, (cell >> 7) & ((1 << 32) - 1), cell & 127

    def _notes_from_cells(self, step: np.ndarray, key: np.ndarray) -> nt.Notes:
        """One song's cells (any order) -> notes: each run of consecutive steps of a key is one note."""
        order = np.lexsort((step, key))
        step, key = step[order], key[order]
        new = np.ones(len(step), bool)
        new[1:] = (key[1:] != key[:-1]) | (step[1:] != step[:-1] + 1)
        starts = np.flatnonzero(new)
        lengths = np.diff(np.append(starts, len(step)))
        onset, pitch = step[starts], key[starts] + LOWEST_KEY
        order = np.lexsort((pitch, onset))
        return notes_from_columns(onset[order], lengths[order], pitch[order], VELOCITY, 0, False, 0,
                                  self.config["steps_per_quarter"])

    def quantize(self, notes: nt.Notes) -> nt.Notes:
        _, step, key = self._cells(dict(notes, song=np.zeros(nt.num_notes(notes), np.int64)))
        return self._notes_from_cells(step, key)

    # ------------------------------------------------------------------ encode
    def encode_events(self, notes: nt.Notes, n_songs: int) -> EventColumns:
        song, step, key = self._cells(notes)
        n_steps = np.zeros(n_songs, np.int64)  # steps per song: up to the end of its last note
        np.maximum.at(n_steps, song, step + 1)
        step_song = np.repeat(np.arange(n_songs), n_steps)
        step_index = np.arange(int(n_steps.sum())) - np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
        # every key of a step, ascending, then the step's end token: sort by (song, step, key) with the
        # end token as key KEYS (after every real key)
        all_song = np.concatenate([song, step_song])
        all_step = np.concatenate([step, step_index])
        all_key = np.concatenate([key, np.full(len(step_song), KEYS, np.int64)])
        order = np.lexsort((all_key, all_step, all_song))
        return EventColumns(all_song[order], {"pitch": all_key[order] + N_SPECIAL})

    # ------------------------------------------------------------------ decode
    def cells(self, streams: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """(step, key, number of steps) of one song's tokens; decoding stops at EOS, other specials are skipped."""
        tokens = np.asarray(streams["pitch"], np.int64).reshape(-1)
        eos = np.flatnonzero(tokens[1:] == EOS)
        if len(eos):
            tokens = tokens[: eos[0] + 1]
        tokens = tokens[tokens >= N_SPECIAL]
        is_step = tokens == STEP_ID
        step = np.cumsum(is_step) - is_step
        is_key = ~is_step
        return step[is_key], tokens[is_key] - N_SPECIAL, int(is_step.sum())

    def decode(self, streams: dict[str, np.ndarray]) -> nt.Notes:
        """One song's tokens -> notes (a key repeated within a step counts once; order within a step is free)."""
        step, key, _ = self.cells(streams)
        keep = np.unique(step * KEYS + key)
        return self._notes_from_cells(keep // KEYS, keep % KEYS)

    def roll(self, streams: dict[str, np.ndarray]) -> np.ndarray:
        """One song's roll: uint8 ``[steps, 88]``, 1 where a key sounds."""
        step, key, n_steps = self.cells(streams)
        out = np.zeros((n_steps, KEYS), np.uint8)
        ok = step < n_steps  # keys after the last end-of-step token belong to no complete step
        out[step[ok], key[ok]] = 1
        return out
