"""Streams and vocabularies shared by every representation.

An encoded song is a ``dict[str, np.ndarray]``: one integer stream per event
attribute (e.g. ``pitch``, ``duration``), all of the same length, one entry per
event.  Every stream reserves the same three special ids, so a position is a
padding, begin-of-piece or end-of-piece event in all streams at once::

    PAD = 0    fills batches past a song's end; never a target
    BOS = 1    first event of every song
    EOS = 2    last event of every song
    3 ...      the stream's own values, named in ``Stream.tokens``

A ``Vocab`` lists the streams (in the order ordered heads predict them) and the
optional per-piece condition values (collection / composer / genre).  It is
saved as JSON with every encoded corpus and every model trained on one, and two
vocabularies must be equal for a model to read a corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from notelm.io import NotelmError

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
N_SPECIAL = len(SPECIALS)
UNCONDITIONED = 0  # condition id meaning "no collection given"; real values start at 1


@dataclass
class Stream:
    name: str
    tokens: list[str]  # names of the regular values; id = N_SPECIAL + index

    @property
    def size(self) -> int:
        return N_SPECIAL + len(self.tokens)

    def id_of(self, token: str) -> int:
        return N_SPECIAL + self.tokens.index(token)

    def name_of(self, token_id: int) -> str:
        return SPECIALS[token_id] if token_id < N_SPECIAL else self.tokens[token_id - N_SPECIAL]

    @property
    def dtype(self):
        return np.uint8 if self.size <= 256 else np.uint16


@dataclass
class Vocab:
    representation: str  # a name in encoding.REPRESENTATIONS
    config: dict  # the encoder's settings (grid, caps, flags): part of the identity
    streams: list[Stream]
    conditions: list[str] = field(default_factory=list)  # id = 1 + index; 0 = unconditioned
    condition_label: str = "collection"  # the song label the conditions name: collection, group or none
    form: dict = field(default_factory=dict)  # condition name ("" = all) -> its form (form.corpus_forms)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.streams]

    @property
    def sizes(self) -> list[int]:
        return [s.size for s in self.streams]

    def stream(self, name: str) -> Stream:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    def condition_id(self, name: str | None) -> int:
        if name is None:
            return UNCONDITIONED
        if name not in self.conditions:
            valid = ", ".join(self.conditions) or "(none: this model was trained without conditioning)"
            raise NotelmError(f"unknown {self.condition_label} {name!r}; valid names: {valid}")
        return 1 + self.conditions.index(name)

    def form_of(self, name: str | None) -> dict:
        """The form (meter, key, tempo, programs per part) of a condition's training songs, or of all of them."""
        return self.form.get(name or "", self.form.get("", {}))

    def to_json(self) -> dict:
        return {
            "representation": self.representation,
            "config": self.config,
            "streams": [{"name": s.name, "tokens": s.tokens} for s in self.streams],
            "conditions": self.conditions,
            "condition_label": self.condition_label,
            "form": self.form,
        }

    @classmethod
    def from_json(cls, obj: dict) -> Vocab:
        try:
            form = obj.get("form", {})
            if not isinstance(form, dict) or not all(isinstance(v, dict) for v in form.values()):
                raise TypeError("'form'")
            return cls(obj["representation"], dict(obj["config"]),
                       [Stream(s["name"], list(s["tokens"])) for s in obj["streams"]], list(obj.get("conditions", [])),
                       str(obj.get("condition_label", "collection")), form)
        except (KeyError, TypeError) as e:
            raise NotelmError(f"malformed vocabulary: missing or wrong field {e}") from None

    def differences(self, other: Vocab) -> list[str]:
        """Human-readable reasons why ``other`` cannot be read by a model of ``self`` (empty: compatible)."""
        out = []
        if self.representation != other.representation:
            out.append(f"representation {other.representation!r} != {self.representation!r}")
        if self.config != other.config:
            keys = sorted(set(self.config) | set(other.config))
            diff = [f"{k}: {other.config.get(k)!r} vs {self.config.get(k)!r}" for k in keys
                    if self.config.get(k) != other.config.get(k)]
            out.append("encoder settings differ (" + "; ".join(diff) + ")")
        if self.names != other.names:
            out.append(f"streams {other.names} != {self.names}")
        else:
            for a, b in zip(self.streams, other.streams):
                if a.tokens != b.tokens:
                    new = [t for t in b.tokens if t not in a.tokens][:5]
                    gone = [t for t in a.tokens if t not in b.tokens][:5]
                    out.append(f"stream {a.name!r} has {b.size} values, the model expects {a.size}"
                               + (f"; not known to the model: {', '.join(new)}" if new else "")
                               + (f"; missing: {', '.join(gone)}" if gone else ""))
        return out

    def check_ids(self, streams: dict[str, np.ndarray]) -> None:
        """Raise if any id is out of its stream's range (vocabularies are closed)."""
        for s in self.streams:
            values = streams[s.name]
            if len(values) and (values.min() < 0 or values.max() >= s.size):
                raise NotelmError(f"stream {s.name!r} holds ids outside 0..{s.size - 1}")


def mixed_radix(values: np.ndarray, sizes: list[int]) -> np.ndarray:
    """One int64 id per position from the stream ids ``values`` ``[S, ...]`` (the first stream the most
    significant digit, ``sizes`` the radices): a whole event as one number."""
    ids = np.zeros(np.shape(values)[1:], np.int64)
    for row, size in zip(values, sizes):
        ids = ids * size + np.asarray(row, np.int64)
    return ids


def event_ids(streams: dict[str, np.ndarray], vocab: Vocab) -> np.ndarray:
    """Each event as one int64 id (all its stream values, mixed radix); special events dropped."""
    values = np.stack([np.asarray(streams[name], np.int64) for name in vocab.names])
    return mixed_radix(values[:, (values >= N_SPECIAL).all(0)], vocab.sizes)
