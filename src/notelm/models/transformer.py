"""Decoder-only transformer: pre-norm blocks, causal SDPA attention, RoPE or learned positions.

Generation keeps a KV cache (one forward step per new event).  When a piece
grows past ``context`` events the last ``context // 2`` inputs are re-encoded
from scratch, so attention never spans more than the model was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from notelm.encoding.vocab import Vocab
from notelm.io import NotelmError
from notelm.models.neural import Dropout, EventNet, NetConfig, NeuralModel
from notelm.settings import setting


@dataclass
class TransformerConfig(NetConfig):
    """``[model]`` of ``family = "transformer"``: the shared neural settings plus attention's."""

    family: ClassVar[str] = "transformer"
    n_heads: int = setting(4, "attention heads (hidden must be divisible by it)", minimum=1, maximum=1024)
    context: int = setting(256, "longest sequence attended over; longer songs are read in windows", minimum=1,
                           maximum=65536)
    positions: str = setting("rope", "'rope': rotary position embeddings; 'learned': a learned table",
                             choices=("rope", "learned"))
    ff_mult: int = setting(4, "width of the feed-forward layers, as a multiple of hidden", minimum=1, maximum=64)

    def check(self) -> None:
        if self.hidden % self.n_heads:
            raise NotelmError(f"model.hidden ({self.hidden}) must be divisible by model.n_heads ({self.n_heads})")


def rope_tables(positions: torch.Tensor, dim: int, base: float = 10000.0):
    """Tables [T, dim] for rotary position embeddings (each angle used by two channels, i and i + dim/2):
    its cosine, and its sine negated on the first half (the sign of ``rotate_half``, see ``apply_rope``)."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float()[:, None] * inv[None, :]
    sin = angles.sin()
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + dim/2) of x [..., T, dim] by their position's angle.

    x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1] is x rolled by half with the
    first half negated: the sign lives in the table, so the rotation is one roll and one fused
    multiply-add (three ops forward, not five; each one a pass over q and k).  q and k go through
    together (x = qkv[:2]): at one event per generation step the number of ops is what costs."""
    if cos.dtype != x.dtype:
        cos, signed_sin = cos.to(x.dtype), signed_sin.to(x.dtype)
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def attention(q, k, v, **options):
    """Scaled dot-product attention: SDPA's fused flash kernel, except in bf16 training on a CPU.

    There the flash kernel's bf16 backward took longer than its fp32 one (profile of
    ``benchmarks/train_throughput.py --profile``), so causal attention is written out instead: two bf16
    matrix products on the AMX units (the first adds the causal mask and scales as it multiplies) and a
    softmax that reads and writes bf16 (it sums in fp32 inside).  No dropout on the attention weights
    either way."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        if options.get("is_causal") and options.get("attn_mask") is None:
            B, H, T, E = q.shape
            scores = torch.baddbmm(_future(T, q.device), q.reshape(B * H, T, E), k.reshape(B * H, T, E).transpose(1, 2),
                                   alpha=1.0 / math.sqrt(E))
            return (torch.softmax(scores, dim=-1, dtype=torch.bfloat16) @ v.reshape(B * H, T, E)).view(B, H, T, E)
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **options).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **options)


_FUTURE: dict = {}


def _future(T: int, device) -> torch.Tensor:
    """[T, T] bf16: -inf above the diagonal (the later events a causal position must not see), else 0;
    made once per length."""
    key = (T, str(device))
    if key not in _FUTURE:
        _FUTURE[key] = torch.full((T, T), float("-inf"), device=device).triu(1).to(torch.bfloat16)
    return _FUTURE[key]


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.hidden
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, rope, cache):
        B, T, D = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.n_heads, D // self.n_heads)
        # one copy into [3, B, heads, T, head_dim]: rope then runs on contiguous memory (bf16 ~1.7x as
        # fast as on the strided view) and attention reads q, k and v as they are, without a copy each.
        # A split, not two slices: its backward is one concatenation, not two zero-filled full copies
        qk, v = qkv.permute(2, 0, 3, 1, 4).contiguous().split([2, 1])
        qk = apply_rope(qk, *rope) if rope is not None else qk
        q, k, v = qk[0], qk[1], v[0]
        past = 0
        if cache is not None:
            k, v, past = self._remember(cache, k, v)
        if past == 0:
            y = attention(q, k, v, is_causal=T > 1)
        elif T == 1:
            y = attention(q, k, v)  # one new event sees all the past
        else:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            y = attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.ff(self.ln2(x)))

    @staticmethod
    def _remember(cache: dict, k, v):
        """Append the new keys/values to the layer's cache, written in place into a buffer
        sized for the whole context (no copy of the past per new event)."""
        past, T = cache.get("len", 0), k.shape[2]
        if "k" not in cache or cache["k"].shape[2] < past + T:
            size = max(cache.get("capacity", 0), past + T)
            for name, new in (("k", k), ("v", v)):
                buffer = new.new_empty(new.shape[0], new.shape[1], size, new.shape[3])
                if past:
                    buffer[:, :, :past] = cache[name][:, :, :past]
                cache[name] = buffer
        cache["k"][:, :, past:past + T] = k
        cache["v"][:, :, past:past + T] = v
        cache["len"] = past + T
        return cache["k"][:, :, :past + T], cache["v"][:, :, :past + T], past


class TransformerNet(EventNet):
    def __init__(self, vocab: Vocab, cfg: TransformerConfig):
        super().__init__(vocab, cfg)
        self.inp = nn.Linear(self.input_dim, cfg.hidden)
        self.pos = nn.Embedding(cfg.context, cfg.hidden) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2 style: residual projections scaled by depth
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def empty_state(self, batch: int):
        return {"layers": [{"capacity": self.cfg.context} for _ in self.blocks], "x": None}

    def features(self, x: torch.Tensor, state=None):
        """x [B, T, input_dim]; ``state`` None for training, else a KV cache that is extended."""
        if state is None:
            return self._run(x, 0, None), None
        seen = state["x"]
        history = x if seen is None else torch.cat([seen, x], dim=1)
        if history.shape[1] > self.cfg.context:
            # past the trained span: re-encode the most recent half-context from scratch
            keep = max(self.cfg.context // 2, min(x.shape[1], self.cfg.context))
            history = history[:, -keep:]
            state = self.empty_state(x.shape[0])
            h = self._run(history, 0, state["layers"])[:, -x.shape[1]:]
        else:
            start = 0 if seen is None else seen.shape[1]
            h = self._run(x, start, state["layers"])
        state["x"] = history
        return h, state

    def _rope(self, start: int, T: int, device):
        """Rotary tables for positions start..start+T-1, computed once per device and length."""
        tables = getattr(self, "_rope_tables", None)
        if tables is None or tables[0].shape[0] < start + T or tables[0].device != device:
            n = max(start + T, self.cfg.context)
            tables = rope_tables(torch.arange(n, device=device), self.cfg.hidden // self.cfg.n_heads)
            self._rope_tables = tables
        return tables[0][start:start + T], tables[1][start:start + T]

    def _run(self, x, start: int, caches):
        T = x.shape[1]
        h = self.inp(x)
        rope = None
        if self.pos is not None:
            h = h + self.pos(torch.arange(start, start + T, device=x.device))
        else:
            rope = self._rope(start, T, x.device)
        h = self.dropout(h)
        for i, block in enumerate(self.blocks):
            h = block(h, rope, None if caches is None else caches[i])
        return self.ln_f(h)


class TransformerModel(NeuralModel):
    family = "transformer"
    config_class = TransformerConfig
    net_class = TransformerNet

    def window(self, length: int) -> tuple[int, int]:
        """Songs longer than the context are read in windows of ``context`` events, each scoring
        its last ``context // 2`` (every prediction sees at least half a context)."""
        if length - 1 > self.cfg.context:
            return self.cfg.context, self.cfg.context // 2
        return length, length
