"""The local web page (`notelm serve`): every endpoint through FastAPI's TestClient, and one real browser run."""

from __future__ import annotations

import asyncio
import json
import os
import select
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
from midibytes import melody, smf, tempo

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


LOCAL = "http://127.0.0.1:8000"  # TestClient's default host, "testserver", is not a name the server answers to


@pytest.fixture
def client(served, tmp_path):
    app = web.create_app(served, root=tmp_path / "jobs")
    with TestClient(app, base_url=LOCAL) as c:
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
                              "max_prompt_notes": web.MAX_PROMPT_NOTES, "max_upload_bytes": web.MAX_UPLOAD_BYTES,
                              "default_prompt_notes": gen.DEFAULT_PROMPT_NOTES}
    assert web.MAX_PIECES <= gen.MAX_PIECES and web.MAX_EVENTS <= gen.MAX_EVENTS


def test_models_are_shown_by_name_not_by_where_they_live(client, tiny_run):
    """/api/models showed absolute paths: a visitor learnt the user's folders."""
    text = client.get("/api/models").text
    assert str(tiny_run) not in text and str(tiny_run.parent) not in text and '"path"' not in text
    assert [m["name"] for m in json.loads(text)["models"]] == [tiny_run.name]


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


def test_an_empty_seed_is_a_new_random_one_that_the_job_reports(client):
    first = wait_for(client, start(client)["job_id"])
    second = wait_for(client, start(client)["job_id"])
    assert first["seed"] != second["seed"] and 0 <= first["seed"] <= web.MAX_SEED
    again = wait_for(client, start(client, seed=first["seed"])["job_id"])
    assert again["seed"] == first["seed"]
    assert client.get(again["pieces"][0]["midi_url"]).content == client.get(first["pieces"][0]["midi_url"]).content


def test_a_prompt_is_bounded_as_on_the_command_line_and_length_counts_new_notes(client, tmp_path):
    """The CLI continued a whole 555-note file and the page 64 notes; "Length counts notes" showed 264 for 200."""
    tune = write_midi(tmp_path / "long.mid", scale_tune(60, 150))
    response = client.post("/api/generate", data={"model": "m0", "length": "30", "num": "2"},
                           files={"prompt": ("long.mid", tune.read_bytes(), "audio/midi")})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"])
    for piece in job["pieces"]:
        assert (piece["prompt_notes"], piece["new_notes"]) == (gen.DEFAULT_PROMPT_NOTES, 30)
        assert piece["notes"] == gen.DEFAULT_PROMPT_NOTES + 30


@pytest.mark.parametrize("width, scale, size", [
    ("316", "2", (632, 520)),  # a 390 px phone's column at pixel ratio 2
    ("800", "1", (800, 480)),
    ("1e9", "100", (3600, 1500)),  # clamped: 1200 x 500 at ratio 3
    ("nan", "1", (1200, 500)),  # not a width: the command line's size
])
def test_the_piano_roll_is_drawn_for_the_width_the_page_shows_it_at(client, width, scale, size):
    job = wait_for(client, start(client, length=8, roll_width=width, roll_scale=scale)["job_id"])
    assert png_size(client.get(job["pieces"][0]["png_url"]).content) == size


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
    response = client.post("/api/generate", data={"model": "m0", "length": "16", "prompt_notes": "6"},
                           files={"prompt": ("tune.mid", prompt.read_bytes(), "audio/midi")})
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"])
    assert job["status"] == "done"
    piece = job["pieces"][0]
    assert (piece["prompt_notes"], piece["new_notes"], piece["notes"]) == (6, 16, 6 + 16)


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
    assert not any(Path(client.app.state.root).iterdir())  # no job was made, no upload was written


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
    ({"length": str(web.MAX_EVENTS + 1)}, f"length {web.MAX_EVENTS + 1}: between 1 and {web.MAX_EVENTS} new notes"),
    ({"length": str(gen.MAX_EVENTS + 1)}, "between 1 and"),
    ({"length": "0"}, "length 0: between 1"),
    ({"num": str(web.MAX_PIECES + 1)}, f"pieces {web.MAX_PIECES + 1}: between 1 and {web.MAX_PIECES}"),
    ({"prompt_notes": "0"}, "prompt notes 0"),
    ({"seed": "abc"}, "seed 'abc': a whole number"),
    ({"temperature": "0"}, "temperature 0.0: between 0.01 and 100"),
    ({"top_p": "1.5"}, "top-p 1.5: must be in (0, 1]"),
    ({"top_k": "-1"}, "top-k -1: must be >= 0"),
    # values that used to pass this check and fail inside the job
    ({"temperature": "nan"}, "temperature nan: between"),
    ({"temperature": "inf"}, "temperature inf: between"),
    ({"temperature": "-inf"}, "temperature -inf: between"),
    ({"temperature": "1e-300"}, "temperature 1e-300: between"),
    ({"top_p": "nan"}, "top-p nan: must be in (0, 1]"),
    ({"seed": "-1"}, "seed -1: between 0 and 4294967295"),
    ({"seed": str(2**64)}, f"seed {2**64}: between 0 and 4294967295"),
    ({"collection": "x" * 100_000}, "collection: a name of 100,000 characters"),
    ({"model": "m9"}, "unknown model 'm9'"),
    ({"collection": "gamma"}, "unknown collection 'gamma'; valid names: alpha, beta"),
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


# --------------------------------------------------------------------------- no web page can drive it

@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil",
                                  "", "192.168.1.2:8000"])
def test_a_request_for_another_host_name_is_refused(client, host):
    """DNS rebinding: an attacker's name resolving to 127.0.0.1 reaches the server with its own Host."""
    for response in (client.get("/", headers={"host": host}), client.get("/api/models", headers={"host": host}),
                     client.post("/api/generate", data={"model": "m0", "length": "4"}, headers={"host": host})):
        assert response.status_code == 400 and "unknown Host" in response.json()["detail"]
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert not any(Path(client.app.state.root).iterdir())  # no job was made


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LocalHost.:8000", "127.0.0.1", "127.0.0.2:80",
                                  "[::1]:8000"])
def test_loopback_host_names_are_served(client, host):
    assert client.get("/api/models", headers={"host": host}).status_code == 200


def test_the_host_it_listens_on_is_served_too():
    assert web.Hosts("myhost.lan").allows("MyHost.lan:8000") and not web.Hosts("myhost.lan").allows("other.lan")
    everywhere = web.Hosts("0.0.0.0")  # an IP address cannot be rebound: any is accepted, names are not
    assert everywhere.allows("192.168.1.7:8000") and everywhere.allows("[fe80::1]:8000")
    assert everywhere.allows(socket.gethostname()) and not everywhere.allows("evil.example")
    assert not web.Hosts().allows("192.168.1.7") and not web.Hosts().allows(None)


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"},
    {"origin": "null"},  # a sandboxed frame or a data: URL
    {"origin": "http://127.0.0.1:9999"},  # another port is another origin
    {"origin": "http://localhost:8000"},  # the same server under another name: the page came from elsewhere
    {"referer": "http://evil.example/page.html"},
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
])
def test_a_post_from_another_origin_is_refused(client, headers):
    """CSRF: any page the user visits could POST a form to 127.0.0.1 and start generations."""
    response = client.post("/api/generate", data={"model": "m0", "length": "4"}, headers=headers)
    assert response.status_code == 403 and "may not start generations" in response.json()["detail"]
    plain = client.post("/api/generate", content=b"model=m0", headers={**headers, "content-type": "text/plain"})
    assert plain.status_code == 403  # a "simple" request, which a browser sends without asking first
    assert not any(Path(client.app.state.root).iterdir())


def test_a_post_from_the_page_itself_or_from_a_script_is_accepted(client):
    for headers in ({"origin": LOCAL}, {"referer": LOCAL + "/"}, {"sec-fetch-site": "same-origin"}, {}):
        response = client.post("/api/generate", data={"model": "m0", "length": "4"}, headers=headers)
        assert response.status_code == 202, (headers, response.text)
        wait_for(client, response.json()["job_id"])
    # the page's own POST must carry its origin: under "no-referrer" the Fetch standard sends "null"
    assert client.get("/").headers["referrer-policy"] == "same-origin"


def multipart_head(boundary: bytes = b"notelm-boundary") -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="prompt"; filename="big.mid"\r\n'
            b"Content-Type: audio/midi\r\n\r\nMThd")


def test_a_chunked_upload_is_read_no_further_than_the_limit(served, tmp_path):
    """An upload without Content-Length was spooled to disk whole (1 GB: 8.5 s, 840 MB of temp) before
    the size check.  The body here never ends; the server must stop asking for it at the limit."""
    app = web.create_app(served, root=tmp_path / "jobs")
    limit = web.MAX_UPLOAD_BYTES + web.FORM_OVERHEAD_BYTES
    pulled, sent = [0], []

    async def receive():
        body = multipart_head() if not pulled[0] else bytes(65536)
        pulled[0] += len(body)
        if pulled[0] > 1 << 30:
            raise AssertionError("the server read a whole gigabyte")
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/generate", "raw_path": b"/api/generate", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"transfer-encoding", b"chunked"),
                         (b"content-type", b"multipart/form-data; boundary=notelm-boundary")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and limit < pulled[0] <= limit + 65536
    assert json.loads(sent[1]["body"])["detail"] == "upload of more than 2.2 MB is over the 2 MB limit"
    assert (b"content-security-policy", web.SECURITY_HEADERS["Content-Security-Policy"].encode()) in sent[0]["headers"]


def test_a_real_server_stops_reading_a_chunked_upload_at_the_limit(served, tmp_path):
    app = web.create_app(served, root=tmp_path / "jobs")
    with ServerThread(app) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: multipart/form-data; boundary=notelm-boundary\r\n\r\n")
        head = multipart_head()
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        s.settimeout(30)
        sent, piece = 0, b"%x\r\n%s\r\n" % (1 << 16, bytes(1 << 16))
        try:
            while sent < 1 << 30 and not select.select([s], [], [], 0)[0]:
                s.sendall(piece)
                sent += 1 << 16
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < web.MAX_UPLOAD_BYTES + 64 * 2**20  # the limit plus what the sockets buffer, not a gigabyte


def test_a_prompt_whose_tempo_notelm_cannot_write_is_refused(client):
    """A 68-byte prompt of 16,777,215 microseconds per quarter made one generation allocate 9 GB."""
    slow = smf([[(0, tempo(0xFFFFFF))] + melody([60, 62, 64])])
    assert len(slow) <= 68
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("slow.mid", slow)})
    assert response.status_code == 400
    assert response.json()["detail"] == ("slow.mid: its tempo, 3.58 quarter notes per minute, is outside the "
                                         "10-1000 notelm writes")


@pytest.mark.parametrize("data, reason", [
    (smf([melody([60])], division=0), "invalid ticks per quarter note (0)"),
    (smf([melody([60])], division=0xE728), "SMPTE time division"),
])
def test_an_upload_follows_the_midi_rules_of_every_reader(client, data, reason):
    response = client.post("/api/generate", data={"model": "m0"}, files={"prompt": ("odd.mid", data)})
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_audio_longer_than_the_limit_is_never_synthesized(client, monkeypatch):
    from notelm import render

    if not has_soundfont():
        pytest.skip("no SoundFont: no audio is rendered at all")
    calls = []
    real = render._synthesizer
    monkeypatch.setattr(render, "_synthesizer", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(web, "MAX_AUDIO_SECONDS", 1.0)
    job = wait_for(client, start(client, length=48, num=2)["job_id"])
    assert job["status"] == "done" and all("wav_url" not in p and "png_url" in p for p in job["pieces"])
    assert job["warning"].startswith("no audio for piece 1: piece_00.wav: ")
    assert "s of audio is over the 1 s limit" in job["warning"] and "piece 2: piece_01.wav" in job["warning"]
    assert calls == []  # refused before the synthesizer was even asked
    monkeypatch.setattr(web, "MAX_AUDIO_SECONDS", 3600.0)
    job = wait_for(client, start(client, length=8)["job_id"])
    assert "wav_url" in job["pieces"][0] and job["warning"] is None and len(calls) == 1


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


@pytest.mark.slow
def test_browser_on_a_phone_shows_the_results_after_generate_with_a_legible_piano_roll(served, tmp_path):
    """At 390 px the results appeared about 1,300 px below Generate, with no scroll, in a piano roll drawn
    1200 px wide and shown 316 px wide (labels a quarter of their size).  Now the page scrolls to the
    output and the roll is drawn for the column's width at the screen's pixel ratio."""
    executable = chromium_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra)")
    tune = write_midi(tmp_path / "tune.mid", scale_tune(60, 100))
    app = web.create_app(served, root=tmp_path / "jobs")
    with ServerThread(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            assert page.input_value("#prompt_notes") == str(gen.DEFAULT_PROMPT_NOTES)
            page.fill("#length", "40")
            page.set_input_files("#prompt", str(tune))
            page.click("#generate")
            page.wait_for_function("() => document.querySelector('#results img') && "
                                   "document.querySelector('#results img').naturalWidth > 0", timeout=60_000)
            # the first piece's piano roll comes into view, whole, without the user scrolling
            page.wait_for_function("() => { const box = document.querySelector('#results img')"
                                   ".getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight; }",
                                   timeout=10_000)
            assert page.evaluate("() => scrollY") > 400  # the page scrolled by itself to the output below the form
            image = page.eval_on_selector("#results img", "i => [i.naturalWidth, i.clientWidth, devicePixelRatio]")
            natural, shown, ratio = image
            assert ratio == 2 and 280 <= shown <= 390
            assert abs(natural - shown * ratio) <= 2 * ratio, image  # drawn for the width it is shown at
            assert page.eval_on_selector("html", "h => h.scrollWidth") <= 390  # nothing wider than the phone
            caption = page.inner_text("#results figcaption")
            assert f"{gen.DEFAULT_PROMPT_NOTES} prompt notes + 40 new notes" in caption, caption
            assert page.inner_text("#seed-used").startswith("Seed ")
            assert page.is_hidden("#error") and not errors
            page.screenshot(path=str(tmp_path / "phone.png"))
        finally:
            browser.close()
    assert png_size((tmp_path / "phone.png").read_bytes()) == (780, 1688)
