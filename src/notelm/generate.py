"""Generation: prompts, sampling, many pieces as one batch, files you can open.

The sampler drives any ``NextEventModel`` (n-gram, LSTM, transformer) through
``begin`` / ``stream_logprobs`` / ``advance``: one model step per new event,
one stream at a time inside the event (ordered heads see what was already
chosen).  All pieces of a call are sampled together as one batch.

Each stream's log-probabilities go through the chain of logits processors of
``sampling.py`` (temperature, top-k, top-p, and on the representation's pitch
stream a repetition penalty and ``max_repeat``, which forbids the same pitch
more than N times in a row: the classic failure of LSTM generators is one note
repeated forever).  Special ids (PAD, BOS, EOS) are never sampled.

Length means one thing everywhere (the command line, the web page, the docs):
what comes *after* the prompt.  ``generate`` asks for ``length`` new notes (the
rest events that carry a long silence do not count) or ``seconds`` of new
music; ``sample`` can also count events, as ``evaluate`` does.  A prompt is
bounded the same way everywhere too: by default its first
``DEFAULT_PROMPT_NOTES`` notes.

``generate`` (the verb) takes three small option objects beside the sampling
settings: ``PieceOptions`` (how many, how long, which collection),
``PromptOptions`` (what to continue) and ``OutputOptions`` (which files).  Its
seed is a new random one unless given, printed and saved in generation.json so
that a run can be repeated exactly.  It never mixes two runs in one folder: a
folder that holds an earlier generation is refused unless ``force`` says to
replace it (its pieces, audio and piano rolls all go).
"""

from __future__ import annotations

import math
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from notelm import notes as nt
from notelm.checkpoint import default_model_path, load_model, read_run
from notelm.config import MAX_SEED, SamplingConfig
from notelm.copyguard import LONGEST, guard_in_use
from notelm.corpus import Corpus
from notelm.encoding import from_vocab
from notelm.encoding.vocab import BOS, UNCONDITIONED
from notelm.form import beats_per_bar, part_programs, piece_meta
from notelm.guidance import Guided
from notelm.io import NotelmError, printable, write_json
from notelm.metrics import repeated_note_share
from notelm.names import plural
from notelm.sampling import apply_processors, build_processors, draw, with_model_floor
from notelm.settings import Settings, setting

MAX_PIECES = 256  # refuse bigger batches: memory grows with pieces x length
MAX_EVENTS = 20_000
SECONDS_CHECK_EVERY = 32  # events between checks whether every piece has reached its length in seconds
DEFAULT_PROMPT_NOTES = 64  # a prompt is continued from its first 64 notes unless told otherwise (CLI and web alike)
UNITS = ("events", "notes")
PIECE_FILE = re.compile(r"piece_\d+\.(mid|wav|png)")  # what write_pieces names the files of a generation
REPORT = "generation.json"
ROLL_SIZE = (1200, 500, 1.0)  # piano roll width and height in px at 100 dpi, and a scale (a screen's pixel ratio)

__all__ = ["MAX_PIECES", "MAX_EVENTS", "DEFAULT_PROMPT_NOTES", "SamplingConfig", "Piece", "PieceOptions",
           "PromptOptions", "OutputOptions", "sample", "draw", "prompt_from_notes", "write_pieces", "generate",
           "parse_length", "default_model_path", "new_seed", "continuation_start", "condition_name",
           "describe_conditions"]


@dataclass
class Piece:
    streams: dict[str, np.ndarray]  # the whole piece as ids, BOS first (prompt included)
    prompt_events: int
    notes: dict = field(default_factory=dict)
    prompt_notes: int = 0  # how many of ``notes`` (the first ones) come from the prompt
    start: float = 0.0  # the beat where the music after the prompt starts (0 without a prompt)


def new_seed() -> int:
    """A fresh random seed in the range every notelm seed lives in (printed, so that it can be given again)."""
    return secrets.randbelow(MAX_SEED + 1)


# --------------------------------------------------------------------------- sampling


def sample(model, n: int = 4, length: int = 256, seconds: float | None = None,
           prompt: dict[str, np.ndarray] | None = None, cond: int = UNCONDITIONED, cfg: SamplingConfig | None = None,
           qpm: float = 120.0, unit: str = "events") -> list[Piece]:
    """Sample ``n`` pieces; each continues ``prompt`` (ids framed with BOS, no EOS) or starts from BOS.

    Each piece gets ``length`` new events after the prompt (``unit="notes"``: new notes, so that rest
    events do not count), or ``seconds`` of new music after the prompt when ``seconds`` is given.
    """
    cfg = (cfg or SamplingConfig()).validate()
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r}: expected one of {UNITS}")
    if not 1 <= n <= MAX_PIECES:
        raise NotelmError(f"--num {n}: between 1 and {MAX_PIECES} pieces per call")
    if seconds is not None and not seconds > 0:  # negative, 0 or NaN
        raise NotelmError(f"--length {seconds}s: a number of seconds above 0")
    if not seconds and not 1 <= length <= MAX_EVENTS:
        raise NotelmError(f"--length {length}: between 1 and {MAX_EVENTS} {unit} per piece")
    names = model.vocab.names
    if prompt is None:
        prompt = {name: np.array([BOS]) for name in names}
    if len(prompt[names[0]]) - 1 > MAX_EVENTS:  # memory grows with pieces x (prompt + length) too
        raise NotelmError(f"the prompt holds {len(prompt[names[0]]) - 1} events, more than {MAX_EVENTS}; "
                          "take a part of it with --prompt-notes or --prompt-bars")
    cfg = with_model_floor(cfg, model)  # sample from what the model guesses, not from its floor
    guard = guard_in_use(model, cfg)
    if hasattr(model, "use_precision"):  # neural models: the arithmetic of their forward steps
        model.use_precision(cfg.precision, "generate")
    if cfg.guidance != 1.0 and cond != UNCONDITIONED:
        model = Guided(model, cfg.guidance)
    with model.session(n):
        return _Sampler(model, cfg, seconds, qpm, guard).run(n, length, prompt, cond, unit)


class _Sampler:
    """One batch of pieces: the model's state, the ids so far, the processor chain of every stream."""

    def __init__(self, model, cfg: SamplingConfig, seconds: float | None, qpm: float, guard=None):
        self.model, self.seconds, self.qpm, self.guard = model, seconds, qpm, guard
        self.names = model.vocab.names
        self.rep = from_vocab(model.vocab)
        self.rng = np.random.default_rng(cfg.seed)
        chain = build_processors(cfg)
        pitch = self.rep.pitch_stream
        self.pitch_index = self.names.index(pitch)
        self.chains = [chain if name == pitch else [p for p in chain if not p.pitch_only] for name in self.names]
        self.skip = self.rep.rest_ids()
        self.prompt_notes = 0

    def run(self, n: int, length: int, prompt: dict[str, np.ndarray], cond: int, unit: str) -> list[Piece]:
        names = self.names
        batch_prompt = {name: np.repeat(np.asarray(prompt[name], np.int64)[None], n, 0) for name in names}
        self.prompt_notes = nt.num_notes(self.rep.decode(prompt)) if len(prompt[names[0]]) > 1 else 0
        state = self.model.begin(batch_prompt, np.full(n, cond, np.int64))
        first = batch_prompt[names[0]].shape[1]
        fixed = unit == "events" and not self.seconds  # every piece ends after exactly `length` events
        # counting notes: rests are rare (a silence of over a bar), so twice the events bounds the work of a
        # model that writes little else; such a piece ends short, and its report row says how many notes it has
        cap = first + (length if fixed else MAX_EVENTS if self.seconds else min(MAX_EVENTS, 2 * length + 64))
        out = np.zeros((len(names), n, min(cap, first + length + length // 4 + 64)), np.int64)
        for k, name in enumerate(names):
            out[k, :, :first] = batch_prompt[name]
        ends, new_notes = np.full(n, -1), np.zeros(n, np.int64)  # counting notes: where each piece has enough
        t = first
        while t < cap:
            if t == out.shape[2]:
                out = np.concatenate([out, np.zeros_like(out[:, :, :min(out.shape[2], cap - t)])], 2)
            state = self._step(state, out, t)
            t += 1
            if self.seconds:
                if (t - first) % SECONDS_CHECK_EVERY == 0 and self._long_enough(out, t):
                    break
            elif unit == "notes":
                new_notes += ~np.isin(out[self.pitch_index, :, t - 1], self.skip)
                ends[(ends < 0) & (new_notes >= length)] = t
                if (ends >= 0).all():
                    break
        ends[ends < 0] = t
        return [Piece({name: out[k, i, :ends[i]] for k, name in enumerate(names)}, first - 1) for i in range(n)]

    def _step(self, state, out: np.ndarray, t: int):
        """Draw event ``t`` of every piece, stream after stream, and advance the model over it."""
        chosen = []
        last = len(self.names) - 1
        for k in range(len(self.names)):
            lp = self.model.stream_logprobs(state, k, chosen).astype(np.float64)
            guarded = self.guard is not None and k == last
            ids = self._draw(k, lp.copy() if guarded else lp, out, t)  # processors may write into lp
            chosen.append(ids)
            if guarded:  # an event that would repeat a training song too long gets its last value again
                chosen[k] = self.guard.without_copies(out[:, :, :t], chosen, lp,
                                                      lambda rows, lp_rows, k=k: self._draw(k, lp_rows, out, t, rows))
            out[k, :, t] = chosen[k]
        return self.model.advance(state, dict(zip(self.names, chosen)))

    def _draw(self, k: int, lp: np.ndarray, out: np.ndarray, t: int, rows=slice(None)) -> np.ndarray:
        """Stream ``k``'s values of event ``t`` for the pieces ``rows``, from their log-probabilities ``lp``."""
        return draw(apply_processors(self.chains[k], lp, out[k, rows, :t], self.skip), self.rng)

    def _long_enough(self, out: np.ndarray, t: int) -> bool:
        """Whether every piece holds ``seconds`` of music after its prompt."""
        for i in range(out.shape[1]):
            notes = self.rep.decode({name: out[k, i, :t] for k, name in enumerate(self.names)})
            if nt.num_notes(notes) <= self.prompt_notes:
                return False
            start = continuation_start(notes, self.prompt_notes) if self.prompt_notes else 0.0
            if _seconds_of(nt.take(notes, np.arange(self.prompt_notes, nt.num_notes(notes))), self.qpm,
                           start) < self.seconds:
                return False
        return True


def _seconds_of(notes: nt.Notes, qpm: float, start: float = 0.0) -> float:
    """Seconds from beat ``start`` to the end of the last note."""
    return float((notes["onset"] + notes["duration"]).max() - start) * 60.0 / qpm if nt.num_notes(notes) else 0.0


def continuation_start(notes: nt.Notes, prompt_notes: int) -> float:
    """The beat where the music after a prompt of ``prompt_notes`` notes starts: the onset of the first
    note after them (decoding keeps the order of the events, and the prompt's notes come first); the
    end of the prompt when nothing follows it."""
    if nt.num_notes(notes) > prompt_notes:
        return float(notes["onset"][prompt_notes])
    return float((notes["onset"] + notes["duration"]).max()) if nt.num_notes(notes) else 0.0


# --------------------------------------------------------------------------- prompts


def prompt_from_notes(vocab, notes: nt.Notes, max_notes: int | None = None, bars: float | None = None,
                      beats_per_bar: float = 4.0) -> dict[str, np.ndarray]:
    """The start of a piece as model ids (BOS + events, no EOS): its first ``bars`` bars and at most its
    first ``max_notes`` notes (with the rest events among them)."""
    rep = from_vocab(vocab)
    if bars is not None:
        notes = nt.take(notes, notes["onset"] < bars * beats_per_bar)
    streams = rep.encode_song(notes)
    stop = len(streams[vocab.names[0]]) - 1  # drop EOS
    if max_notes is not None:
        counted = np.cumsum(~np.isin(streams[rep.pitch_stream][1:stop], rep.rest_ids()))  # notes up to each event
        stop = min(stop, 1 + int(np.searchsorted(counted, max_notes)) + 1) if max_notes > 0 else 1
    if stop <= 1:
        raise NotelmError("the prompt holds no notes (is the file empty, or --prompt-notes/--prompt-bars 0?)")
    return {name: np.asarray(streams[name][:stop], np.int64) for name in vocab.names}


# --------------------------------------------------------------------------- files


def write_pieces(pieces: list[Piece], vocab, out_dir, qpm: float = 120.0, wav: bool = False, png: bool = False,
                 prefix: str = "piece", soundfont: str | None = None, seconds: float | None = None,
                 log=print, roll: tuple[int, int, float] = ROLL_SIZE, meta: nt.SongMeta | None = None,
                 programs: np.ndarray | None = None) -> list[dict]:
    """Decode and write every piece as MIDI (+ WAV, + PNG), cut ``seconds`` after its prompt if given; one
    report row per piece.  The piano roll marks where the music after the prompt starts.

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
        if piece.prompt_events:
            prompt = {name: ids[: piece.prompt_events + 1] for name, ids in piece.streams.items()}
            piece.prompt_notes = nt.num_notes(rep.decode(prompt))
            piece.start = continuation_start(notes, piece.prompt_notes)
        if seconds:
            end = piece.start + seconds * qpm / 60.0
            notes = nt.take(notes, notes["onset"] < end)
            notes["duration"] = np.minimum(notes["duration"], end - notes["onset"]).astype(notes["duration"].dtype)
        piece.notes = notes
        stem = out_dir / f"{prefix}_{i:02d}"
        rows.append(_write_piece(piece, notes, stem, len(piece.streams[vocab.names[0]]) - 1, meta, wav,
                                 png and roll, soundfont))
        log(_piece_line(stem.name, rows[-1]))
    return rows


def _write_piece(piece: Piece, notes: nt.Notes, stem: Path, events: int, meta: nt.SongMeta, wav: bool,
                 roll: tuple[int, int, float] | None, soundfont: str | None) -> dict:
    """The files of one piece (a piano roll of ``roll``'s size unless it is None) and its report row."""
    qpm = meta.first_qpm
    nt.write_midi(notes, stem.with_suffix(".mid"), qpm=qpm, meta=meta)
    share = repeated_note_share(notes)
    total = nt.num_notes(notes)
    tracks = np.unique(np.stack([notes["track"], notes["program"]], 1), axis=0) if total else []
    row = {"midi": str(stem.with_suffix(".mid")), "events": int(events), "prompt_events": piece.prompt_events,
           "notes": total, "prompt_notes": piece.prompt_notes, "new_notes": total - piece.prompt_notes,
           "seconds": round(_seconds_of(notes, qpm), 2),
           "new_seconds": round(_seconds_of(nt.take(notes, np.arange(piece.prompt_notes, total)), qpm, piece.start), 2),
           "repeated_note_share": None if math.isnan(share) else round(share, 3),
           "time_signature": meta.time_signature, "key": meta.key, "qpm": round(qpm, 2),
           "tracks": [{"track": int(t), "program": int(p)} for t, p in tracks]}
    if piece.prompt_events:
        row["continues_at_beat"] = round(piece.start, 4)
    if wav or roll:
        from notelm import render

        if wav:
            info = render.render_wav(notes, stem.with_suffix(".wav"), qpm=qpm, soundfont=soundfont, meta=meta)
            row.update(wav=str(stem.with_suffix(".wav")), wav_rms=round(info["rms"], 4))
        if roll:
            width, height, scale = roll
            render.render_pianoroll(notes, stem.with_suffix(".png"), title=stem.name, qpm=qpm, meta=meta,
                                    prompt_end=piece.start if piece.prompt_events else None, width=width,
                                    height=height, scale=scale)
            row["png"] = str(stem.with_suffix(".png"))
    return row


def _piece_line(name: str, row: dict) -> str:
    share = "-" if row["repeated_note_share"] is None else f"{row['repeated_note_share']:.0%}"
    counts = plural(row["new_notes"], "new note" if row["prompt_notes"] else "note")
    if row["prompt_notes"]:
        counts = f"{plural(row['prompt_notes'], 'prompt note')} + {counts}"
    form = f", {row['time_signature']}" + (f" in {row['key']}" if row["key"] else "") + \
        f", {plural(len(row['tracks']), 'track')}"
    return (f"{name}: {counts}, {row['seconds']:.1f} s{form}, repeated notes {share}"
            + (f", WAV RMS {row['wav_rms']:.3f}" if "wav_rms" in row else ""))


# --------------------------------------------------------------------------- the verb


@dataclass
class PieceOptions(Settings):
    """How many pieces ``notelm generate`` writes, how long, in which style."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "generate"
    num: int = setting(4, f"pieces to write (1..{MAX_PIECES})")
    length: int = setting(256, f"new notes per piece after the prompt (1..{MAX_EVENTS}), when seconds is not given")
    seconds: float = setting(None, "seconds of new music per piece after the prompt, instead of notes", kind=float)
    condition: str = setting(None, "collection=NAME (or group=NAME, or NAME): write in the style of a collection "
                                   "the model knows (--list-conditions shows them)", kind=str)


@dataclass
class PromptOptions(Settings):
    """What the pieces continue: a MIDI file, an excerpt of a held-out song, or nothing."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "generate"
    prompt: str = setting(None, "a MIDI file to continue", kind=str)
    prompt_notes: int = setting(None, f"continue the first N notes of the prompt (default {DEFAULT_PROMPT_NOTES}, "
                                      "or all of --prompt-bars)", kind=int, minimum=1)
    prompt_bars: float = setting(None, "continue the first N bars of the prompt", kind=float, above=0)
    prompt_from_test: int = setting(None, "continue an excerpt of the K-th held-out (test) song", kind=int)
    corpus: str = setting(None, "the corpus of --prompt-from-test (default: the run's)", kind=str)

    def check(self) -> None:
        if self.prompt and self.prompt_from_test is not None:
            raise NotelmError("give either --prompt or --prompt-from-test, not both")

    def max_notes(self) -> int | None:
        """The bound on the prompt's notes: the one given, else the default unless bars bound it instead."""
        if self.prompt_notes is not None:
            return self.prompt_notes
        return None if self.prompt_bars is not None else DEFAULT_PROMPT_NOTES


@dataclass
class OutputOptions(Settings):
    """Which files besides the MIDI: audio, piano roll; at what tempo; whether an earlier run may go."""

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
    force: bool = setting(False, "replace an earlier generation in the output folder (all of its files)")

    def check(self) -> None:
        if self.qpm is not None:
            nt.check_qpm(self.qpm, "--qpm")


def parse_length(text: str) -> tuple[int, float | None]:
    """'256' -> 256 new notes; '30s' -> 30 seconds (notes 0)."""
    try:
        if text.endswith("s"):
            return 0, float(text[:-1])
        return int(text), None
    except ValueError:
        raise NotelmError(f"--length {text!r}: a number of notes (e.g. 256) or of seconds (e.g. 30s)") from None


def generate(model_path=None, out_dir="out", pieces: PieceOptions | None = None, prompt: PromptOptions | None = None,
             sampling: SamplingConfig | None = None, output: OutputOptions | None = None, log=print) -> dict:
    """The ``notelm generate`` verb: load a model, build the prompt, sample, write files and a report."""
    started = time.perf_counter()
    pieces, prompt = (pieces or PieceOptions()).validate(), (prompt or PromptOptions()).validate()
    sampling, output = (sampling or SamplingConfig()).validate(), (output or OutputOptions()).validate()
    out_dir = Path(out_dir)
    earlier = earlier_generation(out_dir, output.force)
    if sampling.seed is None:
        sampling.seed = new_seed()
    model_path = model_path or default_model_path()
    model = load_model(model_path)
    sampling = with_model_floor(sampling, model)  # settled here so that generation.json names the floor taken
    name = condition_name(model.vocab, pieces.condition)
    cond = model.vocab.condition_id(name)
    if sampling.guidance != 1.0 and cond != UNCONDITIONED and read_run(model_path).get("train", {}).get(
            "cond_dropout") == 0:
        raise NotelmError("--guidance: this model never learned to write without its condition "
                          "(train.cond_dropout = 0), so there is nothing to guide away from; use --guidance 1")
    prompt_ids, prompt_notes, prompt_meta = _prompt_ids(model_path, model.vocab, prompt)
    style = model.vocab.form_of(name)
    meta = piece_meta(prompt_meta, style, output.meter, output.key, output.qpm)
    programs = part_programs(prompt_notes, style, model.vocab.config.get("parts", 0))
    qpm = meta.first_qpm
    batch = sample(model, pieces.num, pieces.length, pieces.seconds, prompt_ids, cond, sampling, qpm, unit="notes")
    for path in earlier:  # only now: a run that fails before this point leaves the earlier one whole
        path.unlink(missing_ok=True)
    rows = write_pieces(batch, model.vocab, out_dir, qpm=qpm, wav=output.wav, png=output.png,
                        soundfont=output.soundfont, seconds=pieces.seconds, log=log, meta=meta, programs=programs)
    report = {"model": str(model_path), "family": model.family, "condition": pieces.condition, "qpm": qpm,
              "time_signature": meta.time_signature, "key": meta.key, "seed": sampling.seed,
              "length": _length_report(pieces), "prompt": _prompt_report(prompt, batch),
              "sampling": sampling.to_dict(), "copy_guard": _guard_report(model, sampling), "pieces": rows,
              "seconds": round(time.perf_counter() - started, 2)}
    write_json(out_dir / REPORT, report)
    guard = report["copy_guard"]
    log(f"generated {plural(pieces.num, 'piece')} with {model.family}, seed {sampling.seed} (--seed "
        f"{sampling.seed} repeats it), in {report['seconds']:.1f} s -> {out_dir}"
        + (f"; copy guard: {plural(guard['redrawn'], 'event')} drawn again" if guard else
           "; copy guard: off (no copy index of its training songs beside this model)"
           if sampling.copies == "avoid" else ""))
    return report


def _guard_report(model, sampling: SamplingConfig) -> dict | None:
    """What the copy guard did (None: off, or the model carries no copy index)."""
    guard = guard_in_use(model, sampling)
    return None if guard is None else {"longest": LONGEST, "redrawn": guard.redrawn}


def earlier_generation(out_dir: Path, force: bool) -> list[Path]:
    """The files of an earlier generation in ``out_dir``, to be replaced (``force``); refused otherwise.

    Two runs never mix in one folder: a second run without ``force`` would leave the first run's WAV and
    piano rolls beside MIDI files that no longer match them, and its pieces beyond ``--num``.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NotelmError(f"-o {printable(out_dir)}: a file, not a folder; name a folder for the pieces")
    if not out_dir.is_dir():
        return []
    earlier = sorted(p for p in out_dir.iterdir() if PIECE_FILE.fullmatch(p.name) or p.name == REPORT)
    if earlier and not force:
        pieces = sum(p.suffix == ".mid" for p in earlier)
        raise NotelmError(f"{printable(out_dir)} already holds an earlier generation ({plural(pieces, 'piece')}, "
                          f"{plural(len(earlier), 'file')}); choose another -o, or add --force to replace it")
    return earlier


def _length_report(pieces: PieceOptions) -> dict:
    return {"new_seconds": pieces.seconds} if pieces.seconds else {"new_notes": pieces.length}


def _prompt_report(options: PromptOptions, batch: list[Piece]) -> dict | None:
    if not batch[0].prompt_events:
        return None
    source = options.prompt or f"test song {options.prompt_from_test}"
    return {"source": source, "notes": batch[0].prompt_notes, "events": batch[0].prompt_events,
            "max_notes": options.max_notes(), "bars": options.prompt_bars}


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
        ids = prompt_from_notes(vocab, notes, options.max_notes(), options.prompt_bars, beats_per_bar(meta))
        return ids, notes, meta
    if options.prompt_from_test is not None:
        return _test_prompt(model_path, options, vocab)
    return None, None, None


def _test_prompt(model_path, options: PromptOptions, vocab):
    corpus_path = options.corpus
    if corpus_path is None:
        corpus_path = read_run(model_path).get("corpus")
        if corpus_path is None:
            raise NotelmError("--prompt-from-test needs --corpus CORPUS_DIR (the model's run does not name its corpus)")
    corpus = Corpus(corpus_path)
    test = corpus.split_ids("test")
    k = options.prompt_from_test
    if not 0 <= k < len(test):
        raise NotelmError(f"--prompt-from-test {k}: the corpus has {plural(len(test), 'test song')} "
                          f"(0..{len(test) - 1})")
    song = int(test[k])
    meta = corpus.meta(song)
    notes = corpus.notes(song)
    return prompt_from_notes(vocab, notes, options.max_notes(), options.prompt_bars,
                             beats_per_bar(meta)), notes, meta
