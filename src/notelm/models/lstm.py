"""The original experiment's architecture: stream embeddings -> LSTM -> one head per stream.

The state (h, c) carries the whole past, so generation costs one LSTM step per
new event and evaluation reads a whole song in one pass.
"""

from __future__ import annotations

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
    def __init__(self, vocab: Vocab, cfg: LSTMConfig):
        super().__init__(vocab, cfg)
        self.lstm = nn.LSTM(self.input_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def features(self, x: torch.Tensor, state=None):
        if x.shape[1] == 1 and state is not None and not self.training:
            return self._step(x, state)
        h, state = self.lstm(x, state)
        return self.dropout(h), state

    def _step(self, x: torch.Tensor, state):
        """One event through the same weights with lstm_cell: about 3x less overhead than
        nn.LSTM on a length-1 sequence, which is what generation runs once per note."""
        h0, c0 = state
        inp, hs, cs = x[:, 0], [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.lstm.all_weights):
            h, c = torch.lstm_cell(inp, (h0[layer], c0[layer]), w_ih, w_hh, b_ih, b_hh)
            hs.append(h)
            cs.append(c)
            inp = h
        return inp[:, None], (torch.stack(hs), torch.stack(cs))


class LSTMModel(NeuralModel):
    family = "lstm"
    config_class = LSTMConfig
    net_class = LSTMNet
