// evo's dashboard: jobs with live progress, one job's score-vs-calls chart, best program,
// lineage and events (WebSocket), and the experiments. Plain DOM, no framework, no build step.
// Every text that comes from the API is set with textContent (instructions and demos are users'
// data): nothing from a response is ever parsed as markup.
"use strict";

const PAGE = 20;                  // jobs per page
const POLL_MS = 1000;             // the jobs and experiments tables refresh this often
const MAX_EVENTS = 400;           // event log lines kept on the page
const FINISHED = ["done", "failed", "cancelled"];
const SVG = "http://www.w3.org/2000/svg";

const state = {
  key: "",
  offset: 0,
  total: 0,
  statusFilter: "",
  paused: false,                  // a refused key stops the polling until a new one is entered
  backoff: 0,                     // extra wait after a 429 (rate limit), in ms
  timer: null,
  detail: null,                   // the open job: see openDetail
  experimentResults: new Map(),   // a done experiment's result, by id (it no longer changes)
};

// ---- small DOM helpers -----------------------------------------------------------------------

const $ = (sel) => document.querySelector(sel);

/** An element with attributes and children; string children become text nodes (escaped). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  return node;
}

function num(x) { return typeof x === "number" && Number.isFinite(x); }
function fmtScore(x) { return num(x) ? x.toFixed(3) : "—"; }
function fmtInt(x) { return num(x) ? Math.round(x).toLocaleString("en-US") : "—"; }
function fmtP(p) { return !num(p) ? "—" : p < 0.001 ? "< 0.001" : p.toFixed(3); }
function fmtDiff(x) { return num(x) ? (x > 0 ? "+" : "") + x.toFixed(3) : "—"; }

function fmtEta(s, status) {
  if (FINISHED.includes(status)) return "";
  if (!num(s)) return "—";
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function fmtTime(t) {
  return num(t) ? new Date(t * 1000).toLocaleString() : "—";
}

// ---- errors and the key ----------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, where) {
    super(message);
    this.status = status;
    this.where = where;
  }
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = $("#error");
  box.textContent = "";
  box.hidden = true;
}

/** The message a person sees for a failed call. */
function describe(err) {
  if (!(err instanceof ApiError)) return `Cannot reach the service: ${err.message || err}`;
  const why = err.where ? `${err.message} (at ${err.where})` : err.message;
  if (err.status === 401) {
    return `The API key was refused (401): ${why}. Enter a valid key above.`;
  }
  if (err.status === 403) return `This key's role may not do that (403): ${why}`;
  if (err.status === 429) return `Too many requests (429): ${why}. Slowing down.`;
  return `Error ${err.status}: ${why}`;
}

/** The key from the address (#key=…, then removed from the address bar) or this tab's storage. */
function readKey() {
  const m = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("evoKey", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("evoKey") || "";
}

function setKey(key) {
  state.key = key.trim();
  if (state.key) sessionStorage.setItem("evoKey", state.key);
  else sessionStorage.removeItem("evoKey");
  // the key id (public) is the part between "evo_" and the secret's last "_"
  const m = /^evo_(k-[0-9a-f]+)_/.exec(state.key);
  $("#whoami").textContent = state.key ? (m ? `key ${m[1]}` : "key set") : "no key";
  $("#key").value = "";
  state.paused = false;
  clearError();
  if (!state.key) showError("Enter an API key to see the jobs (evo serve keys create …).");
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { ...opts, headers, cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const message = body && typeof body.error === "string" ? body.error : resp.statusText;
    throw new ApiError(resp.status, message, body && body.where);
  }
  return body;
}

const enc = encodeURIComponent;

// ---- the polling loop ------------------------------------------------------------------------

async function tick() {
  state.timer = null;
  if (state.key && !state.paused) {
    try {
      await refreshJobs();
      await refreshExperiments();
      if (state.detail && !state.detail.finished) await refreshDetailStatus(state.detail);
      clearError();
      state.backoff = 0;
      $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      showError(describe(err));
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        state.paused = true;
      }
      if (err instanceof ApiError && err.status === 429) {
        state.backoff = Math.min(30000, Math.max(1000, state.backoff * 2));
      }
    }
  }
  state.timer = setTimeout(tick, POLL_MS + state.backoff);
}

function restartPolling() {
  if (state.timer) clearTimeout(state.timer);
  tick();
}

/** Show ``items`` as rows of ``body``, rebuilding only the rows whose data changed (a finished
 * job's row stays the same element: hover and keyboard focus survive the refresh). */
function syncRows(body, items, make, columns, emptyText) {
  if (!items.length) {
    body.replaceChildren(el("tr", { class: "empty" },
      el("td", { colspan: columns, text: emptyText })));
    return;
  }
  const old = new Map([...body.children].filter((r) => r.dataset.id)
    .map((r) => [r.dataset.id, r]));
  const rows = items.map((item) => {
    const sig = JSON.stringify(item);
    const row = old.get(String(item.id));
    if (row && row.dataset.sig === sig) return row;
    const fresh = make(item);
    fresh.dataset.sig = sig;
    return fresh;
  });
  const same = rows.length === body.children.length &&
    rows.every((row, i) => body.children[i] === row);
  if (!same) body.replaceChildren(...rows);
}

// ---- the jobs table --------------------------------------------------------------------------

function progressBar(fraction) {
  const f = num(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  const pct = Math.round(f * 100);
  const bar = el("div", { class: "bar" });
  bar.style.width = `${pct}%`;
  return el("div", {
    class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
    "aria-valuenow": pct, "data-value": f.toFixed(4), title: `${pct}%`,
  }, bar, el("span", { text: `${pct}%` }));
}

function jobRow(job) {
  const selected = state.detail && state.detail.id === job.id;
  return el("tr", { "data-id": job.id, class: selected ? "selected" : null, tabindex: 0 },
    el("td", { class: "id" }, el("code", { text: job.id })),
    el("td", { text: job.name || "" }),
    el("td", { text: job.kind || "" }),
    el("td", {}, el("span", { class: `status ${job.status}`, text: job.status })),
    el("td", {}, progressBar(job.progress)),
    el("td", { class: "num best-score", text: fmtScore(job.best_score) }),
    el("td", { class: "num", text: job.budget ? `${fmtInt(job.metric_calls)} / ${fmtInt(job.budget)}`
                                             : fmtInt(job.metric_calls) }),
    el("td", { class: "num", text: fmtEta(job.eta_s, job.status) }));
}

async function refreshJobs() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.offset });
  if (state.statusFilter) q.set("status", state.statusFilter);
  const page = await api(`api/v1/optimizations?${q}`);
  const items = page.items || [];
  state.total = num(page.total) ? page.total : items.length;
  syncRows($("#jobs tbody"), items, jobRow, 8, "No jobs yet.");
  const first = items.length ? state.offset + 1 : 0;
  $("#page-info").textContent = `${first}–${state.offset + items.length} of ${state.total}`;
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = state.offset + PAGE >= state.total;
}

// ---- the experiments table -------------------------------------------------------------------

function experimentRow(item) {
  const r = item.result || {};
  const ci = Array.isArray(r.ci) && r.ci.length === 2
    ? `[${fmtDiff(r.ci[0])}, ${fmtDiff(r.ci[1])}]` : "—";
  return el("tr", { "data-id": item.id },
    el("td", { class: "id" }, el("code", { text: item.id || "" })),
    el("td", { text: item.name || "" }),
    el("td", {}, el("span", { class: `status ${item.status}`, text: item.status || "" })),
    el("td", { class: "num", text: fmtInt(r.n) }),
    el("td", { class: "num", text: fmtScore(r.a) }),
    el("td", { class: "num", text: fmtScore(r.b) }),
    el("td", { class: "num diff", text: fmtDiff(r.diff) }),
    el("td", { class: "ci", text: ci }),
    el("td", { class: "num p-value", text: fmtP(r.p_value) }),
    el("td", { class: "decision", text: r.decision || "" }));
}

async function refreshExperiments() {
  const page = await api("api/v1/experiments?limit=50");
  const items = Array.isArray(page) ? page : page.items || [];
  // the list holds each experiment's status; a done one's result is read once, then kept
  const missing = items.filter((it) => it.status === "done" && !it.result &&
                                       !state.experimentResults.has(it.id));
  await Promise.all(missing.slice(0, 10).map(async (it) => {
    const full = await api(`api/v1/experiments/${enc(it.id)}`);
    if (full && full.result) state.experimentResults.set(it.id, full.result);
  }));
  for (const it of items) {
    if (!it.result && state.experimentResults.has(it.id)) {
      it.result = state.experimentResults.get(it.id);
    }
  }
  syncRows($("#experiments tbody"), items, experimentRow, 10, "No experiments yet.");
}

// ---- one job's detail ------------------------------------------------------------------------

function newDetail(id) {
  return {
    id, seq: 0, ws: null, connects: 0, retry: 0, ended: false, finished: false, status: null,
    budget: null, calls: 0,
    best: [],                     // [[metric_calls, best score]] : the best-so-far steps
    scores: [],                   // [[metric_calls, val score]] : each fully validated candidate
    fromResult: false,            // the chart holds the result's curve (events no longer redraw it)
    candidates: new Map(),        // id -> {id, parents, operator, val_score}
    renderTimer: null,
  };
}

async function openDetail(id) {
  closeDetail();
  const d = newDetail(id);
  state.detail = d;
  $("#detail").hidden = false;
  $("#detail-id").textContent = id;
  $("#events").replaceChildren();
  $("#best-instruction").textContent = "";
  $("#best-demos").replaceChildren();
  $("#demo-count").textContent = "";
  $("#best-note").hidden = false;
  $("#best-note").textContent = "Shown when the job is done.";
  $("#detail-summary").textContent = "";
  $("#chart").replaceChildren(el("p", { class: "muted", text: "No scores yet." }));
  $("#lineage").replaceChildren(el("p", { class: "muted", text: "No candidates yet." }));
  for (const row of document.querySelectorAll("#jobs tbody tr")) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
  try {
    await refreshDetailStatus(d);
  } catch (err) {
    showError(describe(err));
    return;
  }
  connect(d);
  $("#detail").scrollIntoView({ block: "nearest" });
}

function closeDetail() {
  const d = state.detail;
  state.detail = null;
  if (d && d.ws) d.ws.close();
  if (d && d.renderTimer) clearTimeout(d.renderTimer);
  $("#detail").hidden = true;
  for (const row of document.querySelectorAll("#jobs tbody tr.selected")) {
    row.classList.remove("selected");
  }
}

async function refreshDetailStatus(d) {
  const st = await api(`api/v1/optimizations/${enc(d.id)}/status`);
  if (state.detail !== d) return;
  d.status = st.status;
  d.kind = st.kind;
  for (const node of document.querySelectorAll("#detail .optimize-only")) {
    node.hidden = st.kind === "experiment";
  }
  if (num(st.budget)) d.budget = st.budget;
  if (num(st.metric_calls)) d.calls = Math.max(d.calls, st.metric_calls);
  renderFacts(st);
  if (FINISHED.includes(st.status) && !d.finished) {
    d.finished = true;
    if (st.status === "done") await loadResult(d);
    else $("#best-note").textContent = `The job is ${st.status}: no result.`;
  }
  scheduleRender(d);
}

function renderFacts(st) {
  const status = $("#detail-status");
  status.textContent = st.status;
  status.className = `status ${st.status}`;
  $("#cancel-job").hidden = FINISHED.includes(st.status);
  const facts = [
    ["name", st.name], ["kind", st.kind],
    ["progress", num(st.progress) ? `${Math.round(st.progress * 100)}%` : "—"],
    ["metric calls", st.budget ? `${fmtInt(st.metric_calls)} / ${fmtInt(st.budget)}`
                               : fmtInt(st.metric_calls)],
    ["best score", fmtScore(st.best_score)], ["baseline", fmtScore(st.baseline_score)],
    ["LM calls", fmtInt(st.lm_calls)], ["tokens", fmtInt(st.tokens)],
    ["cost", num(st.cost_usd) ? `$${st.cost_usd.toFixed(4)}` : null],
    ["ETA", fmtEta(st.eta_s, st.status) || null],
    ["created", fmtTime(st.created)], ["started", st.started ? fmtTime(st.started) : null],
    ["finished", st.finished ? fmtTime(st.finished) : null],
    ["sittings", num(st.sittings) && st.sittings > 1 ? String(st.sittings) : null],
    ["error", st.error || null],
  ];
  const dl = $("#detail-facts");
  dl.replaceChildren();
  for (const [k, v] of facts) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("div", { class: k === "error" ? "fact error" : "fact" },
      el("dt", { text: k }), el("dd", { "data-fact": k, text: v })));
  }
}

async function loadResult(d) {
  let res;
  try {
    res = await api(`api/v1/optimizations/${enc(d.id)}/result`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 409) { d.finished = false; return; }
    throw err;
  }
  if (state.detail !== d) return;
  if (d.kind === "experiment") {
    $("#detail-summary").textContent = experimentSummary(res);
    return;
  }
  if (Array.isArray(res.curve) && res.curve.length) {
    d.best = res.curve.filter((p) => num(p[0]) && num(p[1])).map((p) => [p[0], p[1]]);
    d.fromResult = true;
  }
  if (num(res.metric_calls)) d.calls = Math.max(d.calls, res.metric_calls);
  if (Array.isArray(res.candidates)) {
    d.candidates = new Map(res.candidates.map((c) => [c.id, c]));
  }
  renderProgram(res.best_program, res.best_score);
  scheduleRender(d);
}

function experimentSummary(r) {
  const ci = Array.isArray(r.ci) ? `, CI [${fmtDiff(r.ci[0])}, ${fmtDiff(r.ci[1])}]` : "";
  return `${r.decision || ""}: mean a ${fmtScore(r.a)}, mean b ${fmtScore(r.b)}, ` +
    `diff ${fmtDiff(r.diff)}${ci}, p ${fmtP(r.p_value)} on ${fmtInt(r.n)} examples`;
}

function renderProgram(program, score) {
  $("#best-note").hidden = false;
  $("#best-note").textContent = num(score) ? `validation score ${fmtScore(score)}` : "";
  if (!program) return;
  if (Array.isArray(program.members) && program.members.length) {  // a voting ensemble
    $("#best-note").textContent +=
      ` · a vote of ${program.members.length} programs; the first one is shown`;
    program = program.members[0];
  }
  $("#best-instruction").textContent = program.instruction || "";
  const demos = Array.isArray(program.demos) ? program.demos : [];
  $("#demo-count").textContent = `(${demos.length})`;
  $("#best-demos").replaceChildren(...demos.map((demo) => {
    const fields = (part, cls) => Object.entries(demo[part] || {}).map(([k, v]) =>
      el("div", { class: cls }, el("span", { class: "field", text: `${k}: ` }),
        typeof v === "string" ? v : JSON.stringify(v)));
    return el("li", { class: "demo" }, ...fields("inputs", "in"), ...fields("outputs", "out"));
  }));
}

// ---- events: the WebSocket, reconnected after its last seq -----------------------------------

function connect(d) {
  if (state.detail !== d || d.ended) return;
  const url = new URL(`ws/optimizations/${enc(d.id)}`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("after", d.seq);
  const ws = new WebSocket(url);
  d.ws = ws;
  d.connects += 1;
  let got = false;
  $("#ws-state").textContent = "connecting…";
  ws.onopen = () => {
    // a browser cannot set a WebSocket's headers: the key goes in the first message (not in the
    // address, which servers log)
    ws.send(JSON.stringify({ key: state.key }));
    $("#ws-state").textContent = "live";
  };
  ws.onmessage = (msg) => {
    got = true;
    d.retry = 0;
    let ev;
    try { ev = JSON.parse(msg.data); } catch (_) { return; }
    if (!ev || typeof ev !== "object") return;
    if (ev.event === "end") {
      d.ended = true;
      $("#ws-state").textContent = `ended: ${ev.status || ""}`;
      refreshDetailStatus(d).catch((err) => showError(describe(err)));
      return;
    }
    if (num(ev.seq)) {
      if (ev.seq <= d.seq) return;   // already seen (a reconnect repeats nothing, but be sure)
      d.seq = ev.seq;
    }
    onEvent(d, ev);
  };
  ws.onclose = (e) => {
    if (state.detail !== d || d.ended) return;
    // the service closes with 4000 + an HTTP status: 4429 is worth retrying, other refusals not
    if (e.code === 1008 || (e.code >= 4000 && e.code < 5000 && e.code !== 4429)) {
      $("#ws-state").textContent = "refused";
      showError(`The live events were refused (${e.code}): ${e.reason || "check the key"}.`);
      return;
    }
    d.retry = got ? 0 : d.retry + 1;
    const wait = Math.min(10000, 500 * 2 ** d.retry);
    $("#ws-state").textContent = `reconnecting in ${Math.round(wait / 1000)} s…`;
    setTimeout(() => connect(d), wait);
  };
}

function onEvent(d, ev) {
  const calls = num(ev.metric_calls) ? ev.metric_calls : d.calls;
  d.calls = Math.max(d.calls, calls);
  if (ev.event === "start" && num(ev.budget) && !d.budget) d.budget = ev.budget;
  if (ev.event === "candidate_generated" && num(ev.candidate)) {
    const c = d.candidates.get(ev.candidate) || { id: ev.candidate };
    c.parents = ev.parents || [];
    c.operator = ev.op || "";
    d.candidates.set(ev.candidate, c);
  }
  if (ev.event === "candidate_evaluated" && num(ev.candidate) && num(ev.val_score)) {
    const c = d.candidates.get(ev.candidate) || { id: ev.candidate, parents: [], operator: "" };
    c.val_score = ev.val_score;
    d.candidates.set(ev.candidate, c);
    d.scores.push([calls, ev.val_score]);
  }
  if (ev.event === "new_best" && num(ev.val_score) && !d.fromResult) {
    d.best.push([calls, ev.val_score]);
  }
  appendEvent(ev);
  scheduleRender(d);
}

function eventText(ev) {
  const head = `#${ev.seq ?? "?"} ${ev.event}`;
  const at = num(ev.metric_calls) ? ` · ${ev.metric_calls} calls` : "";
  let what = "";
  switch (ev.event) {
    case "start": what = `budget ${ev.budget}, ${ev.train_size} train / ${ev.val_size} val`; break;
    case "candidate_generated":
      what = `candidate ${ev.candidate} from [${(ev.parents || []).join(", ")}] by ${ev.op}`; break;
    case "candidate_evaluated":
      what = num(ev.val_score) ? `candidate ${ev.candidate}: val ${fmtScore(ev.val_score)}`
        : `candidate ${ev.candidate}: minibatch ${fmtScore(ev.minibatch_score)}`; break;
    case "new_best": what = `candidate ${ev.candidate} → ${fmtScore(ev.val_score)}`; break;
    case "candidate_raced":
      what = `candidate ${ev.candidate} vs ${ev.incumbent}: ${ev.outcome}`; break;
    case "confirmed":
      what = `candidate ${ev.candidate} held-out ${fmtScore(ev.holdout_score)} ` +
        `(seed ${fmtScore(ev.seed_holdout_score)}) on ${ev.n}`; break;
    case "proposal_rejected": what = `from ${ev.candidate} (${ev.op}): ${ev.reason}`; break;
    case "complete":
      what = `best ${ev.best}: ${fmtScore(ev.best_val)} (baseline ${fmtScore(ev.baseline_val)})`;
      break;
    case "experiment_start": what = `${ev.n} examples, each answered by a and b`; break;
    case "experiment_progress": what = `program ${ev.program}`; break;
    case "experiment_complete":
      what = `mean b ${fmtScore(ev.best_val)}, mean a ${fmtScore(ev.baseline_val)}`; break;
    default:
      if (ev.reason) what = String(ev.reason);
  }
  return `${head}${at}${what ? " — " + what : ""}${ev.replayed ? " (replayed)" : ""}`;
}

function appendEvent(ev) {
  const list = $("#events");
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(el("li", { class: `ev ${ev.event}`, "data-seq": ev.seq, text: eventText(ev) }));
  while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
  if (nearBottom) list.scrollTop = list.scrollHeight;
}

// ---- chart and lineage (redrawn at most a few times a second) --------------------------------

function scheduleRender(d) {
  if (d.renderTimer) return;
  d.renderTimer = setTimeout(() => {
    d.renderTimer = null;
    if (state.detail !== d) return;
    if (d.kind !== "experiment") {
      renderChart(d);
      renderLineage(d);
    }
  }, 200);
}

/** About `n` round tick values covering [lo, hi]. */
function ticks(lo, hi, n) {
  const span = hi - lo || 1;
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.round(v / step) * step);
  }
  return { values: out, step };
}

function tickLabel(v, step) {
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(Math.min(digits, 4));
}

function renderChart(d) {
  const box = $("#chart");
  if (!d.best.length && !d.scores.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No scores yet." }));
    return;
  }
  const W = 560, H = 260, L = 52, R = 14, T = 12, B = 40;
  const all = d.best.concat(d.scores);
  const xMax = Math.max(d.budget || 0, d.calls, ...all.map((p) => p[0]), 1);
  let yLo = Math.min(...all.map((p) => p[1]));
  let yHi = Math.max(...all.map((p) => p[1]));
  if (yHi - yLo < 0.05) { yLo -= 0.05; yHi += 0.05; }
  const pad = (yHi - yLo) * 0.08;
  yLo -= pad; yHi += pad;
  if (yLo < 0 && Math.min(...all.map((p) => p[1])) >= 0) yLo = 0;
  const x = (v) => L + (v / xMax) * (W - L - R);
  const y = (v) => T + (1 - (v - yLo) / (yHi - yLo)) * (H - T - B);

  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                            "aria-label": "best score against metric calls" });
  const xt = ticks(0, xMax, 6), yt = ticks(yLo, yHi, 5);
  for (const v of yt.values) {
    if (v < yLo || v > yHi) continue;
    root.append(svg("line", { class: "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svg("text", { class: "tick y", x: L - 6, y: y(v) + 4, "text-anchor": "end",
                              text: tickLabel(v, yt.step) }));
  }
  for (const v of xt.values) {
    root.append(svg("line", { class: "tickmark", x1: x(v), x2: x(v), y1: H - B, y2: H - B + 4 }));
    root.append(svg("text", { class: "tick x", x: x(v), y: H - B + 16, "text-anchor": "middle",
                              text: tickLabel(v, Math.max(1, xt.step)) }));
  }
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("text", { class: "label", x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle",
                            text: "metric calls" }));
  root.append(svg("text", { class: "label", x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                            transform: `rotate(-90 12 ${(T + H - B) / 2})`, text: "score" }));
  for (const [cx, cy] of d.scores) {
    root.append(svg("circle", { class: "point", cx: x(cx), cy: y(cy), r: 3 }));
  }
  if (d.best.length) {
    const pts = d.best.slice().sort((a, b) => a[0] - b[0]);
    let path = `M${x(pts[0][0]).toFixed(1)},${y(pts[0][1]).toFixed(1)}`;
    for (const [cx, cy] of pts.slice(1)) path += ` H${x(cx).toFixed(1)} V${y(cy).toFixed(1)}`;
    const end = Math.max(d.calls, pts[pts.length - 1][0]);
    path += ` H${x(end).toFixed(1)}`;
    root.append(svg("path", { class: "best", d: path, "data-points": pts.length }));
    const last = pts[pts.length - 1];
    root.append(svg("text", { class: "best-label", x: Math.min(x(end), W - R) - 4,
                              y: y(last[1]) - 6, "text-anchor": "end",
                              text: `best ${fmtScore(last[1])}` }));
  }
  box.replaceChildren(root);
}

function renderLineage(d) {
  const box = $("#lineage");
  const cands = [...d.candidates.values()].sort((a, b) => a.id - b.id);
  if (!cands.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No candidates yet." }));
    return;
  }
  const known = new Set(cands.map((c) => c.id));
  const children = new Map();
  const roots = [];
  for (const c of cands) {
    const parent = (c.parents || []).find((p) => known.has(p) && p !== c.id);
    if (parent === undefined) roots.push(c);
    else (children.get(parent) || children.set(parent, []).get(parent)).push(c);
  }
  const scored = cands.filter((c) => num(c.val_score));
  const bestId = scored.length
    ? scored.reduce((a, b) => (b.val_score > a.val_score ? b : a)).id : null;
  const seen = new Set();
  const item = (c) => {
    seen.add(c.id);
    const extra = (c.parents || []).filter((p) => p !== (c.parents || [])[0]);
    const li = el("li", { "data-id": c.id, class: c.id === bestId ? "best" : null },
      el("span", { class: "cand", text: `#${c.id}` }), " ",
      el("span", { class: "op", text: c.operator || (c.parents && c.parents.length ? "" : "seed") }),
      " ",
      el("span", { class: "score", text: num(c.val_score) ? fmtScore(c.val_score) : "not validated" }),
      extra.length ? el("span", { class: "muted", text: ` (also from ${extra.map((p) => `#${p}`).join(", ")})` }) : null);
    const kids = (children.get(c.id) || []).filter((k) => !seen.has(k.id));
    if (kids.length) li.append(el("ul", {}, ...kids.map(item)));
    return li;
  };
  box.replaceChildren(el("ul", { class: "tree" }, ...roots.map(item)));
}

// ---- starting a job --------------------------------------------------------------------------

const EXAMPLE = {
  program: { signature: "question -> label", instruction: "Answer with the label.",
             labels: ["positive", "negative"] },
  data: { rows: [
    { inputs: { question: "I loved it" }, outputs: { label: "positive" } },
    { inputs: { question: "Dull and far too long" }, outputs: { label: "negative" } },
  ] },
  optimizer: "evolution",
  budget: 100,
  name: "my-classifier",
};

function renderStartHelp() {
  const origin = location.origin;
  const body = JSON.stringify(EXAMPLE);
  $("#curl").textContent =
    `curl -X POST ${origin}/api/v1/optimize \\\n` +
    `  -H "Authorization: Bearer $EVO_KEY" -H "Content-Type: application/json" \\\n` +
    `  -d '${body}'\n\n` +
    `# then: curl -H "Authorization: Bearer $EVO_KEY" ${origin}/api/v1/optimizations/<id>/status`;
  $("#new-body").value = JSON.stringify(EXAMPLE, null, 2);
}

async function submitNew() {
  const out = $("#submit-result");
  let body;
  try {
    body = JSON.parse($("#new-body").value);
  } catch (err) {
    out.textContent = `Not JSON: ${err.message}`;
    return;
  }
  try {
    const job = await api("api/v1/optimize", { method: "POST", body: JSON.stringify(body) });
    out.textContent = `started ${job.id}`;
    state.offset = 0;
    restartPolling();
    openDetail(job.id);
  } catch (err) {
    out.textContent = describe(err);
  }
}

async function cancelJob() {
  const d = state.detail;
  if (!d) return;
  try {
    await api(`api/v1/optimizations/${enc(d.id)}`, { method: "DELETE" });
    await refreshDetailStatus(d);
  } catch (err) {
    showError(describe(err));
  }
}

// ---- wiring ----------------------------------------------------------------------------------

function init() {
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey($("#key").value);
    restartPolling();
  });
  $("#forget-key").addEventListener("click", () => { closeDetail(); setKey(""); });
  $("#status-filter").addEventListener("change", (e) => {
    state.statusFilter = e.target.value;
    state.offset = 0;
    restartPolling();
  });
  $("#prev-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    restartPolling();
  });
  $("#next-page").addEventListener("click", () => {
    state.offset += PAGE;
    restartPolling();
  });
  const pick = (e) => {
    const row = e.target.closest("tr[data-id]");
    if (row && (e.type === "click" || e.key === "Enter")) openDetail(row.dataset.id);
  };
  $("#jobs tbody").addEventListener("click", pick);
  $("#jobs tbody").addEventListener("keydown", pick);
  $("#close-detail").addEventListener("click", closeDetail);
  $("#cancel-job").addEventListener("click", cancelJob);
  $("#submit-new").addEventListener("click", submitNew);
  renderStartHelp();
  setKey(readKey());
  tick();
}

document.addEventListener("DOMContentLoaded", init);
