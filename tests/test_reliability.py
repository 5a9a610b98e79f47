"""Reliability (issue 7): bad input, crashing parsers, interrupted work, untrusted files, resource limits.

Every bad file is made here (no binaries in git): ``midibytes`` writes the MIDI files
symusic cannot write.  docs/guarantees.md lists which test checks which guarantee.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from notelm import notes as nt
from notelm.cli import main
from notelm.corpus import Corpus, prepare, read_notes
from notelm.ingest import IngestError, load_file
from notelm.io import NotelmError, atomic_dir
from notelm.midifile import midi_event_problem

from conftest import scale_tune, write_midi
from midibytes import chunk, header, melody, note_off, note_on, smf, tempo, time_signature, track

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
VALID = smf([melody([60, 62, 64, 65]), melody([48, 52], step=960)])  # two tracks, 6 notes
# symusic 0.5.8 indexes a [16][128] table with this pitch byte (0x99) on channel 16: a write out of bounds
CRASHES_SYMUSIC = smf([[(0, [0x9F, 0x99, 0x28]), (80, note_off(60))]])
# a file the MIDI standard allows: an escape event (0xF7, 3 bytes) carrying those bytes. symusic reads 0xF7
# as one byte, then the length as a delta time, then the payload as that note
ESCAPE_CRASHES_SYMUSIC = smf([[(0, [0xF7, 0x03, 0x9F, 0x99, 0x28]), (0, note_on(60)), (10, note_off(60))]])
REST_ONLY_MUSICXML = b"""<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1"><part-list><score-part id="P1"><part-name>Silence</part-name></score-part></part-list>
<part id="P1"><measure number="1"><attributes><divisions>1</divisions></attributes>
<note><rest/><duration>4</duration></note></measure></part></score-partwise>
"""
WRAP = [(0x0FFFFFFF, [0xFF, 0x01, 0x00])] * 9  # 9 x 2**28 ticks: past what symusic's int32 times hold


@pytest.fixture(autouse=True, scope="module")
def no_core_files():
    """The crashes these tests cause on purpose must not leave core dumps (workers inherit the limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tables(corpus_dir: Path) -> dict:
    """Every table of a corpus plus its manifest (minus the timestamp), for equality checks."""
    out = {name: pa.ipc.open_file(str(corpus_dir / f"{name}.arrow")).read_all()
           for name in ("songs", "tempos", "timesigs", "keysigs")}
    out["notes"] = read_notes(corpus_dir).combine_chunks()
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    manifest.pop("created")
    out["manifest"] = manifest
    return out


def assert_same_corpus(a: Path, b: Path) -> None:
    ta, tb = tables(a), tables(b)
    for name in ("songs", "notes", "tempos", "timesigs", "keysigs"):
        assert ta[name].equals(tb[name]), name
    assert ta["manifest"] == tb["manifest"]


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders anywhere below ``folder``: what an interrupted write leaves."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".partial")) or ".old-" in p.name)


# --------------------------------------------------------------------------- 1. bad input

def make_bad_input_folder(root: Path) -> tuple[dict[str, int], dict[Path, tuple[str, ...]]]:
    """A folder mixing valid files with every kind of bad input.

    Returns (kept: file name -> exact note count, failed: path -> words one of which its reason holds).
    """
    good, bad = root / "good", root / "bad"
    kept: dict[str, int] = {}
    failed: dict[Path, tuple[str, ...]] = {}

    write_midi(good / "scale.mid", scale_tune(60, 8))
    kept["scale.mid"] = 8
    write_midi(good / "chords.mid", scale_tune(62, 12, chord_every=6))
    kept["chords.mid"] = 18
    put(good / "drums_only.mid", smf([melody([36, 38, 42, 46, 36, 38], step=120, channel=9)]))
    kept["drums_only.mid"] = 6
    # tempo 0 microseconds per quarter, time signature 0/1, a key of 100 sharps: metadata no file can mean
    put(good / "tempo_zero.mid", smf([[(0, tempo(0)), (0, time_signature(0, 0)), (0, [0xFF, 0x59, 0x02, 100, 5])]
                                      + melody([60, 62])]))
    kept["tempo_zero.mid"] = 2
    put(good / "tempo_slowest.mid", smf([[(0, tempo(0xFFFFFF))] + melody([64])]))
    kept["tempo_slowest.mid"] = 1
    put(good / "tpq_1.mid", smf([melody([60, 62, 64], step=1)], division=1))
    kept["tpq_1.mid"] = 3
    put(good / "tpq_32767.mid", smf([melody([60, 62], step=32767)], division=32767))
    kept["tpq_32767.mid"] = 2
    # the longest duration a MIDI file can hold (2**28 - 1 ticks, 3 days at 120 qpm); a release before any
    # press; a zero-length note; a note after the time wrapped past 2**31 ticks: only the first is a note
    put(good / "odd_durations.mid", smf([[(0, note_off(61)), (0, note_on(60)), (0x0FFFFFFF, note_off(60)),
                                          (0, note_on(62)), (0, note_off(62))] + WRAP + melody([64])], division=960))
    kept["odd_durations.mid"] = 1
    # a note 2**28 quarter notes in: a corrupt time, dropped (it would become 67 million rest events)
    put(good / "far_future.mid", smf([melody([60]) + [(0x0FFFFFFF, note_on(62)), (1, note_off(62))]], division=1))
    kept["far_future.mid"] = 1
    n = 100_000  # simultaneous notes, on all 16 channels
    put(good / "many_at_once.mid", smf([[(0, note_on(k % 128, 64, k // 128 % 16)) for k in range(n)]
                                        + [(480, [0xFF, 0x01, 0])]
                                        + [(0, note_off(k % 128, k // 128 % 16)) for k in range(n)]]))
    kept["many_at_once.mid"] = n
    put(good / "extreme_pitches.mid", smf([melody([0, 127, 64])]))
    kept["extreme_pitches.mid"] = 3
    put(good / "empty_track_first.mid", header(1, 2) + chunk(b"MTrk", b"") + track(melody([60, 62])))
    kept["empty_track_first.mid"] = 2
    put(good / "format2_one_track.mid", smf([melody([60, 64, 67])], fmt=2))
    kept["format2_one_track.mid"] = 3
    put(good / "unknown_chunk.mid", header(0, 1) + chunk(b"XTRA", b"anything") + track(melody([55])))
    kept["unknown_chunk.mid"] = 1
    put(good / "deep" / "er" / "nested.mid", smf([melody([70, 72, 74, 76])]))
    kept["nested.mid"] = 4

    def fail(path: Path, data: bytes | None, *words: str) -> None:
        if data is not None:
            put(path, data)
        failed[path] = words

    fail(bad / "empty.mid", b"", "empty file (0 bytes)")
    fail(bad / "random.mid", random.Random(7).randbytes(500), "not a MIDI file")
    fail(bad / "text.mid", b"my notes for tomorrow\n", "not a MIDI file")
    for cut in (4, 13, 14, 21, 30, len(VALID) // 2, len(VALID) - 1):
        fail(bad / f"cut_at_{cut}.mid", VALID[:cut], "truncated MIDI")
    fail(bad / "tpq_zero.mid", smf([melody([60])], division=0), "invalid ticks per quarter note (0)")
    fail(bad / "smpte_65535.mid", smf([melody([60])], division=65535), "unreadable MIDI")
    fail(bad / "no_tracks.mid", header(0, 0), "no notes")
    fail(bad / "only_empty_tracks.mid", header(1, 2) + chunk(b"MTrk", b"") * 2, "no notes")
    fail(bad / "never_released.mid", smf([[(0, note_on(60)), (10, note_on(62))]]), "no notes")
    fail(bad / "after_time_wrap.mid", smf([WRAP + melody([60])]), "no playable notes")
    fail(bad / "format2.mid", smf([melody([60]), melody([62])], fmt=2), "MIDI format 2")
    fail(bad / "format7.mid", header(7, 1) + track(melody([60])), "unknown MIDI format 7")
    # kills symusic's process in an ingest worker: the pool retries its chunk file by file
    fail(bad / "crashes_symusic.mid", CRASHES_SYMUSIC, "crashed its process", "no notes")
    fail(bad / "escape_crashes_symusic.mid", ESCAPE_CRASHES_SYMUSIC, "crashed its process", "no notes")
    fail(bad / "rest_only.musicxml", REST_ONLY_MUSICXML, "no notes")
    fail(bad / "broken.musicxml", b"<score-partwise><part", "music21 could not parse it")
    fail(bad / "huge.mid", smf([melody([60])]) + chunk(b"XPAD", bytes(3 * 1024 * 1024)), "over the --max-file-mb limit")
    (bad / "gone.mid").symlink_to(bad / "nowhere.mid")
    fail(bad / "gone.mid", None, "No such file or directory")
    (bad / "loop").symlink_to(bad)
    fail(bad / "loop", None, "symlink loop")
    put(bad / "locked" / "inside.mid", VALID)
    fail(bad / "locked", None, "cannot read folder: Permission denied")
    if not IS_ROOT:
        put(bad / "unreadable.mid", VALID).chmod(0)
        fail(bad / "unreadable.mid", None, "cannot read: Permission denied")
    return kept, failed


@contextlib.contextmanager
def locked_folder(path: Path):
    """``path`` cannot be listed.  chmod 000 does not stop root, so as root listing it is made to
    fail with the same PermissionError (only inside this process: the folder walk runs here)."""
    if not IS_ROOT:
        path.chmod(0)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    real = os.scandir

    def scandir(p="."):
        if isinstance(p, (str, os.PathLike)) and os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(p)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "scandir", scandir)
        yield


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory):
    """`notelm prepare` on the mixed folder: (exit status, stdout, stderr, kept, failed, corpus dir)."""
    root = tmp_path_factory.mktemp("mixed")
    kept, failed = make_bad_input_folder(root)
    out = root.parent / (root.name + "-corpus")
    stdout, stderr = io.StringIO(), io.StringIO()
    was_on = faulthandler.is_enabled()
    faulthandler.disable()  # the worker symusic crashes would print a fatal-error traceback into the test log
    try:
        with (locked_folder(root / "bad" / "locked"), contextlib.redirect_stdout(stdout),
              contextlib.redirect_stderr(stderr)):
            rc = main(["prepare", str(root), "-o", str(out), "-q", "--workers", "2", "--max-file-mb", "2"])
    finally:
        if was_on:
            faulthandler.enable(file=sys.__stderr__)
    return rc, stdout.getvalue(), stderr.getvalue(), kept, failed, out


def test_every_bad_file_is_reported_once_with_a_one_line_reason(bad_input_run):
    rc, stdout, _, kept, failed, out = bad_input_run
    lines = [line for line in stdout.splitlines() if line.startswith("failed: ")]
    reported = {}
    for line in lines:
        path = next((p for p in failed if line.startswith(f"failed: {p}: ")), None)
        assert path is not None, f"a file reported as failed that should have been kept: {line}"
        assert path not in reported, f"reported twice: {path}"
        reported[path] = line[len(f"failed: {path}: "):]
    assert set(reported) == set(failed), f"not reported: {sorted(map(str, set(failed) - set(reported)))}"
    for path, reason in reported.items():
        assert any(w in reason for w in failed[path]), f"{path.name}: {reason!r} does not say {failed[path]}"
        assert 0 < len(reason) <= 300
    manifest = json.loads((out / "manifest.json").read_text())
    assert {Path(f["path"]): f["reason"] for f in manifest["failures"]} == reported
    assert all("\n" not in f["reason"] for f in manifest["failures"])


def test_every_valid_file_is_kept_with_exact_note_counts(bad_input_run):
    rc, stdout, stderr, kept, failed, out = bad_input_run
    corpus = Corpus(out)
    got = {os.path.basename(p): int(n) for p, n in zip(corpus.songs["path"], corpus.songs["n_notes"])}
    assert got == kept
    assert corpus.num_notes == sum(kept.values())
    # exit status and summary say how many failed (0: the corpus holds songs; see `notelm prepare --help`)
    assert rc == 0 and stderr == ""
    summary = stdout.splitlines()[-1]
    n_files = len(kept) + len(failed)
    assert summary.startswith(f"prepared {len(kept)} songs, {sum(kept.values()):,} notes")
    assert f"from {n_files} files ({len(failed)} failed, 0 duplicates" in summary
    assert corpus.manifest["counts"]["files"] == n_files and corpus.manifest["counts"]["failed"] == len(failed)


def test_absurd_values_are_read_as_the_file_means_them(bad_input_run):
    out = bad_input_run[-1]
    corpus = Corpus(out)
    song = {os.path.basename(p): i for i, p in enumerate(corpus.songs["path"])}
    # tempo 0, time signature 0/1 and 100 sharps are ignored: 120 qpm, no signature, no key
    s = song["tempo_zero.mid"]
    assert corpus.songs["qpm"][s] == 120.0 and corpus.songs["duration_s"][s] == pytest.approx(1.0)
    assert corpus.songs["time_signature"][s] == "" and corpus.songs["key"][s] == ""
    assert len(corpus.meta(s).tempo_qpm) == 0
    s = song["tempo_slowest.mid"]  # the slowest tempo MIDI can write: 3.58 qpm, one quarter lasts 16.8 s
    assert corpus.songs["qpm"][s] == pytest.approx(60e6 / 0xFFFFFF)
    assert corpus.songs["duration_s"][s] == pytest.approx(0xFFFFFF / 1e6)
    notes = corpus.notes(song["odd_durations.mid"])
    assert notes["duration_tick"].tolist() == [0x0FFFFFFF] and notes["pitch"].tolist() == [60]
    notes = corpus.notes(song["drums_only.mid"])
    assert notes["is_drum"].all()
    notes = corpus.notes(song["many_at_once.mid"])
    assert (notes["onset_tick"] == 0).all() and (notes["duration_tick"] == 480).all()
    assert notes["is_drum"].sum() == 100_000 // 2048 * 128 + 128 * (100_000 % 2048 > 9 * 128)
    assert corpus.songs["tpq"][song["tpq_32767.mid"]] == 32767
    everything = corpus.all_notes()
    assert everything["pitch"].min() >= 0 and everything["pitch"].max() <= 127
    assert everything["velocity"].min() >= 1 and everything["velocity"].max() <= 127
    assert (everything["duration_tick"] > 0).all() and (everything["onset_tick"] >= 0).all()


def test_transposition_never_takes_a_pitch_out_of_0_127(bad_input_run):
    from notelm.data import transpose_batch
    from notelm.encoding import get_representation

    corpus = Corpus(bad_input_run[-1])
    rep = get_representation("events")
    vocab = rep.vocab()
    song = corpus.song_index("extreme_pitches.mid")
    pitch = rep.encode_song(corpus.notes(song))["pitch"].astype(np.int64)
    low_only = rep.encode_song(nt.make_notes([0.0, 1.0], 1.0, [0, 5]))["pitch"].astype(np.int64)
    tables = rep.transpositions()
    k = vocab.names.index("pitch")
    rng = np.random.default_rng(0)
    for crop in (pitch, low_only):
        tokens = np.zeros((64, len(crop), len(vocab.names)), np.int64)
        tokens[..., k] = crop
        moved = transpose_batch(tokens, k, tables, rng)[..., k]
        assert moved.min() >= 0 and moved.max() < vocab.sizes[k]
        if crop is pitch:  # 0 and 127 together: no shift fits, the crop stays as it is
            assert (moved == crop).all()
        else:  # only upward shifts fit, and some were drawn
            shift = moved[:, 1] - crop[1]
            assert (shift >= 0).all() and (shift > 0).any() and (moved[:, 2] - crop[2] == shift).all()


def test_exit_status_2_when_no_file_can_be_read(tmp_path, capsys):
    put(tmp_path / "in" / "empty.mid", b"")
    put(tmp_path / "in" / "text.mid", b"hello")
    assert main(["prepare", str(tmp_path / "in"), "-o", str(tmp_path / "c"), "-q", "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert "the corpus holds no song (2 of 2 files failed)" in captured.err
    assert "prepared 0 songs" in captured.out and "(2 failed" in captured.out
    assert Corpus(tmp_path / "c").manifest["counts"]["failed"] == 2  # the failures are on record
    (tmp_path / "nothing").mkdir()
    assert main(["prepare", str(tmp_path / "nothing"), "-o", str(tmp_path / "c2"), "-q"]) == 2
    assert "no music file found" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing"), "-o", str(tmp_path / "c3"), "-q"]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    help_text = capsys.readouterr().out
    assert "exit status:" in help_text and "2  the corpus was written but holds no song" in help_text


def test_in_process_readers_refuse_bytes_that_crash_symusic(tmp_path):
    """Prompts, uploads and `load_file` in a long-lived process walk every event before symusic does."""
    path = put(tmp_path / "crash.mid", CRASHES_SYMUSIC)
    with pytest.raises(IngestError, match="malformed MIDI event in track 1: data byte 0x99 over 127"):
        load_file(str(path))
    with pytest.raises(ValueError, match="data byte 0x99 over 127"):
        nt.read_midi(path)
    path = put(tmp_path / "escape.mid", ESCAPE_CRASHES_SYMUSIC)
    with pytest.raises(IngestError, match=r"system exclusive escape event \(0xf7\) at byte 23, which symusic misreads"):
        load_file(str(path))
    # a velocity byte over 127: refused in-process; an ingest worker (no event walk) clips it into 1..127
    loud = put(tmp_path / "loud.mid", smf([[(0, [0x90, 60, 0x85]), (10, note_off(60))]]))
    with pytest.raises(IngestError, match="0x85 over 127"):
        load_file(str(loud))
    _, raws = load_file(str(loud), check_events=False)
    assert nt.assemble(raws)["velocity"].tolist() == [1]
    # well-formed files pass the walk: running status, metas, sysex, long text, unknown chunks
    fine = header(0, 1) + chunk(b"XTRA", b"??") + track(
        [(0, tempo(500000)), (0, [0xF0, 0x02, 0x01, 0xF7]), (0, [0xFF, 0x01, 0x81, 0x00] + [65] * 128),
         (0, note_on(60)), (0, [62, 80]), (200_000, [0xC3, 5]), (0, [0x93, 40, 30]), (5, [40, 0]), (5, note_off(60)),
         (0, [62, 0])])
    assert midi_event_problem(fine) == ""
    assert nt.num_notes(nt.read_midi(put(tmp_path / "fine.mid", fine))[0]) == 3


@pytest.mark.parametrize("data", [CRASHES_SYMUSIC, ESCAPE_CRASHES_SYMUSIC], ids=["pitch_byte", "escape_event"])
def test_symusic_itself_dies_on_those_bytes(tmp_path, data):
    """Why the event walk exists (and why ingest runs in worker processes)."""
    path = put(tmp_path / "crash.mid", data)
    code = "import sys, symusic; symusic.Score.from_midi(open(sys.argv[1], 'rb').read())"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    if out.returncode >= 0:
        pytest.skip("this symusic no longer crashes on these bytes: the event walk is now a second line of defence")
    assert out.returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS)


# --------------------------------------------------------------------------- 2. a crashing parser costs one file

@pytest.mark.parametrize("death", ["segfault", "exit"])
def test_a_parser_that_kills_its_process_costs_one_file(tmp_path, monkeypatch, death):
    import notelm.corpus as corpus_mod
    import notelm.ingest as ingest_mod

    root = tmp_path / "m"
    counts = {}
    for i in range(14):
        name = "crash_me.mid" if i == 5 else f"s{i:02d}.mid"
        write_midi(root / name, scale_tune(48 + i, 3 + i))
        counts[name] = 3 + i
    del counts["crash_me.mid"]
    real = ingest_mod.load_file

    def load_file_or_die(path, *args, **kwargs):  # runs inside the worker processes (forked)
        if path.endswith("crash_me.mid"):
            faulthandler.disable()  # no traceback in the test log: this crash is the point
            if death == "segfault":
                os.kill(os.getpid(), signal.SIGSEGV)
            os._exit(3)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest_mod, "load_file", load_file_or_die)
    monkeypatch.setattr(corpus_mod, "CHUNK_FILES", 4)  # other chunks are in flight when the worker dies
    lines = []
    manifest = prepare([str(root)], tmp_path / "c", workers=2, progress=False, log=lines.append)
    corpus = Corpus(tmp_path / "c")
    assert {os.path.basename(p): int(n) for p, n in zip(corpus.songs["path"], corpus.songs["n_notes"])} == counts
    crashed = {"path": str(root / "crash_me.mid"), "reason": "the parser crashed its process on this file"}
    assert manifest["failures"] == [crashed]
    assert "(1 failed" in lines[-1]


# --------------------------------------------------------------------------- 3. interrupted work

def _session_processes(session: int) -> list[int]:
    """Processes still alive (not zombies) in a session: what a killed command left running."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
                alive.append(int(entry))
    return alive


def test_prepare_killed_at_random_moments_resumes_to_the_same_corpus(tmp_path):
    root = tmp_path / "music"
    for i in range(400):
        put(root / f"c{i % 8}" / f"t{i:03d}.mid", smf([melody([40 + i % 40, 50 + i // 40, 60 + i % 7], step=120 + i)]))
    for name, data in (("empty.mid", b""), ("cut.mid", VALID[:30]), ("junk.mid", b"junk")):
        put(root / "c0" / name, data)

    def command(out):
        return [sys.executable, "-m", "notelm", "prepare", str(root), "-o", str(out), "-q", "--workers", "2"]

    started = time.perf_counter()
    subprocess.run(command(tmp_path / "reference"), check=True, capture_output=True, timeout=300)
    full = time.perf_counter() - started
    resumed_any = False
    for seed in range(3):
        rng = random.Random(seed)
        out = tmp_path / f"run{seed}"
        parts = tmp_path / f"run{seed}.partial" / "parts"
        for attempt in range(2):
            proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            if attempt and rng.random() < 0.5:  # anywhere in the run, start-up included
                time.sleep(rng.uniform(0, full))
            else:  # in the thick of it: after some of the 13 chunks are saved
                wanted = rng.randint(1, 10)
                deadline = time.perf_counter() + 60
                while (proc.poll() is None and time.perf_counter() < deadline
                       and len(list(parts.glob("*.json"))) < wanted):
                    time.sleep(0.005)
                time.sleep(rng.uniform(0, 0.03))
            proc.kill()  # SIGKILL: no clean-up code runs
            proc.wait()
            time.sleep(0.2)
            stray = _session_processes(proc.pid)
            for pid in stray:  # ours: end them before reading the pipes they hold open, then fail
                os.kill(pid, signal.SIGKILL)
            stdout, _ = proc.communicate(timeout=60)
            assert stray == [], "workers outlived the killed prepare"
            resumed_any |= b"resumed" in stdout
            if (out / "manifest.json").exists():  # never half-written: if it is there, it is whole
                assert_same_corpus(tmp_path / "reference", out)
        done = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
        resumed_any |= "resumed" in done.stdout
        assert done.returncode == 0 or "already there" in done.stderr, done.stderr
        assert_same_corpus(tmp_path / "reference", out)
        assert leftovers(tmp_path) == []
    assert resumed_any, "no kill landed after a chunk was saved: the test did not test resuming"


def test_a_writer_killed_mid_write_leaves_nothing_behind_once_rewritten(tmp_path):
    target = tmp_path / "checkpoint"
    code = ("import os, sys, time\nfrom notelm.io import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'model.safetensors').write_bytes(b'x' * 100)\n"
            "    print('writing', flush=True)\n    time.sleep(float(sys.argv[2]))\n")
    killed = subprocess.run([sys.executable, "-c", code + "    os.kill(os.getpid(), 9)\n", str(target), "0"],
                            timeout=60)
    assert killed.returncode == -9
    assert not target.exists() and len(leftovers(tmp_path)) == 1  # what kill -9 leaves: a hidden temporary
    # a writer that is still running keeps its temporary; the one of the killed writer goes
    alive = subprocess.Popen([sys.executable, "-c", code, str(target), "30"], stdout=subprocess.PIPE)
    try:
        assert alive.stdout.readline() == b"writing\n"
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"y")
        assert (target / "model.safetensors").read_bytes() == b"y"
        left = leftovers(tmp_path)
        assert len(left) == 1 and f"-{alive.pid}." in left[0]
    finally:
        alive.kill()
        alive.wait()
    with atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"z")
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# --------------------------------------------------------------------------- 4. untrusted files

class _Bait:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture
def model_dir(tmp_path):
    """A small saved LSTM model (no training needed to test loading)."""
    from notelm.checkpoint import save_model
    from notelm.encoding import get_representation
    from notelm.models import build_model
    from notelm.models.lstm import LSTMConfig

    vocab = get_representation("seed").vocab(["folk"])
    save_model(build_model(vocab, LSTMConfig(hidden=16, embed_dim=4, cond_dim=4)), tmp_path / "model")
    return tmp_path / "model"


def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("tamper,message", [
    (lambda c: c.clear() or c.update(family="gru"), "unknown model family 'gru'"),
    (lambda c: c.pop("model"), "needs 'model' and 'vocab' objects"),
    (lambda c: c["model"].update(hidden="big"), r"model.hidden = 'big': expected an integer"),
    (lambda c: c["model"].update(hidden=True), r"model.hidden = True: expected an integer"),
    (lambda c: c["model"].update(activation="gelu"), r"unknown model setting\(s\): activation"),
    (lambda c: c["model"].update(hidden=-1), r"model.hidden must be >= 1 \(got -1\)"),
    (lambda c: c["model"].update(family="transformer"), "family 'lstm' but model.family 'transformer'"),
    (lambda c: c["vocab"].update(streams=5), "malformed vocabulary"),
    (lambda c: c["vocab"].update(representation="remi"), "unknown representation 'remi'"),
    (lambda c: c["vocab"]["config"].update(order="backwards"), "seed.order = 'backwards': expected one of 'onset'"),
    (lambda c: c["vocab"]["streams"][0]["tokens"].append("H"),
     r"weights do not match the config: .*shape \(15, 4\) != \(16, 4\)"),
])
def test_tampered_config_is_refused_with_a_clear_error(model_dir, tamper, message):
    from notelm.checkpoint import load_model

    _edit_config(model_dir, tamper)
    with pytest.raises(NotelmError, match=message):
        load_model(model_dir)


def test_a_model_saved_by_older_notelm_still_loads(model_dir):
    """Older notelm saved one flat model config for every family, transformer settings included for an LSTM
    (the shipped default model is such a file); they meant nothing to an LSTM and are dropped."""
    from notelm.checkpoint import load_model

    before = load_model(model_dir).cfg
    _edit_config(model_dir, lambda c: c["model"].update(n_heads=4, context=256, positions="rope", ff_mult=4))
    assert load_model(model_dir).cfg == before


def test_invalid_json_config_is_refused(model_dir):
    from notelm.checkpoint import load_model

    (model_dir / "config.json").write_text('{"family": "lstm",')
    with pytest.raises(NotelmError, match="config.json: not readable JSON"):
        load_model(model_dir)
    (model_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(NotelmError, match="expected a JSON object"):
        load_model(model_dir)


def test_a_config_asking_for_a_huge_network_is_refused_before_allocating(model_dir):
    """2**20 hidden units would be terabytes: refused by the setting's bound; 256 layers of 2**14 (terabytes
    too, within every bound) are refused by comparing the shapes on the meta device first."""
    import resource

    from notelm.checkpoint import load_model

    _edit_config(model_dir, lambda c: c["model"].update(hidden=2**20, embed_dim=2**12))
    with pytest.raises(NotelmError, match=r"config.json: model.hidden must be <= 16384 \(got 1048576\)"):
        load_model(model_dir)
    _edit_config(model_dir, lambda c: c["model"].update(hidden=2**14, embed_dim=2**12, layers=256))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(NotelmError, match="weights do not match the config"):
        load_model(model_dir)
    assert time.perf_counter() - started < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing big was allocated


def test_wrong_or_missing_tensors_are_refused(model_dir):
    from safetensors.torch import load_file, save_file

    from notelm.checkpoint import load_model

    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(iter(weights))
    save_file({**weights, name: weights[name][:-1].contiguous()}, str(model_dir / "model.safetensors"))
    with pytest.raises(NotelmError, match=f"weights do not match the config: {re.escape(name)}: shape"):
        load_model(model_dir)
    save_file({k: v for k, v in weights.items() if k != name}, str(model_dir / "model.safetensors"))
    with pytest.raises(NotelmError, match=f"{re.escape(name)}: missing"):
        load_model(model_dir)
    save_file({**weights, "backdoor": weights[name].clone()}, str(model_dir / "model.safetensors"))
    with pytest.raises(NotelmError, match="backdoor: unexpected"):
        load_model(model_dir)
    save_file(weights, str(model_dir / "model.safetensors"))
    assert load_model(model_dir).family == "lstm"  # the untouched weights load


def test_pickle_files_are_never_unpickled(model_dir, tmp_path):
    from notelm.checkpoint import load_model

    marker = tmp_path / "marker"
    bait = pickle.dumps(_Bait(marker))
    # a run folder holding only a pickled model (what torch.save writes)
    run = tmp_path / "run"
    put(run / "model.pt", bait)
    with pytest.raises(NotelmError, match="never loads pickle files"):
        load_model(run)
    # a pickle disguised as safetensors, in a neural and in an n-gram model folder
    put(model_dir / "model.safetensors", bait)
    with pytest.raises(NotelmError, match="not a readable safetensors file"):
        load_model(model_dir)
    ngram = tmp_path / "ngram"
    vocab = json.loads((model_dir / "config.json").read_text())["vocab"]
    put(ngram / "model.safetensors", bait)
    (ngram / "config.json").write_text(json.dumps({"family": "ngram", "model": {"order": 2}, "vocab": vocab}))
    with pytest.raises(NotelmError, match="not a readable safetensors file"):
        load_model(ngram)
    assert not marker.exists(), "notelm ran code from a pickle"
    pickle.loads(bait)  # the bait is live: unpickling it does run code
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("toml,message", [
    ("[optimizer]\nlr = 0.1\n", r"unknown config section\(s\): optimizer"),
    ("[train]\nlerning_rate = 0.1\n", r"unknown train setting\(s\): lerning_rate; valid settings: objective"),
    ("[train]\nsteps = 'many'\n", r"train.steps = 'many': expected an integer"),
    ("[train]\nsteps = 2.5\n", r"train.steps = 2.5: expected an integer"),
    ("[train]\nsteps = true\n", r"train.steps = True: expected an integer"),
    ("[train]\nsteps = 0\n", r"train.steps must be >= 1 \(got 0\)"),
    ("[train]\ntranspose = 1\n", r"train.transpose = 1: expected true or false"),
    ("[train]\nsplit = 'random'\n", r"train.split = 'random': expected one of 'song', 'window'"),
    ("[model]\ndropout = 'high'\n", r"model.dropout = 'high': expected a number"),
    ("[model]\ndropout = 1.0\n", r"model.dropout must be < 1.0 \(got 1.0\)"),
    ("[model]\nhidden = -3\n", r"model.hidden must be >= 1 \(got -3\)"),
    ("[model]\nfamily = 'transformer'\nhidden = 30\nn_heads = 4\n", r"model.hidden \(30\) must be divisible"),
    ("[data]\nrepresentation = 'midi'\n", "unknown representation 'midi'; choose one of seed, events"),
    ("[data]\ntokens = 3\n", r"unknown data setting\(s\): tokens"),
    ("[data.encoding]\nvelocity_bins = 'x'\n", "events.velocity_bins = 'x': expected an integer"),
    ("[data.encoding]\ncolour = 3\n", r"unknown events setting\(s\): colour"),
    ("[train\nsteps = 3\n", "invalid TOML"),
])
def test_config_files_are_validated_with_clear_messages(tmp_path, toml, message):
    from notelm.config import load_config

    path = put(tmp_path / "run.toml", toml.encode())
    with pytest.raises(NotelmError, match=message):
        load_config(str(path))


# --------------------------------------------------------------------------- 5. resource limits

@pytest.fixture(scope="module")
def ngram_dir(tmp_path_factory):
    """A saved bigram model: the cheapest model generation can drive."""
    from notelm.checkpoint import save_model
    from notelm.encoding import get_representation
    from notelm.models.ngram import NGramModel

    rep = get_representation("events")
    notes = nt.make_notes(np.arange(32) * 0.5, 0.5, 60 + np.arange(32) % 12)
    streams = rep.encode_song(notes)
    model = NGramModel(rep.vocab(), order=2).fit(streams, np.array([0, len(streams["pitch"])]))
    out = tmp_path_factory.mktemp("ngram") / "model"
    save_model(model, out)
    return out


def test_generation_refuses_sizes_beyond_its_limits(ngram_dir, tmp_path, capsys):
    from notelm.checkpoint import load_model
    from notelm.config import SamplingConfig
    from notelm.generate import MAX_EVENTS, MAX_PIECES, sample

    model = load_model(ngram_dir)
    for kwargs, message in (({"n": MAX_PIECES + 1}, f"between 1 and {MAX_PIECES} pieces"), ({"n": 0}, "between 1 and"),
                            ({"length": MAX_EVENTS + 1}, f"between 1 and {MAX_EVENTS} events"),
                            ({"length": 0}, "between 1 and"),
                            ({"seconds": -5.0}, "seconds above 0"), ({"seconds": float("nan")}, "seconds above 0"),
                            ({"cfg": SamplingConfig(temperature=0)}, "temperature must be > 0"),
                            ({"cfg": SamplingConfig(top_p=0)}, "top-p")):
        with pytest.raises(NotelmError, match=message):
            sample(model, **kwargs)
    long_prompt = {name: np.full(MAX_EVENTS + 2, 3, np.int64) for name in model.vocab.names}
    with pytest.raises(NotelmError, match=f"the prompt holds {MAX_EVENTS + 1} events, more than {MAX_EVENTS}"):
        sample(model, n=2, length=4, prompt=long_prompt)
    assert len(sample(model, n=MAX_PIECES, length=3)) == MAX_PIECES  # the limits themselves are fine
    # the command line says the same, on one line, exit status 1
    for args, message in ((["--num", "100000"], "--num 100000: between 1 and"),
                          (["--length", "10000000"], "--length 10000000"),
                          (["--length=-3s"], "seconds above 0")):
        assert main(["generate", "--model", str(ngram_dir), "-o", str(tmp_path / "out"), *args]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def _peak_rss_of_prepare(root: Path, out: Path) -> float:
    """Peak resident memory (MB) of the `notelm prepare` process itself (the workers are bounded by a chunk).

    VmHWM of the process's own memory, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    exec, so a child spawned by a big test process would report the test process's size."""
    code = ("import sys\nfrom notelm.cli import main\n"
            "rc = main(['prepare', sys.argv[1], '-o', sys.argv[2], '-q', '--workers', '2'])\n"
            "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
            "print(rc, status['VmHWM'].split()[0])\n")
    done = subprocess.run([sys.executable, "-c", code, str(root), str(out)], capture_output=True, text=True,
                          timeout=600)
    rc, kb = done.stdout.split()[-2:]
    assert rc == "0", done.stderr
    return int(kb) / 1024


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """20 000 tiny files against 2 000: the file list is streamed and every table is written as it
    grows, so only one hash per distinct song stays in memory (~200 bytes, not the ~1.5 kB of a song row)."""
    big, small = tmp_path / "big", tmp_path / "small"
    for root, n in ((big, 20_000), (small, 2_000)):
        for i in range(n):  # distinct contents: no duplicates, which the manifest would list
            put(root / f"c{i % 20:02d}" / f"f{i:05d}.mid",
                smf([melody([40 + i % 50, 40 + i // 50 % 50, 40 + i // 2500 % 50], step=96)]))
    rss_small = _peak_rss_of_prepare(small, tmp_path / "c_small")
    rss_big = _peak_rss_of_prepare(big, tmp_path / "c_big")
    print(f"peak RSS of prepare: {rss_small:.1f} MB for 2 000 files, {rss_big:.1f} MB for 20 000 files")
    assert Corpus(tmp_path / "c_big").manifest["counts"]["songs"] == 20_000
    assert rss_big - rss_small < 10, f"{rss_small:.1f} MB -> {rss_big:.1f} MB: memory grows with the number of files"
