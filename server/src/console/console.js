// The adstore console: a SQL editor over POST /v1/sql, results as a table
// and (for a time column followed by numbers) a uPlot line chart, and the
// store's state from /metrics. No build step, no network beyond the server.
"use strict";

const $ = (id) => document.getElementById(id);
const NUMERIC = new Set(["bigint", "double"]);
const COLORS = ["#3a5bd9", "#e0663a", "#2a9d6f", "#a23ad9", "#d9a23a", "#3ab5d9"];
let lastResult = null;
let chart = null;

// A server with access control wants a token (docs/security.md): the one
// typed into the header, kept for this browser tab only.
const TOKEN_KEY = "adstore-token";
$("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
$("token").addEventListener("change", () => {
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  runSql($("sql").value);
  refreshState();
});

function call(url, options = {}) {
  const token = $("token").value.trim();
  const headers = Object.assign({}, options.headers || {});
  if (token) headers.authorization = `Bearer ${token}`;
  return fetch(url, Object.assign({}, options, { headers }));
}

async function runSql(sql) {
  const started = performance.now();
  $("status").textContent = "running…";
  $("error").hidden = true;
  $("csv").disabled = true;
  let body;
  try {
    const response = await call("/v1/sql", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sql, format: "json" }),
    });
    body = await response.json();
  } catch (e) {
    showError(`the server did not answer: ${e}`);
    return;
  }
  if (body.error && body.error.code === "unauthorized") {
    showError(`${body.error.message}\n\nPaste an access token into the token field above.`);
    return;
  }
  if (body.error) {
    showError(body.error.message, body.error.position, sql);
    return;
  }
  lastResult = body;
  const ms = (performance.now() - started).toFixed(0);
  const stats = body.stats || {};
  $("status").textContent = `${body.rows.length} row(s) in ${ms} ms` +
    (stats.source ? ` · read ${stats.source}` : "") + (stats.provisional ? " · provisional" : "");
  $("csv").disabled = false;
  renderTable(body);
  renderChart(body);
}

function showError(message, position, sql) {
  lastResult = null;
  $("status").textContent = "error";
  $("result").replaceChildren();
  if (chart) { chart.destroy(); chart = null; }
  let text = message;
  if (position && sql) {
    const line = sql.split("\n")[position.line - 1] || "";
    text += `\n\n${line}\n${" ".repeat(Math.max(0, position.column - 1))}^`;
  }
  $("error").textContent = text;
  $("error").hidden = false;
}

function renderTable(body) {
  const table = document.createElement("table");
  table.id = "rows";
  const head = table.createTHead().insertRow();
  for (const c of body.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    th.title = c.type;
    head.appendChild(th);
  }
  const tbody = table.createTBody();
  for (const row of body.rows) {
    const tr = tbody.insertRow();
    row.forEach((v, i) => {
      const td = tr.insertCell();
      td.textContent = v === null ? "NULL" : String(v);
      if (NUMERIC.has(body.columns[i].type)) td.className = "num";
    });
  }
  $("result").replaceChildren(table);
}

// A line chart when the first column is time (a timestamp, or Grafana-style
// epoch seconds named "time") and later columns are numbers.
function renderChart(body) {
  if (chart) { chart.destroy(); chart = null; }
  const cols = body.columns;
  if (cols.length < 2 || body.rows.length < 2) return;
  const first = cols[0];
  const isTime = first.type === "timestamp" || (first.name === "time" && NUMERIC.has(first.type));
  const series = cols.map((c, i) => [c, i]).filter(([c, i]) => i > 0 && NUMERIC.has(c.type));
  if (!isTime || series.length === 0) return;
  const x = body.rows.map((r) => first.type === "timestamp" ? Date.parse(r[0]) / 1000 : r[0]);
  const data = [x, ...series.map(([, i]) => body.rows.map((r) => r[i]))];
  const width = $("query").clientWidth || 800;
  chart = new uPlot({
    width,
    height: 280,
    series: [{}, ...series.map(([c], k) => ({ label: c.name, stroke: COLORS[k % COLORS.length], width: 2 }))],
    axes: [{}, {}],
  }, data, $("chart"));
}

function csv(body) {
  const cell = (v) => {
    if (v === null) return "";
    const s = String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const lines = [body.columns.map((c) => cell(c.name)).join(",")];
  for (const r of body.rows) lines.push(r.map(cell).join(","));
  return lines.join("\n") + "\n";
}

// ---- state from /metrics

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="([^"]*)"/g)) labels[k] = v;
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const bytes = (n) => n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`;
let previous = null;

async function refreshState() {
  let samples;
  try {
    const response = await call("/metrics");
    if (response.status === 401 || response.status === 403) {
      $("rate").textContent = "needs an admin token";
      return;
    }
    samples = parseMetrics(await response.text());
  } catch (e) {
    $("rate").textContent = "server unreachable";
    return;
  }
  const one = (name) => (samples.find((s) => s.name === name) || { value: 0 }).value;
  const now = performance.now();
  const accepted = one("adstore_events_accepted_total");
  if (previous) {
    const rate = (accepted - previous.accepted) / ((now - previous.at) / 1000);
    $("rate").textContent = rate.toFixed(0);
  }
  previous = { accepted, at: now };
  $("head").textContent = `${one("adstore_head_rows")} rows, ${bytes(one("adstore_head_bytes"))} of ${bytes(one("adstore_head_limit_bytes"))}`;

  const levels = samples.filter((s) => s.name === "adstore_level_segments" && s.value > 0);
  const levelRows = levels.map((s) => {
    const b = samples.find((x) => x.name === "adstore_level_bytes" && x.labels.level === s.labels.level && x.labels.tier === s.labels.tier);
    return [s.labels.level, s.labels.tier, s.value, b ? bytes(b.value) : ""];
  });
  fill($("levels"), levelRows);

  const errors = samples
    .filter((s) => (s.name === "adstore_http_errors_total" || s.name === "adstore_pg_errors_total") && s.value > 0)
    .map((s) => [s.name === "adstore_pg_errors_total" ? "postgres" : s.labels.route, s.labels.code || s.labels.sqlstate, s.value]);
  fill($("error-counts"), errors);
  $("errors").textContent = errors.reduce((n, r) => n + r[2], 0);

  try {
    const r = await (await call("/v1/sql", { method: "POST", body: "SELECT max(ts) AS newest FROM events" })).json();
    const newest = r.rows && r.rows[0] && r.rows[0][0];
    $("freshness").textContent = newest ? `${Math.max(0, Math.round((Date.now() - Date.parse(newest)) / 1000))} s ago` : "none yet";
  } catch (e) { /* shown on the next refresh */ }
}

function fill(table, rows) {
  const tbody = table.tBodies[0];
  tbody.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    for (const v of r) { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); }
    return tr;
  }));
}

// ---- wiring

$("run").addEventListener("click", () => runSql($("sql").value));
$("explain").addEventListener("click", () => {
  const sql = $("sql").value.trim();
  runSql(/^explain\s/i.test(sql) ? sql : `EXPLAIN ${sql}`);
});
$("csv").addEventListener("click", async () => {
  if (!lastResult) return;
  const text = csv(lastResult);
  try {
    await navigator.clipboard.writeText(text);
    $("status").textContent = "copied as CSV";
  } catch (e) {
    // No clipboard (plain HTTP on another host): download it instead.
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    a.download = "result.csv";
    a.click();
  }
});
$("sql").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); runSql($("sql").value); }
});

// `/?q=<sql>` opens the console with that query and runs it.
const q = new URLSearchParams(location.search).get("q");
if (q !== null) { $("sql").value = q; }
runSql($("sql").value);
refreshState();
setInterval(refreshState, 5000);
