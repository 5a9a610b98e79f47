"""`notelm prepare` at scale: 100,000 small distinct MIDI files, in one go and as 4 shards plus `merge`.

The files are excerpts of the shared MIDI collections (nottingham, piano_midi_de, pop909): 24
notes from some song, transposed by -6..+6 semitones and re-timed (stretched by 1..1.875), the
k-th excerpt of a song starting 37 k notes in (modulo its length), so contents differ and `prepare`
keeps nearly every file (the few duplicates it finds, passages a song repeats, are reported).
They are written with symusic into a temporary folder, 1,000 per sub-folder.  Then, each
`prepare` in a fresh process:

- one go over all files;
- `--shard K/4` for K = 1..4, then `merge` of the four (the corpus must equal the one-go corpus);
- one go over the first tenth of the files, and a merge of that corpus alone: memory must not
  grow with the number of files.

Each run reports files/s and the peak resident memory of the `prepare` process (VmHWM) and of its
largest worker (the workers are forked from it, so their figure includes the pages they share
with it).  The reference is the same command on a tenth of the files, in the same run.

    python benchmarks/prepare_scale.py           # 100,000 files (a few minutes on 2 cores)
    python benchmarks/prepare_scale.py --quick   # 4,000 files, well under a minute

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COLLECTIONS = ("nottingham", "piano_midi_de", "pop909")
EXCERPT_NOTES = 24
TPQ = 480
PER_FOLDER = 1000

# runs `notelm prepare|merge ARGS` in this process and prints its exit status, its own peak RSS and
# its largest child's (kB): the workers, reaped first so that getrusage counts them
MEASURE = """
import multiprocessing, resource, sys, time
from notelm.cli import main
rc = main(sys.argv[1:])
deadline = time.monotonic() + 30
while multiprocessing.active_children() and time.monotonic() < deadline:
    time.sleep(0.05)
status = dict(line.split(':', 1) for line in open('/proc/self/status'))
print('MEASURED', rc, status['VmHWM'].split()[0], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def load_sources(data: Path, per_collection: int) -> list:
    """(pitch, onset, duration, velocity) arrays in ticks at TPQ of the first track with enough notes,
    for up to ``per_collection`` songs of each shared collection."""
    import numpy as np
    import symusic

    songs = []
    for name in COLLECTIONS:
        files = sorted(p for p in (data / name).rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        for path in files[:per_collection]:
            score = symusic.Score(str(path)).resample(TPQ, min_dur=1)
            for t in score.tracks:
                a = t.notes.numpy()
                if len(a["time"]) >= 4 * EXCERPT_NOTES:
                    order = np.argsort(a["time"], kind="stable")
                    songs.append(tuple(np.asarray(a[k])[order] for k in ("pitch", "time", "duration", "velocity")))
                    break
    if not songs:
        raise SystemExit(f"no MIDI files under {data} ({', '.join(COLLECTIONS)})")
    return songs


def write_files(songs: list, root: Path, n: int) -> float:
    """Write ``n`` distinct excerpts under ``root``; returns the seconds it took."""
    import numpy as np
    import symusic

    started = time.perf_counter()
    for i in range(n):
        song, k = songs[i % len(songs)], i // len(songs)  # the k-th excerpt of this song
        pitch, onset, duration, velocity = song
        start = k * 37 % (len(pitch) - EXCERPT_NOTES)
        shift, stretch = k % 13 - 6, 1 + (k // 13 % 8) * 0.125
        cut = slice(start, start + EXCERPT_NOTES)
        on = np.round((onset[cut] - onset[start]) * stretch).astype(np.int32)
        score = symusic.Score(TPQ)
        score.tempos.append(symusic.Tempo(0, 120.0))
        track = symusic.Track("excerpt", program=0)
        track.notes.extend(symusic.Note.from_numpy(
            time=on, duration=np.maximum(np.round(duration[cut] * stretch), 1).astype(np.int32),
            pitch=np.clip(pitch[cut].astype(np.int16) + shift, 0, 127).astype(np.int8),
            velocity=velocity[cut].astype(np.int8)))
        score.tracks.append(track)
        folder = root / f"part{i // PER_FOLDER:03d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        score.dump_midi(str(folder / f"x{i:06d}.mid"))
    return time.perf_counter() - started


def measured(args: list[str]) -> dict:
    """Run one notelm verb in a fresh process: seconds, peak RSS (MB) of the process and of its largest child."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    line = next((x for x in done.stdout.splitlines() if x.startswith("MEASURED ")), None)
    if line is None or line.split()[1] != "0":
        raise SystemExit(f"notelm {' '.join(args[:1])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    _, _, own, children = line.split()
    return {"seconds": seconds, "rss_mb": int(own) / 1024, "worker_rss_mb": int(children) / 1024,
            "summary": done.stdout.splitlines()[-2] if len(done.stdout.splitlines()) > 1 else ""}


def corpus_identity(path: Path) -> tuple:
    """What must agree between the one-go corpus and the merged shards: counts, and the songs by hash."""
    import numpy as np

    from notelm.corpus import Corpus

    corpus = Corpus(path)
    c = corpus.manifest["counts"]
    order = np.argsort(corpus.songs["sha"])
    return (c["files"], c["songs"], c["notes"], c["duplicates"], c["failed"],
            tuple(corpus.songs["sha"][order]), tuple(corpus.songs["n_notes"][order]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=None, help="files to write (default 100,000; 4,000 with --quick)")
    ap.add_argument("--workers", type=int, default=None, help="prepare's worker processes (default: cores)")
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--tmp", default=None, help="where the files and corpora go (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    n = a.files or (4_000 if a.quick else 100_000)
    small = max(n // 10 // PER_FOLDER, 1) * PER_FOLDER
    workers = ["--workers", str(a.workers)] if a.workers else []

    with tempfile.TemporaryDirectory(dir=a.tmp, prefix="notelm-scale-") as tmp:
        tmp = Path(tmp)
        songs = load_sources(Path(a.data), 40 if a.quick else 400)
        write_s = write_files(songs, tmp / "music", n)
        print(f"wrote {n:,} excerpts of {len(songs)} songs in {write_s:.1f} s ({n / write_s:,.0f} files/s)")
        parts = sorted(str(p) for p in (tmp / "music").iterdir())
        runs = {"one go": measured(["prepare", str(tmp / "music"), "-o", str(tmp / "one"), "-q", *workers])}
        for k in range(1, 5):
            runs[f"shard {k}/4"] = measured(["prepare", str(tmp / "music"), "-o", str(tmp / f"shard{k}"), "-q",
                                             "--shard", f"{k}/4", *workers])
        runs["merge"] = measured(["merge", *(str(tmp / f"shard{k}") for k in range(1, 5)), "-o", str(tmp / "merged")])
        runs["one go, a tenth"] = measured(["prepare", *parts[:small // PER_FOLDER], "-o", str(tmp / "small"), "-q",
                                            *workers])
        runs["merge, a tenth"] = measured(["merge", str(tmp / "small"), "-o", str(tmp / "small_merged")])
        one, merged = corpus_identity(tmp / "one"), corpus_identity(tmp / "merged")
        print(runs["one go"]["summary"])
    return report(n, small, write_s, runs, one, merged)


def report(n: int, small: int, write_s: float, runs: dict, one: tuple, merged: tuple) -> dict:
    shards = [runs[f"shard {k}/4"] for k in range(1, 5)]
    sharded_s = sum(r["seconds"] for r in shards) + runs["merge"]["seconds"]
    result = {
        "files": n,
        "write_files_per_s": round(n / write_s, 1),
        "one_go_files_per_s": round(n / runs["one go"]["seconds"], 1),
        "one_go_peak_rss_mb": round(runs["one go"]["rss_mb"], 1),
        "one_go_worker_peak_rss_mb": round(runs["one go"]["worker_rss_mb"], 1),
        "shard_files_per_s": round(n / sum(r["seconds"] for r in shards), 1),
        "shard_peak_rss_mb": round(max(r["rss_mb"] for r in shards), 1),
        "shard_worker_peak_rss_mb": round(max(r["worker_rss_mb"] for r in shards), 1),
        "merge_s": round(runs["merge"]["seconds"], 1),
        "merge_peak_rss_mb": round(runs["merge"]["rss_mb"], 1),
        "merge_small_peak_rss_mb": round(runs["merge, a tenth"]["rss_mb"], 1),
        "sharded_with_merge_files_per_s": round(n / sharded_s, 1),
        "small_files": small,
        "small_files_per_s": round(small / runs["one go, a tenth"]["seconds"], 1),
        "small_peak_rss_mb": round(runs["one go, a tenth"]["rss_mb"], 1),
        "rss_growth_mb": round(runs["one go"]["rss_mb"] - runs["one go, a tenth"]["rss_mb"], 1),
        "songs": one[1], "notes": one[2], "duplicates": one[3], "failed": one[4],
        "merged_equals_one_go": one == merged,
    }
    print(f"{'run':<18}{'files':>9}{'seconds':>9}{'files/s':>9}{'peak RSS MB':>13}{'worker MB':>11}")
    for name, r in runs.items():
        files = small if name.endswith("a tenth") else n // 4 if name.startswith("shard") else n
        print(f"{name:<18}{files:>9,}{r['seconds']:>9.1f}{files / r['seconds']:>9,.0f}"
              f"{r['rss_mb']:>13.1f}{r['worker_rss_mb']:>11.1f}")
    print(f"{n:,} files: one go {result['one_go_files_per_s']:,.0f} files/s, 4 shards + merge "
          f"{result['sharded_with_merge_files_per_s']:,.0f} files/s; peak RSS {result['one_go_peak_rss_mb']} MB "
          f"against {result['small_peak_rss_mb']} MB for {small:,} files; merged shards equal the one-go corpus: "
          f"{result['merged_equals_one_go']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
