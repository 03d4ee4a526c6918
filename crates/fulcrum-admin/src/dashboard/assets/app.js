// fulcrum dashboard. Plain JavaScript, no framework, nothing fetched from elsewhere.
// The token lives in sessionStorage (this tab only) and goes in an Authorization header,
// never in a URL; the live stream (one EventSource per page) is authenticated by the
// HttpOnly cookie POST /api/v1/session sets.
"use strict";

const TOKEN_KEY = "fulcrum-token";
const $ = (id) => document.getElementById(id);

const ui = {
  token: sessionStorage.getItem(TOKEN_KEY),
  series: null,          // selected series name, e.g. "pool/app"
  range: "hour",
  hist: null,            // {start, step_s, fields...} of the selected series
  overview: null,
  events: new Map(),     // seq -> event
  stream: null,
  configLoaded: false,
  dayTimer: null,
};

// ---- helpers --------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function fmtNum(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}

function fmtBytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  return v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms";
}

function toast(text, bad) {
  const d = el("div", { class: bad ? "bad" : "", text });
  $("toast").append(d);
  setTimeout(() => d.remove(), bad ? 8000 : 4000);
}

async function api(method, path, body) {
  const headers = {};
  if (ui.token) headers["Authorization"] = "Bearer " + ui.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const text = await r.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
  if (r.status === 401) { signOut("The token was refused."); throw new Error("unauthorized"); }
  return { status: r.status, ok: r.ok, data };
}

// A confirmation dialog (every action goes through one); resolves to the input's value,
// true, or null when cancelled.
function confirmAction(text, input) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    const inp = $("confirm-input");
    inp.hidden = input === undefined;
    inp.value = input === undefined ? "" : String(input);
    const done = (v) => { d.close(); yes.removeEventListener("click", onYes); no.removeEventListener("click", onNo); resolve(v); };
    const yes = $("confirm-yes"), no = $("confirm-no");
    const onYes = () => done(input === undefined ? true : inp.value);
    const onNo = () => done(null);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    d.showModal();
    if (!inp.hidden) inp.focus();
  });
}

// ---- sign in --------------------------------------------------------------------------

function showLogin(message) {
  $("login").hidden = false;
  $("app").hidden = true;
  $("top-actions").hidden = true;
  $("login-error").textContent = message || "";
  setStatus("signed out", "");
  $("token").focus();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  ui.token = null;
  if (ui.stream) { ui.stream.close(); ui.stream = null; }
  showLogin(message);
}

async function signIn(token) {
  ui.token = token || null;
  let r;
  try {
    r = await api("GET", "/api/v1/overview");
  } catch (e) {
    if (e.message !== "unauthorized") showLogin("Cannot reach the admin API: " + e.message);
    return;
  }
  if (!r.ok) { showLogin("The API answered " + r.status); return; }
  if (ui.token) sessionStorage.setItem(TOKEN_KEY, ui.token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("top-actions").hidden = false;
  ui.overview = r.data;
  renderOverview(r.data);
  await Promise.all([loadEvents(), loadConfig()]);
  pickDefaultSeries();
  await loadHistory();
  await openStream();
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "pill " + (cls || "");
}

// ---- live stream ----------------------------------------------------------------------

async function openStream() {
  if (ui.stream) ui.stream.close();
  const r = await api("POST", "/api/v1/session", {});
  if (r.status !== 204) { setStatus("no stream (" + r.status + ")", "down"); return; }
  const es = new EventSource("/api/v1/stream");
  ui.stream = es;
  es.addEventListener("open", () => setStatus("live", "live"));
  es.addEventListener("tick", (m) => {
    let t;
    try { t = JSON.parse(m.data); } catch (_) { return; }
    ui.overview = t.overview;
    renderOverview(t.overview);
    addEvents(t.events || []);
    appendTick(t.overview);
    setStatus("live", "live");
  });
  es.addEventListener("error", () => {
    if (es !== ui.stream) return;
    setStatus("reconnecting…", "down");
    // A closed stream (cookie gone, daemon restarted) gets a new cookie and a new stream.
    if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (es === ui.stream && ui.token !== undefined) openStream().catch(() => {}); }, 3000);
  });
}

// ---- overview tables --------------------------------------------------------------------

function badge(text, cls) { return el("span", { class: "badge b-" + (cls || text), text }); }

function renderOverview(o) {
  if (!o || !o.pools) return;
  const fb = $("frontends").tBodies[0];
  fb.replaceChildren(...o.frontends.map((f) => {
    const s = f.sample;
    return el("tr", { "data-frontend": f.name, class: ui.series === "frontend/" + f.name ? "selected" : "" },
      el("td", { class: "addr", text: f.name, onclick: () => selectSeries("frontend/" + f.name) }),
      el("td", { class: "left", text: f.pool || "" }),
      el("td", { text: fmtNum(s.active) }),
      el("td", { text: fmtNum(s.conns) }),
      el("td", { text: fmtNum(s.requests) }),
      el("td", { text: fmtNum(s.errors) }),
      el("td", { text: fmtBytes(s.bytes_in) }),
      el("td", { text: fmtBytes(s.bytes_out) }),
      el("td", { text: fmtMs(s.p50_ms) }),
      el("td", { text: fmtMs(f.p95_ms) }),
      el("td", { text: fmtMs(s.p99_ms) }));
  }));
  renderClients(o.clients || []);
  const pools = $("pools");
  const open = new Set([...pools.querySelectorAll("input")].filter((i) => i === document.activeElement).map((i) => i.id));
  if (open.size) { updatePoolNumbers(o); return; } // don't rebuild under a field being typed in
  pools.replaceChildren(...o.pools.map(poolCard));
  const f = $("footer");
  if (o.history) {
    f.textContent = `History kept in the daemon: ${o.history.series} series, ` +
      `${(o.history.bytes / 1048576).toFixed(1)} MiB (at most ${(o.history.bytes_per_series_max / 1024).toFixed(0)} KiB a series). ` +
      `Updated ${new Date(o.t * 1000).toLocaleTimeString()}.`;
  }
  refreshSeriesList(o);
}

function updatePoolNumbers(o) {
  for (const p of o.pools) for (const sv of p.servers) {
    const row = document.querySelector(`tr[data-pool="${CSS.escape(p.name)}"][data-server="${CSS.escape(sv.address)}"]`);
    if (!row) continue;
    row.querySelector(".health").replaceChildren(healthBadge(sv));
  }
}

function healthBadge(sv) {
  if (sv.ejected) return badge("ejected");
  return badge(sv.health);
}

function poolCard(p) {
  const s = p.sample;
  const rows = p.servers.map((sv) => {
    const x = sv.sample;
    const name = "server/" + p.name + "/" + sv.address;
    const act = (label, fn, cls) => el("button", { type: "button", class: "small " + (cls || ""), text: label, "data-action": label.toLowerCase(), onclick: fn });
    return el("tr", { "data-pool": p.name, "data-server": sv.address, class: ui.series === name ? "selected" : "" },
      el("td", { class: "addr", text: sv.address, title: "show its history", onclick: () => selectSeries(name) }),
      el("td", { class: "state left" }, badge(sv.state)),
      el("td", { class: "health left" }, healthBadge(sv)),
      el("td", { text: String(sv.weight) }),
      el("td", { text: sv.reported === null ? "–" : String(sv.reported), title: "load the server reported" }),
      el("td", { text: fmtNum(x.active) + (sv.max_connections ? " / " + sv.max_connections : "") }),
      el("td", { text: fmtNum(x.conns) }),
      el("td", { text: fmtNum(x.errors) }),
      el("td", { text: fmtMs(x.p50_ms) }),
      el("td", { text: fmtMs(sv.p95_ms) }),
      el("td", { text: fmtMs(x.p99_ms) }),
      el("td", {}, el("div", { class: "actions" },
        act("Drain", () => changeServer(p.name, sv.address, { state: "drain" }, `Drain ${sv.address}? It takes no new connections; open ones finish.`)),
        act("Enable", () => changeServer(p.name, sv.address, { state: "up" }, `Put ${sv.address} back in rotation?`)),
        act("Maint", () => changeServer(p.name, sv.address, { state: "maint" }, `Put ${sv.address} in maintenance? It leaves rotation and is not health-checked.`)),
        act("Weight", () => setWeight(p.name, sv)),
        act("Remove", () => removeServer(p.name, sv.address), "danger"))));
  });
  const addr = el("input", { id: "add-addr-" + p.name, placeholder: "127.0.0.1:9004", "aria-label": "address" });
  const weight = el("input", { id: "add-weight-" + p.name, class: "w", placeholder: "weight", type: "number", min: "0", "aria-label": "weight" });
  return el("section", { class: "card", "data-pool-card": p.name },
    el("div", { class: "row" },
      el("h2", { class: "addr", text: "Pool " + p.name, onclick: () => selectSeries("pool/" + p.name) }),
      el("span", { class: "muted", text: `${p.algorithm} · ${fmtNum(s.active)} active · ${fmtNum(s.conns)} conn/s · ${fmtNum(s.errors)} errors/s` +
        (s.load !== null ? ` · load ${s.load}` : "") + (p.queue_length ? ` · ${p.queue_length} queued` : "") })),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["server", "state", "health", "weight", "load", "active", "conn/s", "errors/s", "p50", "p95", "p99", ""].map((h, i) => el("th", { class: i < 3 ? "left" : "", text: h })))),
      el("tbody", {}, ...rows))),
    el("div", { class: "add" }, addr, weight,
      el("button", { type: "button", text: "Add server", "data-action": "add", onclick: () => addServer(p.name, addr.value.trim(), weight.value) })));
}

// ---- actions (the API's own routes) -------------------------------------------------------

async function changeServer(pool, address, change, question) {
  if (!(await confirmAction(question))) return;
  const r = await api("PATCH", `/api/v1/pools/${encodeURIComponent(pool)}/servers/${encodeURIComponent(address)}`, change);
  if (r.ok) toast(`${address}: ${Object.entries(change).map(([k, v]) => k + " " + v).join(", ")}`);
  else toast(`${address}: ${r.data && r.data.error}`, true);
}

async function setWeight(pool, sv) {
  const v = await confirmAction(`New weight for ${sv.address} (0–10000):`, sv.weight);
  if (v === null) return;
  const w = Number(v);
  if (!Number.isInteger(w) || w < 0) { toast("The weight is a whole number from 0", true); return; }
  await changeServer(pool, sv.address, { weight: w }, `Set the weight of ${sv.address} to ${w}?`);
}

async function removeServer(pool, address) {
  if (!(await confirmAction(`Remove ${address} from pool ${pool}? Its open connections finish.`))) return;
  const r = await api("DELETE", `/api/v1/pools/${encodeURIComponent(pool)}/servers/${encodeURIComponent(address)}`);
  if (r.ok) toast(`${address} removed`); else toast(`${address}: ${r.data && r.data.error}`, true);
}

async function addServer(pool, address, weight) {
  if (!address) { toast("Give the server's address", true); return; }
  const body = { address };
  if (weight !== "") body.weight = Number(weight);
  if (!(await confirmAction(`Add ${address} to pool ${pool}${body.weight !== undefined ? " with weight " + body.weight : ""}?`))) return;
  const r = await api("POST", `/api/v1/pools/${encodeURIComponent(pool)}/servers`, body);
  if (r.ok) toast(`${address} added`); else toast(`${address}: ${r.data && r.data.error}`, true);
}

async function reload() {
  if (!(await confirmAction("Read the config file again and apply it?"))) return;
  const r = await api("POST", "/api/v1/reload", {});
  if (r.ok) { toast("Configuration reloaded"); loadConfig(); }
  else toast(`Reload refused: ${r.data.error}${r.data.errors ? "\n" + r.data.errors.join("\n") : ""}`, true);
}

// ---- top clients ------------------------------------------------------------------------

function renderClients(list) {
  const tb = $("top-clients").tBodies[0];
  if (!list.length) {
    tb.replaceChildren(el("tr", {}, el("td", { class: "left muted", colspan: "7", text: "no clients seen yet" })));
    return;
  }
  tb.replaceChildren(...list.map((c) => el("tr", { "data-client": c.address },
    el("td", { class: "addr", text: c.address }),
    el("td", { class: "left", text: c.frontend }),
    el("td", { text: fmtNum(c.active) }),
    el("td", { text: fmtNum(c.per_second) }),
    el("td", { text: fmtNum(c.connections_total) }),
    el("td", { text: fmtNum(c.requests_total) }),
    el("td", { text: fmtNum(c.refused_total) }))));
}

// ---- events -----------------------------------------------------------------------------

async function loadEvents() {
  const r = await api("GET", "/api/v1/events");
  if (r.ok) addEvents(r.data.events);
}

function addEvents(list) {
  if (!list.length) return;
  for (const e of list) ui.events.set(e.seq, e);
  const sorted = [...ui.events.values()].sort((a, b) => b.seq - a.seq).slice(0, 200);
  ui.events = new Map(sorted.map((e) => [e.seq, e]));
  $("events").replaceChildren(...sorted.map((e) => el("li", { "data-kind": e.kind },
    el("time", { text: new Date(e.at_unix_ms).toLocaleTimeString() }),
    el("span", { class: "kind kind-" + e.kind, text: e.kind.replace("_", " ") }),
    el("span", { class: "msg", text: (e.pool ? e.pool + ": " : "") + e.message }))));
}

// ---- history charts -----------------------------------------------------------------------

const CHARTS = [
  { id: "active", title: "Active connections", lines: [["active", "active"]] },
  { id: "rate", title: "Rates /s", lines: [["conns", "connections"], ["requests", "requests"]] },
  { id: "errors", title: "Errors /s", lines: [["errors", "errors"]] },
  { id: "latency", title: "Latency ms", lines: [["p50_ms", "p50"], ["p99_ms", "p99"]] },
  { id: "bytes", title: "Throughput", lines: [["bytes_in", "in"], ["bytes_out", "out"]], bytes: true },
  { id: "up", title: "In rotation / load", lines: [["up", "up share"], ["load", "reported load"]] },
];

function refreshSeriesList(o) {
  const sel = $("series");
  const names = [];
  for (const f of o.frontends) names.push("frontend/" + f.name);
  for (const p of o.pools) {
    names.push("pool/" + p.name);
    for (const s of p.servers) names.push("server/" + p.name + "/" + s.address);
  }
  const have = [...sel.options].map((x) => x.value).join("\n");
  if (have === names.join("\n")) return;
  sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (ui.series) sel.value = ui.series;
}

function pickDefaultSeries() {
  const o = ui.overview;
  if (!ui.series && o && o.pools && o.pools.length) ui.series = "pool/" + o.pools[0].name;
  else if (!ui.series && o && o.frontends && o.frontends.length) ui.series = "frontend/" + o.frontends[0].name;
  if (ui.series) $("series").value = ui.series;
}

async function selectSeries(name) {
  ui.series = name;
  $("series").value = name;
  for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  await loadHistory();
  $("charts-card").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function loadHistory() {
  if (!ui.series) return;
  const r = await api("GET", `/api/v1/history?range=${ui.range}&series=${encodeURIComponent(ui.series)}`);
  ui.hist = r.ok ? r.data.series[ui.series] || null : null;
  drawCharts();
}

// The newest sample of the selected series, from a live tick, appended to the hour chart.
function sampleOf(o, name) {
  const [kind, a, ...rest] = name.split("/");
  if (kind === "frontend") return (o.frontends.find((f) => f.name === a) || {}).sample;
  const p = o.pools.find((x) => x.name === a);
  if (!p) return undefined;
  if (kind === "pool") return p.sample;
  const addr = rest.join("/");
  return (p.servers.find((s) => s.address === addr) || {}).sample;
}

function appendTick(o) {
  if (ui.range !== "hour" || !ui.hist || !ui.series) return;
  const s = sampleOf(o, ui.series);
  if (!s) return;
  const h = ui.hist;
  const len = h.active.length;
  if (h.start === null) h.start = o.t;
  const next = h.start + len;
  if (o.t < next) return; // already have it
  for (let t = next; t < o.t; t++) for (const k of Object.keys(s)) h[k].push(null);
  for (const k of Object.keys(s)) h[k].push(s[k]);
  const extra = h.active.length - 3600;
  if (extra > 0) { for (const k of Object.keys(s)) h[k].splice(0, extra); h.start += extra; }
  drawCharts();
}

function drawCharts() {
  const box = $("charts");
  if (box.children.length !== CHARTS.length) {
    box.replaceChildren(...CHARTS.map((c) => el("div", { class: "chart" },
      el("h3", {}, el("span", { text: c.title }), ...c.lines.map((l, i) => el("span", { class: "key k" + (i + 1), text: "— " + l[1] }))),
      el("canvas", { id: "chart-" + c.id }))));
  }
  for (const c of CHARTS) drawChart($("chart-" + c.id), c, ui.hist);
}

function drawChart(canvas, spec, h) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, hgt = canvas.clientHeight || 130;
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(hgt * dpr)) canvas.height = Math.round(hgt * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, hgt);
  const css = getComputedStyle(document.documentElement);
  const colors = [css.getPropertyValue("--accent").trim(), css.getPropertyValue("--c2").trim()];
  const muted = css.getPropertyValue("--muted").trim(), line = css.getPropertyValue("--line").trim();
  const padL = 44, padB = 16, padT = 6, padR = 6;
  const n = h ? h.active.length : 0;
  let max = 0, points = 0;
  if (h) for (const [k] of spec.lines) for (const v of h[k]) if (v !== null) { points++; if (v > max) max = v; }
  canvas.dataset.points = String(points);
  canvas.dataset.first = h && h.start !== null ? String(h.start) : "";
  canvas.dataset.step = h ? String(h.step_s) : "";
  if (spec.id === "up") max = Math.max(max, 1);
  max = max > 0 ? max * 1.1 : 1;
  g.strokeStyle = line; g.lineWidth = 1;
  g.beginPath(); g.moveTo(padL, padT); g.lineTo(padL, hgt - padB); g.lineTo(w - padR, hgt - padB); g.stroke();
  g.fillStyle = muted; g.font = "11px system-ui, sans-serif"; g.textAlign = "right";
  const label = spec.bytes ? fmtBytes(max).replace("/s", "") : fmtNum(max, 1);
  g.fillText(label, padL - 4, padT + 9);
  g.fillText("0", padL - 4, hgt - padB);
  if (!h || n === 0) { g.textAlign = "center"; g.fillText("no data yet", (w + padL) / 2, hgt / 2); return; }
  g.textAlign = "left";
  g.fillText(new Date(h.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), padL, hgt - 3);
  g.textAlign = "right";
  g.fillText("now", w - padR, hgt - 3);
  const x = (i) => padL + (n <= 1 ? 0 : (i / (n - 1)) * (w - padL - padR));
  const y = (v) => hgt - padB - (v / max) * (hgt - padB - padT);
  spec.lines.forEach(([k], li) => {
    g.strokeStyle = colors[li] || muted; g.lineWidth = 1.5;
    g.fillStyle = colors[li] || muted;
    g.beginPath();
    let pen = false;
    const vals = h[k];
    vals.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (!pen) { g.moveTo(x(i), y(v)); pen = true; } else g.lineTo(x(i), y(v));
      // A point with no neighbour draws no line: a dot shows it.
      const prev = i > 0 ? vals[i - 1] : null, next = i + 1 < vals.length ? vals[i + 1] : null;
      if (prev === null && next === null) g.fillRect(x(i) - 1.5, y(v) - 1.5, 3, 3);
    });
    g.stroke();
  });
}

// ---- config -------------------------------------------------------------------------------

async function loadConfig() {
  const r = await api("GET", "/api/v1/config");
  if (!r.ok) {
    $("config-path").textContent = r.data ? r.data.error : "no config";
    $("config-text").disabled = true;
    return;
  }
  const c = r.data;
  $("config-path").textContent = c.path;
  $("config-writable").textContent = c.writable ? "" : `(not writable: ${c.not_writable_reason}; applying is refused)`;
  $("config-writable").className = c.writable ? "" : "error";
  $("config-text").value = c.text;
  $("config-overlay").textContent = JSON.stringify(c.runtime_changes, null, 2);
  ui.configLoaded = true;
}

function showResult(ok, lines) {
  const p = $("config-result");
  p.className = ok ? "ok" : "bad";
  p.textContent = lines.join("\n");
}

async function checkConfig() {
  const r = await api("POST", "/api/v1/config/check", { config: $("config-text").value });
  if (r.ok) showResult(true, ["The configuration is valid.", ...r.data.warnings.map((w) => "warning: " + w)]);
  else showResult(false, [r.data.error, ...(r.data.errors || [])]);
}

async function applyConfig() {
  if (!(await confirmAction("Write this configuration to the file (the previous one is kept as .bak) and reload?"))) return;
  const r = await api("POST", "/api/v1/config/apply", { config: $("config-text").value });
  if (r.ok) { showResult(true, [`Applied; the previous file is ${r.data.backup}.`, ...r.data.warnings.map((w) => "warning: " + w)]); loadConfig(); }
  else showResult(false, [r.data.error, ...(r.data.errors || [])]);
}

// ---- wiring -------------------------------------------------------------------------------

function setRange(range) {
  ui.range = range;
  $("range-hour").classList.toggle("on", range === "hour");
  $("range-day").classList.toggle("on", range === "day");
  clearInterval(ui.dayTimer);
  // The day chart moves a minute at a time: fetched again each minute, not per tick.
  if (range === "day") ui.dayTimer = setInterval(loadHistory, 60000);
  loadHistory();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("logout").addEventListener("click", () => signOut(""));
  $("reload").addEventListener("click", reload);
  $("series").addEventListener("change", (e) => selectSeries(e.target.value));
  $("range-hour").addEventListener("click", () => setRange("hour"));
  $("range-day").addEventListener("click", () => setRange("day"));
  $("config-check").addEventListener("click", checkConfig);
  $("config-apply").addEventListener("click", applyConfig);
  $("config-revert").addEventListener("click", loadConfig);
  window.addEventListener("resize", drawCharts);
  if (ui.token) signIn(ui.token); else showLogin("");
});
