// agentgate console: plain JS over the gateway's API, no build step. The DAG is laid out by dagre
// (vendor/dagre.min.js); the DAG, the Gantt and the meters are drawn as SVG/HTML here.
//   GET /v1/workflows                 the live list (polled)
//   GET /v1/workflows/{id}            nodes, edges, timings, usage, prefetch records
//   GET /v1/workflows/{id}/events     SSE: node_started / node_finished / prefetch / workflow_finished
//   GET /ui/api/overview              workers (load, KV per tier, pins, prefix hit rate), awareness
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const POLL_MS = 1000;
const ROW_H = 22;
const LABEL_W = 150;
const NOTE_W = 190;
const $ = (sel) => document.querySelector(sel);

const view = { selected: null, wf: null, source: null, marks: [], refreshing: null, again: false };

function svg(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function html(name, attrs, text, parent) {
  const e = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

async function getJSON(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error && body.error.message) || `${path}: HTTP ${r.status}`);
  return body;
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.floor(seconds))}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function pct(x) { return x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`; }

function setConn(ok, text) {
  const c = $("#conn");
  c.textContent = text;
  c.className = "conn " + (ok ? "ok" : "bad");
}

// -- the workflow list -------------------------------------------------------------------------
async function refreshWorkflows() {
  const page = await getJSON("/v1/workflows?limit=50");
  const body = $("#workflows tbody");
  body.replaceChildren();
  const now = Date.now() / 1000;
  for (const wf of page.data) {
    const tr = html("tr", { "data-id": wf.id }, null, body);
    if (wf.id === view.selected) tr.classList.add("selected");
    html("td", { title: wf.id }, wf.id.replace(/^wf-/, "").slice(0, 8), tr);
    const st = html("td", {}, null, tr);
    html("span", { class: `status ${wf.status}` }, wf.status, st);
    html("td", {}, ago((wf.finished || now) - wf.created) + (wf.finished ? "" : " ⟳"), tr);
    html("td", {}, wf.tenant || "—", tr);
    html("td", { title: wf.template || "" }, wf.template || "—", tr);
    tr.addEventListener("click", () => select(wf.id));
  }
}

// -- workers and awareness ----------------------------------------------------------------------
function meter(parent, label, used, total, text) {
  const row = html("div", { class: "kv" }, null, parent);
  html("span", {}, label, row);
  html("span", {}, text, row);
  const m = html("div", { class: "meter", "data-meter": label }, null, parent);
  html("div", { style: `width:${total ? Math.min(100, (100 * used) / total) : 0}%` }, null, m);
}

async function refreshOverview() {
  const o = await getJSON("/ui/api/overview");
  $("#running").textContent = `${o.workflows_running} workflow(s) running here`;
  const box = $("#workers");
  box.replaceChildren();
  for (const w of o.workers) {
    const card = html("div", { class: "worker", "data-worker": w.url }, null, box);
    html("div", { class: "url" }, `${w.url} ${w.healthy ? "●" : "○ " + w.breaker}`, card);
    const load = w.load || {};
    meter(card, "load", w.in_flight, w.capacity,
      `${w.in_flight}/${w.capacity} in flight · ${load.num_reqs || 0} reqs · ${load.num_tokens || 0} tok`);
    if (w.kv) {
      const l1 = w.kv.l1, l2 = w.kv.l2;
      meter(card, "KV L1", l1.used_blocks, l1.total_blocks,
        `${l1.used_blocks}/${l1.total_blocks} blocks in use · ${l1.cached_blocks} cached`);
      meter(card, "KV L2", l2.used_blocks, l2.total_blocks, `${l2.used_blocks}/${l2.total_blocks} blocks`);
      const row = html("div", { class: "kv" }, null, card);
      html("span", {}, "pinned", row);
      html("span", { "data-pinned": w.url }, `${w.kv.pinned_blocks} blocks`, row);
      html("span", {}, "prefix hits", row);
      html("span", { "data-hit-rate": w.url }, pct(w.kv.prefix_hit_rate), row);
    } else {
      html("div", { class: "muted" }, "no /kv/stats (not an agentgate engine)", card);
    }
  }
  const a = o.awareness;
  const rows = [
    ["predictions used (workflow)", a.workflow.predictions_used],
    ["predictions wasted (workflow)", a.workflow.predictions_wasted],
    ["precision / recall (workflow)", `${pct(a.workflow.precision)} / ${pct(a.workflow.recall)}`],
    ["predictions used (client)", a.client.predictions_used],
    ["predictions wasted (client)", a.client.predictions_wasted],
    ["prefetch hits / misses", `${a.prefetch_hits} / ${a.prefetch_misses}`],
    ["prefetched tokens", a.prefetch_tokens],
    ["wasted prefetch tokens", a.prefetch_wasted_tokens],
    ["pin seconds", a.pin_seconds.toFixed(1)],
  ];
  const tbody = $("#awareness tbody");
  tbody.replaceChildren();
  for (const [k, v] of rows) {
    const tr = html("tr", {}, null, tbody);
    html("td", {}, k, tr);
    html("td", { "data-counter": k }, String(v), tr);
  }
}

// -- one workflow: DAG ---------------------------------------------------------------------------
function drawDag(wf) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 46, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const [id, node] of Object.entries(wf.nodes)) {
    g.setNode(id, { width: Math.max(70, 8 * id.length + 28), height: 30, kind: node.type });
  }
  for (const e of wf.edges) g.setEdge(e.source, e.target, { conditional: e.conditional });
  dagre.layout(g);
  const root = $("#dag");
  root.replaceChildren();
  root.setAttribute("width", g.graph().width);
  root.setAttribute("height", g.graph().height);
  const defs = svg("defs", {}, root);
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
    markerHeight: 7, orient: "auto-start-reverse" }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#888" }, marker);
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    const d = pts.map((p, i) => `${i ? "L" : "M"} ${p.x} ${p.y}`).join(" ");
    svg("path", { d, class: "edge" + (g.edge(e).conditional ? " conditional" : ""), "marker-end": "url(#arrow)",
      "data-edge": `${e.v}->${e.w}` }, root);
  }
  for (const id of g.nodes()) {
    const n = g.node(id);
    const grp = svg("g", { class: "node", "data-node": id, "data-status": wf.nodes[id].status,
      transform: `translate(${n.x - n.width / 2},${n.y - n.height / 2})` }, root);
    svg("rect", { width: n.width, height: n.height }, grp);
    const t = svg("text", { x: n.width / 2, y: n.height / 2 + 4, "text-anchor": "middle" }, grp);
    t.textContent = (n.kind === "external" ? "⚙ " : "") + id;
    const tip = svg("title", {}, grp);
    tip.textContent = id;
  }
}

const RANK = { pending: 0, ready: 1, waiting: 2, running: 2, finished: 3, skipped: 3, failed: 3, cancelled: 3 };

// `forward`: a state read from GET /v1/workflows/{id}, which may have been asked before the last SSE
// event arrived; it only moves a node on, never back (a retry moves it back through its own event).
function setNodeStatus(id, status, forward) {
  const n = document.querySelector(`#dag .node[data-node="${CSS.escape(id)}"]`);
  if (!n) return;
  const now = n.getAttribute("data-status");
  if (now === status || (forward && (RANK[status] || 0) < (RANK[now] || 0))) return;
  n.setAttribute("data-status", status);
}

// -- one workflow: Gantt -------------------------------------------------------------------------
// Phases from the recorded timings (epoch seconds): queue = ready → started (the gateway's ready set),
// prefill = started → first token (the worker's queue and prefill), decode = first token → finished;
// an external (tool) node is one span, started → finished.
function phases(node) {
  const t = node.timings || {};
  const out = [];
  if (node.type === "external") {
    if (t.started) out.push(["tool", t.started, t.finished]);
    return out;
  }
  if (t.ready && t.started) out.push(["queue", t.ready, t.started]);
  if (t.started) out.push(["prefill", t.started, t.first_token || t.finished]);
  if (t.first_token) out.push(["decode", t.first_token, t.finished]);
  return out;
}

function cacheNote(node) {
  const u = node.usage;
  if (!u || !u.prompt_tokens) return "";
  const cached = (u.prompt_tokens_details && u.prompt_tokens_details.cached_tokens) || 0;
  const kind = cached === 0 ? "miss" : cached >= u.prompt_tokens - 1 ? "hit" : "partial hit";
  return `cache ${kind} ${cached}/${u.prompt_tokens}`;
}

function drawGantt(wf) {
  const root = $("#gantt");
  root.replaceChildren();
  const ids = Object.keys(wf.nodes);
  const now = Date.now() / 1000;
  const t0 = wf.created;
  let t1 = wf.finished || now;
  for (const node of Object.values(wf.nodes)) for (const [, , end] of phases(node)) t1 = Math.max(t1, end || now);
  const span = Math.max(t1 - t0, 0.001);
  const width = Math.max(520, $("#gantt-wrap").clientWidth - 4);
  const plotW = width - LABEL_W - NOTE_W;
  const x = (t) => LABEL_W + (plotW * (t - t0)) / span;
  root.setAttribute("width", width);
  root.setAttribute("height", ROW_H * ids.length + 26);
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4;
    svg("line", { x1: x(t), x2: x(t), y1: 0, y2: ROW_H * ids.length, class: "axis" }, root);
    const label = svg("text", { x: x(t), y: ROW_H * ids.length + 14, "text-anchor": "middle", class: "axis-label" },
      root);
    label.textContent = `${(t - t0).toFixed(2)}s`;
  }
  ids.forEach((id, row) => {
    const node = wf.nodes[id];
    const y = row * ROW_H;
    const label = svg("text", { x: 4, y: y + 15, class: "row-label" }, root);
    label.textContent = id + (node.worker ? ` @${node.worker.replace(/^https?:\/\//, "")}` : "");
    for (const [phase, start, end] of phases(node)) {
      const stop = end || now;
      const bar = svg("rect", { class: `bar ${phase}`, x: x(start), y: y + 4, height: ROW_H - 8,
        width: Math.max(1, x(stop) - x(start)), "data-node": id, "data-phase": phase, "data-start": start,
        "data-end": end === null || end === undefined ? "" : end }, root);
      const tip = svg("title", {}, bar);
      tip.textContent = `${id} ${phase}: ${(stop - start).toFixed(3)}s${node.worker ? " on " + node.worker : ""}`;
    }
    for (const m of view.marks.filter((m) => m.node === id)) {
      const top = m.kind === "pin" ? y + ROW_H / 2 : y + 1;  // prefetch ticks above, pin ticks below
      svg("line", { class: `mark ${m.kind}`, x1: x(m.at), x2: x(m.at), y1: top, y2: top + ROW_H / 2 - 1,
        "data-node": id, "data-mark": m.kind, "data-at": m.at }, root);
    }
    const note = svg("text", { x: LABEL_W + plotW + 6, y: y + 15, class: "row-note", "data-cache": id }, root);
    note.textContent = [node.status, cacheNote(node)].filter(Boolean).join(" · ");
  });
}

// -- selection, SSE and refreshes ------------------------------------------------------------------
function refreshSelected() {
  // one request at a time; a change meanwhile asks for one more afterwards
  if (view.refreshing) { view.again = true; return; }
  const id = view.selected;
  view.refreshing = getJSON(`/v1/workflows/${encodeURIComponent(id)}`).then((wf) => {
    if (id !== view.selected) return;
    const first = view.wf === null;
    view.wf = wf;
    if (first) drawDag(wf);
    for (const [n, node] of Object.entries(wf.nodes)) setNodeStatus(n, node.status, true);
    $("#wf-summary").textContent = `${wf.status} · ${wf.template || "no template"} · prompt cache ` +
      `${wf.cache.cached_tokens}/${wf.cache.prompt_tokens} tokens (${pct(wf.cache.hit_rate)})`;
    drawGantt(wf);
  }).catch((err) => { $("#wf-summary").textContent = String(err); }).finally(() => {
    view.refreshing = null;
    if (view.again) { view.again = false; refreshSelected(); }
  });
}

function eventTime(e) {
  // Redis stream ids are "<milliseconds>-<seq>": the time the gateway appended the event
  const ms = parseInt((e.lastEventId || "").split("-")[0], 10);
  return Number.isFinite(ms) ? ms / 1000 : Date.now() / 1000;
}

function select(id) {
  if (view.source) view.source.close();
  view.selected = id;
  view.wf = null;
  view.marks = [];
  $("#wf-title").textContent = id;
  history.replaceState(null, "", `/ui?wf=${encodeURIComponent(id)}`);
  for (const tr of document.querySelectorAll("#workflows tbody tr")) {
    tr.classList.toggle("selected", tr.getAttribute("data-id") === id);
  }
  refreshSelected();
  const source = new EventSource(`/v1/workflows/${encodeURIComponent(id)}/events`);
  view.source = source;
  const data = (e) => JSON.parse(e.data);
  source.addEventListener("node_started", (e) => {
    const d = data(e);
    setNodeStatus(d.node, d.external ? "waiting" : "running");
    refreshSelected();
  });
  source.addEventListener("node_retry", (e) => { setNodeStatus(data(e).node, "ready"); refreshSelected(); });
  source.addEventListener("node_finished", (e) => {
    const d = data(e);
    setNodeStatus(d.node, d.status);
    refreshSelected();
  });
  source.addEventListener("prefetch", (e) => {
    const d = data(e);
    if (!d.node) return;
    if (d.phase === "done") {
      view.marks.push({ node: d.node, kind: "prefetch", at: eventTime(e) });
      if (d.pin_id) view.marks.push({ node: d.node, kind: "pin", at: eventTime(e) });
    } else if (d.phase === "released" && d.pin_held_s > 0) {
      view.marks.push({ node: d.node, kind: "pin", at: eventTime(e) });
    }
    if (view.wf) drawGantt(view.wf);
  });
  source.addEventListener("workflow_finished", () => { source.close(); refreshSelected(); });
}

async function submit() {
  $("#submit-error").textContent = "";
  try {
    const body = JSON.parse($("#submit-json").value);
    const r = await getJSON("/v1/workflows", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    select(r.id);
    await refreshWorkflows();
  } catch (err) {
    $("#submit-error").textContent = String(err.message || err);
  }
}

async function tick() {
  try {
    await Promise.all([refreshWorkflows(), refreshOverview()]);
    setConn(true, "live");
  } catch (err) {
    setConn(false, `gateway unreachable: ${err.message || err}`);
  }
  if (view.wf && view.wf.status === "running") drawGantt(view.wf);  // running bars grow
}

$("#submit-btn").addEventListener("click", submit);
const wanted = new URLSearchParams(location.search).get("wf");
if (wanted) select(wanted);
tick();
setInterval(tick, POLL_MS);
