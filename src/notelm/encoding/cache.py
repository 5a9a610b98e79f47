"""Encoded corpora on disk, next to the corpus, memory-mapped.

Layout of ``<corpus>/encoded/<representation>-<hash of settings>/``::

    <stream>.npy   one per stream: all songs' ids, song after song, each [BOS ... EOS]
                   (uint8 when the stream's vocabulary fits, else uint16)
    offsets.npy    int64 [n_songs + 1]: song i is positions offsets[i]:offsets[i+1]
    cond.npy       int32 [n_songs]: condition id (1 + index of the song's collection; 0 = none)
                   (``with_conditions`` replaces it on load when a model is conditioned on another label)
    split.npy      int8  [n_songs]: 0 train, 1 valid, 2 test
    vocab.json     the Vocab (representation, resolved settings, streams, conditions)
    info.json      counts, encode time, and which corpus build it came from

The directory name carries a hash of the representation, its resolved
settings and ``ENCODER_VERSION``: asking for other settings encodes anew, the
same settings reuse the cache.  A cache written for an older build of the
corpus (``prepare --force``) is re-encoded.  Directories are written with
``atomic_dir``, so a reader never sees half a cache.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from notelm.corpus import SPLITS, Corpus
from notelm.encoding.base import song_chunks
from notelm.encoding.vocab import N_SPECIAL, UNCONDITIONED, Vocab
from notelm.io import NotelmError, atomic_dir, read_json, write_json

ENCODER_VERSION = 1  # bump when an encoder's output changes for the same settings: old caches are then ignored
CHUNK_NOTES = 50_000  # notes per step of encode_corpus: steps this small stay in cache (2x faster than one big step)


def split_codes(names) -> np.ndarray:
    """Split names (``corpus.SPLITS``) -> their index (0 train, 1 valid, 2 test; -1 none)."""
    names = np.asarray(names).astype(str)
    codes = np.full(len(names), -1, np.int8)
    for code, name in enumerate(SPLITS):
        codes[names == name] = code
    return codes


def condition_ids(vocab: Vocab, collections) -> np.ndarray:
    """Condition id of every song from its collection name (vocab.conditions are sorted names; 0 = none)."""
    names, inverse = np.unique(np.asarray(collections).astype(str), return_inverse=True)
    known = np.asarray(vocab.conditions, dtype=str)
    if not len(known) or not len(names):
        return np.full(len(inverse), UNCONDITIONED, np.int32)
    at = np.minimum(np.searchsorted(known, names), len(known) - 1)
    ids = np.where(known[at] == names, at + 1, UNCONDITIONED).astype(np.int32)
    return ids[inverse.reshape(-1)]


class EncodedCorpus:
    """All songs of a corpus as event streams: ``streams[name][offsets[i]:offsets[i + 1]]`` is song ``i``."""

    def __init__(self, vocab: Vocab, streams: dict[str, np.ndarray], offsets: np.ndarray, cond: np.ndarray,
                 split: np.ndarray, path: Path | None = None):
        self.vocab = vocab
        self.streams = streams
        self.offsets = offsets
        self.cond = cond
        self.split = split
        self.path = path
        self.seconds = 0.0  # time it took to encode (0 when read from the cache)
        self.cached = False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_positions(self) -> int:
        """Stream length: events plus one BOS and one EOS per song."""
        return int(self.offsets[-1])

    @property
    def n_events(self) -> int:
        """Events, not counting BOS/EOS."""
        return self.n_positions - 2 * len(self)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.streams.values())

    def song(self, i: int) -> dict[str, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return {name: s[a:b] for name, s in self.streams.items()}

    def ids(self, split: str = "all") -> np.ndarray:
        """Song ids of a split ("train", "valid", "test" or "all")."""
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLITS:
            raise NotelmError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
        return np.flatnonzero(self.split == SPLITS.index(split)).astype(np.int64)

    def token_counts(self, stream: str) -> dict[str, int]:
        """How often each regular value of a stream occurs (BOS/EOS/PAD left out)."""
        s = self.vocab.stream(stream)
        counts = np.bincount(np.asarray(self.streams[stream]), minlength=s.size)
        return {name: int(c) for name, c in zip(s.tokens, counts[N_SPECIAL:])}

    # ------------------------------------------------------------------ disk
    def save(self, path, info: dict | None = None) -> None:
        path = Path(path)
        with atomic_dir(path) as tmp:
            for s in self.vocab.streams:
                np.save(tmp / f"{s.name}.npy", np.asarray(self.streams[s.name], s.dtype))
            np.save(tmp / "offsets.npy", np.asarray(self.offsets, np.int64))
            np.save(tmp / "cond.npy", np.asarray(self.cond, np.int32))
            np.save(tmp / "split.npy", np.asarray(self.split, np.int8))
            write_json(tmp / "vocab.json", self.vocab.to_json())
            write_json(tmp / "info.json", {"songs": len(self), "events": self.n_events, "bytes": self.nbytes,
                                           "encode_seconds": round(self.seconds, 3), **(info or {})})
        self.path = path

    @classmethod
    def load(cls, path) -> EncodedCorpus:
        path = Path(path)
        try:
            vocab = Vocab.from_json(read_json(path / "vocab.json"))
            streams = {s.name: np.load(path / f"{s.name}.npy", mmap_mode="r") for s in vocab.streams}
            offsets = np.load(path / "offsets.npy")
            cond = np.load(path / "cond.npy")
            split = np.load(path / "split.npy")
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise NotelmError(f"{path}: cannot read encoded corpus: {e}") from None
        problem = _array_problem(vocab, streams, offsets, cond, split)
        if problem:  # a damaged cache would index out of range later: load_or_encode makes it again
            raise NotelmError(f"{path}: damaged encoded corpus: {problem}")
        out = cls(vocab, streams, offsets, cond, split, path)
        out.cached = True
        return out


def settings_hash(representation: str, config: dict) -> str:
    blob = json.dumps({"representation": representation, "config": config, "version": ENCODER_VERSION}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=5).hexdigest()


def cache_path(corpus_path, representation: str, config: dict) -> Path:
    return Path(corpus_path) / "encoded" / f"{representation}-{settings_hash(representation, config)}"


def encode_corpus(rep, corpus: Corpus, progress: bool = False) -> EncodedCorpus:
    """A whole ``Corpus`` -> ``EncodedCorpus`` with the representation ``rep``, in memory.

    The songs go through ``rep.encode_notes`` in chunks of about ``CHUNK_NOTES`` notes
    (a loop per chunk of songs, never per song or note).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    vocab = rep.vocab(corpus.collections)
    columns = corpus.all_notes(["song", *rep.note_columns])
    starts = np.asarray(corpus.songs["note_start"], np.int64)
    ends = np.asarray(corpus.songs["note_end"], np.int64)
    parts, offsets, base = [], [np.zeros(1, np.int64)], 0
    bar = tqdm(total=int(ends[-1]) if len(starts) else 0, unit="note", unit_scale=True, desc=f"encode {rep.name}",
               disable=not progress, dynamic_ncols=True, delay=0.5)  # a bar only when it takes a while
    for lo, hi in song_chunks(starts, ends, CHUNK_NOTES):
        a, b = int(starts[lo]), int(ends[hi - 1])
        chunk = {k: v[a:b] for k, v in columns.items()}
        chunk["song"] = np.subtract(chunk["song"], lo, dtype=np.int64)
        streams, chunk_offsets = rep.encode_notes(chunk, hi - lo)
        parts.append(streams)
        offsets.append(chunk_offsets[1:] + base)
        base += int(chunk_offsets[-1])
        bar.update(b - a)
    bar.close()
    streams = {s.name: np.concatenate([p[s.name] for p in parts]) if parts else np.zeros(0, s.dtype)
               for s in vocab.streams}
    cond = condition_ids(vocab, corpus.songs["collection"])
    encoded = EncodedCorpus(vocab, streams, np.concatenate(offsets), cond, split_codes(corpus.songs["split"]))
    encoded.seconds = time.perf_counter() - started
    return encoded


def with_conditions(encoded: EncodedCorpus, corpus: Corpus, label: str = "collection") -> EncodedCorpus:
    """``encoded`` conditioned on a song label of ``corpus``: ``collection``, ``group`` or ``none``; its
    vocabulary lists that label's names and the form of each (``form.corpus_forms``).  Cheap: one pass
    over the song table and three note columns, so the label is chosen per run, not per cache."""
    from notelm.form import corpus_forms

    names = corpus.labels(label) if label != "none" else []
    vocab = Vocab(encoded.vocab.representation, encoded.vocab.config, encoded.vocab.streams, names, label,
                  corpus_forms(corpus, label, int(encoded.vocab.config.get("parts", 0))))
    cond = condition_ids(vocab, corpus.songs[label]) if names else np.zeros(len(corpus), np.int32)
    out = EncodedCorpus(vocab, encoded.streams, encoded.offsets, cond, encoded.split, encoded.path)
    out.seconds, out.cached = encoded.seconds, encoded.cached
    return out


def cached_encoding(corpus_path, rep, progress: bool = False, force: bool = False, log=None,
                    label: str = "collection") -> EncodedCorpus:
    """The corpus encoded with ``rep``: read from the cache, or encoded and cached.

    A corpus folder that cannot be written to (a shared, read-only corpus) is
    encoded in memory instead, with a note through ``log``.  ``label``: the song label
    the conditions name (``with_conditions``).
    """
    corpus = Corpus(corpus_path)
    stamp = {"corpus_created": corpus.manifest.get("created"), "corpus_songs": len(corpus),
             "corpus_notes": corpus.num_notes}
    path = cache_path(corpus.path, rep.name, rep.config)
    if not force and _is_current(path, stamp):
        started = time.perf_counter()
        try:
            encoded = EncodedCorpus.load(path)
            encoded.seconds = time.perf_counter() - started
            return with_conditions(encoded, corpus, label)
        except NotelmError:
            pass  # a damaged cache is simply made again
    encoded = encode_corpus(rep, corpus, progress=progress)
    try:
        encoded.save(path, {"representation": rep.name, "notes": corpus.num_notes, **stamp})
    except OSError as e:
        if log:
            log(f"note: cannot write the cache {path} ({e.strerror or e}); using the encoding in memory")
        return with_conditions(encoded, corpus, label)
    seconds = encoded.seconds
    encoded = EncodedCorpus.load(path)  # memory-mapped, as every later run will see it
    encoded.seconds, encoded.cached = seconds, False
    return with_conditions(encoded, corpus, label)


def _array_problem(vocab: Vocab, streams: dict, offsets, cond, split) -> str:
    """What is wrong with a cache's arrays ("" when they agree): equal stream lengths, ids in range,
    offsets rising from 0 to that length, one condition and one split code per song."""
    lengths = {len(a) for a in streams.values()}
    if len(lengths) != 1 or any(a.ndim != 1 or a.dtype.kind not in "iu" for a in [*streams.values(), offsets,
                                                                                     cond, split]):
        return "arrays of other shapes or types than notelm writes"
    n_songs = len(offsets) - 1
    if n_songs < 0 or offsets[0] != 0 or offsets[-1] != lengths.pop() or (np.diff(offsets) < 0).any():
        return "song offsets that do not rise from 0 to the stream length"
    if len(cond) != n_songs or len(split) != n_songs:
        return "a condition and a split per song are missing"
    if n_songs and (cond.min() < 0 or cond.max() > len(vocab.conditions) or split.min() < -1 or split.max() > 2):
        return "conditions or split codes out of range"
    try:
        vocab.check_ids(streams)
    except NotelmError as e:
        return str(e)
    return ""


def _is_current(path: Path, stamp: dict) -> bool:
    """Is there a cache at ``path`` made from this very build of the corpus?"""
    try:
        info = read_json(path / "info.json")
    except (OSError, ValueError, NotelmError):
        return False
    return isinstance(info, dict) and all(info.get(k) == v for k, v in stamp.items())
