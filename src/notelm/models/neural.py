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

``NeuralModel`` wraps a network in the numpy ``NextEventModel`` interface used
by evaluation and generation, and handles safetensors checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from notelm.encoding.vocab import Vocab
from notelm.io import NotelmError
from notelm.models.base import NextEventModel


@dataclass
class ModelConfig:
    family: str = "lstm"  # "lstm" or "transformer"
    embed_dim: int = 32  # per stream
    hidden: int = 256  # LSTM width / transformer d_model
    layers: int = 1
    dropout: float = 0.0
    heads: str = "independent"  # or "ordered"
    cond_dim: int = 16  # condition embedding width (used only when the vocab has conditions)
    # transformer only
    n_heads: int = 4
    context: int = 256  # longest sequence the transformer attends over
    positions: str = "rope"  # "rope" or "learned"
    ff_mult: int = 4

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return _typed(cls, d, "model")

    def validate(self) -> "ModelConfig":
        if self.family not in ("lstm", "transformer"):
            raise NotelmError(f"model.family {self.family!r}: expected 'lstm' or 'transformer'")
        if self.heads not in ("independent", "ordered"):
            raise NotelmError(f"model.heads {self.heads!r}: expected 'independent' or 'ordered'")
        if self.positions not in ("rope", "learned"):
            raise NotelmError(f"model.positions {self.positions!r}: expected 'rope' or 'learned'")
        for name in ("embed_dim", "hidden", "layers", "n_heads", "context", "ff_mult"):
            if getattr(self, name) < 1:
                raise NotelmError(f"model.{name} must be >= 1")
        if not 0 <= self.dropout < 1:
            raise NotelmError("model.dropout must be in [0, 1)")
        if self.family == "transformer" and self.hidden % self.n_heads:
            raise NotelmError(f"model.hidden ({self.hidden}) must be divisible by model.n_heads ({self.n_heads})")
        return self


def _typed(cls, d: dict, section: str):
    """Build a config dataclass from a dict, refusing unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise NotelmError(f"unknown key(s) in [{section}]: {', '.join(unknown)}; valid keys: {', '.join(fields)}")
    values = {}
    for name, value in d.items():
        default = getattr(cls, name) if hasattr(cls, name) else None
        kind = type(default) if default is not None else None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not None and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise NotelmError(f"[{section}] {name} = {value!r}: expected {kind.__name__}")
        values[name] = value
    return cls(**values)


def dropout_in_training(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``drop(x)`` while training, ``x`` itself otherwise: generation calls this per stream,
    layer and event, where even a no-op module call is measurable."""
    return drop(x) if drop.training and drop.p else x


class EventNet(nn.Module):
    """Embeddings and heads around a backbone; subclasses define ``backbone_dim`` and ``features``."""

    def __init__(self, vocab: Vocab, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sizes = vocab.sizes
        self.n_conditions = len(vocab.conditions)
        self.embeds = nn.ModuleList(nn.Embedding(v, cfg.embed_dim) for v in self.sizes)
        self.input_dim = cfg.embed_dim * len(self.sizes)
        if self.n_conditions:
            self.cond_embed = nn.Embedding(self.n_conditions + 1, cfg.cond_dim)
            self.input_dim += cfg.cond_dim
        self.drop = nn.Dropout(cfg.dropout)
        h = cfg.hidden
        self.heads = nn.ModuleList(nn.Linear(h, v) for v in self.sizes)
        if cfg.heads == "ordered":
            # head k sees h plus the embeddings of the chosen values of streams < k
            self.head_embeds = nn.ModuleList(nn.Embedding(v, h) for v in self.sizes[:-1])
            self.head_mix = nn.ModuleList(nn.Sequential(nn.Linear(h, h), nn.GELU()) for _ in self.sizes[1:])

    # -- to be provided by the backbone -----------------------------------------
    def features(self, x: torch.Tensor, state=None):
        """x [B, T, input_dim] -> (h [B, T, hidden], new state)."""
        raise NotImplementedError

    def empty_state(self, batch: int):
        return None

    # -- shared ------------------------------------------------------------------
    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        return dropout_in_training(self.drop, x)

    def embed(self, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        # F.embedding / F.linear rather than module calls: generation runs these once per
        # stream and event, where the module-call machinery costs as much as the math
        parts = [F.embedding(tokens[..., s], emb.weight) for s, emb in enumerate(self.embeds)]
        if self.n_conditions:
            c = cond if cond is not None else torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
            parts.append(self.cond_embed(c)[:, None, :].expand(-1, tokens.shape[1], -1))
        return self.dropout(torch.cat(parts, dim=-1))

    def head(self, h: torch.Tensor, k: int, chosen: list[torch.Tensor]) -> torch.Tensor:
        """Logits of stream k from features h and (ordered heads) the values of streams < k."""
        if self.cfg.heads == "ordered" and k > 0:
            z = h
            for j in range(k):
                z = z + F.embedding(chosen[j], self.head_embeds[j].weight)
            h = self.head_mix[k - 1](z)
        head = self.heads[k]
        return F.linear(self.dropout(h), head.weight, head.bias)

    def forward(self, tokens, cond=None, targets=None, state=None):
        """Teacher-forced logits for every stream: list of [B, T, V_s], plus the new state."""
        h, state = self.features(self.embed(tokens, cond), state)
        chosen = [targets[..., j] for j in range(len(self.sizes) - 1)] if targets is not None else []
        return [self.head(h, k, chosen) for k in range(len(self.sizes))], state


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

    def __init__(self, vocab: Vocab, cfg: ModelConfig, net: EventNet | None = None, device: str = "cpu"):
        self.vocab = vocab
        self.cfg = cfg.validate()
        self.family = cfg.family
        self.ordered = cfg.heads == "ordered"
        self.net = net if net is not None else build_net(vocab, cfg)
        self.device = torch.device(device)
        self.net.to(self.device)

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def predict(self, streams: dict[str, np.ndarray], cond: int = 0) -> dict[str, np.ndarray]:
        self.net.eval()
        tokens = np.stack([np.asarray(streams[n], np.int64) for n in self.vocab.names], axis=-1)  # [T, S]
        T = len(tokens)
        out = [np.zeros((T - 1, v), np.float32) for v in self.vocab.sizes]
        c = torch.tensor([cond], device=self.device)
        span, fresh = self.window(T)
        done, lo = 0, 0  # positions 0..done-1 are scored; the next pass reads tokens lo..
        while done < T - 1:
            hi = min(T, lo + span + 1)
            x = torch.as_tensor(tokens[lo:hi], device=self.device)[None]
            logits, _ = self.net(x[:, :-1], c, targets=x[:, 1:])
            for k, lg in enumerate(logits):
                out[k][done:hi - 1] = torch.log_softmax(lg[0, done - lo:].float(), -1).cpu().numpy()
            done = hi - 1
            lo = done - (span - fresh)  # later positions keep at least span - fresh events of context
        return dict(zip(self.vocab.names, out))

    def window(self, length: int) -> tuple[int, int]:
        """(events per forward pass, new positions per pass) for scoring a song of ``length``."""
        if self.cfg.family == "transformer" and length - 1 > self.cfg.context:
            return self.cfg.context, self.cfg.context // 2
        return length, length  # the LSTM (or a short song) is read in one pass

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
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)

    @_inference
    def begin(self, prompt: dict[str, np.ndarray], cond: np.ndarray):
        self.net.eval()
        tokens = torch.as_tensor(np.stack([np.asarray(prompt[n], np.int64) for n in self.vocab.names], -1), device=self.device)
        c = torch.as_tensor(np.asarray(cond, np.int64), device=self.device)
        h, state = self.net.features(self.net.embed(tokens, c), self.net.empty_state(tokens.shape[0]))
        return {"h": h[:, -1], "state": state, "cond": c}

    @_inference
    def stream_logprobs(self, state, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        prev = [torch.as_tensor(np.asarray(c, np.int64), device=self.device) for c in chosen] if self.ordered else []
        return torch.log_softmax(self.net.head(state["h"], k, prev).float(), -1).cpu().numpy()

    @_inference
    def advance(self, state, event: dict[str, np.ndarray]):
        x = torch.as_tensor(np.stack([np.asarray(event[n], np.int64) for n in self.vocab.names], -1)[:, None, :], device=self.device)
        h, new = self.net.features(self.net.embed(x, state["cond"]), state["state"])
        return {"h": h[:, -1], "state": new, "cond": state["cond"]}

    # ------------------------------------------------------------------ persistence
    def config_json(self) -> dict:
        return {"family": self.cfg.family, "model": dataclasses.asdict(self.cfg), "vocab": self.vocab.to_json()}

    def save(self, directory) -> None:
        from notelm.checkpoint import save_weights

        save_weights(Path(directory), self.net.state_dict(), self.config_json())


def build_net(vocab: Vocab, cfg: ModelConfig) -> EventNet:
    cfg.validate()
    if cfg.family == "lstm":
        from notelm.models.lstm import LSTMNet

        return LSTMNet(vocab, cfg)
    from notelm.models.transformer import TransformerNet

    return TransformerNet(vocab, cfg)
