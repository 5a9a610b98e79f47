"""Collections named on the command line, and generated files that keep the music's form: meter, key,
tempo, parts as tracks with their programs, bar lines in the piano roll, baselines from the training corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import symusic

from notelm import notes as nt
from notelm.cli import main
from notelm.config import load_config
from notelm.corpus import Corpus, prepare
from notelm.encoding import get_representation, load_or_encode
from notelm.evaluate import EvalOptions, evaluate
from notelm.form import parse_meter, part_ranks, piece_meta
from notelm.generate import OutputOptions, PieceOptions, PromptOptions, generate
from notelm.io import NotelmError
from notelm.render import bar_lines
from notelm.train import train

from conftest import quiet, write_midi

SATB = (72, 67, 64, 48)  # soprano, alto, tenor, bass: one pitch each, a part per track


def chorale(path, shift=0, n=8, programs=(52, 53, 54, 32), meter=(4, 4), key=None):
    """A 4-part piece: four tracks, one voice each, a quarter note per beat."""
    tracks = [(program, False, [(float(i), 1.0, pitch + shift + (i % 3), 80) for i in range(n)])
              for program, pitch in zip(programs, SATB)]
    write_midi(path, tracks, time_signature=meter)
    if key is not None:  # conftest's writer has no key signature: add one
        score = symusic.Score(str(path))
        score.key_signatures.append(symusic.KeySignature(0, *key))
        score.dump_midi(str(path))
    return path


def jig(path, shift=0, n=12):
    """Melody + chords in 6/8 (two tracks) in D major."""
    melody = [(i * 0.5, 0.5, 74 + shift + (i % 4), 90) for i in range(n)]
    chords = [(1.5 * i, 1.5, p + shift, 60) for i in range(n // 3) for p in (50, 54, 57)]
    return chorale_like(path, [(0, False, melody), (0, False, chords)], (6, 8), (2, 0))


def chorale_like(path, tracks, meter, key):
    write_midi(path, tracks, time_signature=meter)
    score = symusic.Score(str(path))
    score.key_signatures.append(symusic.KeySignature(0, *key))
    score.dump_midi(str(path))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two sources: chorales (flat folder) and folk tunes in two tune books (folders)."""
    root = tmp_path_factory.mktemp("sources")
    for i in range(10):
        chorale(root / "chorales" / f"c{i:02d}.mid", shift=i - 5, key=(-1, 0))
    for i in range(8):
        jig(root / "tunes" / ("jigs" if i % 2 else "slides") / f"t{i:02d}.mid", shift=i - 4)
    return root


@pytest.fixture(scope="module")
def corpus(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    assert main(["prepare", f"{sources / 'chorales'}=bach", f"{sources / 'tunes'}=folk", "-o", str(out), "-q",
                 "--workers", "1"]) == 0
    return out


def test_collections_are_named_on_the_command_line_and_folders_stay_groups(corpus):
    c = Corpus(corpus)
    assert c.collections == ["bach", "folk"]
    assert c.labels("group") == ["chorales", "jigs", "slides"]
    pairs = [(str(a), str(b)) for a, b in zip(c.songs["collection"], c.songs["group"])]
    counts = {pair: pairs.count(pair) for pair in set(pairs)}
    assert counts == {("bach", "chorales"): 10, ("folk", "jigs"): 4, ("folk", "slides"): 4}
    assert c.manifest["collections"] == {"bach": 10, "folk": 8}
    assert c.manifest["groups"] == {"bach": {"chorales": 10}, "folk": {"jigs": 4, "slides": 4}}


def test_a_source_without_a_name_keeps_the_folder_as_collection(sources, tmp_path):
    prepare([str(sources / "tunes")], tmp_path / "c", workers=1, progress=False, log=quiet)
    assert Corpus(tmp_path / "c").collections == ["jigs", "slides"]
    with pytest.raises(NotelmError, match="expected SOURCE=NAME"):
        prepare([f"{sources / 'tunes'}="], tmp_path / "d", workers=1, progress=False, log=quiet)


def test_stats_show_the_collection_and_group_names(corpus, tmp_path, capsys):
    assert main(["stats", str(corpus), "-o", str(tmp_path / "s"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "2 collections: bach (10 songs, groups chorales); folk (8 songs, groups jigs, slides)" in printed
    report = (tmp_path / "s" / "stats.md").read_text()
    assert "| folk / jigs | 4 |" in report
    assert "| bach | chorales | 4/4 | F | 4 |" in report and "| folk | jigs, slides | 6/8 | D | 2 |" in report


def test_conditions_name_the_chosen_label_with_each_ones_form(corpus):
    encoded = load_or_encode(corpus, "events", {"parts": 4})
    assert encoded.vocab.conditions == ["bach", "folk"] and encoded.vocab.condition_label == "collection"
    assert encoded.vocab.form["bach"]["programs"] == [52, 53, 54, 32] and encoded.vocab.form["bach"]["parts"] == 4
    assert encoded.vocab.form["folk"]["time_signature"] == "6/8" and encoded.vocab.form["folk"]["key"] == "D"
    assert encoded.vocab.form["bach"]["time_signature"] == "4/4" and encoded.vocab.form["bach"]["key"] == "F"
    groups = load_or_encode(corpus, "events", {"parts": 4}, condition="group")
    assert groups.vocab.conditions == ["chorales", "jigs", "slides"]
    assert sorted(np.bincount(groups.cond).tolist()) == [0, 4, 4, 10]
    assert load_or_encode(corpus, "events", {"parts": 4}, condition="none").vocab.conditions == []


def test_parts_are_track_ranks_and_round_trip():
    rep = get_representation("events", {"parts": 3})
    assert rep.stream_names == ["shift", "part", "pitch", "duration"]
    notes = nt.make_notes([0, 0, 0, 0, 1], 1.0, [72, 67, 64, 48, 50], track=[2, 5, 7, 9, 9])
    streams = rep.encode_song(notes)
    part = rep.vocab().stream("part")
    assert [part.name_of(int(i)) for i in streams["part"][1:-1]] == ["0", "1", "2", "2", "2"]  # 4th track shares
    back = rep.decode(streams)
    quantized = rep.quantize(notes)
    key = lambda n: sorted(zip(n["onset"], n["pitch"], n["track"]))
    assert key(back) == key(quantized) and sorted(set(back["track"].tolist())) == [0, 1, 2]
    assert part_ranks(np.array([0, 0, 1, 1]), np.array([3, 1, 8, 8]), 4).tolist() == [1, 0, 0, 0]
    # without parts the encoding is what it was: no part stream, no track read
    assert get_representation("events").stream_names == ["shift", "pitch", "duration"]


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = load_config("default", ["data.encoding.parts=4", "train.steps=6", "train.eval_every=3", "model.hidden=16",
                                  "model.layers=1", "train.batch_size=4", "train.context=32", "train.eval_crops=4",
                                  "train.time_limit=0.0"])
    train(corpus, cfg, out, progress=False, log=quiet)
    return out


def written(out_dir, k=0):
    score = symusic.Score(str(out_dir / f"piece_{k:02d}.mid"))
    return score, json.loads((out_dir / "generation.json").read_text())["pieces"][k]


def test_a_four_part_prompt_comes_back_as_four_tracks_with_its_programs(run, sources, tmp_path):
    prompt = chorale(tmp_path / "p.mid", programs=(19, 20, 21, 33), meter=(3, 4), key=(2, 0))
    generate(run, tmp_path / "out", PieceOptions(num=2, length=8), PromptOptions(prompt=str(prompt)), log=quiet)
    for k in range(2):
        score, row = written(tmp_path / "out", k)
        assert len(score.tracks) == 4
        assert sorted(t.program for t in score.tracks) == [19, 20, 21, 33]
        assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(3, 4)]
        assert [(ks.key, ks.tonality) for ks in score.key_signatures] == [(2, 0)]
        assert row["time_signature"] == "3/4" and row["key"] == "D" and len(row["tracks"]) == 4


def test_a_six_eight_prompt_gives_six_eight_and_meter_overrides(run, tmp_path):
    prompt = jig(tmp_path / "jig.mid")
    generate(run, tmp_path / "a", PieceOptions(num=1, length=4), PromptOptions(prompt=str(prompt)), log=quiet)
    score, _ = written(tmp_path / "a")
    assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(6, 8)]
    generate(run, tmp_path / "b", PieceOptions(num=1, length=4), PromptOptions(prompt=str(prompt)),
             output=OutputOptions(meter="3/4", key="e", qpm=90.0), log=quiet)
    score, row = written(tmp_path / "b")
    assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(3, 4)]
    assert [(ks.key, ks.tonality) for ks in score.key_signatures] == [(1, 1)] and row["qpm"] == 90.0


def test_without_a_prompt_the_style_gives_the_form(run, tmp_path):
    generate(run, tmp_path / "folk", PieceOptions(num=1, length=12, condition="collection=folk"), log=quiet)
    score, row = written(tmp_path / "folk")
    assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(6, 8)]
    assert [(ks.key, ks.tonality) for ks in score.key_signatures] == [(2, 0)] and row["key"] == "D"
    generate(run, tmp_path / "bach", PieceOptions(num=1, length=40, condition="bach"), log=quiet)
    score, row = written(tmp_path / "bach")
    assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [(4, 4)] and row["key"] == "F"
    programs = dict(zip(range(4), (52, 53, 54, 32)))
    assert all(t.program == programs[int(t.name.split()[-1])] for t in score.tracks)  # each part its program
    with pytest.raises(NotelmError, match="conditioned on collections: --condition collection=NAME"):
        generate(run, tmp_path / "x", PieceOptions(num=1, length=4, condition="group=jigs"), log=quiet)
    with pytest.raises(NotelmError, match="unknown collection 'jazz'; valid names: bach, folk"):
        generate(run, tmp_path / "x", PieceOptions(num=1, length=4, condition="jazz"), log=quiet)


def test_generate_lists_the_models_conditions(run, capsys):
    assert main(["generate", "--model", str(run), "--list-conditions"]) == 0
    out = capsys.readouterr().out
    assert "conditioned on collections: --condition collection=NAME" in out
    assert "  bach  (4/4, key F, 120 qpm, 4 parts)" in out and "  folk  (6/8, key D, 120 qpm, 2 parts)" in out
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(run), "--help"])
    assert "  folk  (6/8, key D" in capsys.readouterr().out


def test_meters_bar_lines_and_bad_values():
    assert parse_meter("6/8") == (6, 8)
    with pytest.raises(NotelmError, match="--meter '6/7'"):
        parse_meter("6/7")
    six_eight = piece_meta(None, {"time_signature": "6/8"})
    assert bar_lines(10.0, six_eight).tolist() == [0.0, 3.0, 6.0, 9.0]
    assert bar_lines(10.0, piece_meta(None, {})).tolist() == [0.0, 4.0, 8.0]
    with pytest.raises(NotelmError, match="--key 'H'"):
        piece_meta(None, {}, key="H")


def test_baselines_fitted_on_the_runs_training_corpus(run, corpus, sources, tmp_path):
    other = tmp_path / "other"
    prepare([f"{sources / 'tunes'}=folk"], other, workers=1, progress=False, log=quiet)
    report = evaluate(run, EvalOptions(corpus=str(other), split="test", baselines_from_train=True),
                      out_dir=tmp_path / "e1", progress=False, log=quiet)
    assert report["baselines"]["corpus"] == str(corpus)
    default = evaluate(run, EvalOptions(corpus=str(other), split="test"), out_dir=tmp_path / "e2", progress=False,
                       log=quiet)
    assert default["baselines"]["corpus"] == str(other)
    assert report["targets"] == default["targets"]
    one = evaluate(run, EvalOptions(collection="folk", split="all"), out_dir=tmp_path / "e3", progress=False, log=quiet)
    assert one["songs"] == 8 and "(its folk songs)" in one["baselines"]["fitted_on"]


def test_demo_writes_one_piece_per_style_with_its_form(run, tmp_path, monkeypatch):
    from notelm import generate as generate_module
    from notelm.demo import demo
    from notelm.render import find_soundfont

    monkeypatch.setattr(generate_module, "default_model_path", lambda: run)
    try:
        find_soundfont()
        audio = True
    except NotelmError:
        audio = False  # no SoundFont here: the demo writes MIDI and piano rolls only (and says so)
    report = demo(tmp_path / "demo", length="24", log=quiet)
    assert sorted(report["styles"]) == ["bach", "folk"] and len(report["pieces"]) == 2
    for style, meter in (("bach", (4, 4)), ("folk", (6, 8))):
        score = symusic.Score(str(tmp_path / "demo" / "pieces" / style / "piece_00.mid"))
        assert [(ts.numerator, ts.denominator) for ts in score.time_signatures] == [meter]
        assert len(score.tracks) >= 1
        row = report["styles"][style]["pieces"][0]
        assert row["png"] and (not audio or row["wav_rms"] > 0.001)
