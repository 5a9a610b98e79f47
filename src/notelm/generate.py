"""Generation: prompts, sampling controls, many pieces as one batch, files you can open.

The sampler drives any ``NextEventModel`` (n-gram, LSTM, transformer) through
``begin`` / ``stream_logprobs`` / ``advance``: one model step per new event,
one stream at a time inside the event (ordered heads see what was already
chosen).  All pieces of a call are sampled together as one batch.

Controls: temperature, top-k, top-p, a repetition penalty on recent pitches,
and ``max_repeat`` which forbids the same pitch more than N times in a row (the
classic failure of LSTM generators is one note repeated forever).  Special ids
(PAD, BOS, EOS) are never sampled: a piece is exactly ``length`` events long,
or as many as it takes to reach ``seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from notelm import notes as nt
from notelm.checkpoint import default_model_path
from notelm.encoding import from_vocab
from notelm.encoding.vocab import BOS, N_SPECIAL
from notelm.io import NotelmError, write_json

MAX_PIECES = 256  # refuse bigger batches: memory grows with pieces x length
MAX_EVENTS = 20_000


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # >1 lowers the odds of pitches used in the last `penalty_window` events
    penalty_window: int = 16
    max_repeat: int = 0  # >0: never the same pitch more than this many times in a row
    seed: int = 0

    def validate(self) -> "SamplingConfig":
        if self.temperature <= 0:
            raise NotelmError("--temperature must be > 0")
        if self.top_k < 0:
            raise NotelmError("--top-k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise NotelmError("--top-p must be in (0, 1]")
        if self.repetition_penalty < 1:
            raise NotelmError("--repetition-penalty must be >= 1")
        if self.max_repeat < 0:
            raise NotelmError("--max-repeat must be >= 0")
        return self


def filter_logprobs(lp: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Temperature, top-k and top-p applied to log-probabilities [B, V] (returns unnormalized)."""
    if cfg.temperature != 1.0:
        lp = lp / cfg.temperature
    if cfg.top_k and cfg.top_k < lp.shape[1]:
        kth = np.partition(lp, -cfg.top_k, axis=1)[:, -cfg.top_k][:, None]
        lp = np.where(lp < kth, -np.inf, lp)
    if cfg.top_p < 1.0:
        order = np.argsort(-lp, axis=1)
        sorted_lp = np.take_along_axis(lp, order, 1)
        p = np.exp(sorted_lp - sorted_lp[:, :1])
        cum = np.cumsum(p, 1) / p.sum(1, keepdims=True)
        drop_sorted = (cum - p / p.sum(1, keepdims=True)) >= cfg.top_p  # keep the smallest prefix reaching top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, 1)
        lp = np.where(drop, -np.inf, lp)
    return lp


def draw(lp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sample per row of unnormalized log-probabilities (inverse CDF, vectorized)."""
    p = np.exp(lp - lp.max(1, keepdims=True))
    cum = np.cumsum(p, 1)
    u = rng.random(len(lp))[:, None] * cum[:, -1:]
    return np.minimum((cum < u).sum(1), lp.shape[1] - 1)


@dataclass
class Piece:
    streams: dict[str, np.ndarray]  # the whole piece as ids, BOS first (prompt included)
    prompt_events: int
    notes: dict = field(default_factory=dict)


def sample(model, n: int = 4, length: int = 256, seconds: float | None = None, prompt: dict[str, np.ndarray] | None = None,
           cond: int = 0, cfg: SamplingConfig | None = None, qpm: float = 120.0) -> list[Piece]:
    """Sample ``n`` pieces; each continues ``prompt`` (ids framed with BOS, no EOS) or starts from BOS."""
    cfg = (cfg or SamplingConfig()).validate()
    if not 1 <= n <= MAX_PIECES:
        raise NotelmError(f"--num {n}: between 1 and {MAX_PIECES} pieces per call")
    if seconds is not None and not seconds >= 0:  # negative or NaN
        raise NotelmError(f"--length {seconds}s: a number of seconds above 0")
    limit = MAX_EVENTS if seconds else length
    if not 1 <= limit <= MAX_EVENTS:
        raise NotelmError(f"--length {length}: between 1 and {MAX_EVENTS} events per piece")
    with model.session(n):
        return _sample_loop(model, n, limit, seconds, prompt, cond, cfg, qpm)


def _sample_loop(model, n, limit, seconds, prompt, cond, cfg, qpm) -> list[Piece]:
    vocab = model.vocab
    names = vocab.names
    rng = np.random.default_rng(cfg.seed)
    if prompt is None:
        prompt = {name: np.array([BOS]) for name in names}
    if len(prompt[names[0]]) - 1 > MAX_EVENTS:  # memory grows with pieces x (prompt + length) too
        raise NotelmError(f"the prompt holds {len(prompt[names[0]]) - 1} events, more than {MAX_EVENTS}; "
                          "take a part of it with --prompt-events or --prompt-bars")
    batch_prompt = {name: np.repeat(np.asarray(prompt[name], np.int64)[None], n, 0) for name in names}
    state = model.begin(batch_prompt, np.full(n, cond, np.int64))
    pitch_k = names.index("pitch") if "pitch" in names else -1
    rest = _rest_ids(vocab)
    P = batch_prompt[names[0]].shape[1]
    out = np.zeros((len(names), n, P + limit), np.int64)
    for k, name in enumerate(names):
        out[k, :, :P] = batch_prompt[name]
    rep = from_vocab(vocab) if seconds else None
    t = P
    while t < P + limit:
        chosen = []
        for k in range(len(names)):
            lp = model.stream_logprobs(state, k, chosen).astype(np.float64)
            lp[:, :N_SPECIAL] = -np.inf  # never PAD/BOS/EOS: the caller decides where a piece ends
            if k == pitch_k:
                lp = _discourage_repeats(lp, out[k, :, :t], cfg, rest)
            ids = draw(filter_logprobs(lp, cfg), rng)
            chosen.append(ids)
            out[k, :, t] = ids
        state = model.advance(state, {name: chosen[k] for k, name in enumerate(names)})
        t += 1
        if seconds and (t - P) % 32 == 0 and all(_seconds(rep, {nm: out[k, i, :t] for k, nm in enumerate(names)}, qpm) >= seconds
                                                  for i in range(n)):
            break
    return [Piece({name: out[k, i, :t] for k, name in enumerate(names)}, P - 1) for i in range(n)]


def _rest_ids(vocab) -> np.ndarray:
    """Pitch ids that are not notes (e.g. the events representation's rest): never penalized."""
    if "pitch" not in vocab.names:
        return np.zeros(0, np.int64)
    tokens = vocab.stream("pitch").tokens
    return np.array([N_SPECIAL + i for i, tok in enumerate(tokens) if tok == "rest"], np.int64)


def _discourage_repeats(lp: np.ndarray, history: np.ndarray, cfg: SamplingConfig, rest: np.ndarray) -> np.ndarray:
    if cfg.repetition_penalty > 1 and history.shape[1]:
        recent = history[:, -cfg.penalty_window:]
        mask = np.zeros(lp.shape, bool)
        np.put_along_axis(mask, recent, True, 1)
        mask[:, rest] = False
        mask[:, :N_SPECIAL] = False
        lp = np.where(mask, lp - np.log(cfg.repetition_penalty), lp)
    if cfg.max_repeat and history.shape[1] >= cfg.max_repeat:
        last = history[:, -cfg.max_repeat:]
        same = (last == last[:, -1:]).all(1) & (last[:, -1] >= N_SPECIAL)
        same &= ~np.isin(last[:, -1], rest)
        rows = np.flatnonzero(same)
        if len(rows):
            blocked = lp.copy()
            blocked[rows, last[rows, -1]] = -np.inf
            ok = np.isfinite(blocked[rows]).any(1)  # never block the only option
            lp[rows[ok]] = blocked[rows[ok]]
    return lp


def _seconds(rep, streams, qpm: float) -> float:
    notes = rep.decode(streams)
    if not nt.num_notes(notes):
        return 0.0
    return float((notes["onset"] + notes["duration"]).max()) * 60.0 / qpm


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

def repeated_pitch_share(notes: nt.Notes) -> float:
    """Share of notes whose pitch equals the previous note's (onset order): 1.0 = one note repeated."""
    if nt.num_notes(notes) < 2:
        return 0.0
    order = np.lexsort((notes["pitch"], notes["onset"]))
    pitch = notes["pitch"][order]
    return float((pitch[1:] == pitch[:-1]).mean())


def write_pieces(pieces: list[Piece], vocab, out_dir, qpm: float = 120.0, wav: bool = False, png: bool = False,
                 prefix: str = "piece", soundfont: str | None = None, seconds: float | None = None, log=print) -> list[dict]:
    """Decode and write every piece as MIDI (+ WAV, + PNG), cut at ``seconds`` if given; one report row per piece."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = from_vocab(vocab)
    rows = []
    for i, piece in enumerate(pieces):
        notes = rep.decode(piece.streams)
        if seconds:
            end = seconds * qpm / 60.0
            notes = nt.take(notes, notes["onset"] < end)
            notes["duration"] = np.minimum(notes["duration"], end - notes["onset"]).astype(notes["duration"].dtype)
        piece.notes = notes
        stem = out_dir / f"{prefix}_{i:02d}"
        nt.write_midi(notes, stem.with_suffix(".mid"), qpm=qpm)
        row = {"midi": str(stem.with_suffix(".mid")), "events": int(len(piece.streams[vocab.names[0]]) - 1),
               "prompt_events": piece.prompt_events, "notes": nt.num_notes(notes),
               "seconds": round(float((notes["onset"] + notes["duration"]).max()) * 60 / qpm, 2) if nt.num_notes(notes) else 0.0,
               "repeated_pitch_share": round(repeated_pitch_share(notes), 3)}
        if wav or png:
            from notelm import render

            if wav:
                info = render.render_wav(notes, stem.with_suffix(".wav"), qpm=qpm, soundfont=soundfont)
                row.update(wav=str(stem.with_suffix(".wav")), wav_rms=round(info["rms"], 4))
            if png:
                render.render_pianoroll(notes, stem.with_suffix(".png"), title=stem.name, qpm=qpm)
                row["png"] = str(stem.with_suffix(".png"))
        rows.append(row)
        log(f"{stem.name}: {row['notes']} notes, {row['seconds']:.1f} s, repeated pitches {row['repeated_pitch_share']:.0%}"
            + (f", WAV RMS {row['wav_rms']:.3f}" if "wav_rms" in row else ""))
    return rows


def generate(model_path=None, out_dir="out", n: int = 4, length: int = 256, seconds: float | None = None,
             prompt_file: str | None = None, prompt_events: int | None = None, prompt_bars: float | None = None,
             prompt_from_test: int | None = None, corpus: str | None = None, condition: str | None = None,
             cfg: SamplingConfig | None = None, wav: bool = False, png: bool = False, qpm: float | None = None,
             soundfont: str | None = None, log=print) -> dict:
    """The ``notelm generate`` verb: load a model, build the prompt, sample, write files and a report."""
    from notelm.checkpoint import load_model

    started = time.perf_counter()
    model_path = model_path or default_model_path()
    model = load_model(model_path)
    vocab = model.vocab
    cond = 0
    if condition is not None:
        key, _, value = condition.partition("=")
        if key != "collection" or not value:
            raise NotelmError(f"--condition {condition!r}: expected collection=NAME")
        cond = vocab.condition_id(value)
    prompt, prompt_qpm = None, None
    if prompt_file and prompt_from_test is not None:
        raise NotelmError("give either --prompt or --prompt-from-test, not both")
    if prompt_file:
        try:
            notes, meta = nt.read_midi(prompt_file)
        except Exception as e:
            raise NotelmError(f"{prompt_file}: not a readable MIDI file ({e})") from None
        prompt = prompt_from_notes(vocab, notes, prompt_events, prompt_bars, _beats_per_bar(meta))
        prompt_qpm = meta.first_qpm
    elif prompt_from_test is not None:
        prompt, prompt_qpm = _test_prompt(model_path, corpus, vocab, prompt_from_test, prompt_events or 32, prompt_bars)
    qpm = qpm or prompt_qpm or 120.0
    pieces = sample(model, n, length, seconds, prompt, cond, cfg, qpm)
    rows = write_pieces(pieces, vocab, out_dir, qpm=qpm, wav=wav, png=png, soundfont=soundfont, seconds=seconds, log=log)
    report = {"model": str(model_path), "family": model.family, "condition": condition, "qpm": qpm,
              "sampling": (cfg or SamplingConfig()).__dict__, "pieces": rows,
              "seconds": round(time.perf_counter() - started, 2)}
    write_json(Path(out_dir) / "generation.json", report)
    log(f"generated {n} pieces with {model.family} in {report['seconds']:.1f} s -> {out_dir}")
    return report


def _beats_per_bar(meta: nt.SongMeta) -> float:
    if len(meta.timesig_num):
        return float(meta.timesig_num[0]) * 4.0 / float(meta.timesig_den[0])
    return 4.0


def _test_prompt(model_path, corpus_path, vocab, k: int, events: int, bars):
    from notelm.corpus import Corpus
    from notelm.io import read_json

    if corpus_path is None:
        run_json = Path(model_path) / "run.json"
        if not run_json.exists():
            raise NotelmError("--prompt-from-test needs --corpus CORPUS_DIR (the model's run does not name its corpus)")
        corpus_path = read_json(run_json)["corpus"]
    corpus = Corpus(corpus_path)
    test = corpus.split_ids("test")
    if not 0 <= k < len(test):
        raise NotelmError(f"--prompt-from-test {k}: the corpus has {len(test)} test songs (0..{len(test) - 1})")
    song = int(test[k])
    meta = corpus.meta(song)
    return prompt_from_notes(vocab, corpus.notes(song), events, bars, _beats_per_bar(meta)), meta.first_qpm
