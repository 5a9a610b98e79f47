"""Hostile input, second round (issue 17): special files, odd names, deep folders, files that vanish,
one MIDI rule for every reader, every lost note counted, full and read-only disks, bad options.

The web server's share of the issue is in test_web.py.  Every bad file is made here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from notelm import notes as nt
from notelm.cli import main
from notelm.corpus import Corpus, prepare
from notelm.ingest import GRACE_QUARTERS, IngestError, load_file
from notelm.io import FileRefused, NotelmError, printable, read_regular_file

from conftest import deadline, scale_tune, write_midi
from midibytes import header, melody, note_off, note_on, smf, tempo, track

GOOD = smf([melody([60, 62, 64])])
WRAP = [(0x0FFFFFFF, [0xFF, 0x01, 0x00])] * 9  # 9 x 2**28 ticks: past what symusic's int32 times hold
MUSIC21_TESTS = Path(__import__("music21").__file__).parent / "musicxml" / "lilypondTestSuite"


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def notelm_process(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m notelm ARGS`` in a child process (a hang fails the test instead of hanging it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "notelm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


# --------------------------------------------------------------------------- special files

def test_special_files_are_refused_without_hanging_or_reading_forever(tmp_path):
    """A FIFO named .mid hung prepare forever; a link to /dev/zero read until memory ran out."""
    music = tmp_path / "music"
    put(music / "good.mid", GOOD)
    os.mkfifo(music / "fifo.mid")
    (music / "zero.mid").symlink_to("/dev/zero")
    (music / "fifo_link.mid").symlink_to(music / "fifo.mid")
    (music / "stdin.mid").symlink_to("/dev/stdin")
    done = notelm_process("prepare", music, "-o", tmp_path / "c", "-q", "--workers", "2", stdin=subprocess.PIPE)
    assert done.returncode == 0, done.stderr
    failed = sorted(line for line in done.stdout.splitlines() if line.startswith("failed: "))
    assert failed == [f"failed: {music / 'fifo.mid'}: not a regular file (a FIFO)",
                      f"failed: {music / 'fifo_link.mid'}: not a regular file (a FIFO)",
                      f"failed: {music / 'stdin.mid'}: not a regular file (a FIFO)",
                      f"failed: {music / 'zero.mid'}: not a regular file (a character device)"]
    assert Corpus(tmp_path / "c").manifest["counts"] == {**Corpus(tmp_path / "c").manifest["counts"],
                                                          "files": 5, "failed": 4, "songs": 1}
    # every other reader in a long-lived process: prompts, render, uploads (bytes), load_file
    with deadline(20):
        for name in ("fifo.mid", "zero.mid"):
            with pytest.raises(IngestError, match="not a regular file"):
                load_file(str(music / name))
            with pytest.raises(ValueError, match="not a regular file"):
                nt.read_midi(music / name)
        rc, _, err = run_cli("render", music / "zero.mid", "--png", "-o", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "not a regular file (a character device)" in err


def test_reading_stops_at_the_size_limit(tmp_path, monkeypatch):
    path = put(tmp_path / "big.mid", GOOD + bytes(5000))
    assert read_regular_file(path, len(GOOD) + 5000) == GOOD + bytes(5000)
    with pytest.raises(FileRefused, match=r"file is 5,\d+ bytes, over the limit of 1,000 bytes"):
        read_regular_file(path, 1000)
    with pytest.raises(IngestError, match="over the limit"):
        load_file(str(path), max_bytes=1000)
    # a file that grows while it is read (its size said 10 bytes): reading stops one byte past the limit
    real_fstat, reads = os.fstat, []
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 10, *real_fstat(fd)[7:])))
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(FileRefused, match="grew past the limit of 2,000 bytes while it was read"):
        read_regular_file(path, 2000)
    assert sum(reads) <= 2001


def test_a_compressed_musicxml_that_unpacks_to_too_much_is_refused_unopened(tmp_path, monkeypatch):
    import zipfile

    import music21

    bomb = tmp_path / "bomb.mxl"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", bytes(150 * 2**20))  # 150 MB of zeros in a file of about 150 kB
    assert bomb.stat().st_size < 2**20
    monkeypatch.setattr(music21.converter, "parse", lambda *a, **k: pytest.fail("music21 was asked to unpack it"))
    with pytest.raises(IngestError, match="compressed MusicXML unpacks to 150 MB, over the limit of 100 MB"):
        load_file(str(bomb))
    put(tmp_path / "junk.mxl", b"PK\x03\x04 not really a zip")
    with pytest.raises(IngestError, match=r"not a readable compressed MusicXML \(.mxl\) file"):
        load_file(str(tmp_path / "junk.mxl"))


# --------------------------------------------------------------------------- names and folders

def test_names_that_are_not_utf8_or_hold_control_characters(tmp_path):
    """A name that is not UTF-8 crashed the run; a name with a newline forged a `failed:` line."""
    music = tmp_path / "music"
    put(music / "collection\x1b[31m" / "tune.mid", GOOD)
    raw = os.fsencode(music) + b"/caf\xe9.mid"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(smf([melody([61, 63])]))
    forged = "x.mid\nfailed: forged.mid"
    put(music / forged, b"not MIDI")
    put(music / "rtl\u202egnp.mid", b"not MIDI either")  # a bidirectional override: reads as "...mid.png"
    put(music / "sep\u2028arated.mid", b"")
    rc, out, err = run_cli("prepare", music, "-o", tmp_path / "c", "-q", "--workers", "1")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 4  # three failures and the summary: one line each
    assert sorted(lines[:3]) == sorted([
        f"failed: {music}/x.mid\\nfailed: forged.mid: not a MIDI file (no MThd header)",
        f"failed: {music}/rtl\\u202egnp.mid: not a MIDI file (no MThd header)",
        f"failed: {music}/sep\\u2028arated.mid: empty file (0 bytes)"])
    assert lines[3].startswith("prepared 2 songs, 5 notes") and "from 5 files (3 failed" in lines[3]
    corpus = Corpus(tmp_path / "c")
    assert sorted(corpus.songs["path"]) == [f"{music}/caf\\xe9.mid", f"{music}/collection\\x1b[31m/tune.mid"]
    assert corpus.collections == ["collection\\x1b[31m", "music"]
    # a second run resumes (the chunk's id hashes the names as bytes)
    assert run_cli("prepare", music, "-o", tmp_path / "c", "-q", "--force", "--workers", "1")[0] == 0
    assert printable("a\tb\x00c\x7f\x85 d\u00a0e") == "a\\tb\\x00c\\x7f\\x85 d\u00a0e"


def test_a_thousand_nested_folders_are_walked(tmp_path):
    """1,100 nested folders gave a RecursionError in the folder walk."""
    folder = tmp_path / "music"
    os.mkdir(folder)
    deep = str(folder)
    for _ in range(1100):
        deep += "/d"
        os.mkdir(deep)
    put(Path(deep) / "deep.mid", GOOD)
    put(folder / "top.mid", smf([melody([50])]))
    try:
        manifest = prepare([str(folder)], tmp_path / "c", workers=1, progress=False, log=lambda *a: None)
    finally:  # bottom up, without recursion (shutil.rmtree, which pytest cleans up with, recurses)
        os.unlink(Path(deep) / "deep.mid")
        while deep != str(folder):
            os.rmdir(deep)
            deep = os.path.dirname(deep)
    assert manifest["counts"]["songs"] == 2 and manifest["counts"]["failed"] == 0


def test_files_that_vanish_while_prepare_runs_are_still_accounted(tmp_path, monkeypatch):
    """336 files in and songs + duplicates + failures = 277: files deleted during a run were lost.

    Here a whole folder disappears between the count and the walk that reads it, and files
    disappear after their folder was listed and before they are opened.
    """
    import notelm.sources as sources

    music = tmp_path / "music"
    for i in range(40):
        put(music / f"c{i % 4}" / f"t{i:02d}.mid", smf([melody([40 + i, 50 + i % 7])]))
    put(music / "c0" / "copy.mid", (music / "c1" / "t01.mid").read_bytes())  # a duplicate
    real_list, listed = sources._list, []

    def list_then_delete(folder, seen):
        entries, error = real_list(folder, seen)
        listed.append(folder)
        if folder.endswith("c2") and listed.count(folder) == 2:  # the second walk, the one that reads
            for entry in entries[:3]:
                os.unlink(entry.path)  # gone after listing, before opening
        if folder.endswith("music") and len(listed) > 1:
            shutil.rmtree(music / "c3")  # gone between the count and the walk
        return entries, error

    monkeypatch.setattr(sources, "_list", list_then_delete)
    lines = []
    manifest = prepare([str(music)], tmp_path / "c", workers=1, progress=False, log=lines.append)
    c = manifest["counts"]
    assert c["songs"] + c["duplicates"] + c["failed"] == c["files"] == c["kept_files"] + c["failed"]
    assert (c["files"], c["songs"], c["duplicates"], c["failed"]) == (32, 27, 1, 3 + 1)
    reasons = sorted(f["reason"] for f in manifest["failures"])
    assert reasons == ["cannot read folder: No such file or directory"] + ["cannot stat: No such file or directory"] * 3
    assert f"from {c['files']} files ({c['failed']} failed, 1 duplicates" in lines[-1]


def test_a_parser_caught_in_a_loop_costs_one_file(tmp_path, monkeypatch):
    """A parser that never returned held its worker, and prepare, forever."""
    import notelm.ingest as ingest_mod

    music = tmp_path / "music"
    for i in range(6):
        put(music / f"t{i}.mid", smf([melody([50 + i, 60 + i])]))
    put(music / "loops.mid", GOOD)
    real = ingest_mod.load_file

    def load_file_or_loop(path, *args, **kwargs):  # runs in the worker processes (forked)
        while path.endswith("loops.mid"):
            pass
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest_mod, "load_file", load_file_or_loop)
    manifest = prepare([str(music)], tmp_path / "c", workers=2, progress=False, log=lambda *a: None, file_timeout=1)
    assert manifest["failures"] == [{"path": str(music / "loops.mid"),
                                     "reason": "gave up after 1 s: the parser did not finish"}]
    assert manifest["counts"]["songs"] == 6


def test_duplicates_are_found_in_the_compact_hash_index(tmp_path, monkeypatch):
    """The writer keeps the content hashes of all but the latest songs as sorted 128-bit numbers
    (about 20 bytes a song instead of a dict's 200): duplicates must be found on both sides of a fold."""
    from notelm.corpus import FirstSeen

    music = tmp_path / "music"
    for i in range(30):
        put(music / f"t{i:02d}.mid", smf([melody([40 + i, 41 + i])]))
    for i in (0, 3, 17, 29):
        put(music / f"u{i:02d}.mid", (music / f"t{i:02d}.mid").read_bytes())
    quiet = {"workers": 1, "progress": False, "log": lambda *a: None}
    plain = prepare([str(music)], tmp_path / "plain", **quiet)
    monkeypatch.setattr(FirstSeen, "FOLD", 4)
    folded = prepare([str(music)], tmp_path / "folded", **quiet)
    assert folded["duplicates"] == plain["duplicates"] and len(plain["duplicates"]) == 4
    assert [d["same_as"].rsplit("/", 1)[1] for d in plain["duplicates"]] == ["t00.mid", "t03.mid", "t17.mid", "t29.mid"]
    seen = FirstSeen()
    for k in range(10):
        seen.add(f"{k:032x}", k)
    assert [seen.get(f"{k:032x}") for k in (0, 7, 9, 10)] == [0, 7, 9, None] and len(seen.latest) == 10 - 8


# --------------------------------------------------------------------------- one MIDI rule for every reader

@pytest.mark.parametrize("data, reason", [
    (smf([melody([60])], division=0), "invalid ticks per quarter note (0)"),
    (smf([melody([60])], division=0xE728), "SMPTE time division (0xe728)"),
    (b"MThd\x00\x00\x00\x02\x00\x00" + track(melody([60])), "its chunk holds 2 bytes, fewer than the 6"),
    (header(0, 2) + track(melody([60])), "truncated MIDI: header announces 2 tracks"),
], ids=["tpq0", "smpte", "short_header", "truncated"])
def test_one_rule_for_every_midi_reader(tmp_path, data, reason):
    """A tpq=0 MIDI was refused by prepare but accepted by render, `generate --prompt` and uploads."""
    path = put(tmp_path / "in" / "odd.mid", data)
    rc, out, _ = run_cli("prepare", tmp_path / "in", "-o", tmp_path / "c", "-q", "--workers", "1")
    failed = [line for line in out.splitlines() if line.startswith(f"failed: {path}: ")]
    assert rc == 2 and len(failed) == 1 and reason in failed[0]
    with pytest.raises(IngestError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        load_file(str(path))
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        nt.read_midi(path)
    for args in (["render", path, "--png", "-o", tmp_path / "r"],
                 ["generate", "--prompt", path, "-o", tmp_path / "g", "--num", "1", "--length", "4"]):
        rc, _, err = run_cli(*args)
        assert rc == 1 and reason in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "g" / "piece_00.mid").exists()


# --------------------------------------------------------------------------- every lost note counted

def test_every_note_read_but_not_kept_is_counted_by_reason(tmp_path):
    music = tmp_path / "music"
    put(music / "zero.mid", smf([[(0, note_on(60)), (0, note_off(60)), (0, note_on(62)), (0, note_off(62))]
                                 + melody([64])]))  # two notes of length 0
    put(music / "wrap.mid", smf([melody([60]) + WRAP + melody([62, 63])]))  # two after the time wrapped
    put(music / "far.mid", smf([melody([60]) + [(0x0FFFFFFF, note_on(62)), (1, note_off(62))]], division=1))
    put(music / "pitch.mid", smf([[(0, [0x90, 0x85, 80]), (10, [0x80, 0x85, 0])] + melody([64])]))  # pitch byte 133
    put(music / "all_zero.mid", smf([[(0, note_on(70)), (0, note_off(70))]]))  # every note dropped: a failure
    shutil.copy(MUSIC21_TESTS / "71a-Chordnames.xml", music / "chords.xml")  # 8 notes, 8 chord symbols
    lines = []
    manifest = prepare([str(music)], tmp_path / "c", workers=2, progress=False, log=lines.append)
    assert manifest["dropped_notes"] == {"zero_length": 3, "pitch_out_of_range": 1, "before_start": 2,
                                         "past_max_time": 1, "chord_symbol": 8}
    assert manifest["counts"]["notes"] == 1 + 1 + 1 + 1 + 8
    assert [f["reason"] for f in manifest["failures"]] == ["no playable notes"]
    assert ("15 notes dropped: 3 of length 0, 1 with a pitch outside 0-127, 2 before time 0, "
            "1 past 524,288 quarter notes, 8 chord symbols)") in lines[-1]
    # merging shards keeps the count
    for k in (1, 2):
        prepare([str(music)], tmp_path / f"s{k}", shard=(k, 2), workers=1, progress=False, log=lambda *a: None)
    merged = run_cli("merge", tmp_path / "s1", tmp_path / "s2", "-o", tmp_path / "m")
    assert merged[0] == 0
    assert Corpus(tmp_path / "m").manifest["dropped_notes"] == manifest["dropped_notes"]


def _music21_sounding_notes(path: Path) -> int:
    """What music21 itself reads from a file: every pitch of every note and chord and every unpitched
    note, ties merged, chord symbols left out."""
    import music21

    parsed = music21.converter.parse(str(path), forceSource=True).stripTies(inPlace=False)
    count = 0
    for element in parsed.recurse().notes:
        if not isinstance(element, music21.harmony.Harmony):
            count += len(element.notes) if isinstance(element, music21.chord.ChordBase) else 1
    return count


@pytest.mark.parametrize("name, notes, drums", [
    ("73a-Percussion.xml", 8, 6),  # 2 timpani notes and 6 unpitched: 2 of 8 were kept
    ("24a-GraceNotes.xml", 28, 0),  # 15 grace notes were dropped as length 0
    ("24b-ChordAsGraceNote.xml", 8, 0),
    ("24d-AfterGrace.xml", 7, 0),
])
def test_grace_notes_and_unpitched_percussion_are_kept(name, notes, drums):
    import music21

    _, raws = load_file(str(MUSIC21_TESTS / name))
    dropped = {}
    table = nt.assemble(raws, dropped)
    assert len(table["pitch"]) == notes == _music21_sounding_notes(MUSIC21_TESTS / name)
    assert not any(dropped.values()) and not any(raw.dropped for raw in raws)
    assert int(table["is_drum"].sum()) == drums
    if drums:  # General MIDI keys: the triangle's (81); cymbals, which music21 maps to none, on key 60 as it does
        assert sorted(set(table["pitch"][table["is_drum"]].tolist())) == [60, 81]
        assert music21.instrument.Triangle().percMapPitch == 81
    grace = sum(1 for n in music21.converter.parse(str(MUSIC21_TESTS / name)).recurse().notes if n.duration.isGrace)
    assert int(np.sum(table["duration"] == np.float32(GRACE_QUARTERS))) >= grace


def test_abc_grace_notes_are_kept(tmp_path):
    abc = put(tmp_path / "tune.abc", b"X:1\nT:graces\nM:4/4\nL:1/4\nK:C\n{g}A B {ag}c d|{/e}f4|]\n")
    _, raws = load_file(str(abc))
    table = nt.assemble(raws)
    assert len(table["pitch"]) == 9 == _music21_sounding_notes(abc)
    assert int(np.sum(table["duration"] == np.float32(GRACE_QUARTERS))) == 4


# --------------------------------------------------------------------------- full and read-only disks

DISK_DRIVER = r'''
import contextlib, io, json, os, shutil, subprocess, sys, traceback
from notelm.cli import main

work, mnt, mode = sys.argv[1:4]
def sh(*cmd):
    subprocess.run(cmd, check=True)

sh("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt)
shutil.copytree(f"{work}/corpus", f"{mnt}/corpus")  # encode writes inside its corpus
if mode == "full":
    with open(f"{mnt}/fill", "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(bytes(1 << 16)); fh.flush()
else:
    sh("mount", "-o", "remount,ro", mnt)
verbs = {
    "prepare": ["prepare", f"{work}/music", "-o", f"{mnt}/c", "-q", "--workers", "1"],
    "merge": ["merge", f"{work}/corpus", f"{work}/corpus2", "-o", f"{mnt}/m"],
    "stats": ["stats", f"{work}/corpus", "-o", f"{mnt}/stats", "-q"],
    "encode": ["encode", f"{mnt}/corpus", "-q", "--set", "velocity_bins=8"],  # a setting not cached yet
    "train": ["train", f"{work}/corpus", "-o", f"{mnt}/run", "--config", "seed", "-q", "--set", "train.steps=2",
              "--set", "model.hidden=8", "--set", "model.embed_dim=4", "--set", "train.batch_size=2"],
    "plot": ["plot", f"{work}/run", "-o", f"{mnt}/curves.png"],
    "evaluate": ["evaluate", f"{work}/run", "-o", f"{mnt}/eval", "-q"],
    "compare": ["compare", f"{work}/run", "-o", f"{mnt}/cmp.md"],
    "generate": ["generate", "--model", f"{work}/run", "-o", f"{mnt}/gen", "--num", "1", "--length", "8"],
    "render": ["render", f"{work}/tune.mid", "--png", "-o", f"{mnt}/render"],
    "demo": ["demo", "-o", f"{mnt}/demo", "--num", "1", "--length", "8"],
    "reproduce": ["reproduce", "--quick", "--work", f"{mnt}/repro", "--bach", f"{work}/music",
                  "--piano", f"{work}/music", "-q"],
}
results = {}
for verb, args in verbs.items():
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(args)
    except BaseException:
        rc, err = "escaped", io.StringIO(traceback.format_exc())
    results[verb] = [rc, err.getvalue(), out.getvalue()]
if mode == "full":  # free the space: the same command resumes
    os.unlink(f"{mnt}/fill")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results["prepare again"] = [main(verbs["prepare"]), "", out.getvalue()]
    leftovers = [os.path.join(r, n) for r, ds, fs in os.walk(mnt) for n in ds + fs if n.endswith(".tmp")]
    results["leftovers"] = leftovers
print("RESULTS " + json.dumps(results))
'''


def _can_mount_privately() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def disk_work(tmp_path_factory):
    """A corpus, a second one, a tiny trained and evaluated run and a MIDI file, on a disk that works."""
    from notelm.config import load_config
    from notelm.evaluate import evaluate
    from notelm.train import train

    work = tmp_path_factory.mktemp("disk")
    for i in range(8):
        write_midi(work / "music" / ("a" if i % 2 else "b") / f"t{i}.mid", scale_tune(55 + i, 12 + i))
    quiet = {"progress": False, "log": lambda *a: None}
    prepare([str(work / "music")], work / "corpus", workers=1, split=(0.4, 0.3, 0.3), **quiet)
    prepare([str(work / "music" / "a")], work / "corpus2", workers=1, split=(0.4, 0.3, 0.3), **quiet)
    config = load_config("seed", ["train.steps=4", "train.eval_every=2", "train.batch_size=4", "model.hidden=8",
                                  "model.embed_dim=4", "train.eval_crops=4"])
    train(work / "corpus", config, work / "run", **quiet)
    evaluate(work / "run", progress=False, log=lambda *a: None)
    write_midi(work / "tune.mid", scale_tune(60, 8))
    return work


@pytest.mark.slow
@pytest.mark.parametrize("mode, message", [("full", "No space left on device"), ("readonly", "Read-only file system")])
def test_full_or_read_only_disk_gives_one_line_on_every_verb(disk_work, tmp_path, mode, message):
    """A real full file system and a real read-only one (a small tmpfs, mounted in a private mount
    namespace: nothing outside this test sees it).  Every verb that writes says so in one line."""
    if not _can_mount_privately():
        pytest.skip("cannot mount a private tmpfs here (unshare -rm); test_full_disk_injected covers the verbs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DISK_DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["unshare", "-rm", sys.executable, str(driver), str(disk_work), str(mnt), mode],
                          capture_output=True, text=True, timeout=600, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert line, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(line[len("RESULTS "):])
    wrong = {verb: results[verb] for verb in ("prepare", "merge", "stats", "train", "plot", "evaluate",
                                              "compare", "generate", "render", "demo", "reproduce")
             if not (results[verb][0] == 1 and results[verb][1].count("\n") == 1
                     and results[verb][1].startswith(f"notelm {verb}: error: ") and message in results[verb][1])}
    assert not wrong, "\n".join(f"{verb}: {rc}: {err[-1500:]}" for verb, (rc, err, _) in wrong.items())
    # encode goes on with the encoding in memory when its cache cannot be written, and says so in one line
    rc, err, out = results["encode"]
    assert rc == 0 and err == "" and [line for line in out.splitlines() if message in line] == [
        line for line in out.splitlines() if line.startswith("note: cannot write the cache")]
    if mode == "full":
        assert "free some space and run the same command again: finished work is kept" in results["prepare"][1]
        rc, _, out = results["prepare again"]
        assert rc == 0 and "prepared 8 songs" in out
        assert results["leftovers"] == []


def test_full_disk_injected_gives_one_line(disk_work, tmp_path, monkeypatch):
    """Without a private tmpfs: ENOSPC injected where every atomic write of notelm starts (``io.atomic_path``
    and ``io.atomic_dir`` make their temporaries with tempfile.mkstemp and tempfile.mkdtemp)."""
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kwargs.get("dir", "?"))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(tempfile, "mkdtemp", full)
    out = tmp_path / "out"
    for args in (["prepare", disk_work / "music", "-o", out / "c", "-q", "--workers", "1"],
                 ["merge", disk_work / "corpus", disk_work / "corpus2", "-o", out / "m"],
                 ["stats", disk_work / "corpus", "-o", out / "stats", "-q"],
                 ["render", disk_work / "tune.mid", "--png", "-o", out / "r"],
                 ["generate", "--model", disk_work / "run", "-o", out / "g", "--num", "1", "--length", "4"]):
        rc, _, err = run_cli(*args)
        assert rc == 1 and err.count("\n") == 1 and "No space left on device (free some space" in err, err


# --------------------------------------------------------------------------- options and broken corpora

@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers 0: between 1 and"),
    (["--workers", "-3"], "--workers -3: between 1 and"),
    (["--workers", "100000"], "--workers 100000: between 1 and"),
    (["--max-file-mb", "0"], "--max-file-mb 0: a size in MB above 0"),
    (["--max-file-mb", "nan"], "--max-file-mb nan: a size in MB above 0"),
    (["--split", "nan/1/1"], "--split 'nan/1/1': expected three numbers"),
    (["--split", "inf/1/1"], "--split 'inf/1/1': expected three numbers"),
])
def test_bad_prepare_options_are_one_line_errors(tmp_path, args, message):
    put(tmp_path / "in" / "a.mid", GOOD)
    rc, _, err = run_cli("prepare", tmp_path / "in", "-o", tmp_path / "c", "-q", *args)
    assert rc == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "c").exists()


def test_bad_metadata_csv_and_merge_outputs_are_one_line_errors(tmp_path):
    put(tmp_path / "in" / "a.mid", GOOD)
    os.mkfifo(tmp_path / "fifo.csv")
    put(tmp_path / "latin1.csv", b"path,collection\na.mid,caf\xe9\n")
    for csv, message in ((tmp_path / "fifo.csv", "not a regular file (a FIFO)"),
                         (tmp_path / "latin1.csv", "metadata CSV is not UTF-8 text (byte 25)"),
                         (tmp_path, "not a regular file (a folder)")):
        with deadline(20):
            rc, _, err = run_cli("prepare", tmp_path / "in", "-o", tmp_path / "c", "-q", "--metadata", csv)
        assert rc == 1 and message in err and err.count("\n") == 1, err
    assert run_cli("prepare", tmp_path / "in", "-o", tmp_path / "c", "-q")[0] == 0
    put(tmp_path / "notes.txt", b"my notes")
    for out, message in ((tmp_path / "notes.txt", "exists and is not a notelm corpus"),
                         (tmp_path / "c", "a corpus is already there; pass --force")):
        rc, _, err = run_cli("merge", tmp_path / "c", "-o", out)
        assert rc == 1 and message in err, err
    rc, _, err = run_cli("merge", tmp_path / "c", "-o", tmp_path / "c", "--force")
    assert rc == 1 and "is also one of the corpora to merge" in err
    assert (tmp_path / "notes.txt").read_bytes() == b"my notes" and Corpus(tmp_path / "c").num_notes == 3


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: not readable JSON"),
    (lambda d: (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000), "manifest.json: not readable JSON"),
    (lambda d: (d / "manifest.json").write_bytes(b'{"format": "\xff"}'), "manifest.json: not readable JSON"),
    (lambda d: (d / "manifest.json").write_text("[]"), "manifest.json: not a notelm corpus manifest"),
    (lambda d: _edit_manifest(d, lambda m: m.pop("failures")), "'failures' is missing or not a JSON list"),
    (lambda d: _edit_manifest(d, lambda m: m.update(split={"train": "all"})), "'split' must hold three fractions"),
    (lambda d: _edit_manifest(d, lambda m: m.update(version="9")), "corpus version 9 is not supported"),
    (lambda d: (os.unlink(d / "manifest.json"), os.mkfifo(d / "manifest.json")), "not a regular file (a FIFO)"),
    (lambda d: _edit_songs(d, note_end=lambda v: v + 1000), "note ranges or splits are inconsistent"),
    (lambda d: _edit_songs(d, split=lambda v: ["elsewhere"] * len(v)), "note ranges or splits are inconsistent"),
], ids=["invalid", "deep", "not_utf8", "not_object", "no_failures", "bad_split", "version", "fifo", "ranges",
        "split_name"])
def test_a_broken_corpus_is_a_one_line_error(tmp_path, tamper, message):
    put(tmp_path / "in" / "a.mid", GOOD)
    put(tmp_path / "in" / "b.mid", smf([melody([50, 52])]))
    prepare([str(tmp_path / "in")], tmp_path / "c", workers=1, progress=False, log=lambda *a: None)
    tamper(tmp_path / "c")
    with deadline(20):
        with pytest.raises(NotelmError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Corpus(tmp_path / "c")
        rc, _, err = run_cli("stats", tmp_path / "c", "-q")
    assert rc == 1 and err.count("\n") == 1 and message in err


def _edit_manifest(directory: Path, edit) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _edit_songs(directory: Path, **edits) -> None:
    import pyarrow as pa

    table = pa.ipc.open_file(str(directory / "songs.arrow")).read_all()
    for column, edit in edits.items():
        values = edit(np.asarray(table.column(column).to_pylist(), dtype=object))
        table = table.set_column(table.column_names.index(column), column, pa.array(list(values),
                                                                                      table.schema.field(column).type))
    with pa.ipc.new_file(str(directory / "songs.arrow"), table.schema) as writer:
        writer.write_table(table)


# --------------------------------------------------------------------------- audio and tempo bounds

def test_tempo_and_audio_length_are_bounded_before_anything_is_allocated(tmp_path, monkeypatch):
    """`generate --qpm 1 --wav` made a 1.3 GB WAV and `--qpm 0.0001` crashed; a 68-byte prompt of
    16,777,215 microseconds per quarter allocated 9 GB in the web server."""
    from notelm import render

    for qpm in (0.0001, 1, 9.99, 1000.5, 1e9, float("nan"), float("inf"), -120, "fast"):
        with pytest.raises(NotelmError, match="the tempo must be between 10 and 1000|not a number"):
            nt.check_qpm(qpm, "--qpm")
        with pytest.raises(NotelmError):
            nt.write_midi(nt.make_notes([0.0], 1.0, [60]), tmp_path / "x.mid", qpm=qpm)
    assert nt.check_qpm("96", "--qpm") == 96.0 and not (tmp_path / "x.mid").exists()
    monkeypatch.setattr(render, "_synthesizer", lambda *a: pytest.fail("the synthesizer was asked for the audio"))
    long_piece = nt.make_notes(np.arange(600) * 4.0, 4.0, 60)  # 2,400 quarter notes
    with pytest.raises(NotelmError, match=r"x.wav: 14,402 s of audio is over the 3,600 s limit"):
        render.render_wav(long_piece, tmp_path / "x.wav", qpm=10)
    # one note of 300 quarters at the slowest tempo MIDI can hold: 84 minutes in a file of 43 bytes
    slow = put(tmp_path / "slow.mid", smf([[(0, tempo(0xFFFFFF)), (0, note_on(60)), (480 * 300, note_off(60))]]))
    assert len(slow.read_bytes()) == 43
    notes, meta = nt.read_midi(slow)
    assert render.song_seconds(notes, meta=meta) == pytest.approx(300 * 16.777215)
    rc, _, err = run_cli("render", slow, "--wav", "-o", tmp_path)
    assert rc == 1 and err.count("\n") == 1 and "slow.wav: 5,035 s of audio is over the 3,600 s limit" in err, err
    assert not (tmp_path / "slow.wav").exists()
    # the CLI: a tempo MIDI cannot hold, and one that makes the audio too long, are one-line errors
    for qpm, message in (("0.0001", "the tempo must be between 10 and 1000"), ("1", "the tempo must be between"),
                         ("nan", "the tempo must be between")):
        rc, _, err = run_cli("generate", "-o", tmp_path / "g", "--num", "1", "--length", "8", "--qpm", qpm, "--wav")
        assert rc == 1 and err.count("\n") == 1 and message in err, err


def test_a_piano_roll_of_an_absurd_time_signature_is_drawn(tmp_path):
    from notelm import render

    meta = nt.SongMeta(timesig_tick=np.array([0]), timesig_num=np.array([1], np.int16),
                       timesig_den=np.array([16384], np.int16))
    notes = nt.make_notes([0.0, 100_000.0], 1.0, [60, 64])  # once a line per 1/4096 of a quarter: 400 million lines
    assert render.render_pianoroll(notes, tmp_path / "roll.png", meta=meta).stat().st_size > 1000
