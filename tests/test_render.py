"""render.py: WAV through the SoundFont synthesizer, piano-roll PNG, `notelm render`."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from notelm import render
from notelm.cli import main
from notelm.io import NotelmError
from notelm.notes import empty_notes, make_notes

from conftest import scale_tune, write_midi


def _soundfont_or_skip():
    try:
        return render.find_soundfont()
    except NotelmError as e:
        pytest.skip(str(e))


def scale_notes(n=8):
    """n quarter notes up a C major scale from middle C: ends at beat n."""
    steps = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    return make_notes(np.arange(n, dtype=np.float64), 1.0, 60 + steps[np.arange(n) % 8], velocity=90)


def read_wav(path):
    with wave.open(str(path), "rb") as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), frames


# --------------------------------------------------------------------------- WAV

@pytest.mark.parametrize("qpm", [120, 60])
def test_wav_is_16bit_stereo_audible_and_as_long_as_the_notes(tmp_path, qpm):
    _soundfont_or_skip()
    out = render.render_wav(scale_notes(8), tmp_path / "tune.wav", qpm=qpm)
    channels, width, rate, frames = read_wav(tmp_path / "tune.wav")
    assert (channels, width, rate) == (2, 2, 44100)
    notes_end = 8 * 60 / qpm
    assert abs(len(frames) / rate - notes_end) <= 1.0
    assert out["seconds"] == pytest.approx(len(frames) / rate)
    assert out["rms"] > 1e-3 and 0 < out["peak"] <= 1.0
    assert np.sqrt(np.mean((frames / 32767.0) ** 2)) == pytest.approx(out["rms"], rel=1e-6)


def test_loud_wav_is_scaled_below_full_scale_not_clipped(tmp_path):
    _soundfont_or_skip()
    cluster = make_notes(np.zeros(48), 2.0, np.arange(36, 84), velocity=127)
    out = render.render_wav(cluster, tmp_path / "loud.wav")
    assert out["peak"] <= render.PEAK_TARGET + 1e-3
    assert out["rms"] > 0.01


def test_no_notes_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(NotelmError, match="no notes"):
        render.render_wav(empty_notes(), tmp_path / "empty.wav")
    with pytest.raises(NotelmError, match="no notes"):
        render.render_pianoroll(empty_notes(), tmp_path / "empty.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- SoundFont lookup

def test_missing_soundfont_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_PATTERNS", [str(tmp_path / "*.sf2")])
    with pytest.raises(NotelmError) as e:
        render.find_soundfont()
    message = str(e.value)
    assert "apt install timgm6mb-soundfont" in message and "get-soundfont.sh" in message
    assert "NOTELM_SOUNDFONT" in message
    assert "\n" not in message
    with pytest.raises(NotelmError, match="no SoundFont"):
        render.render_wav(scale_notes(2), tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_soundfont_lookup_order(tmp_path, monkeypatch):
    found = tmp_path / "prefix" / "b.sf2"
    found.parent.mkdir()
    found.write_bytes(b"")
    (found.parent / "a.sf3").write_bytes(b"")
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_PATTERNS", [str(found.parent / "*.sf2"), str(found.parent / "*.sf3")])
    assert render.find_soundfont() == found  # patterns are tried in order
    env = tmp_path / "env.sf2"
    env.write_bytes(b"")
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(env))
    assert render.find_soundfont() == env
    assert render.find_soundfont(str(found)) == found  # an explicit path wins
    with pytest.raises(NotelmError, match="not found.*typo.sf2"):
        render.find_soundfont(str(tmp_path / "typo.sf2"))  # a named path that is missing is never skipped


# --------------------------------------------------------------------------- piano roll

def test_pianoroll_is_a_png_of_the_expected_size(tmp_path):
    from matplotlib.image import imread

    notes = scale_notes(8)
    drums = make_notes([0.0, 1.0, 2.0], 0.25, [36, 38, 42], velocity=100, track=2, is_drum=True)
    both = {k: np.concatenate([notes[k], drums[k]]) for k in notes}
    path = render.render_pianoroll(both, tmp_path / "roll.png", title="scale")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[:2] == (500, 1200)
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_pianoroll_shades_the_prompt_and_marks_where_the_continuation_starts(tmp_path):
    from matplotlib.image import imread

    notes = scale_notes(16)
    plain = imread(render.render_pianoroll(notes, tmp_path / "plain.png"))[..., :3]
    marked = imread(render.render_pianoroll(notes, tmp_path / "marked.png", prompt_end=8.0))[..., :3]
    # the axes span beats -0.16..16.16 over about x = 75..1185 px: the prompt is the left half
    rows = slice(100, 400)
    left, right = slice(120, 560), slice(700, 1150)
    assert marked[rows, left].mean() < plain[rows, left].mean() - 0.02  # the prompt is shaded
    assert abs(marked[rows, right].mean() - plain[rows, right].mean()) < 0.005  # the continuation is not
    line = np.abs(marked - plain)[rows].sum(axis=(0, 2))
    assert 600 <= int(np.argmax(line)) <= 660  # the strongest change: the line at beat 8 (about x = 630)


def test_pianoroll_drawn_for_a_phone_keeps_its_text_size(tmp_path):
    """A roll for a 316 px wide column at device pixel ratio 2: 632 px of image, text as large as at 1200."""
    from matplotlib.image import imread

    path = render.render_pianoroll(scale_notes(8), tmp_path / "phone.png", width=316, height=240, scale=2.0,
                                   prompt_end=4.0)
    assert imread(path).shape[:2] == (480, 632)


def test_pitch_names():
    assert [render.pitch_name(p) for p in (60, 61, 21, 108)] == ["C4", "C#4", "A0", "C8"]


# --------------------------------------------------------------------------- files and CLI

def test_cli_render_writes_wav_and_png(tmp_path, capsys):
    _soundfont_or_skip()
    midi = write_midi(tmp_path / "tune.mid", scale_tune(60, 8, chord_every=4), qpm=90)
    assert main(["render", str(midi), "--wav", "--png", "-o", str(tmp_path / "out")]) == 0
    wav, png = tmp_path / "out" / "tune.wav", tmp_path / "out" / "tune.png"
    assert wav.stat().st_size > 1000 and png.stat().st_size > 1000
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "tune.wav" in lines[0] and "RMS" in lines[0] and "tune.png" in lines[1]
    _, _, rate, frames = read_wav(wav)
    assert abs(len(frames) / rate - 8 * 60 / 90) <= 1.0  # the file's tempo (90 qpm) is kept


def test_render_writes_to_the_output_folder_never_beside_its_input(tmp_path, monkeypatch, capsys):
    """`render` wrote an 8.7 MB WAV beside its input (into a dataset folder); now -o, else the current folder."""
    data = tmp_path / "dataset"
    midi = write_midi(data / "tune.mid", scale_tune(60, 4))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    written = render.render_file(midi, png=True)
    assert set(written) == {"png"} and written["png"] == Path("tune.png") and (work / "tune.png").exists()
    assert main(["render", str(midi), "--png"]) == 0 and "wrote tune.png" in capsys.readouterr().out
    assert main(["render", str(midi), "--png", "-o", str(tmp_path / "new" / "folder")]) == 0
    assert (tmp_path / "new" / "folder" / "tune.png").exists()
    assert sorted(p.name for p in data.iterdir()) == ["tune.mid"]  # nothing written beside the input
    assert main(["render", str(midi), "--png", "-o", str(midi)]) == 1  # -o naming a file
    assert "a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["tune.mid"]


def test_render_file_bad_input_names_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.mid"
    broken.write_text("not a MIDI file\n")
    with pytest.raises(NotelmError, match="broken.mid.*not a readable MIDI"):
        render.render_file(broken, png=True)
    empty = write_midi(tmp_path / "silent.mid", [(0, False, [])])
    with pytest.raises(NotelmError, match="silent.mid.*no notes"):
        render.render_file(empty, png=True)
    assert main(["render", str(tmp_path / "absent.mid"), "--png"]) == 1
    assert "absent.mid: no such file" in capsys.readouterr().err
