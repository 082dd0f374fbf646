// vidseek web page: search the REST API -- by text, by an example picture, or for more moments like a
// result -- and play a hit at its matched moment; a library view lists, uploads (with live job progress)
// and deletes videos. Plain JS, no build step, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), input = $("query"), rerank = $("rerank"), mode = $("mode");
const statusLine = $("status"), results = $("results"), landing = $("landing");
const pane = $("player-pane"), player = $("player"), nowPlaying = $("now-playing");
const alertBox = $("alert");
const KEY_STORE = "vidseek-api-key";  // sessionStorage: the key lives as long as this tab
let library = null;  // GET /api/library, refreshed after uploads and deletes
let lastOpener = null;  // the control that opened the player (focus returns to it on close)
let exampleImage = null;  // the picture searched by (a File), with the text box's words when there are any

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("aria-") || k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

// ----- errors: an alert with a human sentence and, when there is one, the API's own message ----------
class ApiFailure extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function sentenceFor(err) {
  if (!(err instanceof ApiFailure)) return "Cannot reach the vidseek server — is it running?";
  if (err.status === 400) return "The server cannot run this request.";
  if (err.status === 401) return "This server needs its API key.";
  if (err.status === 413) return "That is too large for this server.";
  if (err.status === 422) return "That file is not a video vidseek can read.";
  if (err.status === 503) return "The server cannot do this right now.";
  if (err.status >= 500) return "The vidseek server failed to answer.";
  return `The server refused the request (HTTP ${err.status}).`;
}

function showAlert(err, context = "") {
  alertBox.querySelector(".alert-title").textContent = `${context}${sentenceFor(err)}`;
  alertBox.querySelector(".alert-detail").textContent = err instanceof ApiFailure ? err.message : `(${err.message})`;
  alertBox.hidden = false;
}

function clearAlert() { alertBox.hidden = true; }

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

// fetch + JSON + errors as ApiFailure (the API's message when it sent one); network errors stay TypeErrors
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const resp = await fetch(path, { ...options, headers });
  if (resp.status === 204) return null;
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!resp.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${resp.status} ${resp.statusText}`.trim();
    throw new ApiFailure(resp.status, message);
  }
  return body;
}

// ----- the library summary: counts on the landing view, rerankers that can act, upload limits ---------
async function loadLibrary() {
  library = await api("/api/library");
  const v = library.videos;
  const parts = [`${v.done} video${v.done === 1 ? "" : "s"} searchable (${library.segments_indexed} segments)`];
  if (v.queued + v.running) parts.push(`${v.queued + v.running} being indexed`);
  if (v.failed) parts.push(`${v.failed} could not be indexed`);
  $("library-count").textContent = `${parts.join(" · ")}.`;
  $("empty-library").hidden = v.total > 0;
  const notes = [];
  for (const r of library.rerankers) {
    const option = rerank.querySelector(`option[value="${r.name}"]`);
    if (!option) continue;
    const label = option.textContent.replace(/ \(unavailable\)$/, "");
    option.disabled = !r.available;
    option.title = r.reason || "";
    option.textContent = r.available ? label : `${label} (unavailable)`;
    if (!r.available) notes.push(`${label[0].toUpperCase()}${label.slice(1)} reranking is unavailable: ${r.reason}.`);
  }
  if (rerank.selectedOptions[0] && rerank.selectedOptions[0].disabled) rerank.value = "none";
  $("rerank-note").textContent = notes.join(" ");
  $("upload-limits").textContent =
    `Up to ${library.max_upload_mb} MB each; ${library.video_extensions.join(" ")}` +
    (library.ingestion ? "" : " — this server process does not accept ingestion.");
  $("file-input").accept = ["video/*", ...library.video_extensions].join(",");
  $("key-box").hidden = !(library.write_key_required && !apiKey());
}

// ----- search ----------------------------------------------------------------------------------------
function play(hit, start, end, opener) {
  pane.hidden = false;
  lastOpener = opener || null;
  nowPlaying.textContent = `${displayName(hit)} — ${clock(start)}–${clock(end)}`;
  const seek = () => {
    player.currentTime = start;
    player.play().catch(() => {});  // autoplay may be refused; the position is still set
  };
  if (player.dataset.videoId === String(hit.video_id) && player.readyState >= 1) {
    seek();
  } else {
    player.dataset.videoId = String(hit.video_id);
    player.addEventListener("loadedmetadata", seek, { once: true });
    player.src = hit.stream_url;
  }
  player.scrollIntoView({ behavior: "smooth", block: "nearest" });
  player.focus({ preventScroll: true });
}

function closePlayer() {
  if (pane.hidden) return;
  player.pause();
  pane.hidden = true;
  if (lastOpener && lastOpener.isConnected) lastOpener.focus();
}

// Titles are file stems: when two hits share one, show the file name, and the folder too if needed.
function labelHits(hits) {
  const count = (key) => hits.reduce((m, h) => m.set(key(h), (m.get(key(h)) || 0) + 1), new Map());
  const byTitle = count((h) => h.title), byFile = count((h) => h.file_name);
  for (const h of hits) {
    h.label = byTitle.get(h.title) === 1 ? h.title : byFile.get(h.file_name) === 1 ? h.file_name : `${h.folder}/${h.file_name}`;
  }
}

function displayName(hit) { return hit.label || hit.title; }

function card(hit) {
  const name = displayName(hit);
  const playButton = el("button", { type: "button", className: "play", "aria-label": `Play ${name} from ${clock(hit.start)}` },
    el("img", { alt: "", loading: "lazy", ...(hit.thumbnail_url ? { src: hit.thumbnail_url } : {}) }),
    el("span", { className: "title", title: hit.file_name }, name));
  const meta = el("div", { className: "meta" },
    el("span", { className: "range" }, `${clock(hit.start)}–${clock(hit.end)}`),
    el("span", { className: "score", title: "first-stage score (query vs. segment)" }, hit.first_stage_score.toFixed(3)));
  if (hit.rerank_score !== null) {
    meta.append(el("span", { className: "rerank-score", title: "rerank score" }, `→ ${hit.rerank_score.toFixed(3)}`));
  }
  if (hit.fused_score !== null) {  // hybrid search: which rankings found the video
    const names = hit.signals.map((s) => SIGNAL_NAMES[s] || s);
    meta.append(el("span", { className: "signals", title: `found by ${names.join(" and ")} (fused score ${hit.fused_score.toFixed(4)})` },
      names.join(" + ")));
  }
  const item = el("li", { className: "card", "data-video-id": hit.video_id, "data-start": hit.start }, playButton, meta);
  // every matching segment, in time order; the best one stands out
  const best = { start: hit.segment_start, end: hit.segment_end, score: hit.first_stage_score, best: true };
  const moments = [best, ...hit.moments].sort((a, b) => a.start - b.start);
  if (moments.length > 1) {
    const chips = el("div", { className: "moments", role: "group", "aria-label": `Matching moments in ${name}` });
    for (const m of moments) {
      const b = el("button", {
        type: "button", className: m.best ? "best" : "",
        title: `${m.best ? "best match" : "also matches"} ${clock(m.start)}–${clock(m.end)} (${m.score.toFixed(3)})`,
        "aria-label": `Play ${name} from ${clock(m.start)}${m.best ? " (best match)" : ""}`,
      }, clock(m.start));
      b.addEventListener("click", (ev) => { ev.stopPropagation(); play(hit, m.start, m.end, b); });
      chips.append(b);
    }
    item.append(chips);
  }
  const like = el("button", { type: "button", className: "like", "aria-label": `More moments like ${name} at ${clock(hit.segment_start)}` },
    "More like this");
  like.addEventListener("click", (ev) => { ev.stopPropagation(); searchLike(hit.segment_id, `${name} at ${clock(hit.segment_start)}`); });
  item.append(like);
  playButton.addEventListener("click", (ev) => { ev.stopPropagation(); play(hit, hit.start, hit.end, playButton); });
  item.addEventListener("click", () => play(hit, hit.start, hit.end, playButton));
  return item;
}

const SIGNAL_NAMES = { vector: "visual", text: "title/tags" };

function rerankNote(info, timings) {
  if (info.method === "none") return "";
  if (info.fallback) return ` · ${info.method} rerank unavailable (${info.reason}); first-stage order`;
  const missing = info.without_summary.length ? `, ${info.without_summary.length} without summary` : "";
  return ` · ${info.method} reranked ${info.rescored} of ${info.candidates}${missing} in ${timings.rerank.toFixed(0)} ms`;
}

function shortQuery(q) { return q.length > 60 ? `${q.slice(0, 57)}…` : q; }

// The llm reranker reads the query's words: a search by a picture or a moment alone is not reranked by it.
function rerankFor(hasText) { return !hasText && rerank.value === "llm" ? "none" : rerank.value; }

function textRequest(q) {
  // POST: a long query (up to 1000 characters, 9 KB percent-encoded) would not fit a server's URL limit
  return { headers: { "Content-Type": "application/json" },
           body: JSON.stringify({ q, k: 12, rerank: rerankFor(true), mode: mode.value }) };
}

function imageRequest(file, q) {
  const data = new FormData();  // multipart: the browser sets the Content-Type with its boundary
  data.append("image", file);
  if (q) {
    data.append("q", q);
    data.append("mode", mode.value);  // hybrid matches the words: only with a query
  }
  data.append("k", "12");
  data.append("rerank", rerankFor(Boolean(q)));
  return { body: data };
}

function searchLike(segmentId, what) {
  showView("search");
  document.title = `Like ${shortQuery(what)} — vidseek`;
  history.replaceState(null, "", `?like=${encodeURIComponent(segmentId)}`);
  search({ headers: { "Content-Type": "application/json" },
           body: JSON.stringify({ like: { segment_id: segmentId }, k: 12, rerank: rerankFor(false) }) },
         `moments like ${what}`);
}

function showImageChip() {
  $("image-chip").hidden = !exampleImage;
  $("image-name").textContent = exampleImage ? exampleImage.name : "";
  $("image-name").title = exampleImage ? exampleImage.name : "";
}

let inflight = null;  // the running search: a new one aborts it

// request: { headers, body } of POST /api/search; what: the query in words, for the status line
async function search(request, what) {
  if (inflight) inflight.abort();
  const controller = new AbortController();
  inflight = controller;
  clearAlert();
  results.replaceChildren();
  landing.hidden = true;
  const started = performance.now();
  const tick = () => { statusLine.textContent = `Searching for ${what}… ${((performance.now() - started) / 1000).toFixed(1)} s`; };
  tick();
  statusLine.classList.add("busy");
  results.setAttribute("aria-busy", "true");
  const timer = setInterval(tick, 100);
  try {
    const body = await api("/api/search", { method: "POST", ...request, signal: controller.signal });
    labelHits(body.hits);
    if (body.hits.length) {
      statusLine.textContent = `${body.hits.length} videos in ${body.timings_ms.total.toFixed(0)} ms${rerankNote(body.rerank, body.timings_ms)}`;
    } else {
      statusLine.textContent = `No videos match ${what}.`;
      landing.hidden = false;  // says what is indexed, and how to add videos when nothing is
      loadLibrary().catch(() => {});
    }
    results.replaceChildren(...body.hits.map(card));
  } catch (err) {
    if (err.name === "AbortError") return;
    statusLine.textContent = "";
    showAlert(err, "Search failed. ");
  } finally {
    clearInterval(timer);
    if (inflight === controller) {
      inflight = null;
      statusLine.classList.remove("busy");
      results.removeAttribute("aria-busy");
    }
  }
}

function resetSearch() {
  if (inflight) inflight.abort();
  results.replaceChildren();
  clearAlert();
  closePlayer();
  landing.hidden = false;
  statusLine.classList.remove("busy");
  statusLine.textContent = "Type what you are looking for.";
  document.title = "vidseek";
  history.replaceState(null, "", location.pathname);
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = input.value.trim();
  showView("search");
  if (exampleImage) {  // a picture cannot be put in an address: none to share
    const what = q ? `“${shortQuery(q)}” and the picture ${exampleImage.name}` : `the picture ${exampleImage.name}`;
    document.title = `${exampleImage.name} — vidseek`;
    history.replaceState(null, "", location.pathname);
    search(imageRequest(exampleImage, q), what);
    return;
  }
  if (!q) { resetSearch(); return; }
  document.title = `“${shortQuery(q)}” — vidseek`;
  // a shareable address, unless the query is too long for servers to take back as a URL
  const address = `?q=${encodeURIComponent(q)}&rerank=${encodeURIComponent(rerank.value)}` +
    (mode.value === "hybrid" ? "&mode=hybrid" : "");
  history.replaceState(null, "", address.length <= 2000 ? address : location.pathname);
  search(textRequest(q), `“${shortQuery(q)}”`);
});

$("image-input").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";  // choosing the same file again searches again
  if (!file) return;
  exampleImage = file;
  showImageChip();
  form.requestSubmit();
});
$("image-clear").addEventListener("click", () => {
  exampleImage = null;
  showImageChip();
  $("image-input").focus();
  if (input.value.trim()) form.requestSubmit(); else resetSearch();
});

for (const control of [rerank, mode]) {
  control.addEventListener("change", () => { if (input.value.trim() || exampleImage) form.requestSubmit(); });
}
for (const b of document.querySelectorAll(".example")) {
  b.addEventListener("click", () => { input.value = b.textContent; form.requestSubmit(); });
}
$("player-close").addEventListener("click", closePlayer);
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !pane.hidden) { ev.preventDefault(); closePlayer(); } });

// ----- views: #search (default) and #library ---------------------------------------------------------
function showView(name) {
  const libraryView = name === "library";
  $("search-view").hidden = libraryView;
  $("library-view").hidden = !libraryView;
  $("nav-search").toggleAttribute("aria-current", !libraryView);
  $("nav-library").toggleAttribute("aria-current", libraryView);
  for (const a of [$("nav-search"), $("nav-library")]) if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  if (libraryView) {
    player.pause();
    document.title = "Library — vidseek";
    loadVideos().catch((err) => showAlert(err, "The library could not be listed. "));
  }
}

for (const [link, view] of [[$("nav-search"), "search"], [$("nav-library"), "library"]]) {
  link.addEventListener("click", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams(location.search).get("q");
    history.replaceState(null, "", view === "library" ? `${location.pathname}#library` : location.pathname + location.search);
    showView(view);
    if (view === "search") document.title = q ? `“${shortQuery(q)}” — vidseek` : "vidseek";
  });
}
document.querySelector('#empty-library a[href="#library"]').addEventListener("click", (ev) => { ev.preventDefault(); $("nav-library").click(); });

// ----- library: paged list with duration, segments, status, indexing time; delete with the key -------
const PAGE = 20;
let pageOffset = 0;

// The page never shows raw errno values or absolute server paths, whatever the stored reason holds.
function shortReason(text) {
  if (!text) return "unknown reason";
  const cleaned = text
    .replace(/\[Errno -?\d+\]\s*/g, "")
    .replace(/(?:\/[^\s'"/:,()]+)+\/([^\s'"/:,()]+)/g, "$1")
    .replace(/\s+/g, " ").trim();
  return cleaned.length > 200 ? `${cleaned.slice(0, 197)}…` : cleaned;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "";
}

function videoRow(v) {
  const name = v.file_name || v.title;
  const facts = el("div", { className: "facts" },
    el("span", { className: `badge ${v.status}` }, v.status),
    el("span", {}, v.duration ? clock(v.duration) : "–"),
    el("span", {}, `${v.segment_count} segment${v.segment_count === 1 ? "" : "s"}`),
    el("span", {}, v.status === "done" ? `indexed ${when(v.updated_at)}` : `added ${when(v.created_at)}`));
  if (v.title !== v.file_name.replace(/\.[^.]*$/, "")) facts.prepend(el("span", { className: "video-title" }, v.title));
  if (v.tags.length) facts.append(el("span", { className: "tags", "aria-label": "tags" }, ...v.tags.map((t) => el("span", { className: "tag" }, t))));
  const edit = el("button", { type: "button", className: "edit secondary", "aria-label": `Edit title and tags of ${name}` }, "Edit");
  const remove = el("button", { type: "button", className: "delete", "aria-label": `Delete ${name}` }, "Delete");
  remove.addEventListener("click", () => deleteVideo(v, name));
  const row = el("li", { className: "video-row", "data-video-id": v.id }, el("span", { className: "name" }, name), facts,
    el("span", { className: "row-actions" }, edit, remove));
  edit.addEventListener("click", () => editVideo(v, name, row));
  if (v.status === "failed") row.append(el("span", { className: "reason" }, `Could not be indexed: ${shortReason(v.error)}`));
  return row;
}

// title and tags (PATCH /api/videos/<id>): a form in the row; tags are typed comma-separated
function editVideo(v, name, row) {
  clearAlert();
  if (keyRequired()) { needKey(); return; }
  if (row.querySelector(".edit-form")) return;
  const title = el("input", { type: "text", value: v.title, maxLength: 512, required: true, id: `title-${v.id}` });
  const tags = el("input", { type: "text", value: v.tags.join(", "), id: `tags-${v.id}`, placeholder: "beach, family" });
  const cancel = el("button", { type: "button", className: "secondary" }, "Cancel");
  const editor = el("form", { className: "edit-form", "aria-label": `Title and tags of ${name}` },
    el("label", { htmlFor: title.id }, "Title"), title,
    el("label", { htmlFor: tags.id }, "Tags"), tags,
    el("button", { type: "submit" }, "Save"), cancel);
  cancel.addEventListener("click", () => editor.remove());
  editor.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { title: title.value, tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean) };
    try {
      await api(`/api/videos/${v.id}`, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 401) { sessionStorage.removeItem(KEY_STORE); needKey(); }
      showAlert(err, `${name} was not changed. `);
      return;
    }
    await loadVideos().catch((err) => showAlert(err));
  });
  row.append(editor);
  title.focus();
}

async function loadVideos() {
  const body = await api(`/api/videos?${new URLSearchParams({ limit: String(PAGE), offset: String(pageOffset) })}`);
  if (!body.videos.length && pageOffset > 0) { pageOffset = Math.max(0, pageOffset - PAGE); return loadVideos(); }
  $("video-list").replaceChildren(...body.videos.map(videoRow));
  $("library-status").textContent = body.total
    ? `${body.total} video${body.total === 1 ? "" : "s"}, newest first.`
    : "No videos yet: drop some above, or run vidseek ingest on the server.";
  const pages = Math.max(1, Math.ceil(body.total / PAGE));
  $("page-info").textContent = `Page ${Math.floor(pageOffset / PAGE) + 1} of ${pages}`;
  $("page-prev").disabled = pageOffset === 0;
  $("page-next").disabled = pageOffset + PAGE >= body.total;
  $("pager").hidden = pages === 1;
}

$("page-prev").addEventListener("click", () => { pageOffset = Math.max(0, pageOffset - PAGE); loadVideos().catch((e) => showAlert(e)); });
$("page-next").addEventListener("click", () => { pageOffset += PAGE; loadVideos().catch((e) => showAlert(e)); });

function needKey() {
  const box = $("key-box");
  box.hidden = false;
  $("api-key").focus();
}

function keyRequired() { return library && library.write_key_required && !apiKey(); }

async function deleteVideo(v, name) {
  clearAlert();
  if (keyRequired()) { needKey(); return; }
  if (!confirm(`Delete ${name} from the library? Its segments and thumbnails are removed.`)) return;
  try {
    await api(`/api/videos/${v.id}`, { method: "DELETE" });
  } catch (err) {
    if (err instanceof ApiFailure && err.status === 401) { sessionStorage.removeItem(KEY_STORE); needKey(); }
    showAlert(err, `${name} was not deleted. `);
    return;
  }
  await Promise.all([loadVideos(), loadLibrary()]).catch((err) => showAlert(err));
}

// ----- upload: drag and drop or the picker; each file's upload, then its job's progress ---------------
let pendingFiles = [];  // chosen while the key was still missing

$("key-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("api-key").value = "";
  $("key-box").hidden = true;
  const files = pendingFiles;
  pendingFiles = [];
  uploadAll(files);
});

function uploadAll(files) {
  if (!files.length) return;
  clearAlert();
  if (keyRequired()) { pendingFiles.push(...files); needKey(); return; }
  for (const file of files) uploadOne(file);
}

function uploadItem(file) {
  const bar = el("progress", { max: 1, value: 0, "aria-label": `Progress of ${file.name}` });
  const state = el("span", { className: "upload-state" }, "uploading…");
  const item = el("li", {}, el("strong", {}, file.name), " — ", state, bar);
  $("uploads").prepend(item);
  return { item, bar, state };
}

// XMLHttpRequest, not fetch: only it reports upload progress
function postFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/videos");
    if (apiKey()) xhr.setRequestHeader("X-API-Key", apiKey());
    xhr.upload.addEventListener("progress", (ev) => { if (ev.lengthComputable) onProgress(ev.loaded / ev.total); });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      if (xhr.status === 202 && body) resolve(body);
      else reject(new ApiFailure(xhr.status, body && body.error ? body.error.message : `HTTP ${xhr.status}`));
    });
    xhr.addEventListener("error", () => reject(new TypeError("the upload was interrupted")));
    const data = new FormData();
    data.append("file", file);
    xhr.send(data);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function uploadOne(file) {
  const { bar, state } = uploadItem(file);
  let job;
  try {
    job = await postFile(file, (share) => { bar.value = share; state.textContent = `uploading ${Math.round(share * 100)}%`; });
  } catch (err) {
    if (err instanceof ApiFailure && err.status === 401) { sessionStorage.removeItem(KEY_STORE); pendingFiles.push(file); needKey(); }
    state.textContent = `not uploaded: ${sentenceFor(err)} ${err.message}`;
    state.classList.add("failed");
    bar.remove();
    return;
  }
  bar.value = 0;
  for (;;) {  // the job's live progress, until it is done or failed
    const pct = `${Math.round(job.progress * 100)}%`;
    if (job.status === "done") break;
    if (job.status === "failed") {
      state.textContent = `could not be indexed: ${shortReason(job.error)}`;
      state.classList.add("failed");
      bar.remove();
      loadVideos().catch(() => {});
      return;
    }
    state.textContent = job.status === "queued" ? "queued for indexing" : `indexing ${pct}${job.message ? ` — ${job.message}` : ""}`;
    bar.value = job.progress;
    await sleep(500);
    try {
      job = await api(job.job_url);
    } catch (err) {
      state.textContent = `progress unknown: ${sentenceFor(err)}`;
      await sleep(2000);
    }
  }
  bar.value = 1;
  state.replaceChildren("indexed — searchable now. ");
  await Promise.all([loadVideos(), loadLibrary()]).catch(() => {});
}

const zone = $("dropzone");
zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (ev) => {
  ev.preventDefault();
  zone.classList.remove("over");
  uploadAll([...ev.dataTransfer.files]);
});
$("file-input").addEventListener("change", (ev) => { uploadAll([...ev.target.files]); ev.target.value = ""; });

// ----- start -----------------------------------------------------------------------------------------
loadLibrary().catch((err) => {
  $("library-count").textContent = "";
  showAlert(err, "The library could not be read. ");
});
const params = new URLSearchParams(location.search);
const chosen = params.get("rerank");
if (chosen && [...rerank.options].some((o) => o.value === chosen && !o.disabled)) rerank.value = chosen;
if (params.get("mode") === "hybrid") mode.value = "hybrid";
const initial = params.get("q"), likeSegment = params.get("like");
if (location.hash === "#library") showView("library");
else if (initial) { input.value = initial; form.requestSubmit(); }
else if (/^\d+$/.test(likeSegment || "")) searchLike(Number(likeSegment), `segment ${likeSegment}`);
