"""The original experiment's architecture: stream embeddings -> LSTM -> one head per stream.

The state (h, c) carries the whole past, so generation costs one LSTM step per
new event and evaluation reads a whole song in one pass.
"""

from __future__ import annotations

import torch
from torch import nn

from notelm.encoding.vocab import Vocab
from notelm.models.neural import EventNet, ModelConfig


class LSTMNet(EventNet):
    def __init__(self, vocab: Vocab, cfg: ModelConfig):
        super().__init__(vocab, cfg)
        self.lstm = nn.LSTM(self.input_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def features(self, x: torch.Tensor, state=None):
        h, state = self.lstm(x, state)
        return self.drop(h), state
