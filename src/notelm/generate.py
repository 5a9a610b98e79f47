"""Generation: prompts, sampling, many pieces as one batch, files you can open.

The sampler drives any ``NextEventModel`` (n-gram, LSTM, transformer) through
``begin`` / ``stream_logprobs`` / ``advance``: one model step per new event,
one stream at a time inside the event (ordered heads see what was already
chosen).  All pieces of a call are sampled together as one batch.

Each stream's log-probabilities go through the chain of logits processors of
``sampling.py`` (temperature, top-k, top-p, and on the representation's pitch
stream a repetition penalty and ``max_repeat``, which forbids the same pitch
more than N times in a row: the classic failure of LSTM generators is one note
repeated forever).  Special ids (PAD, BOS, EOS) are never sampled: a piece is
exactly ``length`` events long, or as many as it takes to reach ``seconds``.

``generate`` (the verb) takes three small option objects beside the sampling
settings: ``PieceOptions`` (how many, how long, which collection),
``PromptOptions`` (what to continue) and ``OutputOptions`` (which files).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from notelm import notes as nt
from notelm.checkpoint import default_model_path, load_model
from notelm.config import SamplingConfig
from notelm.corpus import Corpus
from notelm.encoding import from_vocab
from notelm.encoding.vocab import BOS, UNCONDITIONED
from notelm.form import beats_per_bar, part_programs, piece_meta
from notelm.io import NotelmError, read_json, write_json
from notelm.metrics import repeated_note_share
from notelm.names import plural
from notelm.sampling import apply_processors, build_processors, draw
from notelm.settings import Settings, setting

MAX_PIECES = 256  # refuse bigger batches: memory grows with pieces x length
MAX_EVENTS = 20_000
SECONDS_CHECK_EVERY = 32  # events between checks whether every piece has reached its length in seconds

__all__ = ["MAX_PIECES", "MAX_EVENTS", "SamplingConfig", "Piece", "PieceOptions", "PromptOptions", "OutputOptions",
           "sample", "draw", "prompt_from_notes", "write_pieces", "generate", "parse_length", "default_model_path",
           "condition_name", "describe_conditions"]


@dataclass
class Piece:
    streams: dict[str, np.ndarray]  # the whole piece as ids, BOS first (prompt included)
    prompt_events: int
    notes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- sampling


def sample(model, n: int = 4, length: int = 256, seconds: float | None = None,
           prompt: dict[str, np.ndarray] | None = None, cond: int = UNCONDITIONED, cfg: SamplingConfig | None = None,
           qpm: float = 120.0) -> list[Piece]:
    """Sample ``n`` pieces; each continues ``prompt`` (ids framed with BOS, no EOS) or starts from BOS."""
    cfg = (cfg or SamplingConfig()).validate()
    if not 1 <= n <= MAX_PIECES:
        raise NotelmError(f"--num {n}: between 1 and {MAX_PIECES} pieces per call")
    if seconds is not None and not seconds >= 0:  # negative or NaN
        raise NotelmError(f"--length {seconds}s: a number of seconds above 0")
    limit = MAX_EVENTS if seconds else length
    if not 1 <= limit <= MAX_EVENTS:
        raise NotelmError(f"--length {length}: between 1 and {MAX_EVENTS} events per piece")
    names = model.vocab.names
    if prompt is None:
        prompt = {name: np.array([BOS]) for name in names}
    if len(prompt[names[0]]) - 1 > MAX_EVENTS:  # memory grows with pieces x (prompt + length) too
        raise NotelmError(f"the prompt holds {len(prompt[names[0]]) - 1} events, more than {MAX_EVENTS}; "
                          "take a part of it with --prompt-events or --prompt-bars")
    if hasattr(model, "use_precision"):  # neural models: the arithmetic of their forward steps
        model.use_precision(cfg.precision, "generate")
    with model.session(n):
        return _Sampler(model, cfg, seconds, qpm).run(n, limit, prompt, cond)


class _Sampler:
    """One batch of pieces: the model's state, the ids so far, the processor chain of every stream."""

    def __init__(self, model, cfg: SamplingConfig, seconds: float | None, qpm: float):
        self.model, self.seconds, self.qpm = model, seconds, qpm
        self.names = model.vocab.names
        self.rep = from_vocab(model.vocab)
        self.rng = np.random.default_rng(cfg.seed)
        chain = build_processors(cfg)
        pitch = self.rep.pitch_stream
        self.chains = [chain if name == pitch else [p for p in chain if not p.pitch_only] for name in self.names]
        self.skip = self.rep.rest_ids()

    def run(self, n: int, limit: int, prompt: dict[str, np.ndarray], cond: int) -> list[Piece]:
        names = self.names
        batch_prompt = {name: np.repeat(np.asarray(prompt[name], np.int64)[None], n, 0) for name in names}
        state = self.model.begin(batch_prompt, np.full(n, cond, np.int64))
        first = batch_prompt[names[0]].shape[1]
        out = np.zeros((len(names), n, first + limit), np.int64)
        for k, name in enumerate(names):
            out[k, :, :first] = batch_prompt[name]
        t = first
        while t < first + limit:
            state = self._step(state, out, t)
            t += 1
            if self.seconds and (t - first) % SECONDS_CHECK_EVERY == 0 and self._long_enough(out, t):
                break
        return [Piece({name: out[k, i, :t] for k, name in enumerate(names)}, first - 1) for i in range(n)]

    def _step(self, state, out: np.ndarray, t: int):
        """Draw event ``t`` of every piece, stream after stream, and advance the model over it."""
        chosen = []
        for k in range(len(self.names)):
            lp = self.model.stream_logprobs(state, k, chosen).astype(np.float64)
            ids = draw(apply_processors(self.chains[k], lp, out[k, :, :t], self.skip), self.rng)
            chosen.append(ids)
            out[k, :, t] = ids
        return self.model.advance(state, dict(zip(self.names, chosen)))

    def _long_enough(self, out: np.ndarray, t: int) -> bool:
        for i in range(out.shape[1]):
            notes = self.rep.decode({name: out[k, i, :t] for k, name in enumerate(self.names)})
            if not nt.num_notes(notes) or _seconds_of(notes, self.qpm) < self.seconds:
                return False
        return True


def _seconds_of(notes: nt.Notes, qpm: float) -> float:
    return float((notes["onset"] + notes["duration"]).max()) * 60.0 / qpm if nt.num_notes(notes) else 0.0


# --------------------------------------------------------------------------- prompts


def prompt_from_notes(vocab, notes: nt.Notes, events: int | None = None, bars: float | None = None,
                      beats_per_bar: float = 4.0) -> dict[str, np.ndarray]:
    """The start of a piece as model ids (BOS + events, no EOS)."""
    rep = from_vocab(vocab)
    if bars is not None:
        notes = nt.take(notes, notes["onset"] < bars * beats_per_bar)
    streams = rep.encode_song(notes)
    stop = len(streams[vocab.names[0]]) - 1  # drop EOS
    if events is not None:
        stop = min(stop, 1 + events)
    if stop <= 1:
        raise NotelmError("the prompt holds no events (is the file empty, or --prompt-events/--prompt-bars 0?)")
    return {name: np.asarray(streams[name][:stop], np.int64) for name in vocab.names}


# --------------------------------------------------------------------------- files


def write_pieces(pieces: list[Piece], vocab, out_dir, qpm: float = 120.0, wav: bool = False, png: bool = False,
                 prefix: str = "piece", soundfont: str | None = None, seconds: float | None = None,
                 log=print, meta: nt.SongMeta | None = None, programs: np.ndarray | None = None) -> list[dict]:
    """Decode and write every piece as MIDI (+ WAV, + PNG), cut at ``seconds`` if given; one report row per piece.

    ``meta``: the tempo, time signature and key every file carries (``form.piece_meta``; default: the
    style of all the model's training music, at ``qpm``).  ``programs``: the instrument of each part
    (track) where the model has no program stream (default: the style's, ``form.part_programs``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = from_vocab(vocab)
    meta = meta if meta is not None else piece_meta(None, vocab.form_of(None), qpm=qpm)
    qpm = meta.first_qpm
    if programs is None:
        programs = part_programs(None, vocab.form_of(None), vocab.config.get("parts", 0))
    rows = []
    for i, piece in enumerate(pieces):
        notes = rep.decode(piece.streams)
        if "program" not in vocab.names and nt.num_notes(notes):
            track = np.minimum(notes["track"].astype(np.int64), len(programs) - 1)
            notes["program"] = np.asarray(programs, np.int64)[track].astype(notes["program"].dtype)
        if seconds:
            end = seconds * qpm / 60.0
            notes = nt.take(notes, notes["onset"] < end)
            notes["duration"] = np.minimum(notes["duration"], end - notes["onset"]).astype(notes["duration"].dtype)
        piece.notes = notes
        stem = out_dir / f"{prefix}_{i:02d}"
        rows.append(_write_piece(piece, notes, stem, len(piece.streams[vocab.names[0]]) - 1, meta, wav, png, soundfont))
        log(_piece_line(stem.name, rows[-1]))
    return rows


def _write_piece(piece: Piece, notes: nt.Notes, stem: Path, events: int, meta: nt.SongMeta, wav: bool, png: bool,
                 soundfont: str | None) -> dict:
    qpm = meta.first_qpm
    nt.write_midi(notes, stem.with_suffix(".mid"), qpm=qpm, meta=meta)
    share = repeated_note_share(notes)
    tracks = np.unique(np.stack([notes["track"], notes["program"]], 1), axis=0) if nt.num_notes(notes) else []
    row = {"midi": str(stem.with_suffix(".mid")), "events": int(events), "prompt_events": piece.prompt_events,
           "notes": nt.num_notes(notes), "seconds": round(_seconds_of(notes, qpm), 2),
           "repeated_note_share": None if math.isnan(share) else round(share, 3),
           "time_signature": meta.time_signature, "key": meta.key, "qpm": round(qpm, 2),
           "tracks": [{"track": int(t), "program": int(p)} for t, p in tracks]}
    if wav or png:
        from notelm import render

        if wav:
            info = render.render_wav(notes, stem.with_suffix(".wav"), qpm=qpm, soundfont=soundfont, meta=meta)
            row.update(wav=str(stem.with_suffix(".wav")), wav_rms=round(info["rms"], 4))
        if png:
            render.render_pianoroll(notes, stem.with_suffix(".png"), title=stem.name, qpm=qpm, meta=meta)
            row["png"] = str(stem.with_suffix(".png"))
    return row


def _piece_line(name: str, row: dict) -> str:
    share = "-" if row["repeated_note_share"] is None else f"{row['repeated_note_share']:.0%}"
    form = f", {row['time_signature']}" + (f" in {row['key']}" if row["key"] else "") + \
        f", {plural(len(row['tracks']), 'track')}"
    return (f"{name}: {plural(row['notes'], 'note')}, {row['seconds']:.1f} s{form}, repeated notes {share}"
            + (f", WAV RMS {row['wav_rms']:.3f}" if "wav_rms" in row else ""))


# --------------------------------------------------------------------------- the verb


@dataclass
class PieceOptions(Settings):
    """How many pieces ``notelm generate`` writes, how long, in which style."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "generate"
    num: int = setting(4, f"pieces to write (1..{MAX_PIECES})")
    length: int = setting(256, f"events per piece (1..{MAX_EVENTS}), when seconds is not given")
    seconds: float = setting(None, "length of each piece in seconds instead of events", kind=float)
    condition: str = setting(None, "collection=NAME (or group=NAME, or NAME): write in the style of a collection "
                                   "the model knows (--list-conditions shows them)", kind=str)


@dataclass
class PromptOptions(Settings):
    """What the pieces continue: a MIDI file, an excerpt of a held-out song, or nothing."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "generate"
    prompt: str = setting(None, "a MIDI file to continue", kind=str)
    prompt_events: int = setting(None, "take only the first N events of the prompt", kind=int)
    prompt_bars: float = setting(None, "take only the first N bars of the prompt", kind=float)
    prompt_from_test: int = setting(None, "continue an excerpt of the K-th held-out (test) song", kind=int)
    corpus: str = setting(None, "the corpus of --prompt-from-test (default: the run's)", kind=str)

    def check(self) -> None:
        if self.prompt and self.prompt_from_test is not None:
            raise NotelmError("give either --prompt or --prompt-from-test, not both")


@dataclass
class OutputOptions(Settings):
    """Which files besides the MIDI: audio, piano roll; and at what tempo."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "generate"
    wav: bool = setting(False, "also render audio through a General MIDI SoundFont")
    png: bool = setting(False, "also draw a piano roll")
    qpm: float = setting(None, "tempo of the output (default: the prompt's, else the style's, else 120)", kind=float)
    meter: str = setting(None, "time signature of the output, e.g. 6/8 (default: the prompt's, else the style's "
                               "most common)", kind=str)
    key: str = setting(None, "key signature of the output, e.g. D or b (minor) (default: the prompt's, else the "
                             "style's most common)", kind=str)
    soundfont: str = setting(None, "SoundFont for --wav (default: the one installed with notelm)", kind=str)


def parse_length(text: str) -> tuple[int, float | None]:
    """'256' -> 256 events; '30s' -> 30 seconds (events 0)."""
    try:
        if text.endswith("s"):
            return 0, float(text[:-1])
        return int(text), None
    except ValueError:
        raise NotelmError(f"--length {text!r}: a number of events (e.g. 256) or of seconds (e.g. 30s)") from None


def generate(model_path=None, out_dir="out", pieces: PieceOptions | None = None, prompt: PromptOptions | None = None,
             sampling: SamplingConfig | None = None, output: OutputOptions | None = None, log=print) -> dict:
    """The ``notelm generate`` verb: load a model, build the prompt, sample, write files and a report."""
    started = time.perf_counter()
    pieces, prompt = (pieces or PieceOptions()).validate(), (prompt or PromptOptions()).validate()
    sampling, output = (sampling or SamplingConfig()).validate(), (output or OutputOptions()).validate()
    model_path = model_path or default_model_path()
    model = load_model(model_path)
    name = condition_name(model.vocab, pieces.condition)
    cond = model.vocab.condition_id(name)
    prompt_ids, prompt_notes, prompt_meta = _prompt_ids(model_path, model.vocab, prompt)
    style = model.vocab.form_of(name)
    meta = piece_meta(prompt_meta, style, output.meter, output.key, output.qpm)
    programs = part_programs(prompt_notes, style, model.vocab.config.get("parts", 0))
    qpm = meta.first_qpm
    batch = sample(model, pieces.num, pieces.length, pieces.seconds, prompt_ids, cond, sampling, qpm)
    rows = write_pieces(batch, model.vocab, out_dir, qpm=qpm, wav=output.wav, png=output.png,
                        soundfont=output.soundfont, seconds=pieces.seconds, log=log, meta=meta, programs=programs)
    report = {"model": str(model_path), "family": model.family, "condition": pieces.condition, "qpm": qpm,
              "time_signature": meta.time_signature, "key": meta.key,
              "sampling": sampling.to_dict(), "pieces": rows, "seconds": round(time.perf_counter() - started, 2)}
    write_json(Path(out_dir) / "generation.json", report)
    log(f"generated {plural(pieces.num, 'piece')} with {model.family} in {report['seconds']:.1f} s -> {out_dir}")
    return report


def condition_name(vocab, condition: str | None) -> str | None:
    """The condition a ``--condition`` names: ``collection=NAME`` / ``group=NAME`` (the label the model was
    conditioned on) or a bare ``NAME``; checked against the model's names."""
    if condition is None:
        return None
    key, _, value = condition.rpartition("=")
    if key and key != vocab.condition_label:
        labels = "collections" if vocab.condition_label == "collection" else f"{vocab.condition_label}s"
        raise NotelmError(f"--condition {condition!r}: this model is conditioned on {labels}: "
                          f"--condition {vocab.condition_label}=NAME (--list-conditions shows them)")
    if not value:
        raise NotelmError(f"--condition {condition!r}: expected {vocab.condition_label}=NAME")
    vocab.condition_id(value)  # an unknown name: a one-line error listing the known ones
    return value


def describe_conditions(vocab) -> str:
    """The styles a model can write in, one line each: name, then its form (meter, key, tempo, parts)."""
    if not vocab.conditions:
        return "this model was trained without conditions: it writes in the style of all its training music"
    lines = [f"this model is conditioned on {vocab.condition_label}s: --condition {vocab.condition_label}=NAME"]
    for name in vocab.conditions:
        form = vocab.form_of(name)
        shape = ", ".join(x for x in (form.get("time_signature", ""), form.get("key", "") and f"key {form['key']}",
                                      form.get("qpm") and f"{form['qpm']:g} qpm",
                                      form.get("parts") and plural(form["parts"], "part")) if x)
        lines.append(f"  {name}" + (f"  ({shape})" if shape else ""))
    return "\n".join(lines)


def _prompt_ids(model_path, vocab, options: PromptOptions) -> tuple[dict | None, nt.Notes | None, nt.SongMeta | None]:
    """(prompt ids, the prompt's notes, its metadata), or (None, None, None) without a prompt."""
    if options.prompt:
        try:
            notes, meta = nt.read_midi(options.prompt)
        except Exception as e:
            raise NotelmError(f"{options.prompt}: not a readable MIDI file ({e})") from None
        ids = prompt_from_notes(vocab, notes, options.prompt_events, options.prompt_bars, beats_per_bar(meta))
        return ids, notes, meta
    if options.prompt_from_test is not None:
        return _test_prompt(model_path, options, vocab)
    return None, None, None


def _test_prompt(model_path, options: PromptOptions, vocab):
    corpus_path = options.corpus
    if corpus_path is None:
        run_json = Path(model_path) / "run.json"
        if not run_json.exists():
            raise NotelmError("--prompt-from-test needs --corpus CORPUS_DIR (the model's run does not name its corpus)")
        corpus_path = read_json(run_json)["corpus"]
    corpus = Corpus(corpus_path)
    test = corpus.split_ids("test")
    k = options.prompt_from_test
    if not 0 <= k < len(test):
        raise NotelmError(f"--prompt-from-test {k}: the corpus has {plural(len(test), 'test song')} "
                          f"(0..{len(test) - 1})")
    song = int(test[k])
    meta = corpus.meta(song)
    notes = corpus.notes(song)
    return prompt_from_notes(vocab, notes, options.prompt_events or 32, options.prompt_bars,
                             beats_per_bar(meta)), notes, meta
