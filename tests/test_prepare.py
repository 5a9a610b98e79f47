"""Sources, ingest and the corpus store: exact counts, failures, duplicates, resume, shards, splits."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from notelm import notes as nt
from notelm.cli import main
from notelm.corpus import Corpus, assign_split, merge, parse_shard, parse_split, prepare, read_notes
from notelm.io import NotelmError, content_hash
from notelm.sources import iter_files, read_sidecar

from conftest import quiet, scale_tune, write_midi


def build(sources, out, **kw):
    return prepare([str(s) for s in sources], out, workers=2, progress=False, log=quiet, **kw)


def tables(corpus_dir):
    """Every table of a corpus, for equality checks (manifest minus its timestamp)."""
    out = {}
    for name in ("songs", "tempos", "timesigs", "keysigs"):
        out[name] = pa.ipc.open_file(str(corpus_dir / f"{name}.arrow")).read_all()
    out["notes"] = read_notes(corpus_dir).combine_chunks()  # the parts may be cut differently: compare rows
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    manifest.pop("created")
    out["manifest"] = manifest
    return out


def test_prepare_keeps_valid_files_with_exact_counts(midi_folder, tmp_path):
    manifest = build([midi_folder], tmp_path / "c")
    corpus = Corpus(tmp_path / "c")
    by_name = {os.path.basename(p): i for i, p in enumerate(corpus.songs["path"])}
    assert set(by_name) == {"a1.mid", "a2.mid", "b1.mid", "b2.mid"}
    counts = [int(corpus.songs["n_notes"][by_name[k]]) for k in ("a1.mid", "a2.mid", "b1.mid", "b2.mid")]
    assert counts == [8, 18, 16, 5]
    assert corpus.num_notes == 8 + 18 + 16 + 5
    # the corrupt file and the text file are reported with a reason; the .txt is not a music file
    reasons = {os.path.basename(f["path"]): f["reason"] for f in manifest["failures"]}
    assert set(reasons) == {"broken.mid", "notes.mid"}
    assert "truncated MIDI" in reasons["broken.mid"]
    assert "not a MIDI file" in reasons["notes.mid"]
    assert manifest["counts"]["files"] == 7 and manifest["counts"]["failed"] == 2
    # the copy is stored once
    assert manifest["counts"]["duplicates"] == 1
    assert manifest["duplicates"][0]["path"].endswith("copy_of_a1.mid")
    # collections from the first folder under the root
    assert corpus.songs["collection"][by_name["b2.mid"]] == "beta"
    assert corpus.songs["collection"][by_name["a1.mid"]] == "alpha"


def test_note_columns_keep_ticks_quarters_programs_drums(midi_folder, tmp_path):
    build([midi_folder], tmp_path / "c")
    corpus = Corpus(tmp_path / "c")
    b1 = corpus.notes(corpus.song_index("b1.mid"))
    assert corpus.songs["tpq"][corpus.song_index("b1.mid")] == 96
    assert b1["onset_tick"][:3].tolist() == [0, 96, 192]
    assert b1["onset"][:3].tolist() == [0.0, 1.0, 2.0]
    assert b1["pitch"][:3].tolist() == [65, 67, 69]
    b2 = corpus.notes(corpus.song_index("b2.mid"))
    assert sorted(zip(b2["program"].tolist(), b2["is_drum"].tolist())) == [(0, True)] * 3 + [(40, False)] * 2
    # tempo 90 qpm: 16 quarters last 16 * 60 / 90 s
    song = corpus.song_index("b1.mid")
    assert corpus.songs["duration_s"][song] == pytest.approx(16 * 60 / 90)
    assert corpus.meta(song).tempo_qpm.tolist() == pytest.approx([90.0])
    assert corpus.songs["time_signature"][song] == "4/4"


def test_cli_prepare_reports_and_exit_code(midi_folder, tmp_path, capsys):
    assert main(["prepare", str(midi_folder), "-o", str(tmp_path / "c"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "prepared 4 songs, 47 notes" in out and "2 failed, 1 duplicates" in out
    assert "broken.mid" in out
    # a second run refuses to overwrite without --force
    assert main(["prepare", str(midi_folder), "-o", str(tmp_path / "c"), "-q"]) == 1
    assert "already there" in capsys.readouterr().err


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(NotelmError, match="no such file or folder"):
        build([tmp_path / "nope"], tmp_path / "c")
    with pytest.raises(NotelmError, match="matches no files"):
        build([str(tmp_path / "*.mid")], tmp_path / "c")


def test_glob_and_single_file_sources(midi_folder, tmp_path):
    build([str(midi_folder / "alpha" / "*.mid"), midi_folder / "beta" / "b1.mid"], tmp_path / "c")
    corpus = Corpus(tmp_path / "c")
    assert sorted(os.path.basename(p) for p in corpus.songs["path"]) == ["a1.mid", "a2.mid", "b1.mid"]
    assert set(corpus.songs["collection"]) == {"alpha", "beta"}


def test_sidecar_overrides_collection(midi_folder, tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("path,collection\nalpha/a1.mid,Bach\nb1.mid,Chopin\n")
    assert read_sidecar(csv) == {"alpha/a1.mid": "Bach", "b1.mid": "Chopin"}
    build([midi_folder], tmp_path / "c", metadata_csv=str(csv))
    corpus = Corpus(tmp_path / "c")
    assert corpus.songs["collection"][corpus.song_index("a1.mid")] == "Bach"
    assert corpus.songs["collection"][corpus.song_index("b1.mid")] == "Chopin"
    assert corpus.songs["collection"][corpus.song_index("a2.mid")] == "alpha"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,composer\nx,y\n")
    with pytest.raises(NotelmError, match="needs the columns"):
        read_sidecar(bad)


def test_splits_are_song_level_stable_and_follow_fractions(tmp_path):
    # the split is a pure function of the content hash
    shas = [content_hash(str(i).encode()) for i in range(2000)]
    splits = [assign_split(s) for s in shas]
    assert splits == [assign_split(s) for s in shas]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.05) and share["test"] == pytest.approx(0.1, abs=0.05)
    assert parse_split("8/1/1") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(NotelmError):
        parse_split("80/20")
    # every note of a song carries the song's split; the same song gets the same split in another corpus
    root = tmp_path / "m"
    for i in range(30):
        write_midi(root / "x" / f"s{i}.mid", scale_tune(50 + i, 4 + i % 5))
    build([root], tmp_path / "c1")
    build([root / "x"], tmp_path / "c2")
    c1, c2 = Corpus(tmp_path / "c1"), Corpus(tmp_path / "c2")
    assert dict(zip(c1.songs["sha"], c1.songs["split"])) == dict(zip(c2.songs["sha"], c2.songs["split"]))
    assert set(c1.songs["split"]) == {"train", "valid", "test"}
    ids = np.concatenate([c1.split_ids(s) for s in ("train", "valid", "test")])
    assert sorted(ids.tolist()) == list(range(len(c1)))


def test_resume_after_interruption_gives_the_same_corpus(tmp_path, monkeypatch):
    import notelm.corpus as corpus_mod

    root = tmp_path / "m"
    for i in range(20):
        write_midi(root / ("a" if i % 2 else "b") / f"s{i:02d}.mid", scale_tune(48 + i, 5 + i))
    monkeypatch.setattr(corpus_mod, "CHUNK_FILES", 4)
    build([root], tmp_path / "full")

    # interrupt after two chunks have been saved
    import notelm.ingest as ingest_mod

    real_save = ingest_mod.save_chunk
    saved = []

    def save_then_die(chunk, stem, chunk_id):
        real_save(chunk, stem, chunk_id)
        saved.append(stem)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ingest_mod, "save_chunk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(root)], tmp_path / "resumed", workers=1, progress=False, log=quiet)
    assert not (tmp_path / "resumed" / "manifest.json").exists()  # never half-written
    assert len(list((tmp_path / "resumed.partial" / "parts").glob("*.json"))) >= 1

    monkeypatch.setattr(ingest_mod, "save_chunk", real_save)
    lines = []
    prepare([str(root)], tmp_path / "resumed", workers=2, progress=False, log=lines.append)
    assert "resumed" in lines[-1]
    assert not (tmp_path / "resumed.partial").exists()
    a, b = tables(tmp_path / "full"), tables(tmp_path / "resumed")
    for name in ("songs", "notes", "tempos", "timesigs", "keysigs"):
        assert a[name].equals(b[name]), name
    assert a["manifest"]["counts"] == b["manifest"]["counts"]


def test_shards_merge_to_the_full_corpus(midi_folder, tmp_path):
    build([midi_folder], tmp_path / "full")
    for k in (1, 2, 3):
        build([midi_folder], tmp_path / f"s{k}", shard=parse_shard(f"{k}/3"))
    merge([tmp_path / f"s{k}" for k in (1, 2, 3)], tmp_path / "merged", log=quiet)
    full, merged = Corpus(tmp_path / "full"), Corpus(tmp_path / "merged")
    key = lambda c: sorted(zip(c.songs["sha"], c.songs["n_notes"], c.songs["split"], c.songs["collection"]))
    assert key(full) == key(merged)
    assert full.num_notes == merged.num_notes
    assert merged.manifest["counts"]["failed"] == 2
    for song in range(len(merged)):
        other = full.song_index(merged.songs["sha"][song])
        a, b = merged.notes(song), full.notes(other)
        assert all(np.array_equal(a[k], b[k]) for k in nt.NOTE_COLUMNS)
    with pytest.raises(NotelmError, match="K/N"):
        parse_shard("4/3")


def test_note_table_in_parts_drops_a_duplicate_inside_a_part(midi_folder, tmp_path, monkeypatch):
    import notelm.corpus as corpus_mod

    build([midi_folder], tmp_path / "one")
    # chunks of 3 files: [a1 a2 broken] [b1 copy_of_a1 notes] [b2]; the copy is a duplicate inside a kept part
    monkeypatch.setattr(corpus_mod, "CHUNK_FILES", 3)
    build([midi_folder], tmp_path / "three")
    one, three = tables(tmp_path / "one"), tables(tmp_path / "three")
    assert [one["manifest"]["counts"].pop("note_parts"), three["manifest"]["counts"].pop("note_parts")] == [1, 3]
    assert sorted(os.listdir(tmp_path / "three" / "notes")) == ["000000.arrow", "000001.arrow", "000002.arrow"]
    for name in one:
        assert one[name] == three[name] if name == "manifest" else one[name].equals(three[name]), name
    corpus = Corpus(tmp_path / "three")
    assert corpus.num_notes == 8 + 18 + 16 + 5
    every = corpus.all_notes()
    for song in range(len(corpus)):  # the song column agrees with each song's row range
        assert np.array_equal(every["pitch"][every["song"] == song], corpus.notes(song)["pitch"])


def test_a_corpus_missing_a_note_part_is_refused(midi_folder, tmp_path, monkeypatch):
    import notelm.corpus as corpus_mod

    monkeypatch.setattr(corpus_mod, "CHUNK_FILES", 3)
    build([midi_folder], tmp_path / "c")
    (tmp_path / "c" / "notes" / "000001.arrow").unlink()  # b1: 16 of the 8 + 18 + 16 + 5 notes
    with pytest.raises(NotelmError, match="the note table holds 31 notes, the song table counts 47; prepare it again"):
        Corpus(tmp_path / "c")


def test_version_1_corpora_one_note_file_with_a_song_column_still_read(midi_folder, tmp_path):
    build([midi_folder], tmp_path / "v2")
    shutil.copytree(tmp_path / "v2", tmp_path / "v1")
    v2 = Corpus(tmp_path / "v2")
    notes = v2.all_notes()
    table = pa.table({"song": notes["song"], **{k: notes[k] for k in nt.NOTE_COLUMNS}})
    with pa.ipc.new_file(str(tmp_path / "v1" / "notes.arrow"), table.schema) as writer:
        writer.write_table(table)
    shutil.rmtree(tmp_path / "v1" / "notes")
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    v1 = Corpus(tmp_path / "v1")
    assert v1.num_notes == v2.num_notes == 47
    old = v1.all_notes()
    assert all(np.array_equal(old[k], notes[k]) for k in notes)
    assert all(np.array_equal(v1.notes(3)[k], v2.notes(3)[k]) for k in nt.NOTE_COLUMNS)
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps({**manifest, "version": 9}))
    with pytest.raises(NotelmError, match="corpus version 9 is not supported"):
        Corpus(tmp_path / "v1")


def test_iter_files_streams_sorted_and_survives_loops_and_limits(tmp_path):
    root = tmp_path / "m"
    write_midi(root / "b" / "z.mid", scale_tune())
    write_midi(root / "a" / "y.mid", scale_tune())
    write_midi(root / "a" / "x.mid", scale_tune(n=200))
    os.symlink(root, root / "a" / "loop")
    files = list(iter_files([str(root)], max_file_mb=0.0005))
    names = [(os.path.basename(f.path), bool(f.error)) for f in files]
    assert names[0] == ("loop", True) and "symlink loop" in files[0].error
    assert [n for n, _ in names[1:]] == ["x.mid", "y.mid", "z.mid"]
    assert "over the --max-file-mb limit" in files[1].error
    assert not files[2].error and not files[3].error


def test_music21_source_offline(tmp_path):
    from music21 import corpus as m21corpus

    listed = list(iter_files(["music21:bach"]))
    assert len(listed) > 400 and all(f.collection == "bach" for f in listed)
    # parse two chorales through the music21 path (MusicXML); counts come from music21 itself
    paths = [str(p) for p in m21corpus.getComposer("bach") if str(p).endswith(".mxl")][:2]
    for p in paths:
        shutil.copy(p, tmp_path / os.path.basename(p))
    build([tmp_path], tmp_path / "c")
    corpus = Corpus(tmp_path / "c")
    assert len(corpus) == 2
    import music21

    for song in range(2):
        score = music21.converter.parse(corpus.songs["path"][song]).stripTies()
        expected = sum(len(n.pitches) for n in score.recurse().notes)
        assert corpus.songs["n_notes"][song] == expected
        assert corpus.songs["tpq"][song] == 480
    with pytest.raises(NotelmError, match="no such collection"):
        list(iter_files(["music21:nonexistent_collection"]))
