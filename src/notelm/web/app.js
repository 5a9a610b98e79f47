// The notelm page: fills the form from /api/models, starts a job, polls it, shows the pieces.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
let models = [];
let limits = {};

async function loadModels() {
  const response = await fetch("/api/models");
  const body = await response.json();
  models = body.models;
  limits = body.limits;
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.family})`, m.id, m.selected, m.selected)));
  $("length").max = limits.max_events;
  $("num").max = limits.max_pieces;
  $("prompt_notes").max = limits.max_prompt_notes;
  $("prompt_notes").value = limits.default_prompt_notes;
  $("upload-hint").textContent = `A .mid file of at most ${megabytes(limits.max_upload_bytes)} MB.`;
  showCollections();
}

function showCollections() {
  const model = models.find((m) => m.id === $("model").value);
  const select = $("collection");
  const names = model ? model.conditions : [];
  select.replaceChildren(new Option(names.length ? "any (no conditioning)" : "—", ""),
                         ...names.map((name) => new Option(name, name)));
  select.disabled = names.length === 0;
  $("collection-hint").textContent = names.length
    ? `This model knows ${names.length} collection${names.length === 1 ? "" : "s"}.`
    : "This model was trained without collections to choose from.";
}

function megabytes(bytes) {
  return Math.round((bytes / (1024 * 1024)) * 10) / 10;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showStatus(text, progress) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  $("progress").value = progress;
  $("progress").hidden = progress >= 1;  // done: the line of text is enough
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("generate").textContent = busy ? "Generating…" : "Generate";
  $("spinner").hidden = !busy;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  $("warning").hidden = true;
  const form = new FormData();
  const fields = ["model", "collection", "temperature", "top_k", "top_p", "length", "num", "seed", "prompt_notes"];
  for (const name of fields) {
    form.append(name, $(name).value);
  }
  // the piano roll is drawn for the width it will be shown at, at this screen's pixel ratio: legible on a phone
  form.append("roll_width", $("results").clientWidth);
  form.append("roll_scale", window.devicePixelRatio || 1);
  const file = $("prompt").files[0];
  if (file) {
    if (file.size > limits.max_upload_bytes) {  // the server checks too; this just saves the upload
      const limit = megabytes(limits.max_upload_bytes);
      showError(`${file.name}: ${megabytes(file.size)} MB is over the ${limit} MB upload limit`);
      return;
    }
    form.append("prompt", file, file.name);
  }
  setBusy(true);
  showStatus("sending…", 0);
  reveal();
  try {
    const response = await fetch("/api/generate", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `the server answered ${response.status}` }));
    if (!response.ok) {
      throw new Error(body.detail || `the server answered ${response.status}`);
    }
    const job = await poll(body.status_url);
    showResults(job);
    reveal();
  } catch (error) {
    showError(error.message);
    $("status").hidden = true;
  } finally {
    setBusy(false);
  }
}

// On a narrow screen the output sits below the whole form: bring it into view when its status line or
// first piece is out of sight (on a wide screen it sits beside the form, in view already).
function reveal() {
  const output = $("output").getBoundingClientRect();
  const first = ($("results").firstElementChild || $("status")).getBoundingClientRect();
  if (output.top < 0 || first.bottom > window.innerHeight) {
    $("output").scrollIntoView({ behavior: "smooth", block: "start" });
  }
}

async function poll(url) {
  for (;;) {
    const response = await fetch(url);
    const job = await response.json();
    if (!response.ok) {
      throw new Error(job.detail || `the server answered ${response.status}`);
    }
    if (job.status === "failed") {
      throw new Error(job.error);
    }
    if (job.status === "done") {
      showStatus(`done in ${job.seconds.toFixed(1)} s`, 1);
      return job;
    }
    const sampling = job.status === "running" && job.stage === "sampling";
    const counted = sampling ? ` (${Math.min(job.events_done, job.length)} of ${job.length} new notes)` : "";
    showStatus(`${job.stage}${counted}… ${job.seconds.toFixed(0)} s`, job.progress);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function link(url, text, filename) {
  const a = document.createElement("a");
  a.href = url;
  a.textContent = text;
  a.download = filename;
  a.className = "download";
  return a;
}

function pieceCaption(piece) {
  const notes = piece.prompt_notes
    ? `${piece.prompt_notes} prompt notes + ${piece.new_notes} new notes`
    : `${piece.new_notes} notes`;
  return `Piece ${piece.index + 1} · ${notes} · ${piece.seconds.toFixed(1)} s`;
}

function showResults(job) {
  $("empty").hidden = true;
  $("seed-used").textContent = `Seed ${job.seed}: enter it under Seed to hear these pieces again.`;
  $("seed-used").hidden = false;
  if (job.warning) {
    $("warning").textContent = job.warning;
    $("warning").hidden = false;
  }
  const pieces = job.pieces.map((piece) => {
    const figure = document.createElement("figure");
    figure.className = "piece";
    const caption = document.createElement("figcaption");
    caption.textContent = pieceCaption(piece);
    const img = document.createElement("img");
    img.src = piece.png_url;
    img.alt = `piano roll of piece ${piece.index + 1}` + (piece.prompt_notes ? " (the prompt shaded)" : "");
    if (piece.index === 0) {
      img.addEventListener("load", reveal);  // its height is known only now
    }
    figure.append(caption, img);
    if (piece.wav_url) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = piece.wav_url;
      figure.append(audio);
    }
    const links = document.createElement("div");
    links.className = "links";
    const stem = `notelm-${job.id.slice(0, 8)}-${piece.index + 1}`;
    links.append(link(piece.midi_url, "Download MIDI", `${stem}.mid`));
    if (piece.wav_url) {
      links.append(link(piece.wav_url, "Download WAV", `${stem}.wav`));
    }
    figure.append(links);
    return figure;
  });
  $("results").replaceChildren(...pieces);
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", showCollections);
  $("settings").addEventListener("submit", generate);
  $("random-seed").addEventListener("click", () => {
    $("seed").value = "";  // empty: a new random seed each time
  });
  setBusy(false);
  loadModels().catch((error) => showError(`cannot load the models: ${error.message}`));
});
