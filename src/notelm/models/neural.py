"""What every neural next-event model shares: embeddings in, one head per stream out.

    tokens [B, T, S] ──embed each stream, concatenate (+ condition)──▶ [B, T, D_in]
                     ──backbone (LSTM or transformer, in its own file)──▶ h [B, T, H]
                     ──one head per stream──▶ logits [B, T, V_s] for each stream s

Heads are either independent (the original experiment: each attribute predicted
from h alone) or ordered: head k also sees embeddings of the values of streams
0..k-1 of the event it predicts (the true values in training, the sampled ones
in generation), so a sampled event is a coherent whole.

Conditioning: when the vocabulary lists condition values (collections), a
condition embedding joins every position; training replaces it with the
"unconditioned" id 0 with some probability, so one model writes both in a
chosen style and without one.

Derived input features: a representation may give fixed numeric features per
token of a stream (``Representation.token_features``); they pass through a
linear map and join the token's learned embedding.

``NeuralModel`` wraps a network in the numpy ``NextEventModel`` interface used
by evaluation and generation.  A family is a subclass naming its config class
and its network (``lstm.py``, ``transformer.py``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from notelm.encoding import from_vocab
from notelm.encoding.vocab import Vocab
from notelm.io import NotelmError
from notelm.models.base import FLOAT_DTYPES, NextEventModel
from notelm.precision import autocast, resolve
from notelm.settings import Settings, setting


@dataclass
class NetConfig(Settings):
    """``[model]`` settings every neural family shares; a family's config adds its own (``LSTMConfig``, ...)."""

    section: ClassVar[str] = "model"
    family: ClassVar[str] = ""
    embed_dim: int = setting(32, "embedding width of each stream", minimum=1, maximum=4096)
    hidden: int = setting(256, "width of the backbone (LSTM units, transformer d_model) and of the heads", minimum=1,
                         maximum=16384)
    layers: int = setting(1, "backbone layers", minimum=1, maximum=256)
    dropout: float = setting(0.0, "dropout on embeddings, between layers and before the heads", minimum=0.0,
                             below=1.0)
    heads: str = setting("independent", "'independent': each stream predicted from the backbone alone (the "
                                        "original); 'ordered': each also sees the values already chosen for the "
                                        "same event", choices=("independent", "ordered"))
    cond_dim: int = setting(16, "condition embedding width (used only when the vocabulary has conditions)",
                            minimum=1, maximum=4096)
    relative_pitch: int = setting(0, "pitch logits also scored as intervals to each of the last N notes before "
                                     "the event (0: off; representations whose pitch stream holds MIDI pitches)",
                                  minimum=0, maximum=8)


RAW64 = (np.random.PCG64, np.random.PCG64DXSM, np.random.SFC64, np.random.Philox)  # 64 random bits per raw output


class Dropout(nn.Module):
    """Dropout whose masks are random bytes from a numpy generator.

    On the CPU, torch's ``bernoulli_`` took ~30 % of a training step; numpy's PCG64 writes
    the same mask ~10x faster.  ``p`` is rounded to a multiple of 1/256.  ``locked``: one
    mask per sequence and channel, shared by every time step (variational dropout, the
    LSTM's usual kind, and T times fewer random numbers).  The generator ``rng`` is the
    training loop's (``EventNet.use_rng``), so a resumed run draws the same masks.
    CUDA tensors use torch's own generator.
    """

    def __init__(self, p: float, locked: bool = False):
        super().__init__()
        self.p, self.locked = p, locked
        self.threshold = round(p * 256)
        self.rng = np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.threshold):
            return x  # cheap: generation calls this per stream, layer and event
        shape = (x.shape[0], 1, x.shape[-1]) if self.locked and x.dim() == 3 else tuple(x.shape)
        if x.device.type == "cpu":
            keep = torch.from_numpy(self.keep(int(np.prod(shape)))).view(shape)
        else:
            keep = (torch.randint(0, 256, shape, dtype=torch.uint8, device=x.device) >= self.threshold).byte()
        # 0/1 bytes, not bools: on a CPU, uint8 -> bf16 converts ~10x faster than bool -> bf16
        return x * keep.to(x.dtype) * (256 / (256 - self.threshold))

    def keep(self, size: int) -> np.ndarray:
        """``size`` uint8, 1 where the element is kept: a random byte at least ``threshold``.

        The bytes are the generator's raw 64-bit outputs (2-5x faster than ``Generator.bytes``), all
        of whose bits are random for the 64-bit generators; the comparison is numpy's (torch's uint8
        comparison ran ~10x slower here)."""
        if isinstance(self.rng.bit_generator, RAW64):
            raw = self.rng.bit_generator.random_raw(-(-size // 8)).view(np.uint8)[:size]
        else:
            raw = np.frombuffer(self.rng.bytes(size), np.uint8)
        return (raw >= self.threshold).view(np.uint8)

    def extra_repr(self) -> str:
        return f"p={self.p}, locked={self.locked}"


class Windows(torch.autograd.Function):
    """``out[n] = sum over r < refs of scores[m, start[m] : start[m] + 128]``, m = n * refs + r, for
    ``scores`` [M, L] and ``start`` [M]; a window whose ``start[m] < 0`` counts as zeros.

    The same as a ``gather`` with an index [M, 128] and a sum over each group of ``refs`` rows,
    without building that index: the rows are read from an overlapping strided view of the scores,
    one 128-long copy each, and the backward writes the gradient rows back the same way (a gather's
    backward is a scatter-add, whose bf16 kernel on a CPU converts the whole score tensor to fp32
    and back).  Unused windows are zeroed by row index (they are few: the first notes of a crop),
    and the windows of a group are summed by adding rows: in bf16 on a CPU, at a training batch's
    12,288 windows, a mask over all rows took 1.6 ms against 0.007, a sum over the refs axis 1.25 ms
    against 0.36."""

    WIDTH = 128

    @staticmethod
    def forward(ctx, scores: torch.Tensor, start: torch.Tensor, refs: int) -> torch.Tensor:
        M, L = scores.shape
        offsets = torch.arange(M, device=scores.device) * L + start.clamp(min=0)
        rows = Windows.rows(scores.contiguous()).index_select(0, offsets)
        unused = (start < 0).nonzero().view(-1)
        rows.index_fill_(0, unused, 0)
        ctx.save_for_backward(offsets, unused)
        ctx.size, ctx.refs = (M, L), refs
        grouped = rows.view(-1, refs, Windows.WIDTH)
        out = grouped[:, 0].clone()
        for r in range(1, refs):
            out += grouped[:, r]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        offsets, unused = ctx.saved_tensors
        grad_scores = grad.new_zeros(ctx.size)
        # each window of a group gets the group's gradient; rows of different m never overlap, so
        # each gradient value is written once, and an unused window's whole row gets none
        each = grad.unsqueeze(1).expand(-1, ctx.refs, Windows.WIDTH).reshape(-1, Windows.WIDTH)
        Windows.rows(grad_scores).index_copy_(0, offsets, each)
        return grad_scores.index_fill_(0, unused, 0), None, None

    @staticmethod
    def rows(t: torch.Tensor) -> torch.Tensor:
        """[M * L - 127, 128] view of contiguous ``t`` [M, L]: row i holds flat elements i .. i + 127."""
        return t.view(-1).as_strided((t.numel() - Windows.WIDTH + 1, Windows.WIDTH), (1, 1))


class RelativePitch(nn.Module):
    """Pitch logits from intervals: for each of the last ``refs`` notes before the predicted event, a
    score per interval (-127..127) is added at the pitch that interval leads to.

    Melody and voice leading move by intervals whatever the key; an absolute pitch head must
    learn each step once per starting pitch, this one learns it once.  References are the pitches
    of the most recent note events, newest first (``NONE`` where the crop or the piece has fewer).
    """

    NONE = -1

    def __init__(self, pitch_stream, hidden: int, refs: int):
        super().__init__()
        self.refs = refs
        midi = np.full(pitch_stream.size, self.NONE, np.int64)  # MIDI pitch of each token id, NONE for others
        tokens = np.full(128, -1, np.int64)  # token id of each MIDI pitch
        for p in range(128):
            if str(p) not in pitch_stream.tokens:
                raise NotelmError(f"model.relative_pitch: the pitch stream has no MIDI pitch {p} (the events "
                                  "representation has all 128)")
            tokens[p] = pitch_stream.id_of(str(p))
            midi[tokens[p]] = p
        self.register_buffer("midi", torch.as_tensor(midi), persistent=False)
        self.register_buffer("token_of_pitch", torch.as_tensor(tokens), persistent=False)
        self.first_pitch = int(tokens[0]) if (np.diff(tokens) == 1).all() else -1
        self.intervals = nn.Linear(hidden, 255 * refs)

    def references(self, pitch_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] pitch ids -> [B, T, refs]: MIDI pitches of the last notes up to each position, newest first."""
        midi = self.midi[pitch_ids]
        positions = torch.arange(midi.shape[1], device=midi.device).expand_as(midi)
        last = torch.where(midi >= 0, positions, -1).cummax(dim=1).values  # the newest note up to each position
        found, out = last, []
        for _ in range(self.refs):
            out.append(torch.where(found >= 0, midi.gather(1, found.clamp(min=0)), self.NONE))
            before = (found - 1).clamp(min=0)  # the newest note strictly before the one found
            found = torch.where(found >= 1, last.gather(1, before), -1)
        return torch.stack(out, -1)

    def advance(self, refs: torch.Tensor, pitch_ids: torch.Tensor) -> torch.Tensor:
        """[B, refs] references after one more event per piece ([B] pitch ids)."""
        midi = self.midi[pitch_ids]
        shifted = torch.cat([midi[:, None], refs[:, :-1]], 1)
        return torch.where((midi >= 0)[:, None], shifted, refs)

    def forward(self, g: torch.Tensor, refs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [..., V] of the pitch stream plus the interval scores from features ``g`` [..., H]."""
        scores = self.intervals(g)  # [..., refs * 255]: interval -127..127 of each reference
        # pitch p lies p - ref intervals from a reference: its score is at 127 - ref + p, so the 128
        # pitches read one contiguous run of a reference's 255 scores, starting at 127 - ref
        start = torch.where(refs >= 0, 127 - refs, -1)
        placed = Windows.apply(scores.reshape(-1, 255), start.reshape(-1), self.refs).view(*refs.shape[:-1], 128)
        placed = placed.to(logits.dtype)
        if self.first_pitch >= 0:  # the pitches' ids are consecutive: pad, cheaper than index_add
            return logits + F.pad(placed, (self.first_pitch, logits.shape[-1] - self.first_pitch - 128))
        return logits.index_add(-1, self.token_of_pitch, placed)


class EventNet(nn.Module):
    """Embeddings and heads around a backbone; subclasses define ``features`` (and ``empty_state``)."""

    locked_dropout: ClassVar[bool] = False  # one dropout mask per sequence (the LSTM) or per position

    def __init__(self, vocab: Vocab, cfg: NetConfig):
        super().__init__()
        self.cfg = cfg
        self.sizes = vocab.sizes
        self.n_conditions = len(vocab.conditions)
        self.embeds = nn.ModuleList(nn.Embedding(v, cfg.embed_dim) for v in self.sizes)
        self._add_token_features(vocab, cfg.embed_dim)
        self.input_dim = cfg.embed_dim * len(self.sizes)
        if self.n_conditions:
            self.cond_embed = nn.Embedding(self.n_conditions + 1, cfg.cond_dim)
            self.input_dim += cfg.cond_dim
        self.drop = Dropout(cfg.dropout, locked=self.locked_dropout)
        h = cfg.hidden
        self.heads = nn.ModuleList(nn.Linear(h, v) for v in self.sizes)
        if cfg.heads == "ordered":
            # head k sees h plus the embeddings of the chosen values of streams < k
            self.head_embeds = nn.ModuleList(nn.Embedding(v, h) for v in self.sizes[:-1])
            self.head_mix = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.GELU()) for _ in self.sizes[1:])
        self.pitch_index, self.relative = -1, None
        if cfg.relative_pitch:
            rep = from_vocab(vocab)
            if rep.pitch_stream is None:
                raise NotelmError(f"model.relative_pitch: the {rep.name} representation has no pitch stream")
            self.pitch_index = vocab.names.index(rep.pitch_stream)
            self.relative = RelativePitch(vocab.stream(rep.pitch_stream), h, cfg.relative_pitch)

    def _add_token_features(self, vocab: Vocab, width: int) -> None:
        """The representation's fixed features per token, if it has any: a buffer (not saved: it is
        derived from the representation) and a linear map into the embedding, per stream."""
        features = from_vocab(vocab).token_features()
        self.featured: list[int] = []
        self.feature_maps = nn.ModuleDict()
        for s, name in enumerate(vocab.names):
            if name in features:
                table = torch.as_tensor(np.asarray(features[name], np.float32))
                self.register_buffer(f"features_{s}", table, persistent=False)
                self.feature_maps[str(s)] = nn.Linear(table.shape[1], width, bias=False)
                self.featured.append(s)

    # -- to be provided by the backbone -----------------------------------------
    def features(self, x: torch.Tensor, state=None):
        """x [B, T, input_dim] -> (h [B, T, hidden], new state)."""
        raise NotImplementedError

    def empty_state(self, batch: int):
        return None

    @classmethod
    def upgrade_keys(cls, tensors: dict) -> dict:
        """Tensor names as this version of the network calls them (a family renames older ones)."""
        return tensors

    # -- shared ------------------------------------------------------------------
    def use_rng(self, rng: np.random.Generator) -> None:
        """Draw every dropout mask from ``rng`` (the training loop's generator, saved with its checkpoints)."""
        for module in self.modules():
            if isinstance(module, Dropout):
                module.rng = rng

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x)

    def embed(self, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        # F.embedding / F.linear rather than module calls: generation runs these once per
        # stream and event, where the module-call machinery costs as much as the math
        parts = [F.embedding(tokens[..., s], emb.weight) for s, emb in enumerate(self.embeds)]
        for s in self.featured:
            table = getattr(self, f"features_{s}")
            parts[s] = parts[s] + self.feature_maps[str(s)](F.embedding(tokens[..., s], table))
        if self.n_conditions:
            c = cond if cond is not None else torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
            parts.append(self.cond_embed(c)[:, None, :].expand(-1, tokens.shape[1], -1))
        return self.dropout(torch.cat(parts, dim=-1))

    def head(self, h: torch.Tensor, k: int, chosen: list[torch.Tensor], refs: torch.Tensor | None = None,
             embedded: torch.Tensor | None = None):
        """Logits of stream k from features h and (ordered heads) the values of streams < k;
        ``refs``: the references of ``RelativePitch`` (when the model has one); ``embedded``: the
        values' summed embeddings, when the caller has them already (``forward``)."""
        if self.cfg.heads == "ordered" and k > 0:
            if embedded is None:
                embeds = [F.embedding(chosen[j], self.head_embeds[j].weight) for j in range(k)]
                embedded = sum(embeds[1:], embeds[0])
            # cast to h's dtype (bf16 under autocast) after the sum: a CPU adds mixed dtypes ~10x slower
            h = self.head_mix[k - 1](h + embedded.to(h.dtype))
        head = self.heads[k]
        g = self.dropout(h)
        logits = F.linear(g, head.weight, head.bias)
        if k == self.pitch_index:
            logits = self.relative(g, refs, logits)
        return logits

    def references(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The relative-pitch references at every position of ``tokens`` [B, T, S] (None without them)."""
        return self.relative.references(tokens[..., self.pitch_index]) if self.relative is not None else None

    def forward(self, tokens, cond=None, targets=None, state=None):
        """Teacher-forced logits for every stream: list of [B, T, V_s], plus the new state."""
        h, state = self.features(self.embed(tokens, cond), state)
        chosen = [targets[..., j] for j in range(len(self.sizes) - 1)] if targets is not None else []
        refs = self.references(tokens)
        logits, embedded = [], None
        for k in range(len(self.sizes)):
            if self.cfg.heads == "ordered" and chosen and k > 0:
                # head k's embeddings are head k-1's plus one more: one lookup per stream, not per pair
                new = F.embedding(chosen[k - 1], self.head_embeds[k - 1].weight)
                embedded = new if embedded is None else embedded + new
            logits.append(self.head(h, k, chosen, refs, embedded))
        return logits, state


def _inference(method):
    """torch.inference_mode for a method, entered only when not already on: generation calls
    these once per stream and event inside ``session``, which has it on already."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if torch.is_inference_mode_enabled():
            return method(*args, **kwargs)
        with torch.inference_mode():
            return method(*args, **kwargs)
    return wrapper


class NeuralModel(NextEventModel):
    """A trained EventNet behind the numpy interface of every next-event model."""

    config_class: type[NetConfig] = NetConfig
    net_class: type[EventNet] = EventNet
    trainable = True
    tensor_format = "torch"
    saved_dtypes = FLOAT_DTYPES  # weights, finite; float16 and bfloat16 files (the shipped model) are widened

    def __init__(self, vocab: Vocab, cfg: NetConfig, device: str = "cpu"):
        self.vocab = vocab
        self.cfg = cfg.validate()
        self.ordered = cfg.heads == "ordered"
        self.net = self.net_class(vocab, cfg)
        self.device = torch.device(device)
        self.net.to(self.device)
        self.precision = "fp32"  # of evaluation and generation (training sets its own: train.precision)

    def use_precision(self, precision: str, work: str = "generate") -> str:
        """Run later forward passes in ``precision`` ("auto" resolved for ``work``); returns the one chosen."""
        self.precision = resolve(precision, self.device, work)
        return self.precision

    @classmethod
    def build(cls, vocab: Vocab, cfg: NetConfig, device: str = "cpu") -> NeuralModel:
        return cls(vocab, cfg, device=device)

    # ------------------------------------------------------------------ evaluation
    def predict(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        return {name: lp[0] for name, lp in self.predict_batch({n: np.asarray(v)[None] for n, v in streams.items()},
                                                                cond).items()}

    @torch.inference_mode()
    def predict_batch(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        self.net.eval()
        tokens = np.stack([np.asarray(streams[n], np.int64) for n in self.vocab.names], axis=-1)  # [B, T, S]
        B, T = tokens.shape[:2]
        out = [np.zeros((B, T - 1, v), np.float32) for v in self.vocab.sizes]
        c = torch.full((B,), cond, device=self.device)
        span, fresh = self.window(T)
        done, lo = 0, 0  # positions 0..done-1 are scored; the next pass reads tokens lo..
        while done < T - 1:
            hi = min(T, lo + span + 1)
            x = torch.as_tensor(tokens[:, lo:hi], device=self.device)
            with autocast(self.device, self.precision):
                logits, _ = self.net(x[:, :-1], c, targets=x[:, 1:])
            for k, lg in enumerate(logits):
                out[k][:, done:hi - 1] = torch.log_softmax(lg[:, done - lo:].float(), -1).cpu().numpy()
            done = hi - 1
            lo = done - (span - fresh)  # later positions keep at least span - fresh events of context
        return dict(zip(self.vocab.names, out))

    def window(self, length: int) -> tuple[int, int]:
        """(events per forward pass, new positions per pass) for scoring a song of ``length``:
        the whole song in one pass, unless the family's attention span is shorter."""
        return length, length

    # ------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def session(self, batch: int = 1):
        """One event of a few pieces is too little work to split across threads: on a busy
        machine two threads made such a step ten times slower than one.  Big batches keep
        every thread (at 64 pieces the LSTM step is matrix work worth sharing)."""
        threads = torch.get_num_threads()
        if batch < 16:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode(), autocast(self.device, self.precision):
                yield
        finally:
            torch.set_num_threads(threads)

    @_inference
    def begin(self, prompt: dict[str, np.ndarray], cond: np.ndarray):
        self.net.eval()
        ids = np.stack([np.asarray(prompt[n], np.int64) for n in self.vocab.names], -1)
        tokens = torch.as_tensor(ids, device=self.device)
        c = torch.as_tensor(np.asarray(cond, np.int64), device=self.device)
        h, state = self.net.features(self.net.embed(tokens, c), self.net.empty_state(tokens.shape[0]))
        refs = self.net.references(tokens)
        return {"h": h[:, -1], "state": state, "cond": c, "refs": None if refs is None else refs[:, -1]}

    @_inference
    def stream_logprobs(self, state, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        prev = [torch.as_tensor(np.asarray(c, np.int64), device=self.device) for c in chosen] if self.ordered else []
        return torch.log_softmax(self.net.head(state["h"], k, prev, state["refs"]).float(), -1).cpu().numpy()

    @_inference
    def advance(self, state, event: dict[str, np.ndarray]):
        ids = np.stack([np.asarray(event[n], np.int64) for n in self.vocab.names], -1)[:, None, :]
        x = torch.as_tensor(ids, device=self.device)
        h, new = self.net.features(self.net.embed(x, state["cond"]), state["state"])
        refs = state["refs"]
        if refs is not None:
            refs = self.net.relative.advance(refs, x[:, 0, self.net.pitch_index])
        return {"h": h[:, -1], "state": new, "cond": state["cond"], "refs": refs}

    # ------------------------------------------------------------------ persistence (checkpoint.py)
    def tensors(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def load_tensors(self, tensors: dict) -> None:
        expected = self.net.state_dict()
        tensors = self.net_class.upgrade_keys(tensors)
        with torch.no_grad():
            self.net.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})

    @classmethod
    def shape_problems(cls, vocab: Vocab, cfg: NetConfig, shapes: dict[str, tuple]) -> list[str]:
        # the network is built on the meta device: shapes only, nothing allocated
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls.net_class(vocab, cfg).state_dict().items()}
        shapes = cls.net_class.upgrade_keys(shapes)
        problems = [f"{k}: missing" for k in expected if k not in shapes]
        problems += [f"{k}: unexpected" for k in shapes if k not in expected]
        problems += [f"{k}: shape {shapes[k]} != {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
        return problems
