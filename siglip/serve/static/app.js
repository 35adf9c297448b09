// The search page's behaviour: text or image search over an index, and zero-shot classification of
// the uploaded images. Talks to the server that served it (same origin) through its JSON API; every
// error body is {"error": {"message", "type"}} and is shown as it is.
"use strict";

const KEY_STORAGE = "siglip.apiKey";
const $ = (id) => document.getElementById(id);
const uploads = []; // [{name, dataUrl}] in upload order; the last one is the image query

// --- talking to the server ---

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// GET (body undefined) or POST JSON; resolves to the parsed answer, rejects with the server's message.
async function api(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new Error("the server did not answer (" + e.message + ")");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    if (response.ok) throw new Error(path + " answered something that is not JSON");
  }
  if (!response.ok) {
    let message = (data && data.error && data.error.message) || text || response.statusText;
    if (response.status === 401 || response.status === 403) message += " (enter the server's API key at the top)";
    throw new Error(`${response.status}: ${message}`);
  }
  return data;
}

// --- status and errors ---

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function guarded(what, work) {
  showError("");
  setStatus(what + "...");
  const start = performance.now();
  try {
    const note = await work();
    setStatus(`${note} (${Math.round(performance.now() - start)} ms)`);
  } catch (e) {
    setStatus("");
    showError(e.message);
  }
}

// probability in [0, 1] -> "97.3%", "0.42%", "3.1e-7"
function percent(p) {
  if (p >= 0.001) return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + "%";
  return p.toExponential(1);
}

// --- indexes ---

async function loadIndices() {
  const select = $("index");
  const wanted = new URLSearchParams(location.search).get("index") || select.value;
  const names = await api("/indices-list");
  select.replaceChildren(...names.map((n) => new Option(n, n)));
  if (names.includes(wanted)) select.value = wanted;
  $("search-btn").disabled = names.length === 0;
  return names.length ? `${names.length} index${names.length > 1 ? "es" : ""}` : "no index loaded: classify only";
}

// --- search ---

function hitCard(hit) {
  const card = document.createElement("figure");
  card.className = "hit";
  card.title = `row ${hit.row}\nprobability ${hit.score}\nlogit ${hit.logit.toFixed(3)}\ncosine ${hit.cosine.toFixed(4)}`;
  if (hit.thumbnail) {
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = hit.caption || hit.path || `row ${hit.row}`;
    img.loading = "lazy";
    card.append(img);
  } else {
    const quote = document.createElement("blockquote");
    quote.textContent = hit.text || hit.caption || `row ${hit.row}`;
    card.append(quote);
  }
  const caption = document.createElement("figcaption");
  const score = document.createElement("strong");
  score.className = "score";
  score.textContent = percent(hit.score);
  const where = document.createElement("span");
  where.className = "where"; // cut on the left (CSS), so a long path keeps its file name
  const text = document.createElement("bdi");
  text.textContent = hit.path || hit.caption || hit.text || `row ${hit.row}`;
  where.append(text);
  caption.append(score, where);
  card.append(caption);
  return card;
}

async function search(query) {
  const index = $("index").value;
  if (!index) throw new Error("no index to search: start the server with --index NAME=PATH");
  const k = Number($("k").value) || 24;
  const answer = await api("/v1/search", { index, k, ...query });
  $("results").replaceChildren(...answer.hits.map(hitCard));
  return `${answer.hits.length} hits in ${answer.index}`;
}

function searchText(event) {
  if (event) event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return showError("type something to search for, or drop an image");
  const params = new URLSearchParams({ index: $("index").value, q: text });
  history.replaceState(null, "", "?" + params);
  guarded("searching", () => search({ text }));
}

// --- uploads ---

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/"));
  if (!images.length) return showError("those files are not images");
  for (const file of images) {
    const dataUrl = await readAsDataUrl(file);
    uploads.push({ name: file.name, dataUrl });
    const thumb = document.createElement("img");
    thumb.src = dataUrl;
    thumb.alt = thumb.title = file.name;
    $("uploads").append(thumb);
  }
  const last = uploads[uploads.length - 1];
  if ($("index").value) guarded(`searching with ${last.name}`, () => search({ image: last.dataUrl }));
}

// --- classify ---

function splitList(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
}

function bars(upload, labels, probabilities, top) {
  const block = document.createElement("div");
  block.className = "classified";
  const img = document.createElement("img");
  img.src = upload.dataUrl;
  img.alt = img.title = upload.name;
  const list = document.createElement("ol");
  const order = labels.map((_, i) => i).sort((a, b) => probabilities[b] - probabilities[a]);
  for (const i of order) {
    const row = document.createElement("li");
    row.className = labels[i] === top ? "bar top" : "bar";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = labels[i];
    name.title = labels[i];
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = Math.max(0.5, 100 * probabilities[i]) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(probabilities[i]);
    row.append(name, value, track);
    list.append(row);
  }
  block.append(img, list);
  return block;
}

function classify() {
  const labels = splitList($("labels").value);
  const templates = splitList($("templates").value);
  if (!uploads.length) return showError("upload an image first (drop it on the box above)");
  if (!labels.length) return showError("give at least one label");
  const body = { images: uploads.map((u) => u.dataUrl), labels };
  if (templates.length) body.templates = templates;
  guarded("classifying", async () => {
    const answer = await api("/v1/classify", body);
    const blocks = answer.results.map((r, i) => bars(uploads[i], answer.labels, r.probabilities, r.top));
    $("classify-results").replaceChildren(...blocks);
    return `${uploads.length} image${uploads.length > 1 ? "s" : ""} x ${answer.labels.length} labels`;
  });
}

// --- wiring ---

function wire() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value) localStorage.setItem(KEY_STORAGE, key.value);
    else localStorage.removeItem(KEY_STORAGE);
    guarded("loading indexes", loadIndices);
  });
  $("search-form").addEventListener("submit", searchText);
  $("classify-btn").addEventListener("click", classify);
  const input = $("image-input");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => addFiles(input.files).then(() => (input.value = "")));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
}

// ?index=NAME&q=TEXT opens with that search done
async function start() {
  wire();
  await guarded("loading indexes", loadIndices);
  const q = new URLSearchParams(location.search).get("q");
  if (q && $("index").value) {
    $("query").value = q;
    searchText();
  }
}

document.addEventListener("DOMContentLoaded", start);
