// Mycelium Net dashboard: vanilla JS, SVG, Server-Sent Events. No libraries, no CDN.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#34d399", "#60a5fa", "#f472b6", "#fbbf24", "#a78bfa", "#f87171",
                 "#22d3ee", "#a3e635", "#fb923c", "#e879f9", "#2dd4bf", "#facc15"];
const EVENT_TYPES = ["registered", "node_updated", "reactivated", "group_created", "joined",
  "left", "migrated", "performance_reported", "model_uploaded", "expired", "group_archived",
  "host_claimed", "host_released", "reward", "simulation_started", "simulation_finished",
  "snapshot_rejected", "signature_learned", "member_flagged", "member_quarantined",
  "token_rotated", "siblings_updated", "groups_merged", "group_split"];
const REFRESH_ON = {
  groups: new Set(["group_created", "joined", "left", "migrated", "performance_reported",
    "expired", "group_archived", "host_claimed", "host_released", "model_uploaded",
    "groups_merged", "group_split"]),
  nodes: new Set(["registered", "reactivated", "joined", "left", "migrated", "expired",
    "node_updated", "groups_merged", "group_split"]),
  // Sibling links between groups (meta-federation); a merge or an archive drops a group's.
  links: new Set(["siblings_updated", "groups_merged", "group_archived"]),
  balances: new Set(["reward"]),
  simulations: new Set(["simulation_started", "simulation_finished"]),
};
const MAX_LOG_ROWS = 400;
const RECENT_EVENTS = 200;  // loaded on open; older ones page by page on demand
const OLDER_PAGE = 200;
const MAX_LEDGER_ROWS = 60;

const state = {
  groups: [],
  nodes: [],
  links: [],           // directed sibling links between live groups (GET /links)
  balances: [],
  ledger: [],          // newest first
  tokensPaid: 0,
  maxEntryId: 0,       // entries up to this id are counted in tokensPaid
  eventCount: 0,
  lastEventId: 0,      // the live stream continues after this id
  oldestEventId: null, // "load older" pages back from this id
  logCap: MAX_LOG_ROWS,
  perf: new Map(),     // group id -> Map(round -> accuracy)
  groupNames: new Map(),
  paused: false,
  pendingRows: [],
  simulations: [],
  selectedSim: null,
  simStream: null,
};

// --- small helpers ----------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const colorOf = (gid) => PALETTE[(Number(gid) - 1 + PALETTE.length) % PALETTE.length];
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const shortId = (id) => (id.length > 14 ? "…" + id.slice(-12) : id);

async function getJSON(path) {
  const resp = await fetch(path, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  return resp.json();
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(() => fn().catch((err) => console.warn(err)), ms);
  };
}

// --- loading ------------------------------------------------------------------------

async function loadGroups() {
  const page = await getJSON("/groups?limit=1000");
  state.groups = page.data;
  for (const g of page.data) state.groupNames.set(g.id, g.name);
  renderGroups();
  renderTopology();
  renderStats();
}

async function loadNodes() {
  const page = await getJSON("/nodes?limit=1000");
  state.nodes = page.data;
  renderTopology();
  renderGroups();
  renderStats();
}

async function loadLinks() {
  const page = await getJSON("/links");
  state.links = page.links;
  renderTopology();
}

async function loadBalances() {
  const page = await getJSON("/ledger/balances?limit=12");
  state.balances = page.data;
  const ledger = await getJSON("/ledger?limit=1");
  state.tokensPaid = ledger.total_amount;
  renderBalances();
  renderStats();
}

async function loadLedger() {
  const page = await getJSON(`/ledger?limit=${MAX_LEDGER_ROWS}`);
  state.ledger = page.data;
  state.tokensPaid = page.total_amount;
  state.maxEntryId = page.data.length ? page.data[0].id : 0;
  renderLedger(new Set());
}

async function loadSimulations() {
  const page = await getJSON("/simulations?limit=20");
  state.simulations = page.data;
  renderSimulations();
}

const refresh = {
  groups: debounce(loadGroups, 250),
  nodes: debounce(loadNodes, 250),
  links: debounce(loadLinks, 250),
  balances: debounce(loadBalances, 300),
  simulations: debounce(loadSimulations, 200),
};

// --- the live event stream ------------------------------------------------------------

// The last events only (history is pruned and may be long); the stream follows from there.
async function loadRecentEvents() {
  const page = await getJSON(`/events?latest=true&limit=${RECENT_EVENTS}`);
  for (const ev of page.data) onEvent(ev);
  state.lastEventId = page.last_id;
  state.oldestEventId = page.data.length ? page.data[0].id : null;
  $("log-older").hidden = page.data.length < RECENT_EVENTS;
}

async function loadOlderEvents() {
  if (state.oldestEventId === null) return;
  const button = $("log-older");
  button.disabled = true;
  try {
    const page = await getJSON(`/events?before=${state.oldestEventId}&limit=${OLDER_PAGE}`);
    const rows = page.data.map((ev) => {
      state.eventCount += 1;
      if (isAccuracyReport(ev)) {
        const pts = state.perf.get(ev.group_id) || new Map();
        state.perf.set(ev.group_id, pts);
        if (!pts.has(ev.data.round)) pts.set(ev.data.round, ev.data.group_value);
      }
      return logRow(ev);
    });
    state.logCap += rows.length;
    $("event-log").prepend(...rows);
    if (page.data.length) state.oldestEventId = page.data[0].id;
    button.hidden = page.data.length < OLDER_PAGE;
    schedulePerf();
    scheduleStats();
  } finally {
    button.disabled = false;
  }
}

function isAccuracyReport(ev) {
  return ev.type === "performance_reported" && ev.group_id && ev.data.group_value !== undefined
    && ev.data.metric === "accuracy";
}

function connectEvents() {
  const source = new EventSource(`/events/stream?after_id=${state.lastEventId}`);
  const conn = $("conn");
  source.onopen = () => { conn.className = "conn live"; $("conn-text").textContent = "live"; };
  source.onerror = () => { conn.className = "conn down"; $("conn-text").textContent = "reconnecting…"; };
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (msg) => onEvent(JSON.parse(msg.data)));
  }
}

function onEvent(ev) {
  state.eventCount += 1;
  if (isAccuracyReport(ev)) {
    if (!state.perf.has(ev.group_id)) state.perf.set(ev.group_id, new Map());
    state.perf.get(ev.group_id).set(ev.data.round, ev.data.group_value);
    schedulePerf();
  }
  if (ev.type === "group_created") state.groupNames.set(ev.group_id, ev.data.name);
  if (ev.type === "reward") addLedgerEntry(ev);
  for (const [what, types] of Object.entries(REFRESH_ON)) {
    if (types.has(ev.type)) refresh[what]();
  }
  appendLogRow(ev);
  scheduleStats();
}

let perfTimer = null;
function schedulePerf() {
  if (perfTimer) return;
  perfTimer = setTimeout(() => { perfTimer = null; renderPerf(); }, 200);
}

let statsTimer = null;
function scheduleStats() {
  if (statsTimer) return;
  statsTimer = setTimeout(() => { statsTimer = null; renderStats(); }, 150);
}

// --- event log --------------------------------------------------------------------------

function typeClass(type) {
  if (["joined", "left", "migrated", "registered", "reactivated", "node_updated"].includes(type)) return "membership";
  if (["group_created", "group_archived", "host_claimed", "host_released", "model_uploaded",
    "siblings_updated", "groups_merged", "group_split"].includes(type)) return "group";
  if (type === "performance_reported") return "perf";
  if (type === "reward") return "reward";
  if (type.startsWith("simulation")) return "sim";
  if (type === "expired" || type === "snapshot_rejected" || type === "member_flagged" || type === "member_quarantined") return "bad";
  return "other";
}

function describe(ev) {
  const d = ev.data || {};
  const who = ev.node_id ? shortId(ev.node_id) : "";
  const grp = ev.group_id ? `group ${ev.group_id}` : "";
  switch (ev.type) {
    case "performance_reported":
      return `${who} · ${grp} · round ${d.round} · ${d.metric} ${fmt(d.value)} (group ${fmt(d.group_value)})`;
    case "reward":
      return `${who} · ${grp} · round ${d.round} · contribution ${fmt(d.contribution, 4)} → ${fmt(d.amount, 2)} tokens`;
    case "migrated":
      return `${who} · group ${d.from_group} → ${ev.group_id}`;
    case "model_uploaded":
      return `${who} · ${grp} · round ${d.round} · ${(d.size / 1024).toFixed(1)} KiB`;
    case "member_flagged":
      return `${who} · ${grp} · round ${d.round} · flagged: worse for the others (contribution ${fmt(d.contribution, 4)})`;
    case "member_quarantined":
      return `${who} · ${grp} · quarantined until ${d.until}: flagged ${d.flags} rounds in a row`;
    case "snapshot_rejected":
      return `${who} · ${grp} · round ${d.round} · refused: ${d.reason}`;
    case "signature_learned":
      return `${who} · domain ${d.domain} · ${d.tensors} tensors (${d.source})`;
    case "siblings_updated":
      return `${who} · ${grp} · round ${d.round} · siblings ${(d.siblings || []).map((x) => `${x.group_id} (fit ${fmt(x.fit)})`).join(", ") || "none"}`;
    case "groups_merged":
      return `${who} · group ${d.from} merged into ${ev.group_id} · ${(d.moved || []).length} moved`;
    case "group_split":
      return `${who} · group ${d.to} split from ${d.from} · ${(d.moved || []).length} moved`;
    case "group_created":
      return `${who} · ${grp} "${d.name}" (capacity ${d.max_capacity})`;
    case "simulation_started":
      return `simulation ${d.simulation_id} · ${d.params ? `${d.params.nodes} nodes × ${d.params.rounds} rounds, ${d.params.dataset}` : ""}`;
    case "simulation_finished":
      return `simulation ${d.simulation_id} · ${d.status}${d.metrics ? ` · mean acc ${fmt(d.metrics.mean_accuracy)}` : ""}`;
    default:
      return [who, grp, d.reason ? d.reason : ""].filter(Boolean).join(" · ");
  }
}

function logRow(ev) {
  const time = new Date(ev.created_at).toLocaleTimeString([], { hour12: false });
  return el("div", { class: "ev", "data-event": ev.id },
    el("span", { class: "t" }, time),
    el("span", { class: `ty ${typeClass(ev.type)}` }, ev.type),
    el("span", { class: "d", title: JSON.stringify(ev.data) }, describe(ev)));
}

function appendLogRow(ev) {
  const row = logRow(ev);
  if (state.paused) {
    state.pendingRows.push(row);
    if (state.pendingRows.length > MAX_LOG_ROWS) state.pendingRows.shift();
    $("events-pending").textContent = `${state.pendingRows.length} new while paused`;
    return;
  }
  const log = $("event-log");
  log.append(row);
  while (log.childElementCount > state.logCap) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function togglePause() {
  state.paused = !state.paused;
  const btn = $("log-pause");
  btn.textContent = state.paused ? "Resume" : "Pause";
  btn.classList.toggle("paused", state.paused);
  if (!state.paused) {
    const log = $("event-log");
    log.append(...state.pendingRows);
    state.pendingRows = [];
    while (log.childElementCount > state.logCap) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
    $("events-pending").textContent = "";
  }
}

// --- stats ----------------------------------------------------------------------------

function renderStats() {
  const active = state.nodes.filter((n) => n.status === "active").length;
  $("stat-nodes").textContent = active;
  $("stat-groups").textContent = state.groups.length;
  const accs = state.groups.filter((g) => g.member_count > 0 && g.accuracy !== null).map((g) => g.accuracy);
  $("stat-acc").textContent = accs.length ? fmt(accs.reduce((a, b) => a + b, 0) / accs.length) : "–";
  $("stat-tokens").textContent = fmt(state.tokensPaid, 1);
  $("stat-events").textContent = state.eventCount;
}

// --- groups -----------------------------------------------------------------------------

function membersOf(gid) {
  return state.nodes.filter((n) => n.group_id === gid).sort((a, b) => a.id.localeCompare(b.id));
}

function renderGroups() {
  const box = $("groups");
  const live = state.groups.filter((g) => !g.archived);
  $("groups-count").textContent = live.length ? `${live.length} live` : "";
  if (!live.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No groups yet."));
    return;
  }
  const cards = live.map((g) => {
    const members = membersOf(g.id);
    const chips = el("div", { class: "chips" }, ...members.map((m) =>
      el("span", { class: `chip${m.id === g.host_node_id ? " host" : ""}`, title: m.id }, shortId(m.id))));
    const fill = Math.min(100, (100 * g.member_count) / g.max_capacity);
    return el("div", { class: "group-card", style: `--c:${colorOf(g.id)}`, "data-group": g.id },
      el("div", { class: "title" }, el("span", { class: "name", title: g.name }, `#${g.id} ${g.name}`),
        el("span", { class: "acc" }, fmt(g.accuracy))),
      el("div", { class: "meta" }, `${g.domain} · round ${g.round} · ${g.member_count}/${g.max_capacity} members`),
      el("div", { class: "capacity" }, el("div", { style: `width:${fill}%` })),
      chips);
  });
  box.replaceChildren(...cards);
}

// --- topology -----------------------------------------------------------------------

function renderTopology() {
  const root = $("topology");
  const W = 720, H = 400;
  const groups = state.groups.filter((g) => !g.archived);
  const loose = state.nodes.filter((n) => n.group_id === null && n.status === "active");
  const parts = [];
  const slots = groups.length + (loose.length ? 1 : 0);
  const placed = groups.filter((g) => g.member_count > 0).length;
  const live = new Set(groups.map((g) => g.id));
  const linked = siblingPairs(state.links, live).length;
  $("topology-hint").textContent = `${state.nodes.filter((n) => n.status === "active").length} active nodes in ${placed} groups`
    + (linked ? ` · ${linked} sibling link${linked === 1 ? "" : "s"}` : "");
  if (!slots) {
    root.replaceChildren(svg("text", { x: W / 2, y: H / 2, class: "hub-sub" }, "waiting for nodes…"));
    return;
  }
  // Hubs on an ellipse (or centred when there is one), members on a ring around each hub.
  const cx = W / 2, cy = H / 2 + 4;
  const rx = slots === 1 ? 0 : W * 0.33, ry = slots === 1 ? 0 : H * 0.30;
  const hubs = groups.map((g, i) => ({ g, i }));
  if (loose.length) hubs.push({ g: null, i: groups.length });
  const ringFor = (n) => Math.min(88, 34 + n * 6.5);
  const hubAt = (i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / slots;
    return [cx + rx * Math.cos(angle), cy + ry * Math.sin(angle)];
  };
  const at = new Map(groups.map((g, i) => [g.id, hubAt(i)]));
  const siblings = siblingPairs(state.links, at);
  if (siblings.length) parts.push(renderSiblingLinks(siblings, at));
  for (const { g, i } of hubs) {
    const [hx, hy] = hubAt(i);
    const members = g ? membersOf(g.id) : loose;
    const color = g ? colorOf(g.id) : "#64748b";
    const ring = ringFor(members.length);
    const layer = svg("g", { class: "hub", "data-group": g ? g.id : "none" });
    const dim = g && !members.length;  // an empty group: its hub stays, faded
    if (dim) layer.setAttribute("opacity", "0.45");
    layer.append(svg("circle", { cx: hx, cy: hy, r: ring, fill: color, "fill-opacity": 0.06,
      stroke: color, "stroke-opacity": 0.25, "stroke-dasharray": "3 4" }));
    members.forEach((m, k) => {
      const a = -Math.PI / 2 + (2 * Math.PI * k) / Math.max(1, members.length);
      const nx = hx + ring * Math.cos(a), ny = hy + ring * Math.sin(a);
      if (g) layer.append(svg("line", { x1: hx, y1: hy, x2: nx, y2: ny, stroke: color, class: "edge" }));
      const acc = m.metrics && typeof m.metrics.accuracy === "number" ? m.metrics.accuracy : null;
      const r = 5 + (acc === null ? 0 : 4 * acc);
      const dot = svg("circle", { cx: nx, cy: ny, r, fill: color, class: "node" });
      dot.append(svg("title", {}, `${m.id}${acc === null ? "" : ` · accuracy ${fmt(acc)}`}${g && m.id === g.host_node_id ? " · host" : ""}`));
      layer.append(dot);
      if (members.length <= 10) {
        const lx = hx + (ring + 14) * Math.cos(a), ly = hy + (ring + 14) * Math.sin(a) + 3;
        layer.append(svg("text", { x: lx, y: ly, class: "node-label" }, shortId(m.id).replace(/^.*-/, "")));
      }
    });
    if (g) {
      layer.append(svg("circle", { cx: hx, cy: hy, r: 15, fill: color, "fill-opacity": 0.9 }));
      layer.append(svg("text", { x: hx, y: hy + 4, class: "hub-label", fill: "#0d1215", style: "fill:#0d1215" }, `${g.id}`));
      const sub = members.length ? `acc ${fmt(g.accuracy)} · r${g.round}` : `empty · r${g.round}`;
      layer.append(svg("text", { x: hx, y: hy + ring + 30, class: "hub-sub" }, sub));
    } else {
      layer.append(svg("text", { x: hx, y: hy + 4, class: "hub-sub" }, "no group"));
    }
    parts.push(layer);
  }
  root.replaceChildren(...parts);
}

// Undirected sibling pairs between groups in `live` (a Map or Set of group ids): each
// pair once, with the directions that were measured and the best fit among them.
function siblingPairs(links, live) {
  const pairs = new Map();
  for (const l of links) {
    if (!live.has(l.group_id) || !live.has(l.sibling_id)) continue;
    const a = Math.min(l.group_id, l.sibling_id), b = Math.max(l.group_id, l.sibling_id);
    const key = `${a}-${b}`;
    const pair = pairs.get(key) || { a, b, key, fit: 0, measured: [] };
    pair.fit = Math.max(pair.fit, l.fit);
    pair.measured.push(l);
    pairs.set(key, pair);
  }
  return [...pairs.values()];
}

// Dashed lines between sibling hubs, thicker for a better fit, labelled with the fit.
function renderSiblingLinks(pairs, at) {
  const layer = svg("g", { class: "siblings" });
  for (const p of pairs) {
    const [x1, y1] = at.get(p.a), [x2, y2] = at.get(p.b);
    const line = svg("line", { x1, y1, x2, y2, class: "sibling-link", "data-link": p.key,
      "stroke-width": (1 + 4 * p.fit).toFixed(2) });
    const told = p.measured.map((l) => `group ${l.group_id} measured ${l.sibling_id}: fit ${fmt(l.fit)} (own ${fmt(l.own_fit)}, ${l.examples} examples, round ${l.round})`);
    line.append(svg("title", {}, told.join("\n")));
    layer.append(line);
    layer.append(svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, class: "sibling-label",
      "data-link": p.key }, `fit ${fmt(p.fit, 2)}`));
  }
  return layer;
}

// --- performance chart -----------------------------------------------------------

function renderPerf() {
  const root = $("perf");
  const W = 720, H = 260, L = 44, R = 14, T = 12, B = 28;
  const series = [...state.perf.entries()].filter(([, pts]) => pts.size > 0);
  const parts = [];
  let maxRound = 1;
  for (const [, pts] of series) for (const r of pts.keys()) maxRound = Math.max(maxRound, r);
  const x = (r) => L + ((W - L - R) * r) / maxRound;
  const y = (v) => T + (H - T - B) * (1 - v);
  for (let v = 0; v <= 1.0001; v += 0.25) {
    parts.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }));
    parts.push(svg("text", { x: L - 8, y: y(v) + 4, class: "tick", "text-anchor": "end" }, v.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil(maxRound / 10));
  for (let r = 0; r <= maxRound; r += step) {
    parts.push(svg("text", { x: x(r), y: H - 8, class: "tick", "text-anchor": "middle" }, r));
  }
  parts.push(svg("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis" }));
  const legend = [];
  for (const [gid, pts] of series.sort((a, b) => a[0] - b[0])) {
    const color = colorOf(gid);
    const sorted = [...pts.entries()].sort((a, b) => a[0] - b[0]);
    const d = sorted.map(([r, v], i) => `${i ? "L" : "M"}${x(r).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    parts.push(svg("path", { d, stroke: color, class: "series" }));
    const [lr, lv] = sorted[sorted.length - 1];
    parts.push(svg("circle", { cx: x(lr), cy: y(lv), r: 3.5, fill: color }));
    legend.push(el("span", {}, el("i", { style: `background:${color}` }),
      `#${gid} ${state.groupNames.get(gid) || ""} ${fmt(lv)}`));
  }
  if (!series.length) {
    parts.push(svg("text", { x: W / 2, y: H / 2, class: "tick", "text-anchor": "middle" }, "no reports yet"));
  }
  root.replaceChildren(...parts);
  $("perf-legend").replaceChildren(...legend);
}

// --- ledger ---------------------------------------------------------------------------

function addLedgerEntry(ev) {
  // The stream replays history on connect: entries already loaded are skipped.
  const d = ev.data;
  if (state.ledger.some((e) => e.id === d.entry_id)) return;
  const oldest = state.ledger.length ? state.ledger[state.ledger.length - 1].id : -1;
  if (state.ledger.length >= MAX_LEDGER_ROWS && d.entry_id < oldest) return;
  state.ledger.push({ id: d.entry_id, node_id: ev.node_id, group_id: ev.group_id, round: d.round,
    contribution: d.contribution, amount: d.amount });
  state.ledger.sort((a, b) => b.id - a.id);
  if (state.ledger.length > MAX_LEDGER_ROWS) state.ledger.length = MAX_LEDGER_ROWS;
  if (d.entry_id > state.maxEntryId) {
    state.maxEntryId = d.entry_id;
    state.tokensPaid += d.amount;
  }
  scheduleLedger(d.entry_id);
}

const freshEntries = new Set();
let ledgerTimer = null;
function scheduleLedger(id) {
  freshEntries.add(id);
  if (ledgerTimer) return;
  ledgerTimer = setTimeout(() => {
    ledgerTimer = null;
    renderLedger(new Set(freshEntries));
    freshEntries.clear();
  }, 150);
}

function renderLedger(fresh) {
  const seen = new Set();
  const rows = [];
  for (const e of state.ledger) {
    if (seen.has(e.id)) continue;
    seen.add(e.id);
    const cls = [e.amount > 0 ? "" : "zero", fresh.has(e.id) ? "fresh" : ""].join(" ").trim();
    rows.push(el("tr", { class: cls, "data-entry": e.id },
      el("td", { title: e.node_id }, shortId(e.node_id)),
      el("td", {}, `#${e.group_id}`),
      el("td", {}, e.round),
      el("td", { class: `num ${e.contribution > 0 ? "pos" : "neg"}` }, fmt(e.contribution, 4)),
      el("td", { class: "num" }, fmt(e.amount, 2))));
  }
  $("ledger-body").replaceChildren(...rows);
  $("ledger-total").textContent = rows.length ? `${fmt(state.tokensPaid, 1)} tokens paid in total` : "";
  renderStats();
}

function renderBalances() {
  const box = $("balances");
  if (!state.balances.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No rewards paid yet."));
    return;
  }
  const top = Math.max(...state.balances.map((b) => b.balance), 1e-9);
  box.replaceChildren(...state.balances.map((b) => el("div", { class: "bal", "data-node": b.node_id },
    el("span", { class: "who", title: b.node_id }, shortId(b.node_id)),
    el("div", { class: "bar" }, el("div", { style: `width:${(100 * b.balance) / top}%` })),
    el("span", { class: "amt" }, fmt(b.balance, 2)))));
}

// --- simulations ----------------------------------------------------------------------

function renderSimulations() {
  const list = $("sim-list");
  $("sim-count").textContent = state.simulations.length ? `${state.simulations.length} recorded` : "";
  list.replaceChildren(...state.simulations.map((s) => {
    const p = s.params;
    const acc = s.metrics && s.metrics.mean_accuracy !== undefined ? `acc ${fmt(s.metrics.mean_accuracy)}` : "";
    const li = el("li", { "data-sim": s.id, class: s.id === state.selectedSim ? "selected" : "" },
      el("span", {}, `#${s.id}`),
      el("span", { class: `badge ${s.status}` }, s.status),
      el("span", {}, `${p.nodes} nodes × ${p.rounds} rounds · ${p.dataset} · ${p.partition}`),
      el("span", { title: s.error || "" }, s.status === "failed" ? "error" : acc));
    li.addEventListener("click", () => followSimulation(s.id));
    return li;
  }));
}

function followSimulation(id) {
  if (state.simStream) state.simStream.close();
  state.selectedSim = id;
  renderSimulations();
  const box = $("sim-log");
  box.replaceChildren();
  $("sim-log-title").textContent = `log of simulation #${id}`;
  const source = new EventSource(`/simulations/${id}/stream`);
  state.simStream = source;
  source.addEventListener("log", (msg) => addConsoleLine(msg.data));
  source.addEventListener("end", (msg) => {
    const rec = JSON.parse(msg.data);
    addConsoleLine(rec.status === "finished"
      ? `■ finished · mean test accuracy ${fmt(rec.metrics && rec.metrics.mean_accuracy)}`
      : `■ ${rec.status}: ${rec.error || ""}`, rec.status === "finished" ? "end" : "error");
    source.close();
    refresh.simulations();
  });
}

function addConsoleLine(text, kind) {
  const box = $("sim-log");
  const cls = kind || (text.startsWith("round ") ? "round" : "");
  box.append(el("div", { class: `log-line ${cls}`.trim() }, text));
  box.scrollTop = box.scrollHeight;
}

async function startSimulation(event) {
  event.preventDefault();
  const msg = $("sim-message");
  const button = $("sim-start");
  const token = $("sim-token").value.trim();
  sessionStorage.setItem("mycelium-admin-token", token);  // this tab only, gone when it closes
  const body = {
    nodes: Number($("sim-nodes").value),
    rounds: Number($("sim-rounds").value),
    dataset: $("sim-dataset").value,
    partition: $("sim-partition").value,
    clusters: Number($("sim-clusters").value),
    policy: $("sim-policy").value,
    seed: Number($("sim-seed").value),
  };
  button.disabled = true;
  msg.className = "sim-message";
  msg.textContent = "starting…";
  try {
    const resp = await fetch("/simulations", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    const data = await resp.json();
    if (!resp.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      throw new Error(`${resp.status}: ${detail}`);
    }
    msg.textContent = `simulation #${data.id} started`;
    state.simulations.unshift(data);
    followSimulation(data.id);
    refresh.simulations();
  } catch (err) {
    msg.className = "sim-message error";
    msg.textContent = String(err.message || err);
  } finally {
    button.disabled = false;
  }
}

// --- start ---------------------------------------------------------------------------

function main() {
  $("log-pause").addEventListener("click", togglePause);
  $("log-older").addEventListener("click", () => loadOlderEvents().catch((err) => console.warn(err)));
  $("sim-form").addEventListener("submit", startSimulation);
  localStorage.removeItem("mycelium-admin-token");  // kept there by older versions
  const saved = sessionStorage.getItem("mycelium-admin-token");
  if (saved) $("sim-token").value = saved;
  renderPerf();
  Promise.all([loadGroups(), loadNodes(), loadLinks(), loadLedger(), loadBalances(),
    loadSimulations()])
    .catch((err) => console.warn(err))
    .then(loadRecentEvents)
    .catch((err) => console.warn(err))
    .finally(connectEvents);
}

document.addEventListener("DOMContentLoaded", main);
