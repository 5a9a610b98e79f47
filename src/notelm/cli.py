"""The ``notelm`` command: one thin sub-command per verb, no logic beyond arguments.

Each ``cmd_<verb>`` parses nothing itself and calls exactly one function of a
stage module.  Heavy imports (torch, music21, matplotlib) happen inside the
commands so that ``notelm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
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

PREPARE_EXIT = """every file that cannot be kept is listed with a one-line reason ("failed: PATH: REASON"),
counted in the summary line and stored in CORPUS_DIR/manifest.json (failures).

exit status:
  0  the corpus holds at least one song (some files may have failed: see the summary)
  1  nothing was written: an error stopped the run (bad option, missing source, existing corpus)
  2  the corpus was written but holds no song: every file failed (or none was found)
"""

RESUME_HINTS = {"prepare": "; run the same command again to continue where it stopped",
                "reproduce": "; run the same command again to continue where it stopped"}

# --------------------------------------------------------------------------- verbs


def cmd_demo(a):
    from notelm.demo import demo

    demo(a.output, train=a.train, num=a.num, length=a.length, seed=a.seed, minutes=a.minutes, progress=not a.quiet)


def cmd_prepare(a):
    from notelm.corpus import parse_shard, parse_split, prepare

    manifest = prepare(a.sources, Path(a.output), workers=a.workers, shard=parse_shard(a.shard),
                       split=parse_split(a.split), metadata_csv=a.metadata, max_file_mb=a.max_file_mb, force=a.force,
                       progress=not a.quiet)
    c = manifest["counts"]
    if not c["songs"]:  # exit status 2: see PREPARE_EXIT
        why = f"{c['failed']} of {c['files']} files failed" if c["files"] else "no music file found"
        print(f"notelm prepare: the corpus holds no song ({why})", file=sys.stderr)
        return 2
    return 0


def cmd_merge(a):
    from notelm.corpus import merge

    merge([Path(p) for p in a.corpora], Path(a.output), force=a.force)


def cmd_stats(a):
    from notelm.stats import stats

    stats(a.corpus, out_dir=a.output, top=a.top, progress=not a.quiet)


def cmd_encode(a):
    from notelm.encoding import encode

    encode(a.corpus, a.repr, a.set, force=a.force, progress=not a.quiet)


def cmd_train(a):
    from notelm.config import load_config
    from notelm.train import resume_config, train

    # --resume: the saved config, raising train.steps / train.time_limit at most;
    # --init: the model and encoding come from that model, --config/--set give the training settings
    run = resume_config(a.output, a.config, a.set or []) if a.resume else load_config(a.config, a.set or [])
    try:
        train(a.corpus, run, a.output, resume=a.resume, init=a.init, progress=not a.quiet)
    except KeyboardInterrupt:
        if (Path(a.output) / "checkpoint" / "config.json").exists():
            again = f"notelm train {shlex.quote(a.corpus)} -o {shlex.quote(a.output)} --resume"
            print(f"notelm train: interrupted; continue from the last checkpoint with: {again}", file=sys.stderr)
        else:
            print("notelm train: interrupted before the first checkpoint; run the same command again to start over",
                  file=sys.stderr)
        return 130


def cmd_plot(a):
    from notelm.plot import plot

    print(f"wrote {plot(a.run, a.output)}")


def cmd_evaluate(a):
    from notelm.evaluate import EvalOptions, evaluate

    options = EvalOptions(corpus=a.corpus, split=a.split, context=a.context, transpose_average=a.transpose_average,
                          ensemble=",".join(a.ensemble) if a.ensemble else None,
                          ngram_blend=a.ngram_blend, song_cache=a.song_cache, song_cache_fit=a.song_cache_fit,
                          generate=a.generate,
                          generate_length=a.generate_length, collection=a.collection,
                          baselines_from_train=a.baselines_from_train)
    evaluate(a.run, options, out_dir=a.output, progress=not a.quiet)


def cmd_compare(a):
    from notelm.evaluate import compare

    compare(a.runs, out=a.output)


def cmd_reproduce(a):
    from notelm.reproduce import reproduce

    reproduce(work=a.work, quick=a.quick, steps=a.steps, time_limit=a.time_limit, bach=a.bach, piano=a.piano,
              progress=not a.quiet)


def cmd_generate(a):
    from notelm.config import SamplingConfig
    from notelm.generate import OutputOptions, PieceOptions, PromptOptions, generate, parse_length

    if a.run:
        raise NotelmError(f"the model is given with --model: notelm generate --model {shlex.quote(a.run)} ...")
    if a.list_conditions:
        print(model_conditions(a.model))
        return 0
    length, seconds = parse_length(a.length)
    pieces = PieceOptions(num=a.num, length=length, seconds=seconds, condition=a.condition)
    prompt = PromptOptions(prompt=a.prompt, prompt_notes=a.prompt_notes, prompt_bars=a.prompt_bars,
                           prompt_from_test=a.prompt_from_test, corpus=a.corpus)
    sampling = SamplingConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(SamplingConfig)})
    output = OutputOptions(wav=a.wav, png=a.png, qpm=a.qpm, meter=a.meter, key=a.key, soundfont=a.soundfont,
                           force=a.force)
    generate(a.model, a.output, pieces, prompt, sampling, output)


def model_conditions(model: str | None) -> str:
    """The styles a model (default: the shipped one) can write in: read from its config.json, no weights."""
    from notelm.checkpoint import default_model_path, read_config, resolve
    from notelm.encoding.vocab import Vocab
    from notelm.generate import describe_conditions

    directory = resolve(model or default_model_path())
    return f"{model or 'the shipped model'}: " + describe_conditions(Vocab.from_json(read_config(directory)["vocab"]))


def cmd_render(a):
    from notelm.render import render_file

    log = print
    written = render_file(Path(a.midi), out_dir=a.output, wav=a.wav, png=a.png, soundfont=a.soundfont)
    if "wav" in written:
        w = written["wav"]
        log(f"wrote {w['path']} ({w['path'].stat().st_size / 1e6:.1f} MB, {w['seconds']:.1f} s, "
            f"RMS {w['rms']:.3f}, peak {w['peak']:.2f})")
    if "png" in written:
        log(f"wrote {written['png']} ({written['png'].stat().st_size / 1e3:.0f} kB piano roll)")


def cmd_serve(a):
    from notelm.web.app import serve

    serve(a.model or [], host=a.host, port=a.port)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notelm", description="Learn music from symbolic scores and write new music.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"notelm {_version()}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for add in (_demo_parser, _prepare_parser, _merge_parser, _stats_parser, _encode_parser, _train_parser,
                _plot_parser, _evaluate_parser, _compare_parser, _reproduce_parser, _generate_parser, _render_parser,
                _serve_parser):
        s = add(sub)
        s.add_argument("-q", "--quiet", action="store_true", help="no progress bars (summaries and errors still print)")
    return p


def _demo_parser(sub):
    s = sub.add_parser("demo", help="hear it now: pieces from the shipped model as MIDI + WAV + piano roll",
                       description="Generate one piece per style (collection) the model shipped in the package knows "
                                   "and render them as MIDI, WAV and piano-roll PNG, each with its style's time "
                                   "signature, key and tracks. With --train, run the whole path on music21's Bach "
                                   "chorales first: prepare -> train (a few minutes) -> evaluate -> generate.")
    s.add_argument("-o", "--output", default="demo", metavar="DIR", help="where everything goes (default: demo)")
    s.add_argument("--train", action="store_true",
                   help="train a model on the built-in corpus instead of using the shipped one")
    s.add_argument("--minutes", type=float, default=3.0, help="training time for --train (default 3)")
    s.add_argument("--num", type=int, default=1, help="pieces to write per style (default 1)")
    s.add_argument("--length", default="20s", help="per piece: events (e.g. 256) or seconds (e.g. 20s); default 20s")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.set_defaults(func=cmd_demo)
    return s


def _prepare_parser(sub):
    s = sub.add_parser("prepare", help="read MIDI / MusicXML / kern / ABC files into a corpus",
                       description="Read music files into a corpus directory (note table, song table, splits).\n"
                                   "A SOURCE is a file, a folder (recursive), a glob in quotes, or music21:NAME for "
                                   "a\ncollection of music21's bundled corpus (e.g. music21:bach). Write SOURCE=NAME "
                                   "to name the\ncollection of all its files (a model is conditioned on it: "
                                   "--condition collection=NAME);\nthe folder under the source (composer, tune book) "
                                   "stays each song's group. Example:\n  notelm prepare music21:bach=bach "
                                   "data/nottingham=nottingham data/pop909=pop909 -o corpus\nA killed prepare "
                                   "resumes when run again.", epilog=PREPARE_EXIT,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("sources", nargs="+", metavar="SOURCE[=NAME]")
    s.add_argument("-o", "--output", required=True, metavar="CORPUS_DIR")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: number of cores)")
    s.add_argument("--shard", metavar="K/N", help="process only the K-th of N interleaved slices of the sorted files")
    s.add_argument("--split", default="80/10/10", metavar="TRAIN/VALID/TEST",
                   help="song-level split fractions (default 80/10/10)")
    s.add_argument("--metadata", metavar="CSV",
                   help="CSV with columns path,collection setting each file's group (and its collection "
                        "where the source is not named)")
    s.add_argument("--max-file-mb", type=float, default=64.0, help="skip files larger than this (default 64)")
    s.add_argument("--force", action="store_true", help="rebuild an existing corpus")
    s.set_defaults(func=cmd_prepare)
    return s


def _merge_parser(sub):
    s = sub.add_parser("merge", help="join corpora (e.g. shards from --shard) into one",
                       description="Join several corpora into one; identical songs are kept once.")
    s.add_argument("corpora", nargs="+", metavar="CORPUS_DIR")
    s.add_argument("-o", "--output", required=True, metavar="CORPUS_DIR")
    s.add_argument("--force", action="store_true", help="replace an existing output corpus")
    s.set_defaults(func=cmd_merge)
    return s


def _stats_parser(sub):
    s = sub.add_parser("stats", help="what is in a corpus: sizes, histograms, most frequent n-grams, token counts",
                       description="Write CORPUS_DIR/stats/stats.md (or -o DIR) with PNG plots: songs, notes and "
                                   "hours per collection and split; histograms of pitch, pitch class, duration, "
                                   "inter-onset interval, polyphony, notes and tracks per song, programs and tempo; "
                                   "the most frequent n-grams (n = 2..6) of pitch classes, durations and (pitch "
                                   "class, duration) pairs of the seed representation; token counts per stream of "
                                   "every representation.")
    s.add_argument("corpus", metavar="CORPUS_DIR")
    s.add_argument("-o", "--output", metavar="DIR", help="report folder (default: CORPUS_DIR/stats)")
    s.add_argument("--top", type=int, default=10, metavar="K", help="n-grams and tokens listed per table (default 10)")
    s.set_defaults(func=cmd_stats)
    return s


def _encode_parser(sub):
    from notelm.encoding import REPRESENTATIONS

    names = ", ".join(REPRESENTATIONS)
    settings = "; ".join(f"{name}: {', '.join(f.name for f in dataclasses.fields(cls.settings_class))}"
                         for name, cls in REPRESENTATIONS.items())
    s = sub.add_parser("encode", help="turn a corpus into event streams (cached next to the corpus)",
                       description="Encode every song of a corpus as integer event streams and cache them in "
                                   "CORPUS_DIR/encoded/REPR-HASH/ (memory-mapped .npy files). The same settings "
                                   f"reuse the cache. Representations: {names}. Their settings: {settings}.")
    s.add_argument("corpus", metavar="CORPUS_DIR")
    s.add_argument("--repr", default="events", metavar="NAME", help=f"the representation: {names} (default events)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an encoder setting, e.g. velocity_bins=8 (repeatable)")
    s.add_argument("--force", action="store_true", help="encode again even if a cache exists")
    s.set_defaults(func=cmd_encode)
    return s


def _train_parser(sub):
    presets = ", ".join(sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.toml")))
    s = sub.add_parser("train", help="train a model on a corpus (LSTM or transformer; presets in configs/)",
                       description="Train on the corpus's train split with random crops and the loss at every "
                                   "position, stop early on the valid split, write checkpoints to RUN_DIR. "
                                   f"Presets: {presets}.")
    s.add_argument("corpus", metavar="CORPUS_DIR")
    s.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    s.add_argument("--config", metavar="NAME_OR_TOML", help=f"a preset name ({presets}) or a TOML file")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. train.steps=500 (repeatable)")
    s.add_argument("--resume", action="store_true",
                   help="continue a killed or finished run from its last checkpoint; --set may raise train.steps "
                        "and train.time_limit")
    s.add_argument("--init", metavar="RUN_OR_MODEL", help="fine-tune: start from this trained model (its "
                                                           "representation and vocabulary); `default` is the model "
                                                           "shipped with notelm")
    s.set_defaults(func=cmd_train)
    return s


def _plot_parser(sub):
    s = sub.add_parser("plot", help="draw a run's learning curves to PNG",
                       description="Draw the learning curves of a run (bits per event and accuracy per stream, "
                                   "train and valid) from its metrics.jsonl.")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("-o", "--output", metavar="PNG", help="default: RUN_DIR/learning_curves.png")
    s.set_defaults(func=cmd_plot)
    return s


def _evaluate_parser(sub):
    from notelm.corpus import SPLITS

    s = sub.add_parser("evaluate", help="held-out accuracy, bits per event and perplexity beside the baselines",
                       description="Score a trained run on the songs of a split (every event after BOS): per stream "
                                   "accuracy, bits per event and perplexity, beside the majority and stratified "
                                   "dummies and n-grams of orders 2-5 (per stream and joint) fitted on the train "
                                   "split, the best n-gram chosen on the valid split. Writes evaluation.md, .json and "
                                   ".png to RUN_DIR/eval (or -o). A run trained on the random window split is scored "
                                   "on its test windows.")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--corpus", metavar="CORPUS_DIR", help="corpus to score on (default: the run's own, from run.json)")
    s.add_argument("--split", default="test", metavar="SPLIT",
                   help=f"songs to score: {', '.join(SPLITS)} or all (all: for a corpus the model never saw); "
                        "default test")
    s.add_argument("--context", type=int, metavar="N",
                   help="each prediction sees at most N previous events (default: the whole song)")
    s.add_argument("--transpose-average", action="store_true",
                   help="average the predictions of the 12 transpositions of the input (where they fit)")
    s.add_argument("--ensemble", action="append", metavar="RUN_DIR",
                   help="another run trained on the same corpus (repeatable): each prediction is the mean of "
                        "every run's probabilities, an exact mixture")
    s.add_argument("--ngram-blend", type=float, default=0.0, metavar="W",
                   help="mix each prediction with the best n-gram's (fitted on the train split), weight W "
                        "(default 0: off)")
    s.add_argument("--song-cache", type=float, default=0.0, metavar="W",
                   help="blend each prediction with what followed earlier occurrences of its context in the same "
                        "song, weight W per matched event, at most 0.9 (default 0: off)")
    s.add_argument("--song-cache-fit", action="store_true",
                   help="piano rolls (the steps representation): the per-step metric's song cache gets a share per "
                        "match length, fitted on the valid split, and reads up to 48 tokens back (instead of "
                        "--song-cache)")
    s.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also sample N pieces (and N from the best n-gram) and compare their music metrics with "
                        "real songs")
    s.add_argument("--generate-length", type=int, default=256, metavar="EVENTS",
                   help="events per sampled piece (default 256)")
    s.add_argument("--collection", metavar="NAME",
                   help="score only the songs of this collection; the baselines are fitted on its train split "
                        "(where the baselines' corpus has it), --generate samples in its style")
    s.add_argument("--baselines-from-train", action="store_true",
                   help="fit the baselines on the train split of the run's own training corpus, not on the corpus "
                        "scored: the out-of-domain comparison in one command, e.g. evaluate RUN --corpus OTHER "
                        "--split all --baselines-from-train")
    s.add_argument("-o", "--output", metavar="DIR", help="report folder (default: RUN_DIR/eval)")
    s.set_defaults(func=cmd_evaluate)
    return s


def _compare_parser(sub):
    s = sub.add_parser("compare", help="several runs' evaluations side by side",
                       description="A Markdown table of the evaluations (notelm evaluate) of several runs, printed "
                                   "and written to -o (default comparison.md).")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or eval folders, or evaluation.json)")
    s.add_argument("-o", "--output", metavar="FILE.md", help="where the table goes (default: comparison.md)")
    s.set_defaults(func=cmd_compare)
    return s


def _reproduce_parser(sub):
    s = sub.add_parser("reproduce", help="reproduce the original experiment (seed representation, Bach + "
                                         "piano-midi.de)",
                       description="Prepare music21:bach and piano_midi_de, then for the original's random window "
                                   "split and a song-level split train the original LSTM (configs/seed.toml) and "
                                   "notelm's best seed model (configs/seed_fullseq.toml), evaluate them beside the "
                                   "stratified and majority dummies and the best n-gram, and write a Markdown table "
                                   "+ JSON. The same as benchmarks/reproduce.py.")
    s.add_argument("--work", default="work/reproduce", metavar="DIR",
                   help="corpora, runs and results go here (default work/reproduce)")
    s.add_argument("--quick", action="store_true", help="a few files and tiny training budgets: a smoke test")
    s.add_argument("--steps", type=int, help="training steps per model (default: the presets')")
    s.add_argument("--time-limit", type=float, help="seconds of training per model (default 600; quick 20)")
    s.add_argument("--bach", default="music21:bach", metavar="SOURCE", help="the Bach source (default music21:bach)")
    s.add_argument("--piano", default=None, metavar="FOLDER",
                   help="the piano_midi_de folder (default ../shared/data/piano_midi_de)")
    s.set_defaults(func=cmd_reproduce)
    return s


def _generate_parser(sub):
    from notelm.generate import DEFAULT_PROMPT_NOTES

    s = sub.add_parser("generate", help="write new pieces with a trained model (MIDI, and WAV / piano roll on "
                                        "request)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sample new pieces from a model (the shipped default model if --model is not "
                                   "given), all pieces\nas one batch. Continue a MIDI file with --prompt, or an "
                                   "excerpt of a held-out song with\n--prompt-from-test. Each file keeps the form: "
                                   "the time signature, key and tempo of the\nprompt, else of the style "
                                   "(--condition), and one track per part the model knows.\nEvery run draws a new "
                                   "random seed unless --seed is given; the seed is printed and saved in\n"
                                   "OUT_DIR/generation.json, and the same seed with the same settings writes the "
                                   "same files again.\nA folder that holds an earlier generation is refused unless "
                                   "--force replaces it.")
    s.add_argument("run", nargs="?", help=argparse.SUPPRESS)  # a model given without --model: answered with a hint
    s.add_argument("--model", metavar="RUN_OR_MODEL", help="a run directory or model directory (default: the "
                                                            "shipped model)")
    s.add_argument("-o", "--output", default="out", metavar="OUT_DIR", help="where the files go (default: out)")
    s.add_argument("--force", action="store_true", help="replace an earlier generation in OUT_DIR (all its files)")
    s.add_argument("--num", type=int, default=4, help="pieces to write (default 4)")
    s.add_argument("--length", default="256", help="new notes per piece after the prompt (e.g. 256), or seconds "
                                                   "of new music (e.g. 30s); default 256")
    _sampling_flags(s)
    s.add_argument("--prompt", metavar="FILE.mid", help="continue this MIDI file")
    s.add_argument("--prompt-notes", "--prompt-events", dest="prompt_notes", type=int, metavar="N",
                   help=f"continue the first N notes of the prompt (default {DEFAULT_PROMPT_NOTES}, or all the "
                        "notes of --prompt-bars)")
    s.add_argument("--prompt-bars", type=float, help="continue the first N bars of the prompt")
    s.add_argument("--prompt-from-test", type=int, metavar="K",
                   help="continue the start of the K-th held-out song (as --prompt-notes or --prompt-bars bound it)")
    s.add_argument("--corpus", metavar="CORPUS_DIR", help="the corpus for --prompt-from-test (default: the run's)")
    s.add_argument("--condition", metavar="collection=NAME",
                   help="write in the style of a collection the model was trained on (or group=NAME for a model "
                        "conditioned on groups; a bare NAME works too); the names are listed below for --model")
    s.add_argument("--list-conditions", action="store_true",
                   help="print the collections the model can write in (with their meter, key, tempo, parts) and "
                        "exit")
    s.add_argument("--qpm", type=float, help="tempo of the output (default: the prompt's, else the style's, else 120)")
    s.add_argument("--meter", metavar="N/D", help="time signature of the output, e.g. 6/8 (default: the prompt's, "
                                                  "else the style's most common)")
    s.add_argument("--key", metavar="KEY", help="key signature of the output, e.g. D, Bb or b (minor: lower case) "
                                                "(default: the prompt's, else the style's most common)")
    s.add_argument("--wav", action="store_true", help="also render audio through a General MIDI SoundFont")
    s.add_argument("--png", action="store_true", help="also draw a piano roll")
    s.add_argument("--soundfont", metavar="SF2", help="SoundFont for --wav (default: the one installed with notelm)")
    s.set_defaults(func=cmd_generate)
    return s


def _sampling_flags(s) -> None:
    """The flags of ``config.SamplingConfig``: one per setting, with its documentation and default."""
    from notelm.config import SamplingConfig

    for f in dataclasses.fields(SamplingConfig):
        shown = "" if f.default is None else f" (default {f.default})"  # a None default says itself in the doc
        s.add_argument(SamplingConfig.label(f.name), type=f.metadata["kind"], default=f.default,
                       help=f"{f.metadata['doc']}{shown}")


def _render_parser(sub):
    s = sub.add_parser("render", help="render a MIDI file to WAV (SoundFont synthesizer) and/or a piano-roll PNG",
                       description="Render a MIDI file to DIR/FILE.wav (General MIDI SoundFont) and/or "
                                   "DIR/FILE.png (piano roll), DIR being -o or the current folder. With neither "
                                   "--wav nor --png, both.")
    s.add_argument("midi", metavar="FILE.mid")
    s.add_argument("--wav", action="store_true", help="write a 16-bit 44.1 kHz stereo WAV")
    s.add_argument("--png", action="store_true", help="write a piano-roll PNG")
    s.add_argument("-o", "--output", default=".", metavar="DIR", help="output folder (default: the current folder)")
    s.add_argument("--soundfont", metavar="SF2", help="SoundFont (.sf2/.sf3); default $NOTELM_SOUNDFONT, then the "
                                                      "venv's share/notelm, then /usr/share/sounds/sf2")
    s.set_defaults(func=cmd_render)
    return s


def _serve_parser(sub):
    s = sub.add_parser("serve", help="a local web page: generate, listen, look, download",
                       description="Serve a web page to generate music in the browser: pick a model and a "
                                   "collection, set temperature / top-k / top-p / length / seed, optionally upload a "
                                   "MIDI prompt, then see the piano roll, play the audio and download MIDI and WAV. "
                                   "Listens on 127.0.0.1 only unless --host says otherwise.")
    s.add_argument("--model", action="append", metavar="RUN_OR_MODEL",
                   help="a run or model directory to offer (repeatable; the shipped default model is offered too)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    s.set_defaults(func=cmd_serve)
    return s


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("notelm")
    except Exception:
        return "unknown"


def _generate_help_names(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``notelm generate [--model M] --help`` ends with the conditions of that model (or the shipped one)."""
    if not argv or argv[0] != "generate" or not {"-h", "--help"} & set(argv):
        return
    model = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "--model"), None)
    model = model or next((x.split("=", 1)[1] for x in argv if x.startswith("--model=")), None)
    try:
        names = model_conditions(model)
    except (NotelmError, OSError, ValueError) as e:
        names = f"(cannot read the conditions of {model or 'the shipped model'}: {e})"
    for action in parser._subparsers._group_actions:  # the one sub-command action
        action.choices["generate"].epilog = names


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _generate_help_names(parser, argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except (NotelmError, OSError, MemoryError) as e:  # bad input, full disk, read-only folder: one line
        print(f"notelm {args.verb}: error: {_one_line_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.verb, "")
        print(f"notelm {args.verb}: interrupted{hint}", file=sys.stderr)
        return 130
    return int(result or 0)


def _one_line_error(e: BaseException) -> str:
    """The message of an error as one printable line.  Disk errors name the file and say that finished
    work is kept: every write is atomic, so the same command run again goes on from where it was."""
    import errno
    import os

    from notelm.io import printable

    if isinstance(e, NotelmError):
        return printable(e)
    if isinstance(e, MemoryError):
        return "out of memory"
    why = os.strerror(e.errno) if e.errno else e.strerror or str(e)  # not pyarrow's "Error writing bytes..."
    where = " -> ".join(printable(f) for f in (e.filename, e.filename2) if f is not None)
    text = f"{where}: {why}" if where else printable(why)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text} (free some space and run the same command again: finished work is kept)"
    if e.errno == errno.EROFS:
        return f"{text} (choose an output folder that can be written)"
    return text


if __name__ == "__main__":
    sys.exit(main())
