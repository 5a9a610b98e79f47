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


def cmd_train(a):
    from notelm.train import load_config, train

    if a.resume and (a.config or a.set):
        from notelm.io import NotelmError

        raise NotelmError("--resume continues with the run's saved configuration; drop --config/--set")
    # with --init the model and encoding come from the checkpoint; --config/--set give the training settings
    run = load_config(a.config, a.set or [])
    train(a.corpus, run, a.output, resume=a.resume, init=a.init, progress=not a.quiet)


def cmd_plot(a):
    from notelm.train import plot

    print(f"wrote {plot(a.run, a.output)}")


def cmd_render(a):
    from notelm.render import render_file

    written = render_file(Path(a.midi), out_dir=a.output, wav=a.wav, png=a.png, soundfont=a.soundfont)
    if "wav" in written:
        w = written["wav"]
        print(f"wrote {w['path']} ({w['path'].stat().st_size / 1e6:.1f} MB, {w['seconds']:.1f} s, "
              f"RMS {w['rms']:.3f}, peak {w['peak']:.2f})")
    if "png" in written:
        print(f"wrote {written['png']} ({written['png'].stat().st_size / 1e3:.0f} kB piano roll)")


def cmd_encode(a):
    from notelm.encoding.cache import encode_command

    encode_command(a.corpus, a.repr, a.set, force=a.force, progress=not a.quiet)


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

    s = sub.add_parser("train", help="train a model on a corpus (LSTM or transformer; presets in configs/)",
                       description="Train on the corpus's train split with random crops and the loss at every position, "
                                   "stop early on the valid split, write checkpoints to RUN_DIR. Presets: seed (the original "
                                   "experiment), seed_fullseq, lstm, transformer.")
    s.add_argument("corpus", metavar="CORPUS_DIR")
    s.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    s.add_argument("--config", metavar="NAME_OR_TOML", help="a preset name (seed, seed_fullseq, lstm, transformer) or a TOML file")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value, e.g. train.steps=500 (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    s.add_argument("--init", metavar="RUN_OR_MODEL", help="fine-tune: start from this trained model (its representation and vocabulary)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("plot", help="draw a run's learning curves to PNG")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("-o", "--output", metavar="PNG", help="default: RUN_DIR/learning_curves.png")
    s.set_defaults(func=cmd_plot)

    s = sub.add_parser("render", help="render a MIDI file to WAV (SoundFont synthesizer) and/or a piano-roll PNG",
                       description="Render a MIDI file to FILE.wav (General MIDI SoundFont) and/or FILE.png (piano "
                                   "roll), beside the file or in -o DIR. With neither --wav nor --png, both.")
    s.add_argument("midi", metavar="FILE.mid")
    s.add_argument("--wav", action="store_true", help="write a 16-bit 44.1 kHz stereo WAV")
    s.add_argument("--png", action="store_true", help="write a piano-roll PNG")
    s.add_argument("-o", "--output", metavar="DIR", help="output folder (default: beside the MIDI file)")
    s.add_argument("--soundfont", metavar="SF2", help="SoundFont (.sf2/.sf3); default $NOTELM_SOUNDFONT, then the "
                                                      "venv's share/notelm, then /usr/share/sounds/sf2")
    s.set_defaults(func=cmd_render)

    s = sub.add_parser("encode", help="turn a corpus into event streams (cached next to the corpus)",
                       description="Encode every song of a corpus as integer event streams and cache them in "
                                   "CORPUS_DIR/encoded/REPR-HASH/ (memory-mapped .npy files). The same settings reuse the "
                                   "cache. Representations: seed (the original experiment: pitch class + 5 durations; "
                                   "settings durations=drop|nearest, order=onset|parts) and events (time shift, pitch, "
                                   "duration, optional velocity and program; settings steps_per_quarter, max_shift, "
                                   "linear_durations, max_duration, durations_per_octave, velocity_bins, program, drums).")
    s.add_argument("corpus", metavar="CORPUS_DIR")
    s.add_argument("--repr", default="events", metavar="NAME", help="seed or events (default events)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="an encoder setting, e.g. velocity_bins=8 (repeatable)")
    s.add_argument("--force", action="store_true", help="encode again even if a cache exists")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_encode)
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
