"""notelm stats: exact sizes per collection, histogram totals, known n-grams that never cross songs, report files,
the command line."""

from __future__ import annotations

import numpy as np
import pytest

from notelm.cli import main
from notelm.corpus import SPLITS, Corpus
from notelm.stats import stats

from conftest import prepare_quietly, write_midi

C, D, E, G = 60, 62, 64, 67


def _notes(pitches_durations, start=0.0):
    """[(pitch or chord tuple, duration)] one after another -> write_midi rows."""
    rows, t = [], start
    for pitch, duration in pitches_durations:
        for p in pitch if isinstance(pitch, tuple) else (pitch,):
            rows.append((t, duration, p, 80))
        t += duration
    return rows


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Three songs in two collections (paths sort alpha/m1, beta/b1, beta/b2):

    m1: C D E three times, quarters (9 notes, 120 qpm);
    b1: C/half G/quarter C/half G/quarter on a violin (program 40), plus 3 drum hits (7 notes, 120 qpm);
    b2: chord C-E-G (half), G (quarter), chord C-E-G (half), at 60 qpm (7 notes; seed: C/half G/quarter C/half).
    """
    root = tmp_path_factory.mktemp("stats") / "music"
    write_midi(root / "alpha" / "m1.mid", [(0, False, _notes([(C, 1), (D, 1), (E, 1)] * 3))])
    write_midi(root / "beta" / "b1.mid", [(40, False, _notes([(C, 2), (G, 1), (C, 2), (G, 1)])),
                                          (0, True, [(0, 0.5, 36, 100), (1, 0.5, 38, 100), (2, 0.5, 36, 100)])])
    write_midi(root / "beta" / "b2.mid", [(0, False, _notes([((C, E, G), 2), (G, 1), ((C, E, G), 2)]))], qpm=60)
    out = root.parent / "corpus"
    prepare_quietly(root, out)
    return out


@pytest.fixture(scope="module")
def result(corpus_dir):
    lines = []
    r = stats(corpus_dir, top=5, progress=False, log=lines.append)
    r["printed"] = lines
    return r


def test_sizes_per_collection_and_split_are_exact(result, corpus_dir):
    t = result["tables"]
    rows = {r["name"]: r for r in t["collections"]}
    assert list(rows) == ["alpha", "beta"]
    assert (rows["alpha"]["songs"], rows["alpha"]["notes"]) == (1, 9)
    assert (rows["beta"]["songs"], rows["beta"]["notes"]) == (2, 14)
    assert rows["alpha"]["hours"] == pytest.approx(4.5 / 3600, rel=1e-6)  # 9 quarters at 120 qpm
    assert rows["beta"]["hours"] == pytest.approx((3.0 + 5.0) / 3600, rel=1e-6)  # 6 at 120 + 5 at 60
    assert (t["total"]["songs"], t["total"]["notes"]) == (3, 23)
    assert t["total"]["hours"] == pytest.approx(12.5 / 3600, rel=1e-6)
    split = Corpus(corpus_dir).songs["split"]
    for s in SPLITS:
        assert t["total"][s] == np.count_nonzero(split == s)
        assert sum(r[s] for r in rows.values()) == t["total"][s]
    assert [r["name"] for r in t["splits"]] == list(SPLITS)
    assert sum(r["songs"] for r in t["splits"]) == 3 and sum(r["notes"] for r in t["splits"]) == 23


def test_histogram_totals_and_known_values(result):
    h = result["histograms"]
    pitched = 20  # 23 notes less 3 drum hits
    for name in ("pitch", "pitch_class", "duration", "programs"):
        assert h[name].total == (pitched + 3 if name == "programs" else pitched), name
    assert dict(zip(h["pitch_class"].labels, h["pitch_class"].counts.tolist())) == {
        "C": 7, "C#": 0, "D": 3, "D#": 0, "E": 5, "F": 0, "F#": 0, "G": 5, "G#": 0, "A": 0, "A#": 0, "B": 0}
    assert h["pitch"].counts[[C, D, E, G]].tolist() == [7, 3, 5, 5]
    assert h["programs"].counts[40] == 4 and h["programs"].counts[128] == 3 and h["programs"].counts[0] == 16
    # polyphony: 16 distinct pitched onsets; the two chords of b2 have 3 notes sounding, the rest 1
    assert h["polyphony"].counts[:4].tolist() == [14, 0, 2, 0] and h["polyphony"].total == 16
    # inter-onset intervals use all notes (drums too): m1 8, b1 onsets {0,1,2,3,5} 4, b2 {0,2,3} 2
    assert h["ioi"].total == 14
    assert h["notes_per_song"].total == 3 and h["tracks_per_song"].counts[:3].tolist() == [0, 2, 1]
    # time-weighted tempo: 15 quarter notes at 120, 5 at 60
    tempo = dict(zip(h["tempo"].labels, h["tempo"].counts.tolist()))
    assert tempo["120"] == pytest.approx(15) and tempo["60"] == pytest.approx(5) and h["tempo"].total == 20


def test_top_ngrams_are_known_and_never_cross_songs(result):
    ng = result["ngrams"]
    # crossing songs would add E C (end of m1 -> start of b1) and G C (end of b1 -> start of b2)
    assert [(text, count) for text, count, _ in ng["pitch"][2]] == [
        ("C D", 3), ("C G", 3), ("D E", 3), ("E C", 2), ("G C", 2)]
    assert [(text, count) for text, count, _ in ng["pitch"][3]] == [
        ("C D E", 3), ("C G C", 2), ("D E C", 2), ("E C D", 2), ("G C G", 1)]
    assert ng["totals"][2] == 8 + 3 + 2 and ng["totals"][3] == 7 + 2 + 1
    assert ng["pitch"][2][0][2] == pytest.approx(3 / 13)
    assert [(text, count) for text, count, _ in ng["duration"][2]] == [
        ("quarter quarter", 8), ("half quarter", 3), ("quarter half", 2)]
    assert ng["pair"][3][0][:2] == ("C/quarter D/quarter E/quarter", 3)
    top_pairs = [(text, count) for text, count, _ in ng["pair"][2][:2]]
    assert top_pairs == [("C/quarter D/quarter", 3), ("C/half G/quarter", 3)]
    assert set(ng["pitch"]) == {2, 3, 4, 5, 6} and ng["pitch"][6][0] == ("C D E C D E", 2, pytest.approx(2 / 4))


def test_token_tables_count_every_event(result):
    seed, events = result["tokens"]["seed"], result["tokens"]["events"]
    assert int(seed["pitch"]["counts"].sum()) == 16  # chords reduced to their root, drums left out
    assert seed["pitch"]["top"][0][:2] == ("C", 7)
    assert seed["duration"]["top"][0][:2] == ("quarter", 12)
    assert int(events["pitch"]["counts"].sum()) == 20  # every pitched note an event (drums dropped by default)
    assert set(events) >= {"shift", "pitch", "duration"}


def test_report_and_pngs_are_written(result, corpus_dir):
    out = corpus_dir / "stats"
    assert result["out_dir"] == out
    report = (out / "stats.md").read_text()
    assert report.startswith("# Corpus statistics")
    assert "| alpha | 1 | 9 |" in report and "| **total** | 3 | 23 |" in report
    assert "`C D E`" in report and "`C/quarter D/quarter E/quarter`" in report
    for name in ("pitch", "time", "polyphony", "songs", "programs", "tempo", "tokens_seed", "tokens_events"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"({name}.png)" in report
    assert not list(out.glob(".*"))  # no temporary files left behind
    printed = "\n".join(result["printed"])
    assert "top trigrams of pitch classes: C D E (3, 30.00 %)" in printed
    assert "\n2 collections: alpha (1 song); beta (2 songs)\npitch " in printed
    assert "median duration 1 quarter," in printed
    assert result["printed"][-1].startswith("stats: 3 songs, 23 notes, 0.0 h in ")


def test_cli_prints_summary_and_writes_to_output(corpus_dir, tmp_path, capsys):
    assert main(["stats", str(corpus_dir), "-o", str(tmp_path / "report"), "--top", "3", "-q"]) == 0
    out = capsys.readouterr().out
    assert "stats: 3 songs, 23 notes" in out and str(tmp_path / "report" / "stats.md") in out
    assert (tmp_path / "report" / "stats.md").exists() and (tmp_path / "report" / "pitch.png").exists()


def test_missing_or_invalid_corpus_is_a_clear_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope")]) == 1
    assert "no such corpus folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["stats", str(tmp_path / "empty")]) == 1
    assert "not a notelm corpus" in capsys.readouterr().err
