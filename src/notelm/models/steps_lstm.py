"""``steps_lstm``: an LSTM over the ``steps`` representation that knows what a time step is.

A plain LSTM over a piano roll written step by step (``encoding/steps.py``) sees
one key at a time and has to remember by itself which keys sounded a step ago.
This family reads the roll so far from the tokens and hands it over.  At every
position it knows

* ``prev``: the keys of the previous time step (88-hot),
* ``cur``: the keys already written in the step in progress, and how many,
* the interval from the token's key to the key below it in its step (for a
  step's lowest key: to the previous step's lowest key), and to the previous
  step's key of the same rank (its "voice"),

and its head scores each key ``k`` as the LSTM's logit for ``k`` plus

* a kernel over the previous step's keys near ``k`` (``k - reach .. k + reach``),
  its weights computed from the LSTM state: "hold", "move by a tone"...;
* a logit per interval from a reference key (the key just written, else the
  previous step's lowest key);
* a logit per interval from the previous step's key of the rank being written;

and rules out what the representation never writes: any key at or below the
key just written (a step's keys are ascending), PAD and BOS, and EOS in the
middle of a step.  The result is still one softmax per token, so the
probability of a step stays exact.

The context is computed from the token sequence with a few tensor operations
(``step_context``), the same code for a training crop, a whole song and one
generated token (``carry`` holds the two rolls between calls).  A training crop
that starts in the middle of a song sees its first step without the one before
it; a whole song (evaluation, generation) is always read from its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from notelm.encoding import from_vocab
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL, PAD, Vocab
from notelm.io import NotelmError
from notelm.models.neural import EventNet, NetConfig, NeuralModel, _inference
from notelm.settings import setting

KEYS = 88
NO_INTERVAL = 2 * KEYS + 1  # the interval embedding's "no reference key"
MAX_COUNT = 16  # keys already written in a step, as the model is told (more are told as 16)


@dataclass
class StepsLSTMConfig(NetConfig):
    """``[model]`` of ``family = "steps_lstm"``: the shared neural settings plus the kernel's reach."""

    family: ClassVar[str] = "steps_lstm"
    embed_dim: int = setting(64, "width of the token, interval and count embeddings", minimum=1)
    dropout: float = setting(0.3, "dropout on the inputs and before the heads", minimum=0.0, below=1.0)
    reach: int = setting(12, "semitones either side of a key that its kernel over the previous step sees", minimum=0)
    bf16: bool = setting(True, "bfloat16 autocast of the forward pass on CPU (weights stay fp32)")


def step_context(tokens: torch.Tensor, carry=None) -> dict:
    """What the roll says at every position of ``tokens`` [B, T] (ids of the steps representation).

    ``prev`` / ``cur`` [B, T, 88]: the step before the next token's step, and the keys of the next
    token's step written so far; ``last`` [B, T]: the key of the token (-1: not a key); ``carry``:
    (prev, cur) after the last position, to continue with the next tokens of the same pieces.
    """
    B, T = tokens.shape
    key = tokens - N_SPECIAL
    is_step = key == KEYS
    is_key = (key >= 0) & (key < KEYS)
    ends = is_step.long().cumsum(1)  # end-of-step tokens among 0..i: the next token's step, counted from here
    own = ends - is_step.long()  # the step token i belongs to
    rolls = torch.zeros(B, T + 2, KEYS, device=tokens.device)  # [carried prev, step 0 (with carried cur), 1, ...]
    if carry is not None:
        rolls[:, 0], rolls[:, 1] = carry
    b, t = is_key.nonzero(as_tuple=True)
    rolls[b, own[b, t] + 1, key[b, t]] = 1.0
    batch = torch.arange(B, device=tokens.device)[:, None]
    last = torch.where(is_key, key, -1)
    prev = rolls[batch, ends]
    cur = rolls[batch, ends + 1] * (torch.arange(KEYS, device=tokens.device) <= last[..., None])
    return {"prev": prev, "cur": cur, "last": last, "is_key": is_key,
            "count": cur.sum(-1).long().clamp(max=MAX_COUNT), "carry": (prev[:, -1], cur[:, -1])}


def lowest_key(roll: torch.Tensor) -> torch.Tensor:
    """Lowest sounding key of each roll [..., 88]; -1 where none sounds."""
    return torch.where(roll.any(-1), roll.argmax(-1), -1)


def highest_key(roll: torch.Tensor) -> torch.Tensor:
    return torch.where(roll.any(-1), KEYS - 1 - roll.flip(-1).argmax(-1), -1)


def key_of_rank(roll: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The key of rank ``rank`` (0: lowest) sounding in each roll [..., 88]; -1 where fewer keys sound."""
    hit = (roll > 0) & (roll.cumsum(-1) == (rank[..., None] + 1).to(roll.dtype))
    return torch.where(hit.any(-1), hit.float().argmax(-1), -1)


def interval_index(key: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Embedding index of the interval key - ref (+88), or NO_INTERVAL where there is no key or reference."""
    return torch.where((key >= 0) & (ref >= 0), key - ref + KEYS, NO_INTERVAL)


def by_interval(logits: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-key logits [..., 88] read from per-interval logits [..., 2 * 88 + 1] at (key - ref); 0 without ref."""
    keys = torch.arange(KEYS, device=ref.device)
    index = (keys - ref[..., None] + KEYS).clamp(0, 2 * KEYS)
    return torch.where(ref[..., None] >= 0, logits.gather(-1, index), 0.0)


class StepsLSTMNet(EventNet):
    def __init__(self, vocab: Vocab, cfg: StepsLSTMConfig):
        super().__init__(vocab, cfg)
        if from_vocab(vocab).step_token() != N_SPECIAL + KEYS or len(vocab.streams) != 1:
            raise NotelmError(f"the steps_lstm family reads the steps representation only, not "
                              f"{vocab.representation}; choose the lstm or transformer family")
        e, h = cfg.embed_dim, cfg.hidden
        self.interval_embed = nn.Embedding(NO_INTERVAL + 1, e)
        self.rank_embed = nn.Embedding(NO_INTERVAL + 1, e)
        self.count_embed = nn.Embedding(MAX_COUNT + 1, e)
        self.prev_map = nn.Linear(KEYS, 2 * e, bias=False)
        self.cur_map = nn.Linear(KEYS, e, bias=False)
        self.lstm = nn.LSTM(self.input_dim + 4 * e, h, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.kernel = nn.Linear(h, 2 * cfg.reach + 1)
        self.interval_head = nn.Linear(h, 2 * KEYS + 1)
        self.rank_head = nn.Linear(h, 2 * KEYS + 1)

    def precision(self, device: torch.device):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16 and device.type == "cpu")

    def inputs(self, tokens: torch.Tensor, cond, ctx: dict) -> torch.Tensor:
        """[B, T, S=1] tokens and their context -> the LSTM's input."""
        key, prev, cur = ctx["last"], ctx["prev"], ctx["cur"]
        below = highest_key(cur * (torch.arange(KEYS, device=cur.device) < key[..., None]))
        ref = torch.where(below >= 0, below, lowest_key(prev))
        same_rank = key_of_rank(prev, ctx["count"] - 1)
        z = (self.interval_embed(interval_index(key, ref)) + self.rank_embed(interval_index(key, same_rank))
             + self.count_embed(ctx["count"]))
        parts = [self.embed(tokens, cond), self.dropout(z), self.dropout(self.prev_map(prev)),
                 self.dropout(self.cur_map(cur))]
        return torch.cat(parts, -1)

    def features(self, x: torch.Tensor, state=None):
        h, state = self.lstm(x, state)
        return self.dropout(h), state

    def scores(self, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Logits over the whole vocabulary [B, T, V] from the LSTM output and the context."""
        prev, last = ctx["prev"], ctx["last"]
        logits = self.heads[0](h).float()
        r = self.cfg.reach
        window = F.pad(prev, (r, r)).unfold(-1, 2 * r + 1, 1)  # [B, T, 88, 2r + 1]: prev around each key
        keys = logits[..., N_SPECIAL:N_SPECIAL + KEYS] + torch.einsum("btkj,btj->btk", window,
                                                                      self.kernel(h).float())
        ref = torch.where(last >= 0, last, lowest_key(prev))
        keys = keys + by_interval(self.interval_head(h).float(), ref)
        keys = keys + by_interval(self.rank_head(h).float(), key_of_rank(prev, ctx["count"]))
        keys = keys.masked_fill(torch.arange(KEYS, device=h.device) <= last[..., None], float("-inf"))
        special = logits[..., :N_SPECIAL].clone()
        special[..., [PAD, BOS]] = float("-inf")
        special[..., EOS] = special[..., EOS].masked_fill(last >= 0, float("-inf"))
        return torch.cat([special, keys, logits[..., N_SPECIAL + KEYS:]], -1)

    def forward(self, tokens, cond=None, targets=None, state=None, carry=None):
        """Teacher-forced logits ``[[B, T, V]]`` and the LSTM state (``targets``: unused, one stream)."""
        ctx = step_context(tokens[..., 0], carry)
        with self.precision(tokens.device):
            h, state = self.features(self.inputs(tokens, cond, ctx), state)
            return [self.scores(h, ctx)], state


class StepsLSTMModel(NeuralModel):
    family = "steps_lstm"
    representations = ("steps",)
    config_class = StepsLSTMConfig
    net_class = StepsLSTMNet

    def _read(self, tokens: np.ndarray, cond: torch.Tensor, state=None) -> dict:
        """Read tokens [B, P] after ``state`` (None: from the start): the state after them."""
        net = self.net
        x = torch.as_tensor(np.asarray(tokens, np.int64), device=self.device)[..., None]
        ctx = step_context(x[..., 0], state["ctx"]["carry"] if state else None)
        with net.precision(self.device):
            h, lstm = net.features(net.inputs(x, cond, ctx), state["lstm"] if state else None)
        last = {k: v[:, -1:] for k, v in ctx.items() if k != "carry"}
        return {"h": h[:, -1:], "lstm": lstm, "ctx": {**last, "carry": ctx["carry"]}, "cond": cond}

    @_inference
    def begin(self, prompt: dict[str, np.ndarray], cond: np.ndarray):
        self.net.eval()
        c = torch.as_tensor(np.asarray(cond, np.int64), device=self.device)
        return self._read(prompt[self.vocab.names[0]], c)

    @_inference
    def stream_logprobs(self, state, k: int, chosen: list[np.ndarray]) -> np.ndarray:
        with self.net.precision(self.device):
            logits = self.net.scores(state["h"], state["ctx"])[:, 0]
        return torch.log_softmax(logits.float(), -1).cpu().numpy()

    @_inference
    def advance(self, state, event: dict[str, np.ndarray]):
        return self._read(np.asarray(event[self.vocab.names[0]], np.int64)[:, None], state["cond"], state)
