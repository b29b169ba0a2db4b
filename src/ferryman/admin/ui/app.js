// ferryman admin UI: plain JavaScript, no build step, no external resources.
// It polls the JSON admin API (/api/v1/...) with the credentials asked for once: the [admin]
// token (sent as a Bearer header) or "user:password" of an [admin] user (HTTP Basic). The
// Authorization value that worked is kept in sessionStorage (this tab only).
"use strict";

const POLL_MS = 2000;          // how often stats (and the visible tab's data) are fetched
const KEEP_POINTS = 150;       // chart points kept (5 minutes at POLL_MS)
const MAX_LINES = 6;           // chart lines: the busiest routes / upstreams
const AUTH_KEY = "ferryman.admin.authorization";
const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#4b5563"];

const $ = (id) => document.getElementById(id);
const state = {
  auth: sessionStorage.getItem(AUTH_KEY),  // the Authorization header value that worked
  tab: "overview",
  group: "routes",
  points: [],          // [{t, stats}] newest last
  colors: new Map(),   // series name -> colour (stable while the page lives)
  failing: new Map(),  // endpoint -> message, shown in the banner
  timer: null,
  sourceLoaded: false,
};

// ---------------------------------------------------------------------------------------
// API calls

class AuthError extends Error {}

async function api(method, path, body) {
  const headers = { "X-Ferryman-UI": "1" };  // no Basic challenge: no browser password dialog
  if (state.auth) headers["Authorization"] = state.auth;
  if (body !== undefined) headers["Content-Type"] = "application/toml";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (err) {
    throw new Error(`${method} ${path}: the admin listener did not answer (${err.message})`);
  }
  let data = null;
  const text = await response.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (response.status === 401) throw new AuthError((data && data.error) || "a valid token is required");
  return { status: response.status, ok: response.ok, data, text };
}

// a call whose failure goes to the banner (and clears it once the endpoint answers again)
async function fetchShown(path) {
  try {
    const r = await api("GET", path);
    if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${(r.data && r.data.error) || r.text.slice(0, 200)}`);
    setFailure(path, null);
    return r.data;
  } catch (err) {
    if (err instanceof AuthError) throw err;
    setFailure(path, err.message);
    return null;
  }
}

function setFailure(key, message) {
  if (message) state.failing.set(key, message); else state.failing.delete(key);
  const banner = $("banner");
  banner.textContent = [...state.failing.values()].join("\n");
  banner.hidden = state.failing.size === 0;
  $("live").className = "live " + (state.failing.size ? "bad" : "ok");
}

// ---------------------------------------------------------------------------------------
// sign in / out

function showLogin(message) {
  stopPolling();
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("tabs").hidden = true;
  $("status").hidden = true;
  $("banner").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-error").hidden = !message;
  $("token").value = "";
  $("token").focus();
}

// "user:password" as an HTTP Basic Authorization value (UTF-8, as the API decodes it)
function basic(credentials) {
  let binary = "";
  for (const byte of new TextEncoder().encode(credentials)) binary += String.fromCharCode(byte);
  return "Basic " + btoa(binary);
}

// the Authorization values to try for what was typed (or the value restored from this tab)
function candidates(secret) {
  if (!secret) return [null];
  if (/^(Bearer|Basic) /.test(secret)) return [secret];
  return secret.includes(":") ? ["Bearer " + secret, basic(secret)] : ["Bearer " + secret];
}

async function signIn(secret) {
  let refused = false;
  for (const auth of candidates(secret)) {
    state.auth = auth;
    try {
      const status = await api("GET", "/api/v1/status");
      if (!status.ok) throw new Error(`GET /api/v1/status: ${status.status}`);
      refused = false;
      break;
    } catch (err) {
      state.auth = null;
      if (!(err instanceof AuthError)) {
        sessionStorage.removeItem(AUTH_KEY);
        showLogin(err.message);
        return false;
      }
      refused = true;
    }
  }
  if (refused) {
    sessionStorage.removeItem(AUTH_KEY);
    showLogin(secret ? "Those credentials were refused (401). Check the [admin] token or users." : "");
    return false;
  }
  if (state.auth) sessionStorage.setItem(AUTH_KEY, state.auth);
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("status").hidden = false;
  $("logout").hidden = !state.auth;
  showTab(location.hash.slice(1) || "overview");
  startPolling();
  return true;
}

function onAuthError(err) {
  if (!(err instanceof AuthError)) throw err;
  state.auth = null;
  sessionStorage.removeItem(AUTH_KEY);
  showLogin("The admin API refused the credentials (401): sign in again.");
}

// ---------------------------------------------------------------------------------------
// tabs and polling

function showTab(tab) {
  if (!["overview", "upstreams", "config", "history"].includes(tab)) tab = "overview";
  state.tab = tab;
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("on", link.dataset.tab === tab);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + tab;
  if (tab === "config" && !state.sourceLoaded) loadSource().catch(onAuthError);
  refresh().catch(onAuthError);
}

function startPolling() {
  stopPolling();
  state.timer = setInterval(() => refresh().catch(onAuthError), POLL_MS);
}

function stopPolling() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

async function refresh() {
  const [status, stats] = await Promise.all([fetchShown("/api/v1/status"), fetchShown("/api/v1/stats")]);
  if (status) renderStatus(status);
  if (stats) {
    state.points.push({ t: Date.now(), stats });
    if (state.points.length > KEEP_POINTS) state.points.shift();
    if (state.tab === "overview") renderOverview();
  }
  if (state.tab === "upstreams") {
    const upstreams = await fetchShown("/api/v1/upstreams");
    if (upstreams) renderUpstreams(upstreams.upstreams, stats);
  } else if (state.tab === "history") {
    const history = await fetchShown("/api/v1/history");
    if (history) renderHistory(history.entries);
  }
}

function renderStatus(status) {
  $("generation").textContent = "generation " + status.generation;
  $("generation").dataset.value = status.generation;
  $("facts").textContent = `v${status.version} · ${status.workers} worker${status.workers === 1 ? "" : "s"} · up ${duration(status.uptime)}`;
}

// ---------------------------------------------------------------------------------------
// formatting

function rate(v) {
  if (v === null || v === undefined) return "–";
  if (v === 0) return "0";
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}
function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v >= 10 ? v.toFixed(1) + " ms" : v.toFixed(2) + " ms";
}
function percent(v) { return v === null || v === undefined ? "–" : (100 * v).toFixed(v > 0 && v < 0.01 ? 2 : 1) + " %"; }
function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
function setValue(id, text, value) {
  const node = $(id);
  node.textContent = text;
  node.dataset.value = value === null || value === undefined ? "" : String(value);
}
function swatch(name) {
  const node = el("i", { class: "swatch" });
  node.style.background = colour(name);  // CSSOM, allowed by the page's style-src 'self'
  return node;
}
function colour(name) {
  if (!state.colors.has(name)) state.colors.set(name, COLORS[state.colors.size % COLORS.length]);
  return state.colors.get(name);
}

// ---------------------------------------------------------------------------------------
// overview: KPIs, charts, table

function renderOverview() {
  const last = state.points[state.points.length - 1];
  if (!last) return;
  const s = last.stats, total = s.total;
  setValue("kpi-rps", rate(total.requests_per_s), total.requests_per_s);
  $("kpi-total").textContent = `${total.requests.toLocaleString()} requests counted`;
  setValue("kpi-eps", rate(total.errors_per_s), total.errors_per_s);
  $("kpi-ratio").textContent = total.error_ratio === null ? "" : percent(total.error_ratio) + " of requests";
  const lat = total.latency_ms;
  setValue("kpi-p95", lat ? ms(lat.p95) : "–", lat ? lat.p95 : null);
  $("kpi-p50").textContent = lat ? `p50 ${ms(lat.p50)} · p99 ${ms(lat.p99)}` : "";
  setValue("kpi-conns", String(total.connections_active), total.connections_active);
  setValue("kpi-inflight", String(total.requests_in_flight), total.requests_in_flight);
  $("interval").textContent = s.interval === null ? "rates: waiting for a second sample"
    : `rates over the last ${s.interval.toFixed(1)} s · updated ${new Date(s.time * 1000).toLocaleTimeString()}`;

  const group = state.group;
  const table = s[group];
  const names = Object.keys(table).sort((a, b) => (table[b].requests_per_s || 0) - (table[a].requests_per_s || 0) || a.localeCompare(b));
  const shown = names.filter((name) => table[name].requests + (table[name].connections || 0) > 0).slice(0, MAX_LINES);
  drawChart($("chart-rps"), series(shown, (x) => x.requests_per_s ?? (x.connections_per_s ?? null)));
  drawChart($("chart-eps"), series(shown, (x) => x.errors_per_s));
  drawChart($("chart-p95"), series(shown, (x) => (x.latency_ms ? x.latency_ms.p95 : null)));
  $("legend").replaceChildren(...shown.map((name) => el("span", {}, swatch(name), name)));

  $("stats-name").textContent = group === "routes" ? "Route" : "Upstream";
  const rows = names.map((name) => {
    const x = table[name], l = x.latency_ms;
    return el("tr", { "data-name": name },
      el("td", { class: "name" }, shown.includes(name) ? swatch(name) : el("i", { class: "swatch" }), name),
      el("td", { class: "num", "data-field": "rps" }, rate(x.requests_per_s ?? x.connections_per_s)),
      el("td", { class: "num", "data-field": "eps" }, rate(x.errors_per_s)),
      el("td", { class: "num" }, percent(x.error_ratio)),
      el("td", { class: "num" }, l ? ms(l.p50) : "–"),
      el("td", { class: "num" }, l ? ms(l.p95) : "–"),
      el("td", { class: "num" }, l ? ms(l.p99) : "–"),
      el("td", { class: "num" }, (x.requests + (x.connections || 0)).toLocaleString()),
      el("td", { class: "num" }, x.errors.toLocaleString()));
  });
  $("stats-table").tBodies[0].replaceChildren(...rows);
  $("stats-empty").hidden = rows.length > 0;
}

function series(names, pick) {
  return names.map((name) => ({
    name,
    points: state.points.map((p) => {
      const x = p.stats[state.group][name];
      return [p.t, x ? pick(x) : null];
    }),
  }));
}

// the smallest "round" step (1, 2, 2.5 or 5 times a power of ten) with 4 steps >= v
function niceStep(v) {
  if (!(v > 0)) return 0.25;
  const quarter = v / 4, power = Math.pow(10, Math.floor(Math.log10(quarter)));
  for (const m of [1, 2, 2.5, 5, 10]) if (quarter <= m * power * 1.000001) return m * power;
  return 10 * power;
}
const tick = (v) => String(+v.toPrecision(3));

// a line chart in plain SVG: time on x (the kept points), values on y
function drawChart(svg, lines) {
  const NS = "http://www.w3.org/2000/svg";
  const width = svg.clientWidth || 400, height = svg.clientHeight || 190;
  const left = 44, right = 8, top = 8, bottom = 20;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const children = [];
  const values = lines.flatMap((l) => l.points.map((p) => p[1]).filter((v) => v !== null));
  const times = state.points.map((p) => p.t);
  const t0 = times.length ? times[0] : 0, t1 = times.length ? Math.max(times[times.length - 1], t0 + 1) : 1;
  const max = 4 * niceStep(Math.max(0, ...values));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    children.push(node("line", { class: i ? "gridline" : "baseline", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    children.push(node("text", { class: "axis", x: left - 6, y: y(v) + 3.5, "text-anchor": "end" }, tick(v)));
  }
  if (times.length > 1) {
    const span = (t1 - t0) / 1000;
    children.push(node("text", { class: "axis", x: left, y: height - 4 }, `−${Math.round(span)} s`));
    children.push(node("text", { class: "axis", x: width - right, y: height - 4, "text-anchor": "end" }, "now"));
  }
  let drawn = 0;
  for (const line of lines) {
    const runs = [[]];  // a gap (null) splits the line
    for (const [t, v] of line.points) {
      if (v === null) { if (runs[runs.length - 1].length) runs.push([]); continue; }
      runs[runs.length - 1].push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    for (const run of runs) {
      if (!run.length) continue;
      if (run.length === 1) run.push(run[0]);
      children.push(node("polyline", { class: "series", points: run.join(" "), stroke: colour(line.name), "data-series": line.name }));
      drawn++;
    }
  }
  if (!drawn) children.push(node("text", { class: "nodata", x: (left + width) / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
  svg.replaceChildren(...children);
}

// ---------------------------------------------------------------------------------------
// upstreams: backends with health and drain / disable / enable

function renderUpstreams(upstreams, stats) {
  const cards = Object.entries(upstreams).map(([name, u]) => {
    const live = stats && stats.upstreams[name];
    const rates = live ? `${rate(live.requests_per_s ?? live.connections_per_s)} req/s · ${rate(live.errors_per_s)} errors/s` : "";
    const nested = u.members.length > 0;
    const rows = u.backends.map((b) => {
      const badge = b.disabled ? (b.active > 0 ? el("span", { class: "badge warn" }, "draining") : el("span", { class: "badge off" }, "disabled"))
        : b.healthy ? el("span", { class: "badge ok" }, "healthy") : el("span", { class: "badge bad" }, "down");
      const act = (action, label, cls) => el("button", {
        type: "button", class: "small " + (cls || ""), "data-action": action, title: TITLES[action],
        on: { click: (ev) => backendAction(ev.target, name, b.address, action) },
      }, label);
      const actions = nested ? el("span", { class: "muted" }, "via its member upstream")
        : b.disabled ? [act("enable", "Enable", "primary")] : [act("drain", "Drain"), act("disable", "Disable", "danger")];
      return el("tr", { "data-backend": b.address, "data-state": b.disabled ? "disabled" : b.healthy ? "healthy" : "down" },
        el("td", { class: "name mono" }, b.address),
        el("td", { class: "num" }, String(b.weight)),
        el("td", {}, badge),
        el("td", { class: "num", "data-field": "active" }, String(b.active)),
        el("td", { class: "num", "data-field": "requests" }, String(b.requests ?? "–")),
        el("td", { class: "num", "data-field": "failures" }, String(b.failures ?? "–")),
        el("td", { class: "actions" }, ...(Array.isArray(actions) ? actions : [actions])));
    });
    const head = el("header", {},
      el("h2", {}, name),
      el("span", { class: "badge info" }, u.lb),
      nested ? el("span", { class: "meta" }, "members: " + u.members.join(", ")) : null,
      el("span", { class: "rates" }, rates));
    const table = el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, el("th", {}, "Backend"), el("th", { class: "num" }, "Weight"), el("th", {}, "State"),
        el("th", { class: "num" }, "In flight"), el("th", { class: "num" }, "Requests"), el("th", { class: "num" }, "Failures"),
        el("th", { class: "num" }, ""))),
      el("tbody", {}, ...rows));
    return el("div", { class: "card upstream", "data-upstream": name }, head, table);
  });
  $("upstream-list").replaceChildren(...(cards.length ? cards : [el("p", { class: "empty card" }, "No upstreams in this config.")]));
}

const TITLES = {
  drain: "no new requests or connections; those in progress finish",
  disable: "out of rotation now (in-flight work still finishes), whatever its health checks say",
  enable: "back in rotation, under its health checks again",
};

async function backendAction(button, upstream, address, action) {
  button.disabled = true;
  const path = `/api/v1/upstreams/${encodeURIComponent(upstream)}/backends/${encodeURIComponent(address)}/${action}`;
  try {
    const r = await api("POST", path);
    setFailure("action", r.ok ? null : `${action} ${address}: ${r.status} ${(r.data && r.data.error) || r.text}`);
  } catch (err) {
    if (err instanceof AuthError) return onAuthError(err);
    setFailure("action", err.message);
  }
  const upstreams = await fetchShown("/api/v1/upstreams").catch(onAuthError);
  const last = state.points[state.points.length - 1];
  if (upstreams) renderUpstreams(upstreams.upstreams, last && last.stats);
}

// ---------------------------------------------------------------------------------------
// config: edit, validate, apply, roll back

async function loadSource() {
  const r = await api("GET", "/api/v1/config/source");
  if (!r.ok) return showResult(false, `Cannot show the config: ${(r.data && r.data.error) || r.status}`);
  $("editor").value = r.data.text;
  $("config-path").textContent = `${r.data.path} · generation ${r.data.generation}`;
  state.sourceLoaded = true;
}

function showResult(ok, message) {
  const node = $("cfg-result");
  node.className = "result " + (ok ? "ok" : "bad");
  node.textContent = message;
  node.hidden = false;
}

function showErrors(errors) {
  const list = $("cfg-errors");
  const text = $("editor").value;
  list.replaceChildren(...errors.map((e) => {
    const line = locate(text, e.path);
    return el("li", { "data-path": e.path, title: "show in the editor", on: { click: () => selectLine(line) } },
      el("span", { class: "path" }, e.path || "(file)"),
      el("span", { class: "message" }, e.message),
      el("span", { class: "line" }, line ? "line " + line : ""));
  }));
  list.hidden = errors.length === 0;
}

// the line of a TOML path ("filters.pong.colour", "routes.api.filters[1]"): the deepest
// table header or key that matches a prefix of it (a best effort: enough to point at it)
function locate(text, path) {
  if (!path) return null;
  const want = path.replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  const split = (s) => (s.match(/"[^"]*"|'[^']*'|[^.\s]+/g) || []).map((p) => p.replace(/^["']|["']$/g, ""));
  let table = [], best = null, depth = 0;
  const lines = text.split("\n");
  lines.forEach((raw, index) => {
    const line = raw.replace(/^\s+/, "");
    let keys = null;
    const header = line.match(/^\[\[?\s*([^\]]+?)\s*\]\]?/);
    if (header) { table = split(header[1]); keys = table; }
    else {
      const key = line.match(/^("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=/);
      if (key) keys = table.concat(split(key[1]));
    }
    if (!keys) return;
    let n = 0;
    while (n < keys.length && n < want.length && keys[n] === want[n]) n++;
    if (n === keys.length && n > depth) { depth = n; best = index + 1; }
  });
  return best;
}

function selectLine(line) {
  if (!line) return;
  const editor = $("editor");
  const lines = editor.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((sum, l) => sum + l.length + 1, 0);
  editor.focus();
  editor.setSelectionRange(start, start + lines[line - 1].length);
  editor.scrollTop = Math.max(0, (line - 5) * parseFloat(getComputedStyle(editor).lineHeight || "20"));
}

async function validate() {
  const r = await api("POST", "/api/v1/config/validate", $("editor").value);
  if (!r.ok) { showResult(false, `Validation failed: ${(r.data && r.data.error) || r.status}`); return null; }
  showErrors(r.data.errors);
  return r.data.errors;
}

async function runButton(id, work) {
  const button = $(id);
  for (const b of document.querySelectorAll(".editor-card button")) b.disabled = true;
  try { await work(); }
  catch (err) { if (err instanceof AuthError) onAuthError(err); else showResult(false, err.message); }
  finally { for (const b of document.querySelectorAll(".editor-card button")) b.disabled = false; button.blur(); }
}

async function onValidate() {
  const errors = await validate();
  if (errors === null) return;
  if (errors.length) showResult(false, `${errors.length} error${errors.length === 1 ? "" : "s"}: nothing was applied.`);
  else showResult(true, "Valid: this config can be applied.");
}

async function onApply() {
  const errors = await validate();
  if (errors === null) return;
  if (errors.length) return showResult(false, `Not applied: ${errors.length} error${errors.length === 1 ? "" : "s"} (below).`);
  const r = await api("POST", "/api/v1/config/apply", $("editor").value);
  if (r.status === 422) { showErrors(r.data.errors); return showResult(false, "Not applied: the config has errors (below)."); }
  if (!r.ok || !r.data.applied) return showResult(false, `Apply failed (${r.status}): ${(r.data && (r.data.error || "the reload was refused, see History")) || r.text}`);
  showResult(true, `Applied: now serving generation ${r.data.generation}.`);
  await afterChange();
}

async function onRollback() {
  const r = await api("POST", "/api/v1/config/rollback");
  showErrors([]);
  if (!r.ok || !r.data.rolled_back) return showResult(false, `Rollback failed (${r.status}): ${(r.data && (r.data.error || "the reload was refused, see History")) || r.text}`);
  showResult(true, `Rolled back: now serving generation ${r.data.generation}.`);
  await afterChange();
}

async function onRevert() {
  showErrors([]);
  $("cfg-result").hidden = true;
  await loadSource();
}

async function afterChange() {
  await loadSource();
  const status = await fetchShown("/api/v1/status");
  if (status) renderStatus(status);
}

// ---------------------------------------------------------------------------------------
// history

const ACTIONS = { start: "start", signal: "reload (signal)", "file watch": "reload (file watch)", apply: "apply", rollback: "rollback" };

function renderHistory(entries) {
  const rows = entries.map((e) => el("tr", { "data-id": e.id, "data-action": e.action, "data-ok": e.ok },
    el("td", { class: "mono" }, new Date(e.time * 1000).toLocaleString()),
    el("td", { class: "num" }, String(e.generation)),
    el("td", {}, ACTIONS[e.action] || e.action),
    el("td", {}, el("span", { class: "badge " + (e.ok ? "ok" : "bad") }, e.ok ? "ok" : "error")),
    el("td", {}, e.who || el("span", { class: "muted" }, "—")),
    el("td", {}, el("pre", {}, e.message))));
  $("history-table").tBodies[0].replaceChildren(...rows);
  $("history-empty").hidden = rows.length > 0;
}

// ---------------------------------------------------------------------------------------
// wiring

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("token").value.trim());
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(AUTH_KEY);
    state.auth = null;
    showLogin("");
  });
  window.addEventListener("hashchange", () => { if (!$("tabs").hidden) showTab(location.hash.slice(1)); });
  for (const button of document.querySelectorAll("#group button")) {
    button.addEventListener("click", () => {
      state.group = button.dataset.group;
      for (const b of document.querySelectorAll("#group button")) b.classList.toggle("on", b === button);
      renderOverview();
    });
  }
  $("cfg-validate").addEventListener("click", () => runButton("cfg-validate", onValidate));
  $("cfg-apply").addEventListener("click", () => runButton("cfg-apply", onApply));
  $("cfg-rollback").addEventListener("click", () => runButton("cfg-rollback", onRollback));
  $("cfg-revert").addEventListener("click", () => runButton("cfg-revert", onRevert));
  signIn(state.auth);
});
