"""The ``notelm`` command: one thin sub-command per verb, no logic beyond arguments.

Each ``cmd_<verb>`` parses nothing itself and calls exactly one function of a
stage module.  Heavy imports (torch, music21, matplotlib) happen inside the
commands so that ``notelm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from notelm.io import NotelmError

EPILOG = """typical flow:
  notelm prepare music21:bach -o corpus      # files -> corpus
  notelm stats corpus                         # what is in it
  notelm train corpus --config lstm -o run    # corpus -> model
  notelm evaluate run                         # held-out accuracy, bits per event
  notelm generate --model run -o out --wav --png
"""


# --------------------------------------------------------------------------- verbs

def cmd_prepare(a):
    from notelm.corpus import parse_shard, parse_split, prepare

    prepare(a.sources, Path(a.output), workers=a.workers, shard=parse_shard(a.shard), split=parse_split(a.split),
            metadata_csv=a.metadata, max_file_mb=a.max_file_mb, force=a.force, progress=not a.quiet)


def cmd_merge(a):
    from notelm.corpus import merge

    merge([Path(p) for p in a.corpora], Path(a.output), force=a.force)


# --------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notelm", description="Learn music from symbolic scores and write new music.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"notelm {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    s = sub.add_parser("prepare", help="read MIDI / MusicXML / kern / ABC files into a corpus",
                       description="Read music files into a corpus directory (note table, song table, splits). "
                                   "A SOURCE is a file, a folder (recursive), a glob in quotes, or music21:NAME for a "
                                   "collection of music21's bundled corpus (e.g. music21:bach). A killed prepare resumes "
                                   "when run again.")
    s.add_argument("sources", nargs="+", metavar="SOURCE")
    s.add_argument("-o", "--output", required=True, metavar="CORPUS_DIR")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: number of cores)")
    s.add_argument("--shard", metavar="K/N", help="process only the K-th of N interleaved slices of the sorted file list")
    s.add_argument("--split", default="80/10/10", metavar="TRAIN/VALID/TEST", help="song-level split fractions (default 80/10/10)")
    s.add_argument("--metadata", metavar="CSV", help="CSV with columns path,collection overriding the folder-derived collection")
    s.add_argument("--max-file-mb", type=float, default=64.0, help="skip files larger than this (default 64)")
    s.add_argument("--force", action="store_true", help="rebuild an existing corpus")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("merge", help="join corpora (e.g. shards from --shard) into one",
                       description="Join several corpora into one; identical songs are kept once.")
    s.add_argument("corpora", nargs="+", metavar="CORPUS_DIR")
    s.add_argument("-o", "--output", required=True, metavar="CORPUS_DIR")
    s.add_argument("--force", action="store_true", help="replace an existing output corpus")
    s.set_defaults(func=cmd_merge)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("notelm")
    except Exception:
        return "unknown"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except NotelmError as e:
        print(f"notelm {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"notelm {args.verb}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
