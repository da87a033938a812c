// The Inferno dashboard: one EventSource, plain DOM updates. Every value that
// came from a backend or a client is written with textContent, never as HTML.
"use strict";

const MAX_EVENTS_SHOWN = 300;
const STALE_MS = 5000;

const state = { history: [], lastSeq: 0, source: null, lastMessage: 0, retryTimer: null, models: new Set(),
  latencyModels: new Set(), latencyChosen: false };

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fmtMs(v) { return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms"; }
function fmtRate(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"; }
function fmtNum(v) { return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1); }
function fmtTime(ts) { return new Date(ts * 1000).toLocaleTimeString([], { hour12: false }); }
function fmtAge(s) { return s === null || s === undefined ? "–" : s + " s ago"; }
function fmtUptime(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min` : `${Math.floor(s)} s`;
}

// -- connection ------------------------------------------------------------------
function setConnection(live) {
  const conn = $("conn");
  conn.dataset.state = live ? "live" : "disconnected";
  conn.textContent = live ? "live" : "disconnected";
  $("disconnected").hidden = live;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource("/dashboard/events");
  state.source = source;
  source.onmessage = (msg) => {
    state.lastMessage = Date.now();
    setConnection(true);
    let data;
    try { data = JSON.parse(msg.data); } catch (e) { return; }
    if (data.type === "hello") state.history = data.history.slice();
    else if (data.type === "tick") {
      state.history.push(data.point);
      if (state.history.length > 3600) state.history.shift();
    }
    render(data);
  };
  source.onerror = () => {
    setConnection(false);
    // The browser retries network errors by itself, but gives up on an HTTP error
    // (a restarted proxy answering 401 or 503): then start over ourselves.
    if (source.readyState === EventSource.CLOSED && !state.retryTimer) {
      state.retryTimer = setTimeout(() => { state.retryTimer = null; reconnect(); }, 2000);
    }
  };
}

// The session may have ended (it expires, or was logged out elsewhere): then show the
// login form instead of retrying for ever.
async function reconnect() {
  try {
    const probe = await fetch("/dashboard/api/state", { credentials: "same-origin" });
    if (probe.status === 401) { window.location.reload(); return; }
  } catch (e) { /* the proxy is away: keep trying */ }
  connect();
}

// A proxy that stops sending (frozen, or a silent network) shows as disconnected too.
setInterval(() => {
  if (state.lastMessage && Date.now() - state.lastMessage > STALE_MS) {
    setConnection(false);
    state.lastMessage = 0;
    connect();
  }
}, 1000);

// -- rendering -------------------------------------------------------------------
function render(data) {
  renderHealth(data.health, data.backends);
  renderCharts();
  renderBackends(data.backends);
  renderRouting(data.routing);
  renderQueue(data.queue);
  renderUsage(data.usage);
  renderJobQueues(data.jobqueues || []);
  renderEvents(data.events);
}

function renderHealth(health, backends) {
  const badge = $("health");
  badge.dataset.status = health.status;
  badge.textContent = health.status;
  const b = health.backends;
  $("meta").textContent = `policy ${health.policy} · up ${fmtUptime(health.uptime_s)}` +
    (health.insecure ? " · INSECURE: no cluster token" : "");
  $("card-backends").textContent = `${b.healthy} / ${b.total}`;
  const last = state.history[state.history.length - 1] || {};
  $("card-rps").textContent = fmtNum(last.rps);
  $("card-latency").textContent = [last.p50_ms, last.p95_ms, last.p99_ms].map(fmtMs).join(" / ");
  $("card-errors").textContent = fmtNum(last.errors_per_s);
  $("card-rejected").textContent = fmtNum(last.rejected_per_s);
  $("card-inflight").textContent = `${health.in_flight} / ${last.queued ?? 0}`;
  $("card-retries").textContent = `${health.retries} / ${health.fallbacks} / ${health.ejections}`;
  for (const row of backends) for (const m of row.models) state.models.add(m);
  const list = $("try-models");
  if (list.childElementCount !== state.models.size) {
    list.replaceChildren(...[...state.models].map((m) => { const o = el("option"); o.value = m; return o; }));
  }
}

// Models differ by orders of magnitude (an embedding in ms, a chat in seconds): the
// latency chart shows one model at a time, the first one seen until the user picks.
function updateLatencyModels() {
  const select = $("latency-model");
  let added = false;
  for (const p of state.history) {
    for (const m of Object.keys(p.models || {})) {
      if (!state.latencyModels.has(m)) { state.latencyModels.add(m); added = true; }
    }
  }
  if (!added) return;
  const chosen = select.value;
  const options = [...state.latencyModels].sort().map((m) => { const o = el("option", m); o.value = m; return o; });
  const mixed = el("option", "all models, mixed");
  mixed.value = "";
  select.replaceChildren(...options, mixed);
  select.value = state.latencyChosen ? chosen : options[0].value;
}

function latencyOf(point, model, key) {
  if (!model) return point[key];
  const m = point.models && point.models[model];
  return m ? m[key] : null;
}

function renderCharts() {
  const h = state.history;
  const times = h.map((p) => p.t);
  updateLatencyModels();
  const model = $("latency-model").value;
  drawChart($("chart-rate"), times, [
    { label: "requests/s", color: "#58a6ff", values: h.map((p) => p.rps) },
    { label: "5xx/s", color: "#f85149", values: h.map((p) => p.errors_per_s) },
    { label: "429/s", color: "#d29922", values: h.map((p) => p.rejected_per_s ?? 0) },
  ]);
  drawChart($("chart-latency"), times, [
    { label: "p50", color: "#3fb950", values: h.map((p) => latencyOf(p, model, "p50_ms")) },
    { label: "p95", color: "#d29922", values: h.map((p) => latencyOf(p, model, "p95_ms")) },
    { label: "p99", color: "#f85149", values: h.map((p) => latencyOf(p, model, "p99_ms")) },
  ], "");
  drawChart($("chart-load"), times, [
    { label: "in flight", color: "#bc8cff", values: h.map((p) => p.in_flight) },
    { label: "queued", color: "#d29922", values: h.map((p) => p.queued) },
  ]);
}

function pill(text, kind) { return el("span", text, "pill " + kind); }

function renderBackends(rows) {
  const body = $("backends").tBodies[0];
  $("backends-empty").hidden = rows.length > 0;
  const cells = rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.address = r.address;
    tr.dataset.status = r.status;
    const health = el("td");
    health.append(pill(r.status, r.status));
    if (r.suspect) health.append(" ", pill("suspect", "suspect"));
    health.title = r.status_reason;
    const circuit = el("td");
    circuit.append(pill(r.circuit, r.circuit));
    tr.append(
      Object.assign(el("td", r.node_id, "node"), { title: r.address }),
      el("td", r.address),
      el("td", r.models.join(", ") || "any"),
      health,
      circuit,
      el("td", `${r.in_flight} / ${r.slots}`, "inflight"),
      el("td", r.served, "served"),
      el("td", `${fmtRate(r.recent_error_rate)} / ${fmtRate(r.error_rate)}`),
      el("td", fmtMs(r.ttft_ms)),
      el("td", fmtMs(r.tpot_ms)),
      el("td", r.source === "static" ? "static" : fmtAge(r.heartbeat_age_s)),
      el("td", r.weight),
    );
    return tr;
  });
  body.replaceChildren(...cells);
}

function renderBars(container, counts, names) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  container.replaceChildren(...entries.map(([name, n]) => {
    const bar = el("div", null, "bar");
    bar.dataset.name = name;
    // Backends go by node id, as in the table and the event log; the address on hover.
    const label = el("div", names ? names[name] || name : name, "name");
    if (names) label.title = name;
    const track = el("div", null, "track");
    const fill = el("div", null, "fill");
    fill.style.width = (total ? (100 * n) / total : 0).toFixed(1) + "%";
    track.append(fill);
    bar.append(label, track, el("div", `${n} (${total ? Math.round((100 * n) / total) : 0}%)`, "n"));
    return bar;
  }));
  if (!entries.length) container.replaceChildren(el("p", "no requests in this window", "empty"));
}

function renderRouting(routing) {
  $("routing-window").textContent = `last ${Math.round(routing.window_s)} s`;
  renderBars($("routing-backends"), routing.backends, routing.names || {});
  renderBars($("routing-models"), routing.models);
}

function renderQueue(queue) {
  const body = $("queue").tBodies[0];
  body.replaceChildren(...Object.keys(queue.depth).map((p) => {
    const tr = document.createElement("tr");
    tr.append(el("td", p), el("td", queue.depth[p]), el("td", queue.served[p] ?? 0));
    return tr;
  }));
}

function renderJobQueues(rows) {
  $("jobqueues-off").hidden = rows.length > 0;
  $("jobqueues").hidden = rows.length === 0;
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  const body = $("jobqueues").tBodies[0];
  body.replaceChildren(...rows.map((q) => {
    const tr = document.createElement("tr");
    const done = Object.entries(q.completed).map(([k, v]) => `${k} ${v}`).join(", ") || "0";
    tr.append(el("td", q.name), el("td", q.waiting), el("td", q.running), el("td", q.workers_polling),
      el("td", `${q.oldest_wait_s.toFixed(1)} s`), el("td", done), el("td", sum(q.redeliveries)), el("td", q.dead));
    return tr;
  }));
}

function renderUsage(usage) {
  $("usage-off").hidden = usage.enabled;
  $("usage").hidden = !usage.enabled;
  const body = $("usage").tBodies[0];
  body.replaceChildren(...usage.rows.map((u) => {
    const tr = document.createElement("tr");
    tr.append(el("td", u.key_name || u.key_id), el("td", u.model), el("td", u.requests),
      el("td", u.prompt_tokens), el("td", u.completion_tokens));
    return tr;
  }));
}

function renderEvents(events) {
  const list = $("events");
  for (const e of events) {
    if (e.seq <= state.lastSeq) continue; // a hello and the next tick can overlap
    state.lastSeq = e.seq;
    const li = el("li");
    li.dataset.kind = e.kind;
    li.dataset.address = e.address;
    li.append(el("span", fmtTime(e.ts), "time"), el("span", e.kind.replace("_", "-"), "kind " + e.kind),
      el("span", `${e.node_id} (${e.address})${e.detail ? ": " + e.detail : ""}`));
    list.prepend(li);
  }
  while (list.childElementCount > MAX_EVENTS_SHOWN) list.lastElementChild.remove();
}

// -- try it ----------------------------------------------------------------------
function shrinkImage(file) {
  // Scaled down in the browser (the classifier looks at 224 px anyway), so the
  // request stays small.
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(1, 320 / Math.max(img.width, img.height));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(img.width * scale));
      canvas.height = Math.max(1, Math.round(img.height * scale));
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      URL.revokeObjectURL(url);
      resolve(canvas.toDataURL("image/jpeg", 0.9));
    };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("not an image the browser can read")); };
    img.src = url;
  });
}

$("latency-model").onchange = () => { state.latencyChosen = true; renderCharts(); };

function setupTry() {
  const kind = $("try-kind");
  kind.onchange = () => {
    $("try-image-row").hidden = kind.value !== "image";
    $("try-prompt").hidden = kind.value === "image";
  };
  $("try-image").onchange = async () => {
    const file = $("try-image").files[0];
    if (!file) return;
    const preview = $("try-preview");
    preview.src = await shrinkImage(file);
    preview.hidden = false;
  };
  $("try-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const send = $("try-send");
    send.disabled = true;
    const request = { kind: kind.value, prompt: $("try-prompt").value,
      max_tokens: Number($("try-max-tokens").value) || 32 };
    const model = $("try-model").value.trim();
    if (model) request.model = model;
    const key = $("try-key").value.trim();
    if (key) request.api_key = key;
    try {
      if (kind.value === "image") {
        const file = $("try-image").files[0];
        if (!file) throw new Error("choose an image first");
        request.image = (await shrinkImage(file)).split(",", 2)[1];
      }
      const response = await fetch("/dashboard/api/try", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
        credentials: "same-origin",
      });
      const result = await response.json();
      if (!response.ok) throw new Error(result.error ? result.error.message : "HTTP " + response.status);
      showTry(result);
    } catch (err) {
      showTry({ status: "error", answer: err.message });
    } finally {
      send.disabled = false;
    }
  };
}

function showTry(r) {
  $("try-result").hidden = false;
  $("try-result").dataset.status = String(r.status);
  $("try-status").textContent = r.status;
  $("try-backend").textContent = r.backend ? `${r.backend} (${r.backend_addr})` : "–";
  $("try-served-model").textContent = r.model || "–";
  const parts = [];
  if (r.elapsed_ms !== undefined) parts.push(`round trip ${fmtMs(r.elapsed_ms)}`);
  if (r.server_timing) parts.push(r.server_timing);
  if (r.usage) parts.push(`${r.usage.prompt_tokens} prompt + ${r.usage.completion_tokens} completion tokens`);
  $("try-timings").textContent = parts.join(" · ") || "–";
  $("try-answer").textContent = r.answer || "";
}

setupTry();
connect();
