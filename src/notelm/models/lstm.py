"""The original experiment's architecture: stream embeddings -> LSTM -> one head per stream.

The state (h, c) carries the whole past, so generation costs one LSTM step per
new event and evaluation reads a whole song in one pass.

The layers are single-layer ``nn.LSTM`` modules stacked by hand, with locked
(variational) dropout between them: a multi-layer ``nn.LSTM`` with dropout
leaves oneDNN's fused kernels, and under bf16 autocast those kernels are what
makes training about twice as fast on a CPU with AMX.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from notelm.encoding.vocab import Vocab
from notelm.models.neural import EventNet, NetConfig, NeuralModel


@dataclass
class LSTMConfig(NetConfig):
    """``[model]`` of ``family = "lstm"``: the shared neural settings, nothing more."""

    family: ClassVar[str] = "lstm"


class LSTMNet(EventNet):
    locked_dropout = True

    def __init__(self, vocab: Vocab, cfg: LSTMConfig):
        super().__init__(vocab, cfg)
        self.layers = nn.ModuleList(nn.LSTM(self.input_dim if i == 0 else cfg.hidden, cfg.hidden, batch_first=True)
                                    for i in range(cfg.layers))

    @classmethod
    def upgrade_keys(cls, tensors: dict) -> dict:
        """Checkpoints written before the layers were separate modules: ``lstm.weight_ih_l1`` is
        ``layers.1.weight_ih_l0`` now (same tensor)."""
        def new_name(key: str) -> str:
            m = re.fullmatch(r"lstm\.(weight|bias)_(ih|hh)_l(\d+)", key)
            return f"layers.{m[3]}.{m[1]}_{m[2]}_l0" if m else key
        return {new_name(k): v for k, v in tensors.items()}

    def features(self, x: torch.Tensor, state=None):
        """x [B, T, input_dim] -> (h [B, T, hidden], (h_n, c_n) each [layers, B, hidden])."""
        if x.shape[1] == 1 and state is not None and not self.training:
            return self._step(x, state)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            x, (h, c) = layer(x, None if state is None else (state[0][i:i + 1], state[1][i:i + 1]))
            hs.append(h)
            cs.append(c)
        return self.dropout(x), (torch.cat(hs), torch.cat(cs))

    def _step(self, x: torch.Tensor, state):
        """One event through the same weights with lstm_cell: about 3x less overhead than
        nn.LSTM on a length-1 sequence, which is what generation runs once per note."""
        h0, c0 = state[0].float(), state[1].float()  # lstm_cell is not autocast: all in the weights' fp32
        inp, hs, cs = x[:, 0].float(), [], []
        for i, layer in enumerate(self.layers):
            h, c = torch.lstm_cell(inp, (h0[i], c0[i]), *layer.all_weights[0])
            hs.append(h)
            cs.append(c)
            inp = h
        return inp[:, None], (torch.stack(hs), torch.stack(cs))


class LSTMModel(NeuralModel):
    family = "lstm"
    config_class = LSTMConfig
    net_class = LSTMNet
