"""`notelm serve`: a local web page to generate music, listen to it and look at it.

Why FastAPI and a small static page rather than Gradio: FastAPI is light (it is
already the ``web`` extra), its ``TestClient`` tests every endpoint in-process,
and the page is three plain files (index.html, app.js, style.css) with no build
step and nothing fetched from a CDN, which matters on offline machines.  Gradio
would bring a large dependency tree and load fonts and scripts from the network.

How a generation runs: ``POST /api/generate`` checks the request (limits,
model, collection, the uploaded prompt) on the request thread, then hands the
work to a small thread pool and answers at once with a job id.  The page polls
``GET /api/jobs/{id}`` (status, events sampled so far) and, once done, shows
the files through ``GET /api/jobs/{id}/files/{piece}/{kind}``.  Every job writes
into its own directory, named by the server, under a temporary directory the
server owns; concurrent jobs never share a file.

Safety: the server binds 127.0.0.1 unless told otherwise.  No web page the user
visits can drive it: a request whose Host is not a name of this server (a DNS
rebinding attack names the attacker's domain) gets a 400, and a POST sent by
another origin (cross-site request forgery) a 403, whatever its content type.
Every request body stops being read at the upload limit (413), with or without a
Content-Length.  An uploaded prompt must start with the MIDI header and parse as
MIDI under the rules of every notelm reader, and its tempo must be one notelm
writes; audio is rendered only up to ``MAX_AUDIO_SECONDS``.  No name or path from
the user ever reaches the filesystem (files are addressed by a job id the server
generated plus a piece index and a fixed kind), and ``/api/models`` shows model
names, not where they live.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and UploadFile is imported inside create_app (fastapi stays optional until `notelm serve`).
import ipaddress
import json
import math
import secrets
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from notelm import generate as gen
from notelm import notes as nt
from notelm.form import part_programs, piece_meta
from notelm.io import NotelmError, printable

WEB_DIR = Path(__file__).parent
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # the other form fields and multipart boundaries around the file
# Every piece also becomes a WAV and a PNG, so a page request stays well below the generate module's limits.
MAX_PIECES = min(4, gen.MAX_PIECES)
MAX_EVENTS = min(2000, gen.MAX_EVENTS)
MAX_PROMPT_NOTES = 1000
MAX_WAITING_JOBS = 8  # queued or running; more is refused with 429
KEEP_FINISHED_JOBS = 50  # older finished jobs (and their files) are deleted
DEFAULT_WORKERS = 2
FILE_KINDS = {"midi": (".mid", "audio/midi"), "wav": (".wav", "audio/wav"), "png": (".png", "image/png")}
MIDI_HEADER = b"MThd"
# A piece's audio is rendered only up to this long (20 min: 0.4 GB of samples while rendering, a 0.2 GB
# WAV); a longer piece (a slow prompt tempo) gets its MIDI and piano roll and a warning instead.
MAX_AUDIO_SECONDS = 1200.0
TEMPERATURE_RANGE = (0.01, 100.0)  # beyond these the sampler's arithmetic leaves the floats
MAX_SEED = gen.MAX_SEED
# The piano roll is drawn for the width of the page's column (CSS px) at the screen's pixel ratio, so that
# its labels stay as large as the page's small print on a phone; without a width, at the CLI's 1200 x 500.
ROLL_WIDTHS = (280, 1200)
ROLL_HEIGHTS = (260, 500)
ROLL_SCALES = (1.0, 3.0)
MAX_NAME_CHARS = 200  # a collection name longer than any a model knows is refused without echoing it

# The page loads only its own files: no inline scripts, no CDN, nothing from elsewhere.  Referrer policy
# "same-origin", not "no-referrer": under "no-referrer" the Fetch standard has a browser send `Origin: null`
# on a POST (Chromium does not), which the CSRF check refuses; "same-origin" still tells other sites nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; media-src 'self'; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


# --------------------------------------------------------------------------- models

@dataclass
class ServedModel:
    id: str  # opaque id used by the page ("m0", "m1", ...)
    name: str
    path: Path
    model: object
    selected: bool = False  # preselected in the page

    def info(self) -> dict:
        """What the page needs; the model's folder is not shown (it tells a visitor about this machine)."""
        return {"id": self.id, "name": self.name, "family": self.model.family,
                "streams": self.model.vocab.names, "conditions": list(self.model.vocab.conditions),
                "selected": self.selected}


def load_models(paths) -> list[ServedModel]:
    """The shipped default model (when installed) and every --model path, loaded once at start-up."""
    from notelm.checkpoint import load_model, resolve

    sources = []  # (name, path, given with --model)
    try:
        sources.append(("default model", gen.default_model_path(), False))
    except NotelmError:
        pass  # no shipped model yet: --model paths only
    sources += [(_model_name(Path(p)), Path(p), True) for p in paths]
    if not sources:
        raise NotelmError("no model to serve: no default model is installed; pass --model RUN_DIR "
                          "(train one with `notelm train`)")
    served, seen, names = [], set(), set()
    for name, path, given in sources:
        directory = resolve(path).resolve()
        if directory in seen:
            continue
        seen.add(directory)
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name} ({k})", k + 1
        names.add(unique)
        served.append(ServedModel(f"m{len(served)}", unique, Path(path), load_model(directory), selected=given))
    # preselect the first model the user named, else the default
    first = next((m for m in served if m.selected), served[0])
    for m in served:
        m.selected = m is first
    return served


def _model_name(path: Path) -> str:
    """A run's folder name; 'RUN/best' rather than a bare 'best' for a model folder inside a run."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name in ("best", "checkpoint") else path.name or str(path)


# --------------------------------------------------------------------------- jobs

@dataclass
class Request:
    """A checked generation request, ready to run."""
    model: ServedModel
    cond: int
    cfg: gen.SamplingConfig
    length: int
    num: int
    prompt: dict[str, np.ndarray] | None
    qpm: float
    roll: tuple[int, int, float] = gen.ROLL_SIZE  # piano roll width, height (CSS px) and pixel ratio


@dataclass
class Job:
    id: str
    dir: Path
    length: int
    seed: int
    status: str = "queued"  # queued -> running -> done | failed
    stage: str = "waiting for a free worker"
    events_done: int = 0
    error: str | None = None
    warning: str | None = None
    pieces: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def info(self) -> dict:
        return {"id": self.id, "status": self.status, "stage": self.stage, "error": self.error, "seed": self.seed,
                "warning": self.warning, "events_done": self.events_done, "length": self.length,
                "progress": round(1.0 if self.status == "done" else min(self.events_done / self.length, 1.0) * 0.9, 3),
                "seconds": round((self.finished or time.time()) - self.created, 1),
                "pieces": [self._piece_info(i, row) for i, row in enumerate(self.pieces)]}

    def _piece_info(self, index: int, row: dict) -> dict:
        urls = {f"{kind}_url": f"/api/jobs/{self.id}/files/{index}/{kind}" for kind in FILE_KINDS if kind in row}
        return {"index": index, "notes": row["notes"], "prompt_notes": row["prompt_notes"],
                "new_notes": row["new_notes"], "seconds": row["seconds"], "events": row["events"], **urls}


class _ProgressModel:
    """A model seen through a counter: ``sample`` calls ``advance`` once per new event (all pieces at once)."""

    def __init__(self, model, job: Job):
        self._model, self._job = model, job

    def __getattr__(self, name):
        return getattr(self._model, name)

    def advance(self, state, event):
        self._job.events_done += 1
        return self._model.advance(state, event)


class Busy(Exception):
    """Too many generations waiting: the page is told to try again (429)."""


class Jobs:
    """Generation jobs on a thread pool; each writes only into its own server-named directory."""

    def __init__(self, root: Path, workers: int = DEFAULT_WORKERS):
        self.root = root
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="notelm-generate")
        self.lock = threading.Lock()
        # symusic's synthesizer is cached per SoundFont and shared; it is not documented as thread-safe
        self.render_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)  # a plain lookup: only ids this server generated exist

    def submit(self, request: Request) -> Job:
        with self.lock:
            waiting = sum(job.status in ("queued", "running") for job in self.jobs.values())
            if waiting >= MAX_WAITING_JOBS:
                raise Busy(f"the server is busy with {waiting} generations; try again in a moment")
            job_id = secrets.token_hex(16)
            directory = self.root / job_id
            directory.mkdir()
            job = self.jobs[job_id] = Job(job_id, directory, request.length, request.cfg.seed)
            self._forget_old_jobs()
        self.pool.submit(self._run, job, request)
        return job

    def _run(self, job: Job, request: Request) -> None:
        job.status, job.stage = "running", "sampling"
        try:
            model = request.model.model
            pieces = gen.sample(_ProgressModel(model, job), request.num, request.length, None, request.prompt,
                                request.cond, request.cfg, request.qpm, unit="notes")
            job.stage = "rendering audio and piano roll"
            vocab = model.vocab
            style = vocab.form_of(vocab.conditions[request.cond - 1] if request.cond else None)
            with self.render_lock:  # the style's meter, key and programs per part (form.py)
                rows = gen.write_pieces(pieces, vocab, job.dir, qpm=request.qpm, wav=False, png=True,
                                        log=lambda *a: None, roll=request.roll,
                                        meta=piece_meta(None, style, qpm=request.qpm),
                                        programs=part_programs(None, style, vocab.config.get("parts", 0)))
                job.warning = _render_audio(pieces, rows, job.dir, request.qpm)
                job.pieces = rows
            job.status, job.stage = "done", "done"
        except NotelmError as e:
            job.status, job.stage, job.error = "failed", "failed", str(e)
        except Exception as e:  # a bug must still end the job, with a message the page can show
            job.status, job.stage, job.error = "failed", "failed", f"generation failed: {type(e).__name__}: {e}"
        finally:
            job.finished = time.time()

    def _forget_old_jobs(self) -> None:
        finished = sorted((job for job in self.jobs.values() if job.finished is not None), key=lambda job: job.created)
        for job in finished[:max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self.jobs[job.id]
            shutil.rmtree(job.dir, ignore_errors=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _render_audio(pieces, rows: list[dict], directory: Path, qpm: float) -> str | None:
    """A WAV beside each piece's MIDI (``write_pieces`` names them piece_NN), each refused before it is
    synthesized when longer than ``MAX_AUDIO_SECONDS``; the warning for the page, if any."""
    from notelm import render

    try:
        render.find_soundfont()
    except NotelmError as e:
        return f"no audio: {e}"
    skipped = []
    for index, (piece, row) in enumerate(zip(pieces, rows)):
        path = directory / f"piece_{index:02d}.wav"
        try:
            render.render_wav(piece.notes, path, qpm=qpm, max_seconds=MAX_AUDIO_SECONDS)
            row["wav"] = str(path)
        except NotelmError as e:
            skipped.append(f"piece {index + 1}: {e}")
    return f"no audio for {'; '.join(skipped)}" if skipped else None


# --------------------------------------------------------------------------- request checks

def check_limits(num: int, length: int, prompt_notes: int) -> None:
    if not 1 <= num <= MAX_PIECES:
        raise NotelmError(f"pieces {num}: between 1 and {MAX_PIECES} per generation")
    if not 1 <= length <= MAX_EVENTS:
        raise NotelmError(f"length {length}: between 1 and {MAX_EVENTS} new notes per piece "
                          "(use `notelm generate` for longer pieces)")
    if not 1 <= prompt_notes <= MAX_PROMPT_NOTES:
        raise NotelmError(f"prompt notes {prompt_notes}: between 1 and {MAX_PROMPT_NOTES}")


def parse_seed(text: str) -> int:
    """The seed field: empty for a new random seed (the job reports it), else a whole number in range."""
    text = text.strip()
    if not text:
        return gen.new_seed()
    try:
        return int(text)
    except ValueError:
        raise NotelmError(f"seed {printable(text[:40])!r}: a whole number from 0 to {MAX_SEED}, or empty for "
                          "a random one") from None


def roll_size(width: float, scale: float) -> tuple[int, int, float]:
    """The piano roll for a page column ``width`` CSS px wide on a screen of pixel ratio ``scale`` (0: the
    CLI's size); both clamped, so a request cannot ask for a huge image."""
    if not (math.isfinite(width) and math.isfinite(scale)) or width <= 0:
        return gen.ROLL_SIZE
    width = int(min(max(width, ROLL_WIDTHS[0]), ROLL_WIDTHS[1]))
    height = int(min(max(round(width * 0.6), ROLL_HEIGHTS[0]), ROLL_HEIGHTS[1]))
    return width, height, round(min(max(scale, ROLL_SCALES[0]), ROLL_SCALES[1]), 2)


def check_sampling(temperature: float, top_k: int, top_p: float, seed: int) -> "gen.SamplingConfig":
    """The sampling settings of a request, every one checked here, up front: a value that passed and
    then failed inside the job (NaN, inf, a negative seed) would cost a worker and say less."""
    low, high = TEMPERATURE_RANGE
    if not (math.isfinite(temperature) and low <= temperature <= high):
        raise NotelmError(f"temperature {temperature}: between {low:g} and {high:g}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise NotelmError(f"top-p {top_p}: must be in (0, 1]")
    if top_k < 0:
        raise NotelmError(f"top-k {top_k}: must be >= 0")
    if not 0 <= seed <= MAX_SEED:
        raise NotelmError(f"seed {seed}: between 0 and {MAX_SEED}")
    cfg = gen.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        return cfg.validate()
    except NotelmError as e:
        raise NotelmError(str(e).removeprefix("--")) from None


def read_prompt(data: bytes, filename: str, vocab, max_notes: int) -> tuple[dict[str, np.ndarray], float]:
    """An uploaded MIDI prompt as model ids and its tempo; anything that is not MIDI is refused."""
    shown = printable((filename or "prompt")[-80:])  # named in messages only; never used as a path
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"{shown}: {len(data) / 1e6:.1f} MB is over the {MAX_UPLOAD_BYTES // (1024 * 1024)} MB "
                       "upload limit")
    if not data.startswith(MIDI_HEADER):
        raise NotelmError(f"{shown}: not a MIDI file (a MIDI file starts with 'MThd')")
    try:
        notes, meta = nt.parse_midi(data)  # the rules every notelm reader applies (tick resolution, events...)
    except Exception as e:
        raise NotelmError(f"{shown}: not a readable MIDI file ({e})") from None
    if nt.num_notes(notes) == 0:
        raise NotelmError(f"{shown}: the MIDI file has no notes to continue")
    qpm = meta.first_qpm
    if not nt.MIN_QPM <= qpm <= nt.MAX_QPM:  # the pieces are written and rendered at the prompt's tempo
        raise NotelmError(f"{shown}: its tempo, {qpm:.3g} quarter notes per minute, is outside the "
                          f"{nt.MIN_QPM:g}-{nt.MAX_QPM:g} notelm writes")
    try:
        prompt = gen.prompt_from_notes(vocab, notes, max_notes)
    except NotelmError as e:
        raise NotelmError(f"{shown}: {e}") from None
    return prompt, qpm


class TooLarge(NotelmError):
    """An upload over the size limit (413)."""


# --------------------------------------------------------------------------- who may ask

class Hosts:
    """The Host names this server answers to: loopback ones, plus what ``--host`` names.

    A DNS rebinding attack points a name the attacker owns at 127.0.0.1; the browser then sends
    that name as Host, so refusing unknown names closes it.  An IP literal cannot be rebound, so
    a server listening on every interface (0.0.0.0, ::) also answers to any IP address and to
    this machine's own host name.
    """

    def __init__(self, bind: str = "127.0.0.1"):
        self.bind = _host_name(bind)
        self.names = {"localhost", self.bind}
        self.any_ip = self.bind in ("0.0.0.0", "::", "")
        if self.any_ip:
            self.names.add(socket.gethostname().lower())  # not getfqdn: it may wait on a DNS server

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        name = _host_name(header)
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_ip


def _host_name(host: str) -> str:
    """'LocalHost:8000' -> 'localhost', '[::1]:8000' -> '::1': the name of a Host header, without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def cross_origin(headers) -> str:
    """Why a state-changing request looks sent by another site's page ('' when it does not).

    Browsers name the page that sent a POST in Origin (and Referer, Sec-Fetch-Site); it must be
    this server, as the Host header names it.  A request with none of them is not from a browser
    page (curl, a script) and is let through: it could send any Host and Origin anyway.
    """
    host = (headers.get("host") or "").strip().lower()
    origin = headers.get("origin")
    if origin is not None:
        if origin.strip().lower() == "null" or urlsplit(origin.strip()).netloc.lower() != host:
            return f"a request from another origin ({printable(origin[:80])}) may not start generations"
        return ""
    referer = headers.get("referer")
    if referer:
        if urlsplit(referer.strip()).netloc.lower() != host:
            return "a request from another site's page may not start generations"
        return ""
    if (headers.get("sec-fetch-site") or "none").lower() not in ("same-origin", "none"):
        return "a request from another site's page may not start generations"
    return ""


def _request_too_large():
    """The exception ``receive`` raises once a body passes the limit.  An HTTPException, because FastAPI
    passes those on from its body parsing (anything else there becomes a 400 "error parsing the body")."""
    from starlette.exceptions import HTTPException

    class RequestTooLarge(HTTPException):
        pass

    return RequestTooLarge


class Guard:
    """ASGI middleware in front of everything: Host names, cross-origin POSTs, body size, headers.

    The body limit holds with or without a Content-Length: reading stops at the limit (a chunked
    upload is never spooled past it) and the answer is a 413, whatever the app behind made of the
    interrupted body.  Every answer, the refusals included, carries ``SECURITY_HEADERS``.
    """

    def __init__(self, app, hosts: Hosts, max_body: int):
        self.app, self.hosts, self.max_body = app, hosts, max_body
        self.too_large = _request_too_large()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        state = {"received": 0, "started": False, "over": False}
        send = _guarded_send(send, state)
        refusal = self._refusal(scope, headers)
        if refusal:
            return await _json(send, *refusal)

        async def limited_receive():
            message = await receive()
            state["received"] += len(message.get("body", b""))
            if state["received"] > self.max_body:
                state["over"] = True  # from here on, whatever the app answers, the answer is 413
                raise self.too_large(413, _too_large(state["received"], more=True))
            return message

        try:
            await self.app(scope, limited_receive, send)
        except self.too_large:
            if not state["started"]:
                await _json(send, 413, _too_large(state["received"], more=True))

    def _refusal(self, scope, headers) -> tuple[int, str] | None:
        if not self.hosts.allows(headers.get("host")):
            shown = printable((headers.get("host") or "")[:80])
            return 400, (f"unknown Host {shown!r}: this server answers to localhost (start `notelm serve "
                         "--host NAME` to use it under another name)")
        if scope["method"] not in SAFE_METHODS:
            problem = cross_origin(headers)
            if problem:
                return 403, problem
        size = headers.get("content-length", "")
        if size.isdigit() and int(size) > self.max_body:
            return 413, _too_large(int(size))  # refused before the body is read; the page shows it
        return None


def _too_large(size: int, more: bool = False) -> str:
    return (f"upload of {'more than ' if more else ''}{size / 1e6:.1f} MB is over the "
            f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB limit")


def _guarded_send(send, state: dict):
    """``send`` adding ``SECURITY_HEADERS`` to every answer, and answering 413 in place of whatever
    the app answers after the body went over the limit."""
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
    names = {k for k, _ in extra}

    async def guarded(message):
        if state["started"] and state.get("replaced"):
            return  # the rest of the answer that was replaced
        if message["type"] == "http.response.start":
            state["started"] = True
            if state["over"] and message["status"] != 413:
                state["replaced"] = True
                body = json.dumps({"detail": _too_large(state["received"], more=True)}).encode()
                message = {"type": "http.response.start", "status": 413,
                           "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]}
                await send({**message, "headers": message["headers"] + extra})
                await send({"type": "http.response.body", "body": body})
                return
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
            message = {**message, "headers": kept + extra}
        await send(message)
    return guarded


async def _json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app

def create_app(models: list[ServedModel], workers: int = DEFAULT_WORKERS, root: Path | None = None,
               remove_root: bool | None = None, host: str = "127.0.0.1"):
    """The FastAPI app; job files go under ``root`` (default: a new temporary directory).

    ``root`` is deleted at shutdown when ``remove_root`` says so (default: when the app made it).
    ``host`` is the address the server listens on: it answers to that name and to loopback ones.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    remove_root = root is None if remove_root is None else remove_root
    root = Path(tempfile.mkdtemp(prefix="notelm-web-")) if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(root, workers)

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()
        if remove_root:
            shutil.rmtree(root, ignore_errors=True)

    app = FastAPI(title="notelm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs = jobs
    app.state.root = root
    app.add_middleware(Guard, hosts=Hosts(host), max_body=MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES)

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request, exc: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=400)

    _page_routes(app, models)
    _generate_route(app, models, jobs)
    _job_routes(app, jobs)
    return app


def _page_routes(app, models: list[ServedModel]) -> None:
    from fastapi import HTTPException
    from fastapi.responses import HTMLResponse, Response

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:  # a fixed list: nothing else under the package is served
            raise HTTPException(404, f"no such file: {printable(name[:80])}")
        return Response((WEB_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/api/models")
    def list_models():
        return {"models": [m.info() for m in models],
                "limits": {"max_pieces": MAX_PIECES, "max_events": MAX_EVENTS, "max_prompt_notes": MAX_PROMPT_NOTES,
                           "default_prompt_notes": gen.DEFAULT_PROMPT_NOTES, "max_upload_bytes": MAX_UPLOAD_BYTES}}


def _generate_route(app, models: list[ServedModel], jobs: Jobs) -> None:
    from fastapi import File, Form, HTTPException, UploadFile

    by_id = {m.id: m for m in models}

    @app.post("/api/generate", status_code=202)
    def start_generation(model: str = Form(...), collection: str = Form(""), temperature: float = Form(1.0),
                         top_k: int = Form(0), top_p: float = Form(1.0), length: int = Form(256), num: int = Form(1),
                         seed: str = Form(""), prompt_notes: int = Form(gen.DEFAULT_PROMPT_NOTES),
                         roll_width: float = Form(0.0), roll_scale: float = Form(1.0),
                         prompt: UploadFile | None = File(None)):
        try:
            served = by_id.get(model)
            if served is None:
                raise NotelmError(f"unknown model {printable(model[:40])!r}; choose one of {', '.join(by_id)}")
            check_limits(num, length, prompt_notes)
            cfg = check_sampling(temperature, top_k, top_p, parse_seed(seed))
            if len(collection) > MAX_NAME_CHARS:
                raise NotelmError(f"collection: a name of {len(collection):,} characters; no model knows one")
            cond = served.model.vocab.condition_id(collection) if collection else 0
            prompt_ids, qpm = None, nt.DEFAULT_QPM
            if prompt is not None:
                data = prompt.file.read(MAX_UPLOAD_BYTES + 1)  # never more than the limit in memory
                if data or prompt.filename:
                    prompt_ids, qpm = read_prompt(data, prompt.filename or "", served.model.vocab, prompt_notes)
            job = jobs.submit(Request(served, cond, cfg, length, num, prompt_ids, qpm,
                                      roll_size(roll_width, roll_scale)))
        except TooLarge as e:
            raise HTTPException(413, str(e)) from None
        except NotelmError as e:
            raise HTTPException(400, printable(str(e))) from None
        except Busy as e:
            raise HTTPException(429, str(e)) from None
        return {"job_id": job.id, "status_url": f"/api/jobs/{job.id}"}


def _job_routes(app, jobs: Jobs) -> None:
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    def find_job(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "unknown job (finished jobs are kept for a while, then deleted)")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        return find_job(job_id).info()

    @app.get("/api/jobs/{job_id}/files/{index}/{kind}")
    def job_file(job_id: str, index: int, kind: str):
        job = find_job(job_id)
        if kind not in FILE_KINDS:
            raise HTTPException(404, f"no file kind {printable(kind[:20])!r}; expected {', '.join(FILE_KINDS)}")
        if job.status != "done" or not 0 <= index < len(job.pieces) or kind not in job.pieces[index]:
            raise HTTPException(404, f"job {job.id} has no {kind} file for piece {index}")
        suffix, media_type = FILE_KINDS[kind]
        path = job.dir / f"piece_{index:02d}{suffix}"  # a name write_pieces chose, inside the job's own directory
        # inline, so <img> and <audio> use it; the page's links carry the `download` attribute
        return FileResponse(path, media_type=media_type, filename=f"notelm-{job.id[:8]}-{index + 1}{suffix}",
                            content_disposition_type="inline")


# --------------------------------------------------------------------------- serve

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """A clear one-line error now, instead of uvicorn's traceback after start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except (OSError, OverflowError) as e:
            why = getattr(e, "strerror", None) or str(e)
            raise NotelmError(f"cannot listen on {host}:{port} ({why}); choose another --port or --host") from None


def serve(model_paths=(), host: str = "127.0.0.1", port: int = 8000, workers: int = DEFAULT_WORKERS,
          log=print) -> None:
    """Load the models, then serve the page until Ctrl+C."""
    try:
        import uvicorn
    except ImportError:
        raise NotelmError("notelm serve needs the web extra: pip install 'notelm[web]'") from None
    if not 1 <= port <= 65535:
        raise NotelmError(f"--port {port}: between 1 and 65535")
    models = load_models(model_paths)
    check_port_free(host, port)
    if not is_loopback(host):
        log(f"warning: listening on {host}, not only on this computer: anyone who can reach it on port {port} "
            "can use the page and its CPU (use --host 127.0.0.1 to keep it local)")
    # The generated files live only as long as the server.  uvicorn re-raises SIGTERM after its
    # graceful shutdown (so no `finally` runs then): the app's shutdown removes the directory too.
    root = Path(tempfile.mkdtemp(prefix="notelm-web-"))
    try:
        app = create_app(models, workers=workers, root=root, remove_root=True, host=host)
        shown = f"[{host}]" if ":" in host else host
        log(f"notelm serve: {len(models)} model{'s' if len(models) != 1 else ''} "
            f"({', '.join(m.name for m in models)}); open http://{shown}:{port}/ (Ctrl+C stops)")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except KeyboardInterrupt:
        pass  # Ctrl+C is how the server is meant to stop
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log("notelm serve: stopped")
