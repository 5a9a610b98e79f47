"""The local web page (`notelm serve`): every endpoint through FastAPI's TestClient, and one real browser run."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import wave
from pathlib import Path

import pytest

from conftest import scale_tune, write_midi

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install -e '.[web]'")
from fastapi.testclient import TestClient

from notelm import generate as gen
from notelm.io import NotelmError
from notelm.notes import num_notes, read_midi
from notelm.render import find_soundfont
from notelm.web import app as web

CHROMIUM = "/usr/bin/chromium"
# Chromium on an offline machine: no first-run, sync, update or background connections that would be refused.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny LSTM trained for 20 steps on two collections of scale tunes (once per test session)."""
    from notelm.config import load_config
    from notelm.corpus import prepare
    from notelm.train import train

    root = tmp_path_factory.mktemp("web_model")
    for i in range(6):
        write_midi(root / "music" / "alpha" / f"a{i}.mid", scale_tune(60 + i, 16 + i, chord_every=4))
        write_midi(root / "music" / "beta" / f"b{i}.mid", scale_tune(50 + i, 12 + i))
    prepare([str(root / "music")], root / "corpus", workers=1, progress=False, log=lambda *a: None)
    config = load_config("seed", ["train.steps=20", "train.eval_every=10", "train.batch_size=16", "model.hidden=32",
                                  "model.embed_dim=8", "train.eval_crops=16"])
    train(root / "corpus", config, root / "run", progress=False, log=lambda *a: None)
    return root / "run"


@pytest.fixture(scope="session")
def served(tiny_run):
    # only the tiny run (the shipped default model is listed by its own test below)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen, "default_model_path", lambda: (_ for _ in ()).throw(NotelmError("no default model")))
        return web.load_models([tiny_run])


@pytest.fixture
def client(served, tmp_path):
    app = web.create_app(served, root=tmp_path / "jobs")
    with TestClient(app) as c:
        yield c


def wait_for(client, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def start(client, **fields) -> dict:
    data = {"model": "m0", "length": "24", **{k: str(v) for k, v in fields.items()}}
    response = client.post("/api/generate", data=data)
    assert response.status_code == 202, response.text
    return response.json()


def has_soundfont() -> bool:
    try:
        find_soundfont()
        return True
    except NotelmError:
        return False


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- models and page

def test_models_lists_the_run_with_its_collections_and_limits(client, tiny_run):
    body = client.get("/api/models").json()
    assert [m["name"] for m in body["models"]] == [tiny_run.name]
    model = body["models"][0]
    assert model["id"] == "m0" and model["family"] == "lstm" and model["selected"]
    assert model["conditions"] == ["alpha", "beta"]
    assert body["limits"] == {"max_pieces": web.MAX_PIECES, "max_events": web.MAX_EVENTS,
                              "max_prompt_events": web.MAX_PROMPT_EVENTS, "max_upload_bytes": web.MAX_UPLOAD_BYTES}
    assert web.MAX_PIECES <= gen.MAX_PIECES and web.MAX_EVENTS <= gen.MAX_EVENTS


def test_default_model_is_listed_first_and_the_given_run_is_preselected(tiny_run, monkeypatch):
    monkeypatch.setattr(gen, "default_model_path", lambda: tiny_run / "checkpoint")
    models = web.load_models([tiny_run, tiny_run / "best"])  # the same model twice is offered once
    assert [(m.name, m.selected) for m in models] == [("default model", False), (tiny_run.name, True)]
    assert web.load_models([])[0].selected  # without --model, the default


def test_no_model_at_all_is_a_clear_error(monkeypatch, tmp_path):
    def no_default():
        raise NotelmError("no default model is installed")

    monkeypatch.setattr(gen, "default_model_path", no_default)
    with pytest.raises(NotelmError, match="no model to serve.*--model"):
        web.load_models([])
    with pytest.raises(NotelmError, match="not a notelm model"):
        web.load_models([tmp_path])


def test_page_and_its_static_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/app.py").status_code == 404  # only the page's own files


# --------------------------------------------------------------------------- generation

def test_generate_job_lifecycle_writes_valid_midi_png_and_wav(client):
    started = start(client, num=2, collection="alpha", temperature=0.9, top_k=5, top_p=0.95, seed=3)
    assert started["status_url"] == f"/api/jobs/{started['job_id']}"
    job = wait_for(client, started["job_id"])
    assert job["status"] == "done", job["error"]
    assert job["progress"] == 1.0 and job["events_done"] == 24 and len(job["pieces"]) == 2
    for i, piece in enumerate(job["pieces"]):
        midi = client.get(piece["midi_url"])
        assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
        assert midi.content[:4] == b"MThd"
        path = Path(client.app.state.root) / job["id"] / f"piece_{i:02d}.mid"
        notes, _ = read_midi(path)
        assert num_notes(notes) == piece["notes"] > 0
        png = client.get(piece["png_url"])
        assert png.headers["content-type"] == "image/png" and png_size(png.content) == (1200, 500)
        if has_soundfont():
            audio = client.get(piece["wav_url"])
            assert audio.headers["content-type"] == "audio/wav"
            wav_path = path.with_suffix(".wav")
            with wave.open(str(wav_path)) as w:
                assert (w.getnchannels(), w.getsampwidth()) == (2, 2) and w.getnframes() > 0
            assert audio.content == wav_path.read_bytes()
    if not has_soundfont():
        assert "wav_url" not in job["pieces"][0] and "SoundFont" in job["warning"]


def test_same_seed_same_music(client):
    first = wait_for(client, start(client, seed=7)["job_id"])
    second = wait_for(client, start(client, seed=7)["job_id"])
    assert first["id"] != second["id"]
    assert client.get(first["pieces"][0]["midi_url"]).content == client.get(second["pieces"][0]["midi_url"]).content


def test_two_concurrent_jobs_run_side_by_side_into_their_own_directories(client):
    barrier = threading.Barrier(2)
    started = {}

    def post(seed):
        barrier.wait()  # both requests in flight together
        started[seed] = start(client, seed=seed, length=64)

    threads = [threading.Thread(target=post, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = [wait_for(client, started[seed]["job_id"]) for seed in (1, 2)]
    assert [job["status"] for job in jobs] == ["done", "done"]
    root = Path(client.app.state.root)
    dirs = [root / job["id"] for job in jobs]
    assert dirs[0] != dirs[1]
    for directory in dirs:
        assert {p.name for p in directory.iterdir()} >= {"piece_00.mid", "piece_00.png"}
    midis = [client.get(job["pieces"][0]["midi_url"]).content for job in jobs]
    assert midis[0] != midis[1]
    assert midis[0] == (dirs[0] / "piece_00.mid").read_bytes() and midis[1] == (dirs[1] / "piece_00.mid").read_bytes()


def test_generation_does_not_block_the_status_endpoint(client, monkeypatch):
    release = threading.Event()
    real_sample = gen.sample

    def slow_sample(*args, **kwargs):
        release.wait(10)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(gen, "sample", slow_sample)
    job_id = start(client)["job_id"]
    assert client.get(f"/api/jobs/{job_id}").json()["status"] in ("queued", "running")
    assert client.get("/api/models").status_code == 200  # the server still answers while the job waits
    release.set()
    assert wait_for(client, job_id)["status"] == "done"


def test_too_many_waiting_jobs_are_refused_with_429(client, monkeypatch):
    release = threading.Event()
    real_sample = gen.sample

    def slow_sample(*args, **kwargs):
        release.wait(10)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(gen, "sample", slow_sample)
    monkeypatch.setattr(web, "MAX_WAITING_JOBS", 1)
    job_id = start(client)["job_id"]
    refused = client.post("/api/generate", data={"model": "m0", "length": "8"})
    assert refused.status_code == 429 and "busy" in refused.json()["detail"]
    release.set()
    wait_for(client, job_id)


def test_old_finished_jobs_and_their_files_are_deleted(client, monkeypatch):
    monkeypatch.setattr(web, "KEEP_FINISHED_JOBS", 1)
    first = wait_for(client, start(client, length=4)["job_id"])
    wait_for(client, start(client, length=4)["job_id"])
    wait_for(client, start(client, length=4)["job_id"])
    assert client.get(f"/api/jobs/{first['id']}").status_code == 404
    assert not (Path(client.app.state.root) / first["id"]).exists()


def test_a_failing_generation_reports_its_error(client, monkeypatch):
    def broken(*args, **kwargs):
        raise NotelmError("the model ran out of music")

    monkeypatch.setattr(gen, "sample", broken)
    job = wait_for(client, start(client)["job_id"])
    assert job["status"] == "failed" and job["error"] == "the model ran out of music"
    assert client.get(f"/api/jobs/{job['id']}/files/0/midi").status_code == 404


# --------------------------------------------------------------------------- prompts and uploads

def test_a_midi_prompt_is_continued(client, tmp_path):
    prompt = write_midi(tmp_path / "tune.mid", scale_tune(60, 8))
    response = client.post("/api/generate", data={"model": "m0", "length": "16", "prompt_events": "6"},
                           files={"prompt": ("tune.mid", prompt.read_bytes(), "audio/midi")})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"])
    assert job["status"] == "done" and job["pieces"][0]["events"] == 6 + 16


def test_an_empty_file_field_means_no_prompt(client):
    response = client.post("/api/generate", data={"model": "m0", "length": "8"},
                           files={"prompt": ("", b"", "application/octet-stream")})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("data, message", [
    (b"this is not a MIDI file at all", "not a MIDI file"),
    (b"MThd" + b"\x00" * 40, "not a readable MIDI file"),
])
def test_a_bad_upload_gets_a_clear_400(client, data, message):
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("song.mid", data, "audio/midi")})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("song.mid: " + message)
    assert not any(p.name != "uploads" for p in Path(client.app.state.root).iterdir())  # no job was made
    assert not any((Path(client.app.state.root) / "uploads").iterdir())  # and the upload is gone


def test_a_midi_file_without_notes_is_refused(client, tmp_path):
    empty = write_midi(tmp_path / "empty.mid", [(0, False, [])])
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("empty.mid", empty.read_bytes())})
    assert response.status_code == 400 and "no notes" in response.json()["detail"]


def test_a_too_large_upload_is_refused_before_it_is_read(client):
    big = b"MThd" + b"\x00" * (web.MAX_UPLOAD_BYTES + web.FORM_OVERHEAD_BYTES)
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("big.mid", big, "audio/midi")})
    assert response.status_code == 413
    assert "over the 2 MB limit" in response.json()["detail"]


def test_a_too_large_file_inside_an_allowed_request_is_refused(client, monkeypatch):
    monkeypatch.setattr(web, "FORM_OVERHEAD_BYTES", 10 * web.MAX_UPLOAD_BYTES)  # get past the header check
    big = b"MThd" + b"\x00" * web.MAX_UPLOAD_BYTES
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("big.mid", big, "audio/midi")})
    assert response.status_code == 413
    assert response.json()["detail"] == "big.mid: 2.1 MB is over the 2 MB upload limit"


# --------------------------------------------------------------------------- limits and bad requests

@pytest.mark.parametrize("fields, message", [
    ({"length": str(web.MAX_EVENTS + 1)}, f"length {web.MAX_EVENTS + 1}: between 1 and {web.MAX_EVENTS} events"),
    ({"length": str(gen.MAX_EVENTS + 1)}, "between 1 and"),
    ({"length": "0"}, "length 0: between 1"),
    ({"num": str(web.MAX_PIECES + 1)}, f"pieces {web.MAX_PIECES + 1}: between 1 and {web.MAX_PIECES}"),
    ({"prompt_events": "0"}, "prompt events 0"),
    ({"temperature": "0"}, "temperature must be > 0"),
    ({"top_p": "1.5"}, "top-p must be in (0, 1]"),
    ({"top_k": "-1"}, "top-k must be >= 0"),
    ({"model": "m9"}, "unknown model 'm9'"),
    ({"collection": "gamma"}, "unknown condition 'gamma'; valid names: alpha, beta"),
    ({"length": "lots"}, "length: Input should be a valid integer"),
])
def test_over_limit_and_bad_requests_get_a_clear_400(client, fields, message):
    response = client.post("/api/generate", data={"model": "m0", **fields})
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_unknown_jobs_and_files_are_404(client):
    assert client.get("/api/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    job = wait_for(client, start(client, length=4)["job_id"])
    assert client.get(f"/api/jobs/{job['id']}/files/1/midi").status_code == 404  # one piece only
    assert client.get(f"/api/jobs/{job['id']}/files/0/txt").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/jobs/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/jobs/%2E%2E/files/0/midi",
    "/api/jobs/{job}/files/0/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/jobs/{job}/files/..%2F0/midi",
    "/api/jobs/{job}/files/-1/midi",
    "/api/jobs/{job}%2F..%2F{job}/files/0/midi",
    "/api/jobs/..%2Fuploads/files/0/midi",
    "/static/..%2Fapp.py",
    "/static/%2Fetc%2Fpasswd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
])
def test_path_traversal_is_refused(client, path):
    job = wait_for(client, start(client, length=4)["job_id"])
    response = client.get(path.format(job=job["id"]))
    assert response.status_code in (400, 404)
    assert b"root:" not in response.content and b"import" not in response.content


# --------------------------------------------------------------------------- serve and the CLI

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_binds_loopback_by_default_and_warns_otherwise(tiny_run, monkeypatch):
    import uvicorn

    calls, made = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    lines = []
    web.serve([tiny_run], port=free_port(), log=lines.append)
    assert calls[-1]["host"] == "127.0.0.1" and not any("warning" in line for line in lines)
    assert any("open http://127.0.0.1:" in line for line in lines) and lines[-1] == "notelm serve: stopped"
    assert made and not any(Path(d).exists() for d in made)  # its job directories are gone with it
    lines.clear()
    web.serve([tiny_run], host="0.0.0.0", port=free_port(), log=lines.append)
    assert calls[-1]["host"] == "0.0.0.0" and lines[0].startswith("warning: listening on 0.0.0.0")
    assert web.is_loopback("localhost") and web.is_loopback("::1") and not web.is_loopback("192.168.1.2")


def test_serve_on_a_busy_port_is_a_one_line_error(tiny_run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(NotelmError, match=r"cannot listen on 127\.0\.0\.1:\d+ .*--port"):
            web.serve([tiny_run], port=busy.getsockname()[1], log=lambda *a: None)


def test_cli_serve_passes_models_host_and_port(tiny_run, monkeypatch, capsys):
    import uvicorn

    from notelm.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    port = free_port()
    assert main(["serve", "--model", str(tiny_run), "--port", str(port)]) == 0
    assert calls == [{"host": "127.0.0.1", "port": port, "log_level": "warning"}]
    assert main(["serve", "--model", str(tiny_run / "nope")]) == 1
    assert "no such model or run directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real browser

def chromium_or_skip() -> str:
    """Debian's Chromium; installed here when missing and we are root (the Makefile does the same)."""
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):
            if os.path.exists(CHROMIUM):
                break
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}, and it could not be installed (as root: apt-get install chromium)")
    return CHROMIUM


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.mark.slow
def test_browser_generates_and_shows_piano_roll_and_audio(served, tmp_path):
    """Open the page in headless Chromium, press Generate, wait for the piano roll and the audio player.

    Set NOTELM_SCREENSHOT=docs/web.png to keep the screenshot (it goes to the test's tmp folder otherwise).
    """
    executable = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra); "
                                                                 "it drives Debian's Chromium, it downloads no browser")
    screenshot = Path(os.environ.get("NOTELM_SCREENSHOT") or tmp_path / "web.png")
    app = web.create_app(served, root=tmp_path / "jobs")
    with ServerThread(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            page.select_option("#collection", "alpha")
            page.fill("#length", "48")
            page.fill("#seed", "4")
            page.click("#generate")
            # predicates are functions: the page's policy forbids eval, which Playwright uses for expression strings
            page.wait_for_selector("#results img", timeout=60_000)
            page.wait_for_function("() => document.querySelector('#results img').naturalWidth > 0", timeout=30_000)
            assert page.get_attribute("#results img", "src").endswith("/files/0/png")
            if has_soundfont():
                page.wait_for_selector("#results audio", timeout=10_000)
                page.wait_for_function("() => document.querySelector('#results audio').readyState >= 1", timeout=30_000)
                assert page.eval_on_selector("#results audio", "a => a.duration") > 1
                assert page.get_attribute("a.download >> nth=1", "download").endswith(".wav")
            assert page.get_attribute("a.download >> nth=0", "download").endswith(".mid")
            assert page.inner_text("#status-text").startswith("done")
            assert page.is_hidden("#error") and not errors
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))

            # a bad upload: the server's message is shown in the page
            bad = tmp_path / "notes.mid"
            bad.write_text("these are my notes, not a MIDI file\n")
            page.set_input_files("#prompt", str(bad))
            page.click("#generate")
            page.wait_for_selector("#error:not([hidden])")
            assert "notes.mid: not a MIDI file" in page.inner_text("#error")
        finally:
            browser.close()
    assert png_size(screenshot.read_bytes()) == (1280, 900)
