"""Representations: note tables <-> integer event streams (one file per representation).

    rep = get_representation("events", {"velocity_bins": 8})
    streams = rep.encode_song(notes)           # {"shift": ids, "pitch": ids, ...}, [BOS ... EOS]
    notes_back = rep.decode(streams)           # == rep.quantize(notes), as a multiset
    data = load_or_encode("corpus", "events")  # a whole corpus, cached and memory-mapped
    rep = from_vocab(model.vocab)              # the representation a saved model was trained on

``seed`` reproduces the original experiment (pitch class + five durations);
``events`` is the full polyphonic encoding.  See ``base.py`` for the shared
interface and ``vocab.py`` for streams and special ids.
"""

from __future__ import annotations

from notelm.encoding.base import Representation
from notelm.encoding.cache import EncodedCorpus, cache_path, load_or_encode
from notelm.encoding.events import Events
from notelm.encoding.seed import Seed
from notelm.encoding.vocab import BOS, EOS, PAD, Stream, Vocab
from notelm.io import NotelmError

REPRESENTATIONS: dict[str, type[Representation]] = {"seed": Seed, "events": Events}


def representation_class(name: str) -> type[Representation]:
    if name not in REPRESENTATIONS:
        raise NotelmError(f"unknown representation {name!r}; choose one of {', '.join(REPRESENTATIONS)}")
    return REPRESENTATIONS[name]


def get_representation(name: str, config: dict | None = None) -> Representation:
    """A representation with its settings checked and completed (unknown key / wrong type: NotelmError)."""
    return representation_class(name)(config)


def from_vocab(vocab: Vocab) -> Representation:
    """The representation (with its exact settings) that produced ``vocab``."""
    return get_representation(vocab.representation, vocab.config)


def encode_corpus(corpus, representation: str = "events", config: dict | None = None, progress: bool = False) -> EncodedCorpus:
    """A ``Corpus`` -> ``EncodedCorpus`` in memory, no cache (``load_or_encode`` caches)."""
    return get_representation(representation, config).encode_corpus(corpus, progress=progress)


def parse_settings(representation: str, items: list[str] | None) -> dict:
    """CLI ``--set key=value`` items -> typed settings for ``representation``."""
    return representation_class(representation).parse_settings(items)


__all__ = ["REPRESENTATIONS", "Representation", "Seed", "Events", "EncodedCorpus", "Vocab", "Stream", "PAD", "BOS",
           "EOS", "get_representation", "from_vocab", "encode_corpus", "load_or_encode", "cache_path", "parse_settings"]
