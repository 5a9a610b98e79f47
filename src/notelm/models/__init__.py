"""Model families: one file and one class each, all listed in ``FAMILIES``.

``FAMILIES`` is the one list of model families: validation of ``[model]``,
building, saving and loading (``checkpoint.py``) and the tests all read it, so a
new family is a new file here plus one line in it.  Every family implements the
``NextEventModel`` interface of ``base.py`` and names its settings dataclass
(``config_class``); ``trainable`` families are trained by ``train.py``, the
others are fitted by counting.
"""

from __future__ import annotations

from notelm.io import NotelmError
from notelm.models.base import NextEventModel
from notelm.models.baselines import MajorityModel, StratifiedModel
from notelm.models.lstm import LSTMModel
from notelm.models.ngram import NGramModel
from notelm.models.steps_lstm import StepsLSTMModel
from notelm.models.transformer import TransformerModel

FAMILIES: dict[str, type[NextEventModel]] = {
    "majority": MajorityModel,
    "stratified": StratifiedModel,
    "ngram": NGramModel,
    "lstm": LSTMModel,
    "transformer": TransformerModel,
    "steps_lstm": StepsLSTMModel,
}


def family_class(name: str) -> type[NextEventModel]:
    if name not in FAMILIES:
        raise NotelmError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def trainable_families() -> list[str]:
    """The families ``notelm train`` trains (the others are fitted by counting)."""
    return [name for name, cls in FAMILIES.items() if cls.trainable]


def build_model(vocab, cfg, device: str = "cpu") -> NextEventModel:
    """An untrained model of the family ``cfg`` belongs to (``cfg``: that family's config dataclass)."""
    return family_class(cfg.family).build(vocab, cfg, device=device)


__all__ = ["FAMILIES", "NextEventModel", "family_class", "trainable_families", "build_model"]
