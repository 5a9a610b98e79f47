"""Representations: note tables <-> integer event streams (one file per representation).

    rep = get_representation("events", {"velocity_bins": 8})
    streams = rep.encode_song(notes)           # {"shift": ids, "pitch": ids, ...}, [BOS ... EOS]
    notes_back = rep.decode(streams)           # == rep.quantize(notes), as a multiset
    data = load_or_encode("corpus", "events")  # a whole corpus, cached and memory-mapped
    rep = from_vocab(model.vocab)              # the representation a saved model was trained on

``REPRESENTATIONS`` is the one list of representations: validation, the command
line, statistics and the tests all read it, so a new representation is a new
file here plus one line in it.  ``seed`` reproduces the original experiment
(pitch class + five durations); ``events`` is the full polyphonic encoding.
See ``base.py`` for the interface, ``vocab.py`` for streams and special ids and
``cache.py`` for encoded corpora on disk.
"""

from __future__ import annotations

import time

from notelm.encoding.base import Representation
from notelm.encoding.cache import EncodedCorpus, cache_path, cached_encoding
from notelm.encoding.cache import encode_corpus as encode_with
from notelm.encoding.events import Events
from notelm.encoding.seed import Seed
from notelm.encoding.steps import Steps
from notelm.encoding.vocab import BOS, EOS, PAD, Stream, Vocab
from notelm.io import NotelmError

REPRESENTATIONS: dict[str, type[Representation]] = {
    "seed": Seed,
    "events": Events,
    "steps": Steps,
}


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


def encode_corpus(corpus, representation: str = "events", config: dict | None = None,
                  progress: bool = False) -> EncodedCorpus:
    """A ``Corpus`` -> ``EncodedCorpus`` in memory, no cache (``load_or_encode`` caches)."""
    return encode_with(get_representation(representation, config), corpus, progress=progress)


def load_or_encode(corpus_path, representation: str = "events", config: dict | None = None, progress: bool = False,
                   force: bool = False, log=None, condition: str = "collection") -> EncodedCorpus:
    """The encoded corpus for these settings: read from the cache, or encoded and cached; its conditions
    name the song label ``condition`` (collection, group or none)."""
    return cached_encoding(corpus_path, get_representation(representation, config), progress, force, log, condition)


def parse_settings(representation: str, items: list[str] | None) -> dict:
    """CLI ``--set key=value`` items -> typed settings for ``representation``."""
    return representation_class(representation).parse_settings(items)


def encode(corpus_path, representation: str, settings: list[str] | None = None, force: bool = False,
           progress: bool = True, log=print) -> EncodedCorpus:
    """``notelm encode``: encode (or find in the cache) and print a one-line summary."""
    from notelm.names import plural

    overrides = parse_settings(representation, settings)
    started = time.perf_counter()
    encoded = load_or_encode(corpus_path, representation, overrides, progress=progress, force=force, log=log)
    elapsed = time.perf_counter() - started
    how = "found in the cache" if encoded.cached else "encoded"
    per_event = encoded.nbytes / max(encoded.n_events, 1)
    log(f"{how}: {plural(len(encoded), 'song')}, {plural(encoded.n_events, 'event')}, "
        f"{plural(len(encoded.vocab.streams), 'stream')} ({per_event:.1f} bytes/event) as {representation} in "
        f"{elapsed:.2f} s -> {encoded.path or '(memory only)'}")
    return encoded


__all__ = ["REPRESENTATIONS", "Representation", "Seed", "Events", "EncodedCorpus", "Vocab", "Stream", "PAD", "BOS",
           "EOS", "get_representation", "from_vocab", "encode_corpus", "load_or_encode", "cache_path",
           "parse_settings", "encode", "representation_class"]
