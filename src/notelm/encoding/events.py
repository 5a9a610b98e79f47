"""``events``: every note of every instrument as one event on a time grid (the default for new models).

Streams, one value per event, in the order ordered heads predict them::

    shift     grid steps since the previous event's onset: "0" .. str(max_shift)
    part      (parts > 0) the part the note belongs to: "0" .. str(parts - 1), "-" on rests
    pitch     MIDI pitch "0" .. "127", or "rest" (an event that only moves time on)
    duration  grid steps "1" .. str(linear_durations) exactly, then log-spaced classes
              up to max_duration; "-" on rests
    velocity  (velocity_bins > 0) the bin's centre velocity, "-" on rests
    program   (program = true) General MIDI program "0" .. "127" or "drums", "-" on rests

Time is counted from the start of the piece on a grid of ``steps_per_quarter``.
A gap longer than ``max_shift`` becomes rest events of ``max_shift`` steps each
followed by the note with the remainder (1 .. max_shift).  Notes that start
together (a chord, or voices of several instruments) are events with shift 0,
ordered by pitch, then program, duration and velocity, so the encoding of a
piece does not depend on the order of its tracks.

Parts (``parts = N``): where the music has parts (the four voices of a chorale,
melody and chords of a folk tune, melody / bridge / piano of a pop song), each
note's part is the rank of its track among the song's tracks (0 = the first
track with notes; tracks past the N-th share the last part), so a model learns
which voice plays each note and generated pieces come out as tracks.  Notes
that start together are then ordered by part first, then pitch.  Decoded notes
get track = part; the program of each part comes from the program stream when
there is one, else from whoever writes the file (``generate``: the prompt's or
the style's programs).

Durations of up to ``linear_durations`` steps (default 24 = 2 quarters) are
kept exactly; longer ones snap, in log space, to ``durations_per_octave``
classes per octave (4: x1, x1.25, x1.5, x1.75 of each power of two - dotted and
double-dotted values land exactly) up to ``max_duration`` steps (default 192 =
16 quarters, longer notes are cut there).

``quantize(notes)`` is the note table exactly as this grid sees it; the
representation's contract, checked by the tests and ``benchmarks/roundtrip.py``,
is ``decode(encode_song(x)) == quantize(x)`` as a multiset of notes.  Decoded
tables use grid steps as ticks (tpq = steps_per_quarter), give every program
its own track (track = program, drums = 128), and velocity 80 when velocity is
not encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from notelm import notes as nt
from notelm.encoding.base import SHIFTS, EventColumns, Representation, notes_from_columns, single_song
from notelm.encoding.vocab import N_SPECIAL, Stream, Vocab
from notelm.form import part_ranks
from notelm.io import NotelmError
from notelm.settings import Settings, setting

DEFAULT_VELOCITY = 80
DRUMS = 128  # program index of the drum kit (GM programs are 0..127)
PITCHES = 128  # MIDI pitches 0..127; the pitch stream's next token is "rest"


@dataclass
class EventsSettings(Settings):
    """The ``events`` representation's settings (see the module's docstring)."""

    section: ClassVar[str] = "events"
    steps_per_quarter: int = setting(12, "grid steps per quarter note (12 holds 16ths and triplet 8ths exactly)",
                                     minimum=1, maximum=96)
    max_shift: int = setting(48, "longest time shift in steps (4 quarters at 12); longer gaps add rest events",
                             minimum=1, maximum=4096)
    linear_durations: int = setting(24, "durations 1..N steps are exact (2 quarters at 12)", minimum=1,
                                    maximum=4096)
    max_duration: int = setting(192, "longest duration in steps (16 quarters at 12); longer notes are cut here",
                                minimum=1, maximum=16384)
    durations_per_octave: int = setting(4, "log-spaced duration classes per octave above linear_durations",
                                        minimum=1, maximum=48)
    velocity_bins: int = setting(0, "0: no velocity stream; else this many equal bins over 0..127",
                                 minimum=0, maximum=128)
    program: bool = setting(False, "a program stream (General MIDI program, or drums)")
    parts: int = setting(0, "0: no part stream; else a part stream of this many parts (a note's part is the rank "
                            "of its track in its song; later tracks share the last part)", minimum=0, maximum=64)
    drums: str = setting("auto", "drop or keep drum notes; auto: keep them when program is on, else drop",
                         choices=("auto", "drop", "keep"))

    def check(self) -> None:
        if self.max_duration < self.linear_durations:
            raise NotelmError(f"events.max_duration must be >= events.linear_durations "
                              f"({self.max_duration} < {self.linear_durations})")


class Events(Representation):
    name = "events"
    settings_class = EventsSettings
    note_columns = ("onset", "duration", "pitch", "velocity", "program", "is_drum")
    pitch_stream = "pitch"

    def resolve(self, config: dict) -> dict:
        if config["drums"] == "auto":
            config["drums"] = "keep" if config["program"] else "drop"
        return config

    def __init__(self, config: dict | None = None):
        super().__init__(config)
        c = self.config
        if c["parts"]:
            self.note_columns = (*Events.note_columns, "track")
        self.duration_steps = duration_classes(c["linear_durations"], c["max_duration"], c["durations_per_octave"])
        # steps (0..max_duration) -> class
        self.class_of_steps = nearest_class_table(self.duration_steps).astype(np.int16)
        bins = c["velocity_bins"]
        self.velocity_centres = (2 * np.arange(bins) + 1) * 128 // (2 * bins) if bins else np.zeros(0, np.int64)

    # ------------------------------------------------------------------ vocabulary
    def vocab(self, conditions=()) -> Vocab:
        c = self.config
        streams = [Stream("shift", [str(s) for s in range(c["max_shift"] + 1)])]
        if c["parts"]:
            streams.append(Stream("part", [str(p) for p in range(c["parts"])] + ["-"]))
        streams += [
            Stream("pitch", [str(p) for p in range(PITCHES)] + ["rest"]),
            Stream("duration", [str(int(s)) for s in self.duration_steps] + ["-"]),
        ]
        if c["velocity_bins"]:
            streams.append(Stream("velocity", [str(int(v)) for v in self.velocity_centres] + ["-"]))
        if c["program"]:
            streams.append(Stream("program", [str(p) for p in range(128)] + ["drums", "-"]))
        return Vocab(self.name, dict(c), streams, sorted(conditions))

    def transpositions(self) -> dict[int, np.ndarray]:
        """MIDI pitches move (-1 where they would leave 0..127); the rest token stays."""
        size = self.vocab().stream("pitch").size
        tables = {}
        for k in SHIFTS:
            table = np.arange(size)
            moved = np.arange(PITCHES) + k
            table[N_SPECIAL:N_SPECIAL + PITCHES] = np.where((moved >= 0) & (moved < PITCHES), N_SPECIAL + moved, -1)
            tables[k] = table
        return tables

    def rest_ids(self) -> np.ndarray:
        return np.array([N_SPECIAL + PITCHES], np.int64)

    # ------------------------------------------------------------------ the grid
    def _grid(self, notes: nt.Notes) -> dict[str, np.ndarray]:
        """Each kept note on the grid: onset step, duration class, pitch, velocity bin, program index."""
        c = self.config
        spq = c["steps_per_quarter"]
        drums = np.asarray(notes["is_drum"], bool)
        keep = ~drums if c["drums"] == "drop" and drums.any() else None
        col = (lambda k: np.asarray(notes[k])) if keep is None else (lambda k: np.asarray(notes[k])[keep])
        # narrow integer types where they suffice: less memory to fill for every chunk
        grid = {"onset": _round_half_up(col("onset"), spq, 0, None, np.int64),
                "pitch": np.clip(col("pitch"), 0, 127).astype(np.int16, copy=False)}
        grid["duration"] = self.class_of_steps[_round_half_up(col("duration"), spq, 1, c["max_duration"], np.intp)]
        if c["velocity_bins"]:
            velocity = np.clip(col("velocity"), 0, 127).astype(np.int16)
            grid["velocity"] = velocity * np.int16(c["velocity_bins"]) // np.int16(128)
        if c["program"]:
            program = np.clip(col("program"), 0, 127).astype(np.int16)
            grid["program"] = np.where(col("is_drum"), np.int16(DRUMS), program)
        if c["parts"]:
            song = col("song") if "song" in notes else np.zeros(len(grid["pitch"]), np.int64)
            grid["part"] = part_ranks(song, col("track"), c["parts"])
        if "song" in notes:
            grid["song"] = col("song")
        return grid

    def _notes_from_grid(self, onset, duration_class, pitch, velocity_bin=None, program=None, part=None) -> nt.Notes:
        c = self.config
        velocity = self.velocity_centres[velocity_bin] if velocity_bin is not None else DEFAULT_VELOCITY
        if program is None:
            program_col, is_drum, track = 0, False, 0
        else:
            program_col, is_drum, track = np.where(program == DRUMS, 0, program), program == DRUMS, program
        if part is not None:
            track = part
        return notes_from_columns(onset, self.duration_steps[duration_class], pitch, velocity, program_col, is_drum,
                                  track, c["steps_per_quarter"])

    def quantize(self, notes: nt.Notes) -> nt.Notes:
        """The notes exactly as the encoding keeps them (dropped drums gone, everything on the grid)."""
        g = self._grid(notes)
        return self._notes_from_grid(g["onset"], g["duration"], g["pitch"], g.get("velocity"), g.get("program"),
                                     g.get("part"))

    # ------------------------------------------------------------------ encode
    def encode_events(self, notes: nt.Notes, n_songs: int) -> EventColumns:
        c = self.config
        g = _sorted_events(self._grid(notes))
        song, onset = g["song"], g["onset"]
        n = len(song)

        # time since the previous onset of the same song (the first note: since the start of the piece)
        shift = np.empty(n, np.int64)
        shift[:1] = onset[:1]
        np.subtract(onset[1:], onset[:-1], out=shift[1:])
        song_start = np.flatnonzero(song[1:] != song[:-1]) + 1
        shift[song_start] = onset[song_start]

        # a gap longer than max_shift: rest events of max_shift steps before the note, which keeps the remainder
        max_shift = c["max_shift"]
        rests = shift - 1
        np.maximum(rests, 0, out=rests)
        rests //= max_shift
        shift -= rests * max_shift
        values = {"shift": shift, "pitch": g["pitch"], "duration": g["duration"]}
        filler = {"shift": N_SPECIAL + max_shift, "pitch": N_SPECIAL + PITCHES,
                  "duration": N_SPECIAL + len(self.duration_steps)}
        if c["velocity_bins"]:
            values["velocity"] = g["velocity"]
            filler["velocity"] = N_SPECIAL + c["velocity_bins"]
        if c["program"]:
            values["program"] = g["program"]
            filler["program"] = N_SPECIAL + DRUMS + 1
        if c["parts"]:
            values["part"] = g["part"]
            filler["part"] = N_SPECIAL + c["parts"]
        for v in values.values():  # values -> ids (in place: these arrays are ours)
            v += N_SPECIAL
        return EventColumns(song, values, lead=rests, filler=filler)

    # ------------------------------------------------------------------ decode
    def decode(self, streams: dict[str, np.ndarray]) -> nt.Notes:
        """One song's streams -> notes; specials are skipped and decoding stops at EOS.

        Ill-formed events a model may write are made playable, never fatal: a note
        whose duration is "-" lasts a quarter, velocity "-" is the bin of 80, program
        "-" is program 0, part "-" is part 0.
        """
        c = self.config
        names = self.stream_names
        v = single_song(streams, names)
        time = np.cumsum(v["shift"])  # rests move time too
        is_note = v["pitch"] < PITCHES
        n_classes = len(self.duration_steps)
        duration = v["duration"][is_note]
        quarter = int(np.argmin(np.abs(self.duration_steps - c["steps_per_quarter"])))
        duration = np.where(duration < n_classes, duration, quarter)
        velocity = program = part = None
        if c["parts"]:
            part = v["part"][is_note]
            part = np.where(part < c["parts"], part, 0)  # "-": part 0
        if c["velocity_bins"]:
            bins = c["velocity_bins"]
            velocity = v["velocity"][is_note]
            velocity = np.where(velocity < bins, velocity, DEFAULT_VELOCITY * bins // 128)  # "-": the bin of 80
        if c["program"]:
            program = v["program"][is_note]
            program = np.where(program <= DRUMS, program, 0)  # "-": program 0
        return self._notes_from_grid(time[is_note], duration, v["pitch"][is_note], velocity, program, part)


# --------------------------------------------------------------------------- helpers

def duration_classes(linear: int, maximum: int, per_octave: int) -> np.ndarray:
    """Duration classes in grid steps: 1..linear exactly, then ``linear * 2**k * (1 + j / per_octave)``.

    With the defaults (24, 192, 4) the classes above 2 quarters are 2.5, 3, 3.5, 4,
    5, 6, 7, 8, 10, 12, 14 and 16 quarters: log-spaced, and every dotted or whole
    value of a 4/4 or 3/4 bar is a class of its own.
    """
    octaves = int(np.ceil(np.log2(maximum / linear))) + 1 if maximum > linear else 0
    k = np.arange(octaves)[:, None]
    j = np.arange(per_octave)[None, :]
    above = np.round(linear * 2.0**k * (1 + j / per_octave)).astype(np.int64).reshape(-1)
    above = above[(above > linear) & (above < maximum)]
    top = [maximum] if maximum > linear else []
    return np.unique(np.concatenate([np.arange(1, linear + 1), above, top])).astype(np.int64)


def nearest_class_table(classes: np.ndarray) -> np.ndarray:
    """``table[steps]`` = the class nearest to ``steps`` in log space, for steps 0..classes[-1]."""
    steps = np.arange(int(classes[-1]) + 1, dtype=np.float64)
    log_steps = np.log(np.maximum(steps, 1))
    upper = np.clip(np.searchsorted(classes, steps), 0, len(classes) - 1)
    lower = np.maximum(upper - 1, 0)
    # boundaries at geometric means; a tie goes to the shorter class
    take_upper = (np.log(classes[upper]) - log_steps) < (log_steps - np.log(classes[lower]))
    return np.where(take_upper, upper, lower).astype(np.int64)


def _round_half_up(quarters: np.ndarray, steps_per_quarter: int, lowest: int, highest: int | None, dtype) -> np.ndarray:
    """Quarter notes -> whole grid steps, halves rounded up, clipped to [lowest, highest]."""
    x = np.multiply(quarters, steps_per_quarter, dtype=np.float64)
    x += 0.5
    np.clip(x, lowest, highest, out=x)  # from here x >= 0, so truncation is floor
    return x.astype(dtype)


def _sorted_events(grid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Grid columns sorted by song, onset, part, pitch, program, duration, velocity.

    All of them fit, as bit fields, in one int64 per note for any real corpus
    chunk: sorting those keys and unpacking the fields is several times faster
    than an argsort and a gather per column.  Otherwise: lexsort.
    """
    names = [k for k in ("song", "onset", "part", "pitch", "program", "duration", "velocity") if k in grid]
    song = grid["song"]
    if len(song) == 0:
        return grid
    bits = [max(int(grid[k].max()).bit_length(), 1) for k in names]
    if sum(bits) > 63:
        order = np.lexsort([grid[k] for k in reversed(names)])
        return {k: grid[k][order] for k in names}
    key = song.astype(np.int64)
    for k, b in zip(names[1:], bits[1:]):
        key <<= b
        key |= grid[k]
    key.sort(kind="stable")  # timsort: the notes arrive in long sorted runs (tracks)
    out = {}
    for k, b in zip(reversed(names[1:]), reversed(bits[1:])):
        out[k] = np.bitwise_and(key, (1 << b) - 1, out=np.empty(len(key), grid[k].dtype), casting="unsafe")
        key >>= b
    grouped = not (song[1:] < song[:-1]).any()
    out["song"] = song if grouped else key  # songs arrive grouped: sorting leaves the song column as it was
    return out
