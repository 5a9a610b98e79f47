"""Copy guard: sampled pieces never repeat more than 16 events in a row of a training song."""

from __future__ import annotations

import numpy as np
import pytest

from notelm.checkpoint import load_model, save_model
from notelm.config import SamplingConfig
from notelm.copyguard import FILE, LONGEST, STRIDE, WINDOW, CopyGuard, guard_for, window_keys
from notelm.encoding import get_representation
from notelm.encoding.vocab import BOS, EOS, event_ids
from notelm.generate import sample
from notelm.io import NotelmError
from notelm.metrics import CorpusIndex
from notelm.models.base import NextEventModel
from notelm.models.ngram import NGramModel

VOCAB = get_representation("seed").vocab()


def song(length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: np.r_[BOS, rng.integers(3, s.size, length), EOS] for s in VOCAB.streams}


class Parrot(NextEventModel):
    """Gives the next event of one song (its position in the piece, wrapping around) with probability
    0.999 in every stream: a model that copies its training song."""

    def __init__(self, vocab, tune: dict[str, np.ndarray]):
        self.vocab, self.tune = vocab, {name: ids[1:-1] for name, ids in tune.items()}

    def begin(self, prompt, cond):
        return np.full(len(cond), prompt[self.vocab.names[0]].shape[1] - 1)  # events read, BOS aside

    def stream_logprobs(self, state, k, chosen):
        size, values = self.vocab.sizes[k], self.tune[self.vocab.names[k]]
        lp = np.full((len(state), size), np.log(0.001 / (size - 1)))
        lp[np.arange(len(state)), values[state % len(values)]] = np.log(0.999)
        return lp

    def advance(self, state, event):
        return state + 1


def longest_runs(pieces, songs) -> np.ndarray:
    train = [event_ids(s, VOCAB) for s in songs]
    index = CorpusIndex(np.concatenate(train), np.cumsum([0] + [len(t) for t in train[:-1]]))
    return index.longest_shared_runs([event_ids(p.streams, VOCAB) for p in pieces])


def test_a_model_that_copies_its_training_song_is_kept_to_16_events_of_it():
    songs = [song(400, 0), song(300, 1)]
    parrot = Parrot(VOCAB, songs[0])
    free = sample(parrot, 4, 200, cfg=SamplingConfig(seed=0))
    assert longest_runs(free, songs).min() > 4 * LONGEST  # without the guard it copies
    parrot.copy_guard = CopyGuard.build(songs, VOCAB)
    guarded = sample(parrot, 4, 200, cfg=SamplingConfig(seed=0))
    runs = longest_runs(guarded, songs)
    assert runs.max() <= LONGEST and runs.min() >= WINDOW - 1  # held at the limit, not far below it
    # only the last value of an event is drawn again, and only where a copy would start: after a redraw the
    # next kept window is at least WINDOW events on, so at most one redraw per WINDOW events of a piece
    changed = sum(int((p.streams["duration"][1:] != songs[0]["duration"][1:201]).sum()) for p in guarded)
    assert 4 * 200 // (WINDOW + STRIDE) <= parrot.copy_guard.redrawn <= 4 * (200 // WINDOW + 1)
    assert all((p.streams["pitch"][1:] == songs[0]["pitch"][1:201]).mean() > 0.99 for p in guarded)
    assert changed >= parrot.copy_guard.redrawn * 0.9
    allowed = sample(parrot, 4, 200, cfg=SamplingConfig(seed=0, copies="allow"))  # the model's own draws
    assert [p.streams["pitch"].tolist() for p in allowed] == [p.streams["pitch"].tolist() for p in free]


def test_the_guard_stops_exactly_the_kept_windows():
    tune = song(100, 2)
    guard = CopyGuard.build([tune], VOCAB)
    values = np.stack([tune[name] for name in VOCAB.names])  # [S, T], BOS at 0
    assert len(guard.keys) == (100 - WINDOW) // STRIDE + 1
    for start in range(1, 30):  # the window of song events start .. start + WINDOW - 1 (BOS is position 0)
        history, event = values[:, None, start:start + WINDOW - 1], values[:, None, start + WINDOW - 1]
        history = np.concatenate([np.full((len(values), 1, 1), BOS), history], 2)  # a piece: BOS, then the run
        assert guard.copies(history, event).tolist() == [(start - 1) % STRIDE == 0]
    short = np.concatenate([np.full((len(values), 1, 1), BOS), values[:, None, 1:WINDOW - 1]], 2)
    assert not guard.copies(short, values[:, None, WINDOW - 1]).any()  # WINDOW - 1 events with BOS: none yet
    windows = np.lib.stride_tricks.sliding_window_view(event_ids(tune, VOCAB), WINDOW)
    assert len(np.unique(window_keys(windows))) == len(windows)  # 87 different windows, 87 different keys
    changed = windows[:1].copy()
    changed[0, -1] += 1
    assert window_keys(changed)[0] != window_keys(windows[:1])[0]


def test_the_index_is_saved_beside_the_model_and_checked_when_read(tmp_path):
    songs = [song(200, 3)]
    model = NGramModel(VOCAB, order=2).fit({n: np.concatenate([s[n] for s in songs]) for n in VOCAB.names},
                                           np.array([0, 202]))
    save_model(model, tmp_path / "run" / "best")
    assert load_model(tmp_path / "run").copy_guard is None  # none saved: no guard
    CopyGuard.build(songs, VOCAB).save(tmp_path / "run" / FILE)
    loaded = load_model(tmp_path / "run")  # from best/, the index one level up, in the run
    assert loaded.copy_guard.keys.tolist() == CopyGuard.build(songs, VOCAB).keys.tolist()
    other = get_representation("events").vocab()
    with pytest.raises(NotelmError, match="another vocabulary"):
        guard_for(tmp_path / "run" / "best", other)
    CopyGuard(loaded.copy_guard.keys[::-1].copy(), VOCAB.sizes).save(tmp_path / "run" / FILE)
    with pytest.raises(NotelmError, match="keys out of order"):  # a binary search would find nothing
        load_model(tmp_path / "run")
    (tmp_path / "run" / FILE).write_bytes(b"not safetensors")
    with pytest.raises(NotelmError, match="not a readable copy index"):
        load_model(tmp_path / "run")
