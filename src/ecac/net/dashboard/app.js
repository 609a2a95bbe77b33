// ecac node dashboard: plain JS, no build step. All data is shown with textContent (never innerHTML).
// The token for writes comes from location.hash (#token=…), then lives in sessionStorage only.
"use strict";

const TOKEN_KEY = "ecac-control-token";
const REFRESH_DEBOUNCE_MS = 250;
const POLL_MS = 5000; // fallback refresh while the event stream is down
const RECONNECT_MS = 3000;
const OPS_LIMIT = 50;

const $ = (id) => document.getElementById(id);
let token = null;
let allowWrites = false;
let refreshTimer = null;
let refreshing = false;
let refreshAgain = false;
let events = null;
let live = false;

// ------------------------------------------------------------------ token

function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    let t = "";
    try {
      t = decodeURIComponent(m[1]).trim();
    } catch (e) {
      t = "";
    }
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    // remove it from the address bar (and from history)
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  showToken();
}

function showToken() {
  $("token-status").textContent = token ? "token set for this tab." : "no token: writes need the node's token.";
  $("token-input").hidden = !!token;
  $("token-save").hidden = !!token;
  $("token-forget").hidden = !token;
  updateWriteForm();
}

function saveToken() {
  const t = $("token-input").value.trim();
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  token = t;
  $("token-input").value = "";
  showToken();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  showToken();
}

// ------------------------------------------------------------------ HTTP

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, init = {}) {
  const headers = Object.assign({ Accept: "application/json" }, init.headers || {});
  if (token) headers.Authorization = "Bearer " + token;
  const resp = await fetch(path, Object.assign({}, init, { headers, cache: "no-store", credentials: "omit" }));
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && typeof body.error === "string" ? body.error : resp.status + " " + resp.statusText;
    throw new HttpError(resp.status, msg);
  }
  return body;
}

// ------------------------------------------------------------------ DOM helpers

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  return tr;
}

function cell(text, cls, title) {
  const td = el("td", text, cls);
  if (title) td.title = title;
  return td;
}

function fill(tableId, rows, emptyText, columns) {
  const body = $(tableId).tBodies[0];
  if (rows.length === 0) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    body.replaceChildren(row([td]));
  } else {
    body.replaceChildren(...rows);
  }
}

const short = (hex) => (typeof hex === "string" && hex.length > 16 ? hex.slice(0, 8) + "…" + hex.slice(-4) : hex);
const hexCell = (hex) => cell(short(hex), "mono", hex);

function timeText(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return isNaN(d.getTime()) ? String(ms) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

function showError(msg) {
  const b = $("error-banner");
  b.textContent = msg || "";
  b.hidden = !msg;
}

// ------------------------------------------------------------------ views

function renderNode(node, status) {
  $("node-site").textContent = node.site_name ? "· " + node.site_name : "";
  $("node-peer-id").textContent = node.peer_id || "–";
  $("node-op-count").textContent = node.op_count;
  $("node-head-count").textContent = node.head_count;
  $("node-digest").textContent = node.state_digest;
  $("node-allow-writes").textContent = node.allow_writes ? "allowed" : "not allowed";
  $("node-listen").textContent = node.libp2p_listen || (status && status.listen ? status.listen.join(" ") : "–");
  $("node-pending").textContent = status ? status.pending_ops : "–";
  document.title = "ecac " + (node.site_name || short(node.peer_id || "node"));
  allowWrites = !!node.allow_writes;
  updateWriteForm();
}

function renderPeers(doc) {
  const rows = (doc.peers || []).map((p) => {
    const match = p.heads_match === true ? "same heads" : p.heads_match === false ? "differ" : "unknown";
    const cls = p.heads_match === true ? "ok" : p.heads_match === false ? "warn" : "";
    return row(
      [
        hexCell(p.peer_id),
        cell(p.connected ? "connected" : "not connected", p.connected ? "ok" : "warn"),
        cell(match, cls),
        cell(ago(p.last_sync_ms), "", timeText(p.last_sync_ms)),
        cell(accessText(p), p.served === false || Object.keys(p.refused_us || {}).length ? "warn" : ""),
        cell((p.addrs || []).join(" "), "mono small"),
      ],
      { peer: p.peer_id },
    );
  });
  fill("peers-table", rows, "no peers known", 6);
}

function accessText(p) {
  const parts = [p.subject ? "subject " + short(p.subject) : "no verified hello"];
  if (p.served === false) parts.push("not served by us");
  const refused = Object.entries(p.refused_us || {}).map(([what, why]) => what + " (" + why + ")");
  if (refused.length) parts.push("refuses us " + refused.join(", "));
  return parts.join("; ");
}

function valueText(v) {
  if (v.kind === "text") return { text: v.text, cls: "" };
  if (v.kind === "encrypted") return { text: "[encrypted " + v.tag + " v" + v.key_version + "]", cls: "marked" };
  return { text: "[binary] " + v.hex, cls: "marked mono" };
}

function valueCell(values) {
  // one text node per value: concurrent values are shown as a list, binary ones marked
  const td = el("td", null, "value");
  values.forEach((v, i) => {
    const t = valueText(v);
    if (i > 0) td.append(el("span", " | ", "sep"));
    td.append(el("span", t.text, t.cls || "v"));
  });
  if (values.length === 0) td.append(el("span", "(empty)", "marked"));
  return td;
}

function renderState(doc) {
  const rows = [];
  const objects = doc.objects || {};
  for (const obj of Object.keys(objects).sort()) {
    const fields = objects[obj];
    for (const name of Object.keys(fields).sort()) {
      const f = fields[name];
      const values = f.type === "mv" ? f.values : f.elements.map((e) => e.value);
      const type = f.type === "mv" ? (values.length > 1 ? "mv (concurrent)" : "mv") : "set";
      rows.push(row([cell(obj), cell(name), cell(type), valueCell(values)], { object: obj, field: name }));
    }
  }
  fill("state-table", rows, "no objects yet", 4);
  $("state-summary").textContent = rows.length + " field(s), " + doc.processed_count + " op(s) applied";
}

function renderAccess(doc) {
  $("access-policy").textContent = doc.policy_active
    ? "policy active: only granted subjects may write"
    : "no policy yet: every write is applied";
  const rows = [];
  for (const s of doc.subjects || []) {
    for (const e of s.epochs) {
      const closed = e.end_pos !== null;
      rows.push(
        row(
          [
            hexCell(s.subject_pk),
            cell(s.role),
            cell(e.scope.join(", ")),
            cell(closed ? "closed @" + e.start_pos + "–" + e.end_pos : "open @" + e.start_pos),
            cell(timeText(e.nbf_ms) + " … " + timeText(e.exp_ms)),
            cell(e.status, e.status === "live" || e.status === "open" ? "ok" : "warn"),
          ],
          { subject: s.subject_pk, role: s.role },
        ),
      );
    }
  }
  fill("access-table", rows, "no grants", 6);
  const keys = [];
  for (const i of doc.issuers || []) {
    for (const k of i.keys) {
      keys.push(
        row([
          cell(i.issuer_id),
          cell(k.key_id),
          cell(k.algo),
          hexCell(k.pubkey),
          cell(timeText(k.valid_from_ms) + " … " + timeText(k.valid_until_ms)),
          cell(k.revoked_at_ms === null ? "no" : "at " + timeText(k.revoked_at_ms), k.revoked_at_ms === null ? "" : "warn"),
        ]),
      );
    }
  }
  fill("issuers-table", keys, "no issuers published", 6);
  const problems = (doc.ineffective_grants || []).map((g) =>
    row([hexCell(g.grant_op_id), hexCell(g.subject_pk), cell(g.problem, "warn")]),
  );
  fill("problems-table", problems, "none", 3);
}

function opWhat(op) {
  const p = op.payload || {};
  switch (op.payload_type) {
    case "Data":
      return p.key + " = " + p.value;
    case "Grant":
      return "grant to " + short(p.subject_pk);
    case "Revoke":
      return "revoke " + p.role + " [" + (p.scope_tags || []).join(", ") + "] from " + short(p.subject_pk);
    case "Credential":
      return "credential " + p.cred_id + " (" + p.bytes_len + " bytes)";
    case "IssuerKey":
      return "issuer " + p.issuer_id + " key " + p.key_id;
    default:
      return "";
  }
}

function renderOps(doc, explain) {
  const decisions = new Map((explain.decisions || []).map((d) => [d.op_id, d]));
  const rows = (doc.ops || []).map((op) => {
    const d = decisions.get(op.op_id);
    const verdict = d ? d.verdict : op.payload_type === "Data" ? "?" : "";
    const reason = d ? [d.reason, d.detail].filter((x) => x).join(": ") : "";
    return row(
      [
        hexCell(op.op_id),
        cell(op.payload_type),
        hexCell(op.author),
        cell(opWhat(op)),
        cell(verdict, verdict === "ALLOWED" ? "ok" : verdict === "DENIED" ? "bad" : ""),
        cell(reason, "small"),
      ],
      { op: op.op_id },
    );
  });
  fill("ops-table", rows, "no ops yet", 6);
  $("ops-summary").textContent = "latest " + rows.length + " of " + doc.total;
}

// ------------------------------------------------------------------ refresh

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  const errors = [];
  // each view on its own: one failing endpoint does not blank the others
  const show = (what, result, render) => {
    try {
      if (result.status !== "fulfilled") throw result.reason;
      render(result.value);
    } catch (e) {
      errors.push(what + ": " + e.message);
    }
  };
  try {
    const [status, node, peers, state, access, ops, explain] = await Promise.allSettled([
      api("/status"),
      api("/api/node"),
      api("/api/peers"),
      api("/api/view/state"),
      api("/api/access?now_ms=" + Date.now()),
      api("/api/ops?limit=" + OPS_LIMIT),
      api("/api/explain"),
    ]);
    show("node", node, (d) => renderNode(d, status.status === "fulfilled" ? status.value : null));
    show("peers", peers, renderPeers);
    show("state", state, renderState);
    show("access", access, renderAccess);
    show("ops", ops, (d) => renderOps(d, explain.status === "fulfilled" ? explain.value : {}));
    if (explain.status !== "fulfilled") errors.push("explain: " + explain.reason.message);
    showError(errors.length ? "cannot read the node: " + errors.join("; ") : "");
  } finally {
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      scheduleRefresh();
    }
  }
}

function scheduleRefresh() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, REFRESH_DEBOUNCE_MS);
}

function setLive(on, text) {
  live = on;
  const b = $("live-status");
  b.textContent = text;
  b.className = "badge " + (on ? "on" : "off");
}

function connectEvents() {
  if (events) events.close();
  events = new EventSource("/api/events");
  events.onopen = () => {
    setLive(true, "live");
    scheduleRefresh();
  };
  for (const name of ["snapshot", "op", "peers", "lag"]) events.addEventListener(name, scheduleRefresh);
  events.onerror = () => {
    setLive(false, "offline: retrying");
    // the browser retries by itself unless the stream was refused; then retry here
    if (events.readyState === EventSource.CLOSED) setTimeout(connectEvents, RECONNECT_MS);
  };
}

// ------------------------------------------------------------------ write form

function updateWriteForm() {
  const ok = allowWrites && !!token;
  for (const id of ["write-object", "write-field", "write-value", "write-submit"]) $(id).disabled = !ok;
  $("write-note").textContent = !allowWrites
    ? "This node does not accept writes (start it with --allow-writes)."
    : token
      ? "Signed by the node's write key and announced to its peers."
      : "Paste the node's token below to write (it is printed at start as dashboard: …#token=…).";
}

async function submitWrite(ev) {
  ev.preventDefault();
  const out = $("write-result");
  const body = { object: $("write-object").value, field: $("write-field").value, value: $("write-value").value };
  $("write-submit").disabled = true;
  out.className = "note";
  out.textContent = "writing…";
  try {
    const r = await api("/api/data", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(r.error);
    let verdict = "";
    try {
      const d = await api("/api/explain/" + r.op_id);
      verdict = d.verdict === "DENIED" ? " — DENIED: " + (d.detail || d.reason) : " — " + d.verdict;
    } catch (e) {
      verdict = "";
    }
    out.textContent = "wrote " + body.object + "." + body.field + " as op " + r.op_id + verdict;
    out.className = "note " + (verdict.includes("DENIED") ? "bad" : "ok");
    scheduleRefresh();
  } catch (e) {
    // a refused token is stale (the node writes a new one at every start): ask for it again
    const hint = e.status === 401 ? " (paste the node's current token)" : "";
    if (e.status === 401) forgetToken();
    out.textContent = "write failed: " + e.message + hint;
    out.className = "note bad";
  } finally {
    updateWriteForm();
  }
}

// ------------------------------------------------------------------ start

function start() {
  takeToken();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    saveToken();
  });
  $("token-forget").addEventListener("click", forgetToken);
  $("write-form").addEventListener("submit", submitWrite);
  refresh();
  connectEvents();
  setInterval(() => {
    if (!live) scheduleRefresh();
  }, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
