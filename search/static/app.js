// vidseek search page: query the REST API, show result cards, play a hit at its matched moment.
"use strict";

const form = document.getElementById("search-form");
const input = document.getElementById("query");
const rerank = document.getElementById("rerank");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const pane = document.getElementById("player-pane");
const player = document.getElementById("player");
const nowPlaying = document.getElementById("now-playing");

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function play(hit, start, end) {
  pane.hidden = false;
  nowPlaying.textContent = `${hit.title} — ${clock(start)}–${clock(end)}`;
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
}

function card(hit) {
  const el = document.createElement("article");
  el.className = "card";
  el.tabIndex = 0;
  el.dataset.videoId = hit.video_id;
  el.dataset.start = hit.start;
  const img = document.createElement("img");
  img.alt = hit.title;
  img.loading = "lazy";
  if (hit.thumbnail_url) img.src = hit.thumbnail_url;
  const body = document.createElement("div");
  body.className = "body";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = hit.title;
  const meta = document.createElement("div");
  meta.className = "meta";
  const range = document.createElement("span");
  range.className = "range";
  range.textContent = `${clock(hit.start)}–${clock(hit.end)}`;
  const score = document.createElement("span");
  score.className = "score";
  score.title = "first-stage score (query vs. segment)";
  score.textContent = hit.first_stage_score.toFixed(3);
  meta.append(range, score);
  if (hit.rerank_score !== null) {
    const rescored = document.createElement("span");
    rescored.className = "rerank-score";
    rescored.title = "rerank score";
    rescored.textContent = `→ ${hit.rerank_score.toFixed(3)}`;
    meta.append(rescored);
  }
  body.append(title, meta);
  if (hit.moments.length) {
    const more = document.createElement("div");
    more.className = "moments";
    for (const m of hit.moments) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = clock(m.start);
      b.title = `also matches ${clock(m.start)}–${clock(m.end)} (${m.score.toFixed(3)})`;
      b.addEventListener("click", (ev) => { ev.stopPropagation(); play(hit, m.start, m.end); });
      more.append(b);
    }
    body.append(more);
  }
  el.append(img, body);
  el.addEventListener("click", () => play(hit, hit.start, hit.end));
  el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") play(hit, hit.start, hit.end); });
  return el;
}

function rerankNote(info, timings) {
  if (info.method === "none") return "";
  if (info.fallback) return ` · ${info.method} rerank unavailable (${info.reason}); first-stage order`;
  const missing = info.without_summary.length ? `, ${info.without_summary.length} without summary` : "";
  return ` · ${info.method} reranked ${info.rescored} of ${info.candidates}${missing} in ${timings.rerank.toFixed(0)} ms`;
}

async function search(q, method) {
  statusLine.textContent = "Searching…";
  results.replaceChildren();
  // POST: a long query (up to 1000 characters, 9 KB percent-encoded) would not fit a server's URL limit
  const resp = await fetch("/api/search", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ q, k: 12, rerank: method }),
  });
  const body = await resp.json();
  if (!resp.ok) {
    statusLine.textContent = body.error ? body.error.message : `error ${resp.status}`;
    return;
  }
  statusLine.textContent = body.hits.length
    ? `${body.hits.length} videos in ${body.timings_ms.total.toFixed(0)} ms${rerankNote(body.rerank, body.timings_ms)}`
    : "No videos match yet — are any ingested?";
  results.replaceChildren(...body.hits.map(card));
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = input.value.trim();
  if (!q) { statusLine.textContent = "Type what you are looking for."; return; }
  // a shareable address, unless the query is too long for servers to take back as a URL
  const address = `?q=${encodeURIComponent(q)}&rerank=${encodeURIComponent(rerank.value)}`;
  history.replaceState(null, "", address.length <= 2000 ? address : location.pathname);
  search(q, rerank.value).catch((err) => { statusLine.textContent = `Search failed: ${err}`; });
});

rerank.addEventListener("change", () => { if (input.value.trim()) form.requestSubmit(); });

const params = new URLSearchParams(location.search);
const chosen = params.get("rerank");
if (chosen && [...rerank.options].some((o) => o.value === chosen && !o.disabled)) rerank.value = chosen;
const initial = params.get("q");
if (initial) { input.value = initial; form.requestSubmit(); }

// Videos that could not be indexed, with the reason (e.g. a corrupt file), below the results.
async function showFailures() {
  const resp = await fetch(`/api/videos?${new URLSearchParams({ status: "failed", limit: "20" })}`);
  if (!resp.ok) return;
  const body = await resp.json();
  const box = document.getElementById("failures");
  box.hidden = body.total === 0;
  box.querySelector("summary").textContent =
    `${body.total} video${body.total === 1 ? "" : "s"} could not be indexed`;
  box.querySelector("ul").replaceChildren(...body.videos.map((v) => {
    const li = document.createElement("li");
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = v.error || "unknown reason";
    li.append(`${v.title}: `, reason);
    return li;
  }));
}
showFailures().catch(() => {});
