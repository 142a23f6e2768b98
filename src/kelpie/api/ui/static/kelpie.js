// kelpie dashboard: renders each page from the public JSON API, with the API key kept in this
// tab's session storage only. No framework, no build step.
"use strict";

const ROOT = document.body.dataset.root || "";
const KEY_STORAGE = "kelpie.apiKey";
const FEATURES_STORAGE = "kelpie.features";
const STATUSES = ["pending", "running", "completed", "canceled", "failed"];
const ENDED_AT = { completed: "completed", canceled: "canceled", failed: "failed" };
const main = document.getElementById("main");

// -- helpers ------------------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function ui(path) { return `${ROOT}/ui${path}`; }

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${esc(date.toLocaleString())}</time>`;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  const text = seconds < 90 ? `${Math.round(seconds)} s ago`
    : seconds < 5400 ? `${Math.round(seconds / 60)} min ago`
    : seconds < 129600 ? `${Math.round(seconds / 3600)} h ago`
    : `${Math.round(seconds / 86400)} d ago`;
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${text}</time>`;
}

function duration(startIso, endIso) {
  if (!startIso) return "—";
  const seconds = Math.max(0, ((endIso ? Date.parse(endIso) : Date.now()) - Date.parse(startIso)) / 1000);
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function badge(status) { return `<span class="badge ${esc(status)}">${esc(status)}</span>`; }
function short(id) { return esc(String(id ?? "").slice(0, 8)); }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}
function jobLink(id) { return `<a class="mono" href="${ui(`/jobs/${encodeURIComponent(id)}`)}" title="${esc(id)}">${short(id)}</a>`; }
function groupLink(group) { return `<a href="${ui(`/groups/${encodeURIComponent(group)}`)}">${esc(group)}</a>`; }
function endedAt(job) { return ENDED_AT[job.status] ? job[ENDED_AT[job.status]] : null; }

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const response = await fetch(ROOT + path, {
    ...options,
    headers: { "X-Kelpie-Key": key || "", Accept: "application/json", ...(options.headers || {}) },
    cache: "no-store",
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (response.status === 401 || response.status === 403) {
    if (path === "/users/me" || response.status === 401) signOut(body && body.message);
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// What this server offers beyond the base API, read once per tab from /openapi.json: routes
// (logs, workers) and the query parameters of GET /jobs (name, label).
async function features() {
  const cached = sessionStorage.getItem(FEATURES_STORAGE);
  if (cached) return JSON.parse(cached);
  let found = { routes: [], listParams: [] };
  try {
    const spec = await (await fetch(`${ROOT}/openapi.json`, { cache: "no-store" })).json();
    const routes = [];
    for (const [path, operations] of Object.entries(spec.paths || {})) {
      for (const method of Object.keys(operations)) routes.push(`${method.toUpperCase()} ${path}`);
    }
    const list = ((spec.paths || {})["/jobs"] || {}).get || {};
    found = { routes, listParams: (list.parameters || []).map((p) => p.name) };
  } catch { /* an older server: base features only */ }
  sessionStorage.setItem(FEATURES_STORAGE, JSON.stringify(found));
  return found;
}
function hasRoute(feats, route) { return feats.routes.includes(route); }

function section(title, body, id) {
  return `<section${id ? ` id="${id}"` : ""}><h2>${esc(title)}</h2>${body}</section>`;
}
function table(headers, rows, cls = "") {
  const head = headers.map((h) => `<th${h.endsWith("#") ? ' class="num"' : ""}>${esc(h.replace(/#$/, ""))}</th>`).join("");
  return `<table class="${cls}"><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}
function showError(error) {
  main.innerHTML = `<p class="error">${esc(error.message)}</p>`;
}

// -- signing in ---------------------------------------------------------------------------------

let me = null;

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  me = null;
  renderSignIn(message);
}

function renderSignIn(message) {
  document.getElementById("who").innerHTML = "";
  main.innerHTML = `
    <form class="card signin" id="signin">
      <h1>Sign in</h1>
      <p class="muted">Paste an API key. It stays in this tab's session storage only, and is
      forgotten when the tab closes.</p>
      <input type="password" name="key" id="api-key" autocomplete="off" placeholder="kelpie_…" required>
      ${message ? `<p class="error" id="signin-error">${esc(message)}</p>` : ""}
      <button class="primary" type="submit">Sign in</button>
    </form>`;
  document.getElementById("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value.trim());
    await start();
  });
}

function renderWho() {
  const who = document.getElementById("who");
  who.innerHTML = `<span id="username">${esc(me.username)}</span>
    ${me.is_admin ? '<span class="badge admin" title="sees every user\'s jobs">admin</span>' : ""}
    <button type="button" id="signout">Sign out</button>`;
  document.getElementById("signout").addEventListener("click", () => signOut());
}

// -- the jobs list ------------------------------------------------------------------------------

async function renderJobs() {
  const query = new URLSearchParams(location.search);
  const pageSize = Math.min(1000, Math.max(1, Number(query.get("page_size")) || 100));
  const page = Math.max(1, Number(query.get("page")) || 1);
  const params = new URLSearchParams({ page_size: pageSize, page });
  for (const name of ["status", "container_group_id", "asc", "name", "label"]) {
    const value = query.get(name === "container_group_id" ? "group" : name) || query.get(name);
    if (value) params.set(name, value);
  }
  const [list, feats] = await Promise.all([api(`/jobs?${params}`), features()]);
  const jobs = list.jobs;
  const withNames = jobs.some((job) => "name" in job);
  const extraFilters = ["name", "label"].filter((p) => feats.listParams.includes(p));
  const headers = ["Job", ...(withNames ? ["Name"] : []), "Status", "Container group", "Machine",
    "Created", "Started", "Failures#", "Heartbeat", ...(me.is_admin ? ["Owner"] : [])];
  const rows = jobs.map((job) => `<tr data-job-id="${esc(job.id)}">
      <td>${jobLink(job.id)}</td>
      ${withNames ? `<td>${esc(job.name ?? "")}</td>` : ""}
      <td>${badge(job.status)}</td>
      <td>${groupLink(job.container_group_id)}</td>
      <td class="mono">${esc(job.machine_id ?? "—")}</td>
      <td>${when(job.created)}</td>
      <td>${when(job.started)}</td>
      <td class="num">${job.num_failures}/${job.max_failures}</td>
      <td>${job.status === "running" ? ago(job.heartbeat) : "—"}</td>
      ${me.is_admin ? `<td class="mono" title="${esc(job.user_id)}">${short(job.user_id)}</td>` : ""}
    </tr>`);
  const options = ["", ...STATUSES].map((s) =>
    `<option value="${s}"${params.get("status") === s ? " selected" : ""}>${s || "any status"}</option>`).join("");
  const link = (p) => { const q = new URLSearchParams(query); q.set("page", p); return `?${q}`; };
  main.innerHTML = `
    <h1>Jobs ${me.is_admin ? '<span class="muted">(every user)</span>' : ""}</h1>
    <form class="filters" id="filters" method="get" action="${ui("/")}">
      <label>Status <select name="status" id="filter-status">${options}</select></label>
      <label>Container group <input name="group" id="filter-group" value="${esc(params.get("container_group_id") ?? "")}" placeholder="any"></label>
      ${extraFilters.map((f) => `<label>${esc(f)} <input name="${f}" id="filter-${f}" value="${esc(params.get(f) ?? "")}"></label>`).join("")}
      <label>Per page <select name="page_size">${[25, 100, 500, 1000].map((n) => `<option${n === pageSize ? " selected" : ""}>${n}</option>`).join("")}</select></label>
      <button class="primary" type="submit">Filter</button>
      <a href="${ui("/")}">Clear</a>
    </form>
    <div class="pager">
      ${page > 1 ? `<a href="${link(page - 1)}" id="prev">← Newer</a>` : ""}
      <span class="muted" id="page-info">Page ${page} · ${list._count} job${list._count === 1 ? "" : "s"}</span>
      ${list._count === pageSize ? `<a href="${link(page + 1)}" id="next">Older →</a>` : ""}
    </div>
    ${jobs.length ? table(headers, rows, "jobs") : '<p class="muted" id="no-jobs">No jobs match.</p>'}`;
  // Strip empty fields from the query string the form submits.
  document.getElementById("filters").addEventListener("submit", (event) => {
    for (const input of event.target.querySelectorAll("input, select")) input.disabled = !input.value;
  });
  markRendered("jobs-rendered", main.querySelector("table.jobs tbody tr:last-child .badge"));
}

// The moment the page's main content is on screen, for the benchmark: a mark when it is in the
// DOM, and Chromium's element timing reports when `element` (one that holds text itself) is
// painted.
function markRendered(name, element) {
  if (element) element.setAttribute("elementtiming", name);
  performance.mark(name);
}

// -- a job --------------------------------------------------------------------------------------

async function renderJob(jobId) {
  const id = encodeURIComponent(jobId);
  let job;
  try { job = await api(`/jobs/${id}`); } catch (error) {
    if (error.status === 404) { main.innerHTML = `<h1>Job not found</h1><p class="muted">No job ${esc(jobId)} is visible with this key.</p>`; return; }
    throw error;
  }
  const [attempts, events, checkpoints, feats] = await Promise.all([
    api(`/jobs/${id}/attempts`), api(`/jobs/${id}/events`), api(`/jobs/${id}/checkpoints`), features(),
  ]);
  const cancelable = job.status === "pending" || job.status === "running";
  main.innerHTML = `
    <h1>Job <span class="mono">${esc(job.id)}</span> ${badge(job.status)}</h1>
    <p class="muted">${job.name ? `${esc(job.name)} · ` : ""}container group ${groupLink(job.container_group_id)}</p>
    ${cancelable ? '<div class="row-actions"><button class="danger" id="cancel-job" type="button">Cancel job…</button></div>' : ""}
    ${job.pending_reason && job.status === "pending" ? `<p class="notice" id="pending-reason">Waiting: ${esc(job.pending_reason.message ?? job.pending_reason)}</p>` : ""}
    ${renderFields(job)}
    ${"progress" in job ? section("Progress", renderProgress(job.progress), "progress") : ""}
    ${section(`Attempts (${attempts.length})`, renderTimeline(job, attempts) + renderAttemptTable(attempts), "attempts")}
    ${section(`Events (${events.length})`, renderEvents(events), "events")}
    ${section(`Committed checkpoints (${checkpoints.length})`, renderCheckpoints(checkpoints), "checkpoints")}
    ${section("Logs", '<div id="logs-body"></div>', "logs")}`;
  if (cancelable) document.getElementById("cancel-job").addEventListener("click", () => cancelJob(job));
  renderLogs(job, attempts, feats);
  markRendered("job-rendered", document.getElementById("attempts"));
}

function renderFields(job) {
  const storage = job.sync
    ? ["before", "during", "after"].flatMap((phase) => (job.sync[phase] || []).map((e) =>
        `<div><dt>sync.${phase}</dt><dd class="mono">${esc(e.direction === "download" ? `s3://${e.bucket}/${e.prefix} → ${e.local_path}` : `${e.local_path} → s3://${e.bucket}/${e.prefix}`)}${e.pattern ? ` (${esc(e.pattern)})` : ""}</dd></div>`))
    : ["input", "checkpoint", "output"].filter((k) => job[`${k}_bucket`]).map((k) =>
        `<div><dt>${k}</dt><dd class="mono">s3://${esc(job[`${k}_bucket`])}/${esc(job[`${k}_prefix`])}</dd></div>`);
  const env = Object.keys(job.environment || {});
  const field = (label, value, id) => `<div${id ? ` id="${id}"` : ""}><dt>${esc(label)}</dt><dd>${value}</dd></div>`;
  return `<dl class="card fields" id="job-fields">
    ${field("Status", badge(job.status))}
    ${field("Machine", `<span class="mono">${esc(job.machine_id ?? "—")}</span>`, "field-machine")}
    ${field("Created", when(job.created))}
    ${field("Started", when(job.started))}
    ${field(job.status in ENDED_AT ? `Ended (${job.status})` : "Ended", when(endedAt(job)))}
    ${field("Last heartbeat", job.heartbeat ? `${ago(job.heartbeat)} (every ${job.heartbeat_interval} s)` : "—")}
    ${field("Failures", `${job.num_failures} of ${job.max_failures}`)}
    ${field("Heartbeats", esc(job.num_heartbeats))}
    ${field("Last exit code", esc(job.last_exit_code ?? "—"))}
    ${field("Last error", esc(job.last_error ?? "—"))}
    ${field("Checkpoint generation", `${esc(job.checkpoint_generation ?? "—")} (keeps ${esc(job.checkpoint_keep)})`)}
    ${field("Command", `<code>${esc([job.command, ...(job.arguments || [])].join(" "))}</code>`)}
    ${field("Environment", env.length ? `<span class="mono">${esc(env.join(", "))}</span> <span class="muted">(values hidden)</span>` : "—")}
    ${field("Webhook", esc(job.webhook ?? "—"))}
    ${field("Owner", `<span class="mono">${esc(job.user_id)}</span>`)}
    ${storage.join("")}
  </dl>`;
}

function renderProgress(progress) {
  if (progress === null || progress === undefined) return '<p class="muted">No progress reported yet.</p>';
  const fraction = typeof progress.fraction === "number" ? progress.fraction
    : typeof progress.percent === "number" ? progress.percent / 100
    : typeof progress.step === "number" && typeof progress.total === "number" && progress.total > 0 ? progress.step / progress.total
    : null;
  const bar = fraction === null ? "" : `<progress max="1" value="${Math.min(1, Math.max(0, fraction))}"></progress> ${(fraction * 100).toFixed(1)} %`;
  return `<div class="card">${bar}<pre class="mono">${esc(JSON.stringify(progress, null, 2))}</pre></div>`;
}

// Every hold of the job as a bar on one time axis: where it ran, from when to when, and how it
// ended. A takeover shows as a `lost` bar followed by another machine's bar.
function renderTimeline(job, attempts) {
  if (!attempts.length) return '<p class="muted">No machine has held this job yet.</p>';
  const start = Math.min(Date.parse(job.created), ...attempts.map((a) => Date.parse(a.started)));
  const end = Math.max(Date.now(), ...attempts.map((a) => Date.parse(a.ended || a.started)));
  const span = Math.max(1, end - start);
  const width = 1000, left = 10, right = 10, row = 30, top = 22;
  const x = (t) => left + ((t - start) / span) * (width - left - right);
  const bars = attempts.map((a, i) => {
    const x0 = x(Date.parse(a.started));
    const x1 = Math.max(x0 + 3, x(a.ended ? Date.parse(a.ended) : Date.now()));
    const y = top + i * row;
    const label = `${a.machine_id} · ${a.outcome}${a.exit_code !== null && a.exit_code !== undefined ? ` · exit ${a.exit_code}` : ""}`;
    const title = `attempt ${a.id ?? i + 1} on ${a.machine_id}: ${a.outcome}\n${a.started} → ${a.ended ?? "now"} (${duration(a.started, a.ended)})`;
    const inside = x1 - x0 > label.length * 6.2 + 12;
    return `<g class="attempt" data-outcome="${esc(a.outcome)}" data-machine="${esc(a.machine_id)}">
      <title>${esc(title)}</title>
      <rect class="o-${esc(a.outcome)}" x="${x0.toFixed(1)}" y="${y}" width="${(x1 - x0).toFixed(1)}" height="${row - 8}" rx="3"></rect>
      <text class="${inside ? "bar-label" : ""}" x="${(inside ? x0 + 6 : Math.min(x1 + 6, width - 300)).toFixed(1)}" y="${y + 15}">${esc(label)}</text>
    </g>`;
  }).join("");
  const height = top + attempts.length * row + 4;
  return `<div class="timeline"><svg id="timeline" viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="attempts timeline">
    <line class="axis" x1="${left}" x2="${width - right}" y1="14" y2="14"></line>
    <text x="${left}" y="10">${esc(new Date(start).toLocaleString())}</text>
    <text x="${width - right}" y="10" text-anchor="end">${esc(new Date(end).toLocaleString())}</text>
    ${bars}</svg></div>`;
}

function renderAttemptTable(attempts) {
  if (!attempts.length) return "";
  const rows = attempts.map((a, i) => `<tr data-outcome="${esc(a.outcome)}">
    <td class="num">${i + 1}</td><td class="mono">${esc(a.id ?? "—")}</td>
    <td class="mono">${esc(a.machine_id)}</td><td>${when(a.started)}</td><td>${when(a.ended)}</td>
    <td>${duration(a.started, a.ended)}</td><td>${badge(a.outcome)}</td>
    <td class="num">${esc(a.exit_code ?? "—")}</td>
    <td>${(a.warnings || []).map((w) => `<div>${esc(w)}</div>`).join("")}</td></tr>`);
  return table(["##", "Attempt", "Machine", "Started", "Ended", "Held for", "Outcome", "Exit code#", "Warnings"], rows, "attempts");
}

function renderEvents(events) {
  if (!events.length) return '<p class="muted">No events yet.</p>';
  const rows = events.map((e) => `<tr data-kind="${esc(e.kind)}"><td>${when(e.time)}</td>
    <td><span class="mono">${esc(e.kind)}</span></td><td class="mono">${esc(e.machine_id ?? "")}</td>
    <td>${esc(e.message)}</td></tr>`);
  return table(["Time", "Kind", "Machine", "What happened"], rows, "events");
}

function renderCheckpoints(checkpoints) {
  if (!checkpoints.length) return '<p class="muted">No checkpoint committed yet.</p>';
  const rows = checkpoints.slice().reverse().map((c) => `<tr>
    <td class="num">${esc(c.generation)}</td><td>${when(c.created)}</td>
    <td class="mono">${esc(c.machine_id)}</td><td class="num">${esc(c.attempt_id)}</td>
    <td class="num">${esc(c.files)}</td><td class="num">${bytes(c.bytes)}</td>
    <td>${c.kept ? "kept" : '<span class="muted">expired</span>'}</td></tr>`);
  return table(["Generation#", "Committed", "Machine", "Attempt#", "Files#", "Size#", "Kept"], rows, "checkpoints");
}

// The log tail of the job's newest attempt, where the server keeps logs (GET /jobs/{id}/logs).
async function renderLogs(job, attempts, feats) {
  const body = document.getElementById("logs-body");
  if (!hasRoute(feats, "GET /jobs/{job_id}/logs")) {
    body.innerHTML = '<p class="muted" id="logs-unavailable">This server keeps no job logs.</p>';
    return;
  }
  try {
    const logs = await api(`/jobs/${encodeURIComponent(job.id)}/logs`);
    const text = typeof logs === "string" ? logs
      : Array.isArray(logs) ? logs.map((l) => (typeof l === "string" ? l : l.line ?? JSON.stringify(l))).join("\n")
      : logs && (logs.text ?? logs.tail ?? (logs.lines || []).join("\n"));
    body.innerHTML = `<pre class="log" id="log-tail">${esc(text || "(empty)")}</pre>`;
  } catch (error) {
    body.innerHTML = `<p class="muted">${esc(error.message)}</p>`;
  }
}

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
  });
}

async function cancelJob(job) {
  const running = job.status === "running" ? " Its worker stops the command at its next heartbeat." : "";
  if (!(await confirmDialog(`Cancel job ${job.id}?${running} This cannot be undone.`))) return;
  try {
    await api(`/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
  } catch (error) {
    alert(`Could not cancel: ${error.message}`);
  }
  await renderJob(job.id);
}

// -- container groups ---------------------------------------------------------------------------

async function renderGroups() {
  const list = await api("/container-groups");
  const rows = list.groups.map((g) => `<tr data-group="${esc(g.container_group_id)}">
    <td>${groupLink(g.container_group_id)}</td>
    ${STATUSES.map((s) => `<td class="num">${g.jobs[s]}</td>`).join("")}
    <td><a href="${ui(`/?group=${encodeURIComponent(g.container_group_id)}`)}">jobs</a></td></tr>`);
  main.innerHTML = `<h1>Container groups ${me.is_admin ? '<span class="muted">(every user)</span>' : ""}</h1>
    ${list.groups.length ? table(["Container group", ...STATUSES.map((s) => `${s}#`), ""], rows, "groups") : '<p class="muted">No jobs yet.</p>'}`;
}

const WINDOWS = [["1h", 3600], ["6h", 21600], ["24h", 86400], ["7d", 604800]];

async function renderGroup(group) {
  const query = new URLSearchParams(location.search);
  const chosen = WINDOWS.find(([name]) => name === query.get("window")) || WINDOWS[2];
  const id = encodeURIComponent(group);
  let detail;
  try { detail = await api(`/container-groups/${id}?window=${chosen[1]}&buckets=60`); } catch (error) {
    if (error.status === 404) { main.innerHTML = `<h1>Container group not found</h1><p class="muted">No job of ${esc(group)} is visible with this key.</p>`; return; }
    throw error;
  }
  const [running, feats] = await Promise.all([
    api(`/jobs?status=running&container_group_id=${id}&page_size=100`), features(),
  ]);
  const ended = detail.jobs.completed + detail.jobs.canceled + detail.jobs.failed;
  const tile = (cls, n, label) => `<div class="tile ${cls}" data-count="${cls}"><div class="n">${n}</div><div class="l">${label}</div></div>`;
  main.innerHTML = `
    <h1>Container group <span class="mono">${esc(group)}</span></h1>
    <p><a href="${ui(`/?group=${id}`)}">Its jobs</a></p>
    <div class="tiles">${tile("pending", detail.jobs.pending, "pending")}${tile("running", detail.jobs.running, "running")}
      ${tile("ended", ended, `ended (${detail.jobs.completed} completed, ${detail.jobs.failed} failed, ${detail.jobs.canceled} canceled)`)}</div>
    ${section("Queue depth and interruptions", `<p class="muted">Window: ${WINDOWS.map(([name]) => name === chosen[0] ? `<b>${name}</b>` : `<a href="?window=${name}">${name}</a>`).join(" · ")}</p>${renderActivity(detail.activity)}`, "activity")}
    ${section("Workers", '<div id="workers-body"></div>', "workers")}
    ${section(`Blocked machines (${detail.blocked_machines.length})`, renderBlocked(detail.blocked_machines), "blocked")}`;
  renderWorkers(group, running.jobs, feats);
  markRendered("group-rendered", document.getElementById("activity"));
}

// Pending and running jobs as lines, interruptions and lost leases as bars, on one time axis.
function renderActivity(activity) {
  const buckets = activity.buckets;
  const width = 1000, height = 220, left = 40, right = 10, top = 10, bottom = 24;
  const maxJobs = Math.max(1, ...buckets.map((b) => Math.max(b.pending, b.running)));
  const maxHits = Math.max(1, ...buckets.map((b) => b.interrupted + b.lost));
  const step = (width - left - right) / buckets.length;
  const y = (n) => top + (height - top - bottom) * (1 - n / maxJobs);
  const line = (key) => buckets.map((b, i) => `${i ? "L" : "M"}${(left + (i + 1) * step).toFixed(1)},${y(b[key]).toFixed(1)}`).join(" ");
  const bars = buckets.map((b, i) => {
    const hits = b.interrupted + b.lost;
    if (!hits) return "";
    const h = ((height - top - bottom) * 0.35 * hits) / maxHits;
    return `<rect class="bar-interruptions" x="${(left + i * step + 1).toFixed(1)}" y="${(height - bottom - h).toFixed(1)}" width="${Math.max(1, step - 2).toFixed(1)}" height="${h.toFixed(1)}"><title>${hits} interrupted or lost</title></rect>`;
  }).join("");
  const first = new Date(Date.parse(activity.since)).toLocaleString();
  const totals = buckets.reduce((t, b) => t + b.interrupted + b.lost, 0);
  return `<div class="card">
    <div class="legend"><span><i class="pending"></i>pending (queue depth)</span><span><i class="running"></i>running</span>
      <span><i class="interruptions"></i>interrupted or lost: <b id="interruptions-total">${totals}</b></span></div>
    <svg id="activity-chart" viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="queue depth over time">
      <line class="axis" x1="${left}" x2="${width - right}" y1="${height - bottom}" y2="${height - bottom}"></line>
      <text x="${left - 6}" y="${top + 8}" text-anchor="end">${maxJobs}</text>
      <text x="${left - 6}" y="${height - bottom}" text-anchor="end">0</text>
      <text x="${left}" y="${height - 6}">${esc(first)}</text>
      <text x="${width - right}" y="${height - 6}" text-anchor="end">now</text>
      ${bars}
      <path class="line-pending" d="${line("pending")}"></path>
      <path class="line-running" d="${line("running")}"></path>
    </svg></div>`;
}

// The group's workers from GET /workers where the server has it; otherwise the machines that
// hold its running jobs now.
async function renderWorkers(group, runningJobs, feats) {
  const body = document.getElementById("workers-body");
  if (hasRoute(feats, "GET /workers")) {
    try {
      const answer = await api(`/workers?container_group_id=${encodeURIComponent(group)}`);
      const workers = Array.isArray(answer) ? answer : answer.workers || [];
      const columns = workers.length ? Object.keys(workers[0]).filter((k) => workers[0][k] === null || typeof workers[0][k] !== "object") : [];
      body.innerHTML = workers.length
        ? table(columns, workers.map((w) => `<tr>${columns.map((c) => `<td>${/(^|_)(seen|poll|time|heartbeat|started|created)$/.test(c) ? when(w[c]) : esc(w[c] ?? "—")}</td>`).join("")}</tr>`), "workers")
        : '<p class="muted">No workers seen.</p>';
      return;
    } catch (error) {
      body.innerHTML = `<p class="muted">${esc(error.message)}</p>`;
      return;
    }
  }
  const rows = runningJobs.map((job) => `<tr><td class="mono">${esc(job.machine_id)}</td>
    <td>${jobLink(job.id)}</td><td>${ago(job.heartbeat)}</td><td>${when(job.started)}</td></tr>`);
  body.innerHTML = `<p class="muted">Machines holding this group's jobs now.</p>
    ${rows.length ? table(["Machine", "Job", "Last heartbeat", "Job started"], rows, "holders") : '<p class="muted">None.</p>'}`;
}

function renderBlocked(machines) {
  if (!machines.length) return '<p class="muted">No machine is blocked from this group\'s jobs.</p>';
  const rows = machines.map((m) => `<tr><td class="mono">${esc(m.machine_id)}</td>
    <td class="num">${m.jobs}</td><td>${when(m.last_blocked)}</td><td>${m.reallocated ? "yes" : "no"}</td></tr>`);
  return table(["Machine", "Jobs failed#", "Last blocked", "Reallocated"], rows, "blocked");
}

// -- start --------------------------------------------------------------------------------------

async function start() {
  if (!sessionStorage.getItem(KEY_STORAGE)) { renderSignIn(); return; }
  const path = location.pathname.slice(ROOT.length);
  try {
    me = await api("/users/me");
  } catch (error) {
    if (me === null && !sessionStorage.getItem(KEY_STORAGE)) return;  // signed out: form shown
    renderSignIn(error.message);
    sessionStorage.removeItem(KEY_STORAGE);
    return;
  }
  renderWho();
  const jobMatch = path.match(/^\/ui\/jobs\/([^/]+)$/);
  const groupMatch = path.match(/^\/ui\/groups\/(.+)$/);
  const current = groupMatch || path === "/ui/groups" ? "groups" : "jobs";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("current", a.dataset.nav === current);
  try {
    if (jobMatch) await renderJob(decodeURIComponent(jobMatch[1]));
    else if (groupMatch) await renderGroup(decodeURIComponent(groupMatch[1]));
    else if (path === "/ui/groups") await renderGroups();
    else await renderJobs();
  } catch (error) {
    if (sessionStorage.getItem(KEY_STORAGE)) showError(error);
  }
}

start();
