"""Every registered representation and model family, through the interfaces the rest of notelm uses.

The tests are parametrized from ``encoding.REPRESENTATIONS`` and ``models.FAMILIES``: a new representation or
family is tested here the moment it is registered, without a new list.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from notelm import notes as nt
from notelm.checkpoint import load_model, save_model
from notelm.config import load_config
from notelm.encoding import REPRESENTATIONS, Events, get_representation
from notelm.encoding.base import SHIFTS
from notelm.encoding.vocab import BOS, EOS, N_SPECIAL
from notelm.io import NotelmError
from notelm.models import FAMILIES, build_model, trainable_families
from notelm.settings import Settings

from conftest import scale_tune, write_midi

REPRESENTATION_NAMES = list(REPRESENTATIONS)
FAMILY_NAMES = list(FAMILIES)
SMALL_NETS = {"embed_dim": 8, "hidden": 16, "layers": 2, "cond_dim": 4, "n_heads": 2, "context": 64}


def piece(tmp_path) -> nt.Notes:
    """A melody over a chord track (polyphony, two tracks): something every representation can encode."""
    notes, _ = nt.read_midi(write_midi(tmp_path / "p.mid", scale_tune(60, 16, chord_every=4)))
    return notes


def model_of(family: str, vocab, streams=None, offsets=None):
    """A model of ``family``: small and randomly initialized (neural), or fitted on ``streams`` (counted)."""
    cls = FAMILIES[family]
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    cfg = cls.config_class(**{k: v for k, v in SMALL_NETS.items() if k in fields}).validate()
    torch.manual_seed(0)
    model = build_model(vocab, cfg)
    return model if cls.trainable else model.fit(streams, offsets)


# --------------------------------------------------------------------------- representations


@pytest.mark.parametrize("name", REPRESENTATION_NAMES)
def test_representation_encodes_a_framed_song_its_decoder_reads(name, tmp_path):
    rep = get_representation(name)
    vocab = rep.vocab(["folk"])
    assert vocab.representation == name and vocab.conditions == ["folk"]
    streams = rep.encode_song(piece(tmp_path))
    assert set(streams) == set(vocab.names) == set(rep.stream_names)
    for stream in vocab.streams:
        ids = streams[stream.name]
        assert ids[0] == BOS and ids[-1] == EOS and len(ids) > 2
        assert ids[1:-1].min() >= N_SPECIAL and ids.max() < stream.size
    decoded = rep.decode(streams)
    assert set(decoded) == set(nt.NOTE_COLUMNS) and nt.num_notes(decoded) > 0


@pytest.mark.parametrize("name", REPRESENTATION_NAMES)
def test_representation_settings_are_documented_and_checked(name):
    cls = REPRESENTATIONS[name]
    assert issubclass(cls.settings_class, Settings) and cls.name == name
    for f in dataclasses.fields(cls.settings_class):
        assert f.metadata.get("doc"), f"{name}.{f.name} has no documentation"
        assert f"{name}.{f.name} = " in cls.settings_class.documentation()
    with pytest.raises(NotelmError, match=f"unknown {name} setting"):
        get_representation(name, {"no_such_setting": 1})
    assert get_representation(name, get_representation(name).config).config == get_representation(name).config


@pytest.mark.parametrize("name", REPRESENTATION_NAMES)
def test_what_a_representation_tells_training_and_generation(name, tmp_path):
    rep = get_representation(name)
    vocab = rep.vocab()
    tables = rep.transpositions()
    if rep.pitch_stream is None:
        assert tables is None and not len(rep.rest_ids())
        return
    size = vocab.stream(rep.pitch_stream).size
    rest = rep.rest_ids()
    assert all(N_SPECIAL <= r < size for r in rest)
    if tables is not None:
        assert sorted(tables) == list(SHIFTS)
        np.testing.assert_array_equal(tables[0], np.arange(size))  # shift 0 changes nothing
        for table in tables.values():
            assert len(table) == size and (table[:N_SPECIAL] == np.arange(N_SPECIAL)).all()
            assert table.min() >= -1 and table.max() < size
            assert (table[rest] == rest).all()  # a rest is no pitch: it does not move
        pitch = rep.encode_song(piece(tmp_path))[rep.pitch_stream]
        up, down = tables[1][pitch], tables[-1][pitch]
        np.testing.assert_array_equal(tables[-1][up], pitch)  # up a semitone and down again
        np.testing.assert_array_equal(tables[1][down], pitch)
    for stream, features in rep.token_features().items():
        assert features.shape[0] == vocab.stream(stream).size


def test_every_representation_is_a_valid_data_setting_and_nothing_else_is():
    for name in REPRESENTATION_NAMES:
        assert load_config(None, [f'data.representation="{name}"']).representation == name
    with pytest.raises(NotelmError, match=f"unknown representation 'midi'; choose one of {', '.join(REPRESENTATIONS)}"):
        load_config(None, ['data.representation="midi"'])


# --------------------------------------------------------------------------- model families


@pytest.fixture(scope="module")
def encoded_songs(tmp_path_factory):
    """``encoded_songs(family)``: eight songs encoded as the family reads them (seed, unless the family reads
    only other representations): streams, offsets and the vocabulary."""
    root = tmp_path_factory.mktemp("songs")

    def encoded(family: str):
        reads = FAMILIES[family].representations
        rep = get_representation((reads or ("seed",))[0])
        chords = 3 if reads else 0  # polyphony for a family made for it
        songs = [rep.encode_song(nt.read_midi(write_midi(root / f"{i}.mid", scale_tune(55 + i, 10 + i, chords)))[0])
                 for i in range(8)]
        streams = {name: np.concatenate([s[name] for s in songs]) for name in rep.stream_names}
        offsets = np.concatenate([[0], np.cumsum([len(s["pitch"]) for s in songs])])
        return streams, offsets, rep.vocab(["folk"])

    return encoded


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_saves_and_loads_to_the_same_predictions(family, encoded_songs, tmp_path):
    streams, offsets, vocab = encoded_songs(family)
    model = model_of(family, vocab, streams, offsets)
    assert model.family == family and isinstance(model.cfg, FAMILIES[family].config_class)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.cfg == model.cfg and loaded.vocab == vocab
    song = {name: s[offsets[1]:offsets[2]].astype(np.int64) for name, s in streams.items()}
    want, got = model.predict(song, cond=1), loaded.predict(song, cond=1)
    for name in vocab.names:
        assert want[name].shape == (len(song[name]) - 1, vocab.stream(name).size)
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_generates_what_it_predicts(family, encoded_songs):
    """One incremental step per event gives the distributions ``predict`` gives for the whole song."""
    streams, offsets, vocab = encoded_songs(family)
    model = model_of(family, vocab, streams, offsets)
    song = {name: s[offsets[3]:offsets[4]].astype(np.int64) for name, s in streams.items()}
    full = model.predict(song, cond=1)
    with model.session(1):
        state = model.begin({name: ids[None, :1] for name, ids in song.items()}, np.array([1]))
        for t in range(1, len(song["pitch"])):
            chosen = []
            for k, name in enumerate(vocab.names):
                np.testing.assert_allclose(model.stream_logprobs(state, k, chosen)[0], full[name][t - 1], atol=2e-5)
                chosen.append(song[name][t:t + 1])
            state = model.advance(state, {name: song[name][t:t + 1] for name in vocab.names})


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_settings_are_documented_and_checked(family):
    cls = FAMILIES[family].config_class
    assert cls.family == family
    for f in dataclasses.fields(cls):
        assert f.metadata.get("doc"), f"model.{f.name} of {family} has no documentation"
    with pytest.raises(NotelmError, match=r"unknown model setting\(s\): no_such_setting"):
        cls.from_dict({"no_such_setting": 1})


@pytest.mark.parametrize("family", trainable_families())
@pytest.mark.parametrize("representation", REPRESENTATION_NAMES)
def test_every_trainable_family_reads_every_representation(family, representation, tmp_path):
    """A preset made of any representation and any trainable family builds, and its loss is finite."""
    from notelm.train import batch_loss

    fields = {f.name for f in dataclasses.fields(FAMILIES[family].config_class)}
    settings = {k: v for k, v in SMALL_NETS.items() if k in fields}
    overrides = [f'data.representation="{representation}"', f'model.family="{family}"',
                 *(f"model.{k}={v}" for k, v in settings.items())]
    reads = FAMILIES[family].representations
    if reads and representation not in reads:  # a family made for other representations is refused up front
        with pytest.raises(NotelmError, match=f"model.family = '{family}' reads the .* not '{representation}'"):
            load_config(None, overrides)
        return
    run = load_config(None, overrides)
    rep = get_representation(run.representation, run.encoding)
    streams = rep.encode_song(piece(tmp_path))
    model = build_model(rep.vocab(), run.model)
    tokens = torch.as_tensor(np.stack([streams[n][:10] for n in rep.stream_names], -1).astype(np.int64))[None]
    loss, _ = batch_loss(model.net, tokens, torch.zeros(1, dtype=torch.long), "full")
    assert torch.isfinite(loss)


def test_only_trainable_families_are_training_choices():
    assert set(trainable_families()) <= set(FAMILIES)
    for family in FAMILIES:
        if family in trainable_families():
            reads = [f'data.representation="{r}"' for r in FAMILIES[family].representations[:1]]
            assert load_config(None, [f'model.family="{family}"', *reads]).family == family
        else:
            with pytest.raises(NotelmError, match=f"model.family = '{family}': expected one of"):
                load_config(None, [f'model.family="{family}"'])


# --------------------------------------------------------------------------- a representation's token features


class FeaturedEvents(Events):
    """``events`` plus fixed token features of its pitch stream (pitch class one-hot): what a representation
    that wants to help the model with derived inputs provides."""

    name = "featured"

    def token_features(self):
        size = self.vocab().stream("pitch").size
        features = np.zeros((size, 12), np.float32)
        features[N_SPECIAL:N_SPECIAL + 128] = np.eye(12, dtype=np.float32)[np.arange(128) % 12]
        return {"pitch": features}


def test_a_representation_can_give_neural_models_token_features(monkeypatch, tmp_path):
    monkeypatch.setitem(REPRESENTATIONS, "featured", FeaturedEvents)
    vocab = FeaturedEvents().vocab()
    for family in trainable_families():
        if FAMILIES[family].representations:
            continue  # a family made for other representations does not read this one
        model = model_of(family, vocab)
        pitch = vocab.names.index("pitch")
        assert str(pitch) in model.net.feature_maps  # a linear map of the features into the pitch embedding
        assert not any(k.startswith("features_") for k in model.net.state_dict())  # derived, never saved
        save_model(model, tmp_path / family)
        streams = FeaturedEvents().encode_song(piece(tmp_path))
        want, got = model.predict(streams), load_model(tmp_path / family).predict(streams)
        np.testing.assert_allclose(got["pitch"], want["pitch"], atol=1e-6)
        plain = model_of(family, Events().vocab())
        assert plain.predict(streams)["pitch"].shape == want["pitch"].shape
        assert not np.allclose(plain.predict(streams)["pitch"], want["pitch"])  # the features change predictions
