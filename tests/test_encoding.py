"""Representations: the seed encoding of a known piece, events round trips, closed vocabularies,
the vectorized corpus path against per-song encoding, and the on-disk cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import symusic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notelm import notes as nt
from notelm.cli import main
from notelm.corpus import Corpus
from notelm.encoding import Events, Seed, encode_corpus, from_vocab, get_representation, load_or_encode, parse_settings
from notelm.encoding.seed import chord_roots, music21_quantize
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL
from notelm.io import NotelmError

from conftest import prepare_quietly, write_midi


def read(path) -> nt.Notes:
    return nt.from_score(symusic.Score(str(path)))[0]


def tokens(rep, streams) -> list[tuple[str, ...]]:
    """Streams of one song as token names per event (BOS/EOS left out)."""
    vocab = rep.vocab()
    names = vocab.names
    n = len(streams[names[0]])
    assert all(streams[k][0] == BOS and streams[k][-1] == EOS for k in names)
    return [tuple(vocab.stream(k).name_of(int(streams[k][i])) for k in names) for i in range(1, n - 1)]


def note_set(notes: nt.Notes, velocity: bool, program: bool) -> list[tuple]:
    cols = [notes["onset"], notes["pitch"], notes["duration"]]
    if velocity:
        cols.append(notes["velocity"])
    if program:
        cols += [notes["program"], notes["is_drum"]]
    return sorted(zip(*(c.tolist() for c in cols)))


def assert_round_trip(rep, notes):
    streams = rep.encode_song(notes)
    rep.vocab().check_ids(streams)
    c = rep.config
    assert note_set(rep.decode(streams), c.get("velocity_bins", 0) > 0, c.get("program", False)) == \
        note_set(rep.quantize(notes), c.get("velocity_bins", 0) > 0, c.get("program", False))
    return streams


# --------------------------------------------------------------------------- seed

# melody (track 0) and chords (track 1); onsets and durations in quarters
MELODY = [(0, 1, 60), (1, 1, 64), (2, 0.5, 67), (2.5, 0.5, 69), (3, 1.5, 71), (4.5, 0.25, 72), (4.75, 0.25, 74)]
CHORDS = [
    (0, 2, (48, 52, 55)),  # C major, root position -> C
    (2, 2, (57, 60, 65)),  # F major, first inversion (A C F) -> F
    (4, 1, (53, 55, 59, 62)),  # G7, third inversion (F G B D) -> G
    (5, 4, (52, 57, 60)),  # A minor, second inversion (E A C) -> A
]


@pytest.fixture
def known_piece(tmp_path):
    melody = [(o, d, p, 90) for o, d, p in MELODY]
    chords = [(o, d, p, 70) for o, d, ps in CHORDS for p in ps]
    return read(write_midi(tmp_path / "known.mid", [(0, False, melody), (0, False, chords),
                                                    (0, True, [(0, 1, 36, 100), (1, 1, 38, 100)])]))


def test_seed_known_piece_in_time_order(known_piece):
    rep = Seed()  # durations=drop, order=onset
    assert tokens(rep, rep.encode_song(known_piece)) == [
        ("C", "quarter"), ("C", "half"),  # t=0: melody C4, C major chord -> C (ties: melody track first)
        ("E", "quarter"),
        ("G", "eighth"), ("F", "half"),  # t=2: the inverted F major chord -> F
        ("A", "eighth"),
        # t=3: the dotted quarter B4 has no class and is dropped, as the original's lookup did
        ("G", "quarter"),  # t=4: G7 in third inversion -> G
        ("C", "16th"), ("D", "16th"),
        ("A", "whole"),  # t=5: A minor in second inversion -> A
    ]  # the drum track is unpitched (skipped)


def test_seed_known_piece_in_part_order_with_nearest_durations(known_piece):
    rep = Seed({"order": "parts", "durations": "nearest"})
    assert tokens(rep, rep.encode_song(known_piece)) == [
        ("C", "quarter"), ("E", "quarter"), ("G", "eighth"), ("A", "eighth"), ("B", "half"),  # 1.5 -> half (log2)
        ("C", "16th"), ("D", "16th"),
        ("C", "half"), ("F", "half"), ("G", "quarter"), ("A", "whole"),
    ]


def test_chord_roots_of_known_chords():
    table = chord_roots()
    assert table.shape == (12, 4096)

    def root(*pitches):
        mask = sum(1 << pc for pc in {p % 12 for p in pitches})
        return int(table[min(pitches) % 12, mask])

    for voicing in [(60, 64, 67), (64, 67, 72), (67, 72, 76), (48, 67, 76, 72)]:  # C major, any inversion
        assert root(*voicing) == 0
    assert root(57, 60, 64) == root(52, 57, 60) == root(60, 64, 69) == 9  # A minor
    assert root(55, 59, 62, 65) == root(53, 55, 59, 62) == root(59, 62, 65, 67) == 7  # G7
    assert root(59, 62, 65) == root(62, 65, 71) == 11  # B diminished
    assert root(62, 65, 69, 72) == root(65, 69, 72, 74) == 2  # D minor 7
    assert root(50, 54, 57, 60, 64) == 2  # D9
    assert root(60, 67) == 0 and root(55, 60) == 0  # a bare fifth / fourth: C


def test_chord_roots_match_music21_for_close_voicings():
    from music21 import chord, pitch

    rng = np.random.default_rng(0)
    table = chord_roots()
    for _ in range(150):
        pcs = rng.choice(12, size=rng.integers(2, 6), replace=False)
        bass = int(rng.choice(pcs))
        voicing = [48 + bass] + sorted(48 + bass + (int(p) - bass) % 12 for p in pcs if p != bass)
        ps = []
        for m in voicing:
            p = pitch.Pitch()
            p.midi = m
            ps.append(p)
        mask = sum(1 << int(p) for p in pcs)
        assert table[bass, mask] == chord.Chord(ps).root().pitchClass, voicing


def test_music21_quantization_rules():
    q = lambda x, **kw: music21_quantize(np.array(x, float), **kw).tolist()
    # the nearest of 1/4 and 1/3; halves go down
    assert q([0.0, 0.24, 0.3, 0.33, 0.125, 0.375, 1 / 6]) == [0, 3, 4, 4, 0, 4, 3]
    assert q([0.05], zero_allowed=False) == [3]  # a duration never snaps to 0
    # 0.3 is nearer 1/3, but with the next onset half a quarter away the 1/4 grid fills the gap exactly
    assert q([0.3], zero_allowed=False, gap=np.array([6])) == [3]
    assert q([0.3], zero_allowed=False, gap=np.array([-1])) == [4]


def test_seed_decode_is_a_playable_melody():
    rep = Seed()
    ids = lambda names, stream: np.array([BOS] + [rep.vocab().stream(stream).id_of(n) for n in names] + [EOS])
    notes = rep.decode({"pitch": ids(["C", "G", "C", "F#", "B"], "pitch"),
                        "duration": ids(["quarter", "eighth", "eighth", "half", "whole"], "duration")})
    assert notes["pitch"].tolist() == [60, 55, 60, 54, 59]  # nearest octave; a tritone goes down
    assert notes["onset"].tolist() == [0, 1, 1.5, 2, 4]
    assert notes["duration"].tolist() == [1, 0.5, 0.5, 2, 4]
    assert (notes["velocity"] == 80).all() and (notes["program"] == 0).all()


# --------------------------------------------------------------------------- events

@pytest.fixture
def rich_piece(tmp_path):
    """Chords, a rest of 10 quarters (> max_shift), long notes, velocities, drums and three programs."""
    piano = [(0, 1, 60, 100), (0, 1, 64, 90), (0, 1, 67, 80),  # a chord
             (1, 3, 62, 40), (1.5, 0.5, 71, 127),  # over the linear bound (3 quarters), 8th
             (14.5, 20.0, 48, 64),  # after a 10-quarter silence; longer than max_duration
             (15, 2.75, 50, 30), (15.33333, 0.33333, 74, 70)]  # between duration classes; a triplet
    strings = [(0, 4, 55, 60), (4, 5.5, 57, 61)]
    bass = [(0.5, 0.25, 36, 99), (0.75, 0.25, 36, 12)]
    drums = [(0, 0.5, 36, 110), (0.5, 0.5, 42, 50), (1, 0.5, 38, 90)]
    return read(write_midi(tmp_path / "rich.mid", [(0, False, piano), (48, False, strings), (33, False, bass),
                                                   (0, True, drums)]))


@pytest.mark.parametrize("config", [
    {},
    {"velocity_bins": 8},
    {"velocity_bins": 8, "program": True},
    {"program": True, "drums": "drop"},
    {"drums": "keep"},
    {"steps_per_quarter": 4, "max_shift": 8, "linear_durations": 4, "max_duration": 64, "velocity_bins": 3},
    {"steps_per_quarter": 24, "max_shift": 96, "linear_durations": 48, "max_duration": 384, "durations_per_octave": 8},
])
def test_events_round_trip_on_fixture(rich_piece, config):
    rep = Events(config)
    streams = assert_round_trip(rep, rich_piece)
    assert nt.num_notes(rep.quantize(rich_piece)) == (15 if rep.config["drums"] == "keep" else 12)
    if rep.config["steps_per_quarter"] == 12:  # the 10.5-quarter gap (126 steps): two rests of 48, then shift 30
        names = tokens(rep, streams)
        at = [i for i, t in enumerate(names) if t[1] == "rest"]
        assert len(at) == 2 and names[at[0]][0] == names[at[1]][0] == "48" and names[at[1] + 1][:2] == ("30", "48")


def test_events_tokens_of_a_small_piece():
    rep = Events({"velocity_bins": 8, "program": True})
    notes = nt.make_notes([0, 0, 0.5, 6.5], [1, 1, 20, 0.5], [64, 60, 67, 72], velocity=[100, 100, 30, 64],
                          program=[0, 0, 40, 0])
    assert tokens(rep, rep.encode_song(notes)) == [
        ("0", "60", "12", "104", "0"), ("0", "64", "12", "104", "0"),  # a chord: shift 0, low to high
        ("6", "67", "192", "24", "40"),  # 20 quarters cut to max_duration (192 steps)
        ("48", "rest", "-", "-", "-"),  # 72 steps of silence: one rest of 48 ...
        ("24", "72", "6", "72", "0"),  # ... and the note with the other 24
    ]


def test_events_duration_classes():
    rep = Events()
    assert rep.duration_steps.tolist() == list(range(1, 25)) + [30, 36, 42, 48, 60, 72, 84, 96, 120, 144, 168, 192]
    steps = np.arange(1, 193)
    cls = rep.class_of_steps[steps]
    assert (np.diff(cls) >= 0).all() and (rep.duration_steps[cls[:24]] == steps[:24]).all()
    assert rep.duration_steps[rep.class_of_steps[[26, 27, 33, 50, 190]]].tolist() == [24, 30, 36, 48, 192]


def test_events_decode_survives_model_output():
    rep = Events({"velocity_bins": 4, "program": True})
    rng = np.random.default_rng(1)
    vocab = rep.vocab()
    streams = {s.name: rng.integers(0, s.size, 500) for s in vocab.streams}
    notes = rep.decode(streams)
    assert set(notes) == set(nt.NOTE_COLUMNS)
    assert (notes["duration"] > 0).all() and (notes["pitch"] <= 127).all() and (notes["velocity"] > 0).all()
    nt.to_score(notes)  # writable


# --------------------------------------------------------------------------- properties

times = st.integers(0, 2400).map(lambda t: t / 48)  # quarters on a 48-per-quarter grid (off every coarser grid)
raw_note = st.tuples(times, st.floats(0.01, 40.0), st.integers(0, 127), st.integers(1, 127), st.integers(0, 127),
                     st.booleans(), st.integers(0, 3))
configs = st.fixed_dictionaries({}, optional={
    "steps_per_quarter": st.sampled_from([1, 4, 12, 24]), "max_shift": st.integers(1, 64),
    "velocity_bins": st.integers(0, 16), "program": st.booleans(), "drums": st.sampled_from(["auto", "drop", "keep"]),
    "durations_per_octave": st.integers(1, 6)})


def as_notes(rows) -> nt.Notes:
    if not rows:
        return nt.empty_notes()
    onset, duration, pitch, velocity, program, drum, track = map(list, zip(*rows))
    return nt.make_notes(onset, duration, pitch, velocity, track, program, drum)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_note, max_size=60), configs)
def test_events_round_trip_property(rows, config):
    rep = Events(config)
    streams = assert_round_trip(rep, as_notes(rows))
    assert len({len(v) for v in streams.values()}) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(raw_note, max_size=60), st.sampled_from(["drop", "nearest"]), st.sampled_from(["onset", "parts"]))
def test_seed_ids_are_closed_property(rows, durations, order):
    rep = Seed({"durations": durations, "order": order})
    notes = as_notes(rows)
    streams = rep.encode_song(notes)
    rep.vocab().check_ids(streams)
    if durations == "nearest":  # every pitched note is in exactly one event (chords merged)
        assert len(streams["pitch"]) - 2 <= int((~notes["is_drum"]).sum())
    melody = rep.decode(streams)
    assert nt.num_notes(melody) == len(streams["pitch"]) - 2
    assert ((melody["pitch"] >= 36) & (melody["pitch"] < 96)).all()
    assert (melody["pitch"] % 12 == streams["pitch"][1:-1] - N_SPECIAL).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(raw_note, max_size=25), min_size=1, max_size=5), st.sampled_from(["seed", "events"]))
def test_many_songs_at_once_equal_one_at_a_time(songs, name):
    rep = get_representation(name, {"velocity_bins": 5, "program": True} if name == "events" else {"order": "parts"})
    tables = [as_notes(s) for s in songs]
    joined = nt.concat(tables)
    joined["song"] = np.repeat(np.arange(len(tables)), [nt.num_notes(t) for t in tables])
    streams, offsets = rep.encode_notes(joined, len(tables))
    for i, t in enumerate(tables):
        one = rep.encode_song(t)
        for k in one:
            assert np.array_equal(streams[k][offsets[i]:offsets[i + 1]], one[k])


# --------------------------------------------------------------------------- corpus and cache

@pytest.fixture
def small_corpus(tmp_path, midi_folder):
    write_midi(midi_folder / "gamma" / "rich.mid", [(0, False, [(0, 1, 60, 90), (0, 1, 64, 90), (11, 9, 67, 40)]),
                                                    (0, True, [(0, 0.5, 36, 100)])])
    out = tmp_path / "corpus"
    prepare_quietly(midi_folder, out)
    return out


@pytest.mark.parametrize("name,config", [("events", {}), ("events", {"velocity_bins": 8, "program": True}),
                                         ("seed", {}), ("seed", {"order": "parts", "durations": "nearest"})])
def test_encode_corpus_equals_encoding_song_by_song(small_corpus, name, config):
    corpus = Corpus(small_corpus)
    encoded = encode_corpus(corpus, name, config)
    rep = get_representation(name, config)
    assert len(encoded) == len(corpus) == 5
    assert encoded.vocab.conditions == corpus.collections == ["alpha", "beta", "gamma"]
    for i in range(len(corpus)):
        one = rep.encode_song(corpus.notes(i))
        got = encoded.song(i)
        assert all(np.array_equal(got[k], one[k]) for k in one)
        assert encoded.cond[i] == 1 + corpus.collections.index(corpus.songs["collection"][i])
        assert encoded.split[i] == ("train", "valid", "test").index(corpus.songs["split"][i])
    encoded.vocab.check_ids(encoded.streams)
    assert encoded.n_events == encoded.n_positions - 2 * len(corpus)
    assert sorted(np.concatenate([encoded.ids(s) for s in ("train", "valid", "test")]).tolist()) == list(range(5))


def test_cache_is_reused_and_invalidated(small_corpus):
    first = load_or_encode(small_corpus, "events", {"velocity_bins": 4})
    assert not first.cached and first.path.parent == small_corpus / "encoded"
    assert isinstance(first.streams["pitch"], np.memmap) and first.streams["pitch"].dtype == np.uint8
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["cond.npy", "duration.npy", "info.json", "offsets.npy", "pitch.npy", "shift.npy", "split.npy",
                     "velocity.npy", "vocab.json"]
    again = load_or_encode(small_corpus, "events", {"velocity_bins": 4, "drums": "auto"})  # same resolved settings
    assert again.cached and again.path == first.path
    assert all(np.array_equal(again.streams[k], first.streams[k]) for k in first.streams)
    other = load_or_encode(small_corpus, "events", {"velocity_bins": 8})
    assert not other.cached and other.path != first.path
    assert from_vocab(other.vocab).config == Events({"velocity_bins": 8}).config
    # a cache made from another build of the corpus is not used
    info = json.loads((first.path / "info.json").read_text())
    (first.path / "info.json").write_text(json.dumps(dict(info, corpus_created="2000-01-01T00:00:00+00:00")))
    rebuilt = load_or_encode(small_corpus, "events", {"velocity_bins": 4})
    assert not rebuilt.cached and rebuilt.path == first.path
    assert load_or_encode(small_corpus, "events", {"velocity_bins": 4}).cached


def test_settings_are_checked():
    with pytest.raises(NotelmError, match="unknown representation 'remi'"):
        get_representation("remi")
    with pytest.raises(NotelmError, match=r"unknown events setting\(s\): velocity; valid settings: steps_per_quarter"):
        Events({"velocity": 8})
    with pytest.raises(NotelmError, match="events.velocity_bins = '8': expected an integer"):
        Events({"velocity_bins": "8"})
    with pytest.raises(NotelmError, match="events.program = 1: expected true or false"):
        Events({"program": 1})
    with pytest.raises(NotelmError, match="seed.durations = 'round': expected one of 'drop', 'nearest'"):
        Seed({"durations": "round"})
    with pytest.raises(NotelmError, match=r"events.max_shift must be >= 1 \(got 0\)"):
        Events({"max_shift": 0})
    with pytest.raises(NotelmError, match=r"events.velocity_bins must be <= 128 \(got 129\)"):
        Events({"velocity_bins": 129})
    with pytest.raises(NotelmError, match=r"events.max_duration must be >= events.linear_durations \(12 < 24\)"):
        Events({"max_duration": 12})
    with pytest.raises(NotelmError, match="events.program = 'maybe': expected true or false"):
        parse_settings("events", ["program=maybe"])
    assert parse_settings("events", ["velocity_bins=8", "program=true", "drums=keep"]) == \
        {"velocity_bins": 8, "program": True, "drums": "keep"}
    assert Events().config["drums"] == "drop" and Events({"program": True}).config["drums"] == "keep"


def test_cli_encode(small_corpus, capsys):
    assert main(["encode", str(small_corpus), "--repr", "seed", "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("encoded: 5 songs,") and "seed" in line and str(small_corpus / "encoded") in line
    assert main(["encode", str(small_corpus), "--repr", "seed", "-q"]) == 0
    assert capsys.readouterr().out.startswith("found in the cache: 5 songs,")
    assert main(["encode", str(small_corpus), "--repr", "nope"]) == 1
    assert "unknown representation 'nope'" in capsys.readouterr().err
    assert main(["encode", str(small_corpus), "--set", "velocity_bins=many"]) == 1
    assert "events.velocity_bins = 'many': expected an integer" in capsys.readouterr().err
