// The operator console: a view of the live session's HTTP JSON API (docs: ../shared/specs/live-session.md).
// Every number shown comes from an API answer; live updates come from GET /api/events (Server-Sent Events, one
// journal line per event), which make the console ask the API again: the journal is the only truth.
"use strict";

const STATE_WORDS = {
  new: "Waiting for the pre-plan",
  preplan_loaded: "Pre-plan loaded",
  registered: "Intraop scan registered",
  reference_needles_checked: "Reference needles checked",
  all_needles_checked: "All needles checked",
  seeds_delivered: "Seeds delivered",
  postimplant_evaluated: "Post-implant evaluated",
  supplement_delivered: "Supplementary seeds delivered",
  closed: "Procedure closed",
};
const PURPOSE_WORDS = {
  preplan: "pre-plan CT", reference: "intraop: reference needles", all: "intraop: all needles",
  postimplant: "post-implant CT", refused: "REFUSED",
};
// Which screen the procedure is on, for "follow the procedure".
const STATE_SCREEN = {
  new: "needles", preplan_loaded: "needles", registered: "needles", reference_needles_checked: "needles",
  all_needles_checked: "delivery", seeds_delivered: "postimplant", postimplant_evaluated: "postimplant",
  supplement_delivered: "postimplant", closed: "postimplant",
};
const HEARTBEAT_MS = 10000;  // the API keeps control while its holder sends a request at least every 30 s

const $ = (id) => document.getElementById(id);
const ui = { user: null, role: null, holdsControl: false, screen: "needles", events: null, timer: null,
             refreshPending: null, plan: null, planHoles: null, structures: null, check: null, post: null,
             replan: null, signedOut: false };

// --- the API -------------------------------------------------------------------------------------------------
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    return { ok: false, status: 0, data: null, message: `the navigator does not answer (${err.message})` };
  }
  let data = null;
  const text = await res.text();
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  const message = res.ok ? "" : errorText(res.status, data);
  if (res.status === 401 && path !== "/api/login" && !ui.signedOut) showLogin("Your session has ended: sign in again.");
  return { ok: res.ok, status: res.status, data, message };
}

function errorText(status, data) {
  let detail = data && typeof data === "object" ? (data.detail ?? data.error ?? data.message) : data;
  if (detail && typeof detail === "object") detail = JSON.stringify(detail);
  return `${status}: ${detail || "refused"}`;
}

function say(id, text, kind) {
  const el = $(id);
  el.textContent = text || "";
  el.className = "message" + (kind ? " " + kind : "");
}

// --- formatting ------------------------------------------------------------------------------------------------
function num(v, digits = 1) {
  return v === null || v === undefined || !isFinite(v) ? "—" : Number(v).toFixed(digits);
}
function signed(v, digits = 1) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  const s = Number(v).toFixed(digits);
  if (Number(s) === 0) return Number(0).toFixed(digits);  // no "−0.0"
  return v > 0 ? "+" + s : s.replace("-", "−");
}
function vec(v, digits = 1) {
  return Array.isArray(v) ? v.map((x) => num(x, digits)).join(", ") : "—";
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
function timeOf(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// --- login, control ----------------------------------------------------------------------------------------------
function showLogin(message) {
  stopLive();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("password").value = "";
  $("username").focus();
}

async function login(ev) {
  ev.preventDefault();
  const username = $("username").value.trim();
  const r = await api("POST", "/api/login", { username, password: $("password").value });
  if (!r.ok) {
    $("login-error").textContent = `Not signed in — ${r.message}`;
    $("password").value = "";
    return;
  }
  sessionStorage.removeItem("navigator.signedOut");
  ui.signedOut = false;
  await start();
}

async function logout() {
  stopLive();  // nothing more from this login: no heartbeat, no refresh in flight answering 401 afterwards
  ui.signedOut = true;
  if (ui.holdsControl) await api("DELETE", "/api/control");  // hand control back before leaving
  const r = await api("POST", "/api/logout");
  sessionStorage.setItem("navigator.signedOut", "1");
  ui.holdsControl = false;
  showLogin(r.ok ? "Signed out." : `Signed out of this console; the navigator could not end the login itself ` +
            `(${r.message}): close the browser to end it.`);
}

async function takeControl() {
  const r = await api("POST", "/api/control");
  if (r.ok) {
    ui.holdsControl = true;
    say("control-message", "This console has control.", "ok");
  } else {
    ui.holdsControl = false;
    say("control-message", `Control refused — ${r.message}`, "bad");
  }
  await refreshSession();
}

async function releaseControl() {
  const r = await api("DELETE", "/api/control");
  if (r.ok) ui.holdsControl = false;
  say("control-message", r.ok ? "Control released." : `Not released — ${r.message}`, r.ok ? "ok" : "bad");
  await refreshSession();
}

async function relabel() {
  const scan = $("next-scan").value;
  const r = await api("POST", "/api/scans/next", { scan });
  say("relabel-message", r.ok ? `The next scan will be used for: ${$("next-scan").selectedOptions[0].text}.` :
      `Refused — ${r.message}`, r.ok ? "ok" : "bad");
}

// --- live updates ------------------------------------------------------------------------------------------------
function startLive() {
  stopLive();
  const es = new EventSource("/api/events");
  ui.events = es;
  es.onopen = () => { $("live-status").textContent = "live"; $("live-status").className = "ok-text"; };
  es.onerror = () => { $("live-status").textContent = "reconnecting…"; $("live-status").className = "bad-text"; };
  es.onmessage = (ev) => {
    let line;
    try { line = JSON.parse(ev.data); } catch (_) { return; }
    addJournalLine(line);
    scheduleRefresh();
  };
  // the heartbeat keeps this console's control (and catches anything an event could not say)
  ui.timer = setInterval(refreshSession, HEARTBEAT_MS);
}

function stopLive() {
  if (ui.events) { ui.events.close(); ui.events = null; }
  if (ui.timer) { clearInterval(ui.timer); ui.timer = null; }
  if (ui.refreshPending) { clearTimeout(ui.refreshPending); ui.refreshPending = null; }
}

function scheduleRefresh() {
  if (ui.refreshPending) return;
  ui.refreshPending = setTimeout(async () => { ui.refreshPending = null; await refreshAll(); }, 250);
}

function addJournalLine(line) {
  const li = document.createElement("li");
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = timeOf(line.t);
  const k = document.createElement("span");
  k.className = "k";
  k.textContent = line.kind || "?";
  li.append(t, " ", k, " ", journalSummary(line));
  const ol = $("journal");
  ol.insertBefore(li, ol.firstChild);
  while (ol.children.length > 60) ol.removeChild(ol.lastChild);
}

function journalSummary(line) {
  const d = line.data || {};
  if (line.kind === "transition") return `${d.from} → ${d.to}`;
  if (line.kind === "needle_check") return `${d.scan}: ${(d.out_of_tolerance || []).length} out of tolerance`;
  if (line.kind === "operator_override") return `${d.needle_id} accepted${d.user ? " by " + d.user : ""}: ${d.reason || ""}`;
  if (line.kind === "seed_released") return `${d.seed_id} ${d.hole || ""} ${d.depth_mm !== undefined ? num(d.depth_mm) + " mm" : ""}`;
  if (line.kind === "decision") {
    const what = [d.needle_ids && d.needle_ids.join(", "), d.scan, d.name, d.reason && `“${d.reason}”`].filter(Boolean);
    return `${d.user} (${d.role}): ${String(d.action || "").replace(/_/g, " ")} ${what.join(" ")}`;
  }
  if (line.kind === "login" || line.kind === "login_failed") return `${d.user}${d.role ? " (" + d.role + ")" : ""}`;
  if (line.kind === "series_received") return `${d.modality} ${d.instances} images → ${PURPOSE_WORDS[d.purpose] || d.purpose}`;
  if (line.kind === "series_processed") return `${d.purpose || ""}: ${d.error ? "FAILED — " + d.error : "done"}`;
  if (line.kind === "replan_written") return `re-plan ${d.n} by ${d.user}: ${d.seeds} seeds, D90 ${num((d.D90_gy || {}).replan)} Gy`;
  if (line.kind === "replan_failed") return `re-plan ${d.n}: ${d.error}`;
  if (line.kind === "live_dosimetry")
    return `${d.needle_id ? "needle " + d.needle_id + " done" : d.at}: projected D90 ${num(d.D90_gy)} Gy, V100 ${num(d.V100_pct)} %`;
  const keys = Object.keys(d).slice(0, 3);
  return keys.map((key) => `${key}=${typeof d[key] === "object" ? "…" : d[key]}`).join(" ");
}

// --- refresh ------------------------------------------------------------------------------------------------------
async function refreshAll() {
  await Promise.all([refreshSession(), refreshSeries(), refreshPlan(), refreshCheck(), refreshDelivery(),
                     refreshPost(), refreshReplan()]);
  View3D.draw();
}

async function refreshSession() {
  const r = await api("GET", "/api/session");
  if (!r.ok) return;
  const s = r.data;
  $("state").textContent = STATE_WORDS[s.state] || s.state;
  $("state").dataset.state = s.state;
  $("next-step").textContent = s.next_step || "—";
  const err = s.last_error && (s.last_error.error || JSON.stringify(s.last_error));
  $("last-error").textContent = err ? `Last problem with a scan: ${err}` : "";
  $("last-error").hidden = !err;
  $("patient-id").textContent = s.patient_id || "not known yet";
  $("prescription").textContent = s.prescription_gy == null ? "not known yet" : `${num(s.prescription_gy, 1)} Gy`;
  $("controller").textContent = s.controller || "nobody";
  if (s.controller !== ui.user) ui.holdsControl = false;
  $("control-mine").hidden = !ui.holdsControl;
  $("take-control").disabled = ui.holdsControl;
  $("release-control").disabled = !ui.holdsControl;
  $("busy").textContent = s.busy ? `Working on the ${s.busy}…` : "";
  if ($("follow").checked) showScreen(STATE_SCREEN[s.state] || "needles", false);
}

async function refreshSeries() {
  const r = await api("GET", "/api/series");
  if (!r.ok) return;
  const body = $("series-body");
  clear(body);
  if (!r.data.length) {
    const tr = body.insertRow();
    cell(tr, "No scan received yet.", "muted").colSpan = 5;
    return;
  }
  for (const s of r.data) {
    const tr = body.insertRow();
    tr.title = s.series_uid;
    cell(tr, timeOf(s.received_at));
    const purpose = s.purpose ? PURPOSE_WORDS[s.purpose] || s.purpose : "—";
    const why = s.reason || s.error;
    cell(tr, why ? `${purpose}: ${why}` : purpose, s.purpose === "refused" || s.error ? "bad-text" : "");
    cell(tr, s.modality || "—");
    cell(tr, String(s.instances ?? "—"));
    cell(tr, !s.complete ? "arriving…" : s.processed === false ? "yes, in work" : "yes", s.complete ? "" : "muted");
  }
}

async function refreshPlan() {
  // the pre-plan (GET /api/plan: plan.json): each needle's template hole (needles.json does not name it) and the
  // planned needles and seeds for the 3D view; it changes only when a pre-plan is loaded
  if (ui.plan) return ui.plan;
  const r = await api("GET", "/api/plan");
  if (!r.ok || !r.data || !Array.isArray(r.data.needles)) return null;
  ui.plan = r.data;
  ui.planHoles = Object.fromEntries(r.data.needles.map((n) => [n.id, n.hole]));
  const s = await api("GET", "/api/structures");  // the outlines for the 3D view, in the pre-plan's frame
  ui.structures = s.ok ? s.data : null;
  return ui.plan;
}

async function refreshCheck() {
  const r = await api("GET", "/api/checks/latest");
  if (!r.ok) {
    ui.check = null;
    $("check").hidden = true;
    $("check-empty").hidden = false;
    if (r.status !== 404) $("check-empty").textContent = `Needle check unavailable — ${r.message}`;
    return;
  }
  const c = r.data;
  const same = JSON.stringify(c) === JSON.stringify(ui.check);
  if (ui.check && ui.check.series_uid !== c.series_uid) say("check-message", "");  // a new scan: old news goes
  ui.check = c;
  if (same && !$("check").hidden) return;  // nothing new: keep the table (and the ticks) as they are
  const holes = (c.needles.some((n) => n.hole === undefined) && (await refreshPlan()) && ui.planHoles) || {};
  $("check-empty").hidden = true;
  $("check").hidden = false;
  const tol = c.tolerance_mm ?? 2.0;
  const accepted = new Set(c.accepted || c.accepted_needle_ids || []);
  $("check-scan").textContent = `${c.scan === "reference" ? "reference needles" : "all needles"}` +
    (c.series_uid ? ` (series …${String(c.series_uid).slice(-8)})` : "");
  const within = c.needles.filter((n) => n.within_tolerance).length;
  $("check-within").textContent = `${within} of ${c.needles.length}`;
  $("check-out").textContent = String(c.out_of_tolerance ?? c.needles.filter((n) => !n.within_tolerance).length);
  $("check-notfound").textContent = String(c.not_found ?? c.needles.filter((n) => !n.found).length);
  const reg = c.registration || {};
  $("check-reg-error").textContent = reg.estimated_error_mm == null ? "no estimate" : `${num(reg.estimated_error_mm, 2)} mm` +
    (reg.converged === false ? " (did not converge)" : "");
  $("check-d90").textContent = c.planned_d90_gy == null ? "—" :
    `${num(c.planned_d90_gy, 1)} Gy → ${c.d90_all_as_found_gy == null ? "unchanged" : num(c.d90_all_as_found_gy, 1) + " Gy"}`;
  $("tolerance-head").textContent = `Within ${num(tol, tol % 1 ? 1 : 0)} mm`;

  const ticked = new Set([...document.querySelectorAll(".accept-box:checked")].map((b) => b.value));
  const body = $("needle-body");
  clear(body);
  for (const n of c.needles) {
    const tr = body.insertRow();
    tr.dataset.needle = n.id;
    const ok = n.within_tolerance;
    const isAccepted = accepted.has(n.id) || n.accepted === true;
    tr.className = ok ? "row-ok" : isAccepted ? "row-accepted" : "row-bad";
    cell(tr, n.id, "id");
    const hole = n.hole !== undefined ? n.hole : holes[n.id];
    cell(tr, hole || "—");
    cell(tr, n.found ? num(n.tip_error_mm, 1) : "—", "num tip-error");
    cell(tr, n.found ? num(n.lateral_mm, 1) : "—", "num");
    cell(tr, n.found ? depthWords(n.depth_mm) : "—", "num");
    cell(tr, n.found ? num(n.angle_deg, 1) : "—", "num");
    const verdict = !n.found ? "NOT FOUND" : ok ? "within" : isAccepted ? "OUT — accepted" : "OUT";
    const v = cell(tr, verdict, "verdict " + (ok ? "ok" : isAccepted ? "accepted" : "bad"));
    v.title = ok ? `tip within ${tol} mm of plan` : `tip error ${num(n.tip_error_mm, 1)} mm ≥ ${tol} mm`;
    cell(tr, signed(n.d90_change_gy, 1), "num");
    cell(tr, n.advice || "", "advice");
    const td = cell(tr, "");
    if (!ok && !isAccepted) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.className = "accept-box";
      box.value = n.id;
      box.checked = ticked.has(n.id);
      box.setAttribute("aria-label", `accept ${n.id}`);
      td.appendChild(box);
    }
  }
}

function depthWords(d) {
  if (d === null || d === undefined || !isFinite(d)) return "—";
  if (Math.abs(d) < 0.05) return "0.0";
  return `${signed(d, 1)} ${d > 0 ? "deep" : "shallow"}`;
}

async function acceptDeviations() {
  const ids = [...document.querySelectorAll(".accept-box:checked")].map((b) => b.value);
  const reason = $("accept-reason").value.trim();
  if (!ids.length) return say("check-message", "Tick the needles whose deviation you accept.", "bad");
  if (!reason) return say("check-message", "Give the reason for accepting them.", "bad");
  const r = await api("POST", "/api/checks/latest/accept", { needle_ids: ids, reason });
  if (r.ok) {
    say("check-message", `Accepted ${ids.join(", ")}: ${reason}`, "ok");
    $("accept-reason").value = "";
  } else {
    say("check-message", `Refused — ${r.message}`, "bad");
  }
  await refreshAll();
}

async function postAction(path, messageId, doneText) {
  const r = await api("POST", path);
  say(messageId, r.ok ? doneText : `Refused — ${r.message}`, r.ok ? "ok" : "bad");
  await refreshAll();
  return r;
}

// --- the re-plan (POST /api/replan, GET /api/replan/latest, POST /api/replan/approve) ---------------------------
async function replan(messageId) {
  messageId = typeof messageId === "string" ? messageId : "replan-message";
  say(messageId, "Re-planning on the needles as found…", "");
  $("replan-run").disabled = true;
  const r = await postAction("/api/replan", messageId,
                             "Re-plan ready: a physicist approves it before the delivery uses it.");
  const pre = $("replan-result");
  if (r.ok && r.data) {
    pre.hidden = false;
    const m = (k) => (r.data[k] && r.data[k].D90_gy !== undefined ? `${num(r.data[k].D90_gy, 1)} Gy` : "—");
    pre.textContent = `Re-plan ${r.data.replan}: D90 pre-plan ${m("metrics_preplan")}, as placed ` +
      `${m("metrics_as_placed")}, re-plan ${m("metrics_replan")}; seeds ${r.data.seeds ?? "—"}, ` +
      `moved ${r.data.seeds_moved ?? "—"} (see the Delivery screen)`;
  }
  await refreshReplan();
}

async function approveReplan(messageId) {
  messageId = typeof messageId === "string" ? messageId : "replan-message";
  const r = await postAction("/api/replan/approve", messageId, "");
  if (r.ok && r.data) {
    const accepted = (r.data.accepted || []).length ? `; deviations of ${r.data.accepted.join(", ")} accepted with it` : "";
    say(messageId, `Re-plan ${r.data.approved} approved for delivery (${r.data.seeds} seeds)${accepted}.`, "ok");
  }
}

const REPLAN_ROWS = [["D90", "D90_gy", "Gy", 1], ["D100", "D100_gy", "Gy", 1], ["V100", "V100_pct", "%", 1],
                     ["V150", "V150_pct", "%", 1], ["V200", "V200_pct", "%", 1], ["HI", "HI", "", 2]];

async function refreshReplan() {
  const r = await api("GET", "/api/replan/latest");
  const body = $("replan-body");
  const physicist = ui.role === "physicist";
  const mayChange = ui.role === "physicist" || ui.role === "operator";
  $("replan-run").disabled = !mayChange;
  if (!r.ok) {
    ui.replan = null;
    clear(body);
    $("replan-status").textContent = r.status === 404 ? "No re-plan yet: after the check of all needles, run it here."
      : `Re-plan unavailable — ${r.message}`;
    $("replan-page").hidden = true;
    approveButtons(false, physicist ? "There is no re-plan to approve yet." : roleNote());
    return;
  }
  const p = r.data;
  ui.replan = p;
  const sets = [p.metrics_preplan || {}, p.metrics_as_placed || {}, p.metrics_replan || {}];
  clear(body);
  const rx = p.prescription_gy;
  for (const [quantity, key, unit, digits] of REPLAN_ROWS) {
    const tr = body.insertRow();
    tr.dataset.quantity = quantity;
    cell(tr, unit ? `${quantity} (${unit})` : quantity);
    for (const set of sets) {
      const v = set[key];
      const td = cell(tr, v === null || v === undefined ? "—" : num(v, digits), "num");
      if (quantity === "D90" && rx && v != null) {
        td.classList.add(v >= rx ? "ok-text" : "bad-text");
        td.textContent += v >= rx ? " (≥ Rx)" : " (below Rx)";
      }
    }
  }
  const seeds = body.insertRow();
  seeds.dataset.quantity = "seeds";
  cell(seeds, "Seeds");
  for (const v of [p.seeds_preplan, p.seeds_as_placed, p.seeds]) cell(seeds, v == null ? "—" : String(v), "num");
  const fixed = p.fixed_seeds ? ` Seeds already released: ${p.fixed_seeds}, kept where they are and counted in “as ` +
    `placed” and “re-plan”; the re-plan delivers ${p.seeds} more.` : "";
  const dropped = (p.needles_dropped || []).length ? ` Needles not found, not used: ${p.needles_dropped.join(", ")}.` : "";
  const goals = p.checks && p.checks.all_ok === false ? " It misses a goal: review its checks." : "";
  const state = p.approved ? `approved by ${p.approved_by}` + (p.current ? "" : " (no longer current)")
    : p.current ? "waiting for a physicist's approval" : "out of date: re-plan again";
  $("replan-status").textContent = `Re-plan ${p.replan} (revision ${p.revision ?? "—"}, needle check ${p.check}, by ` +
    `${p.made_by || "—"}, ${num(p.seconds, 1)} s): ${state}.${fixed}${dropped}${goals}`;
  $("replan-status").className = p.approved ? "ok-text" : p.current ? "" : "bad-text";
  $("replan-page").hidden = !p.html;
  if (!physicist) approveButtons(false, roleNote());
  else if (p.approved) approveButtons(false, `Re-plan ${p.replan} is approved; the delivery uses it.`);
  else if (!p.current) approveButtons(false, "This re-plan is out of date (a newer check, or seeds released since): run it again.");
  else approveButtons(true, "");
}

function roleNote() {
  return `Only a physicist approves a re-plan (you are signed in as ${ui.role || "—"}).`;
}

function approveButtons(enabled, note) {
  for (const id of ["replan-approve", "replan-approve-button"]) {
    $(id).disabled = !enabled;
    $(id).title = note || "";
  }
  $("replan-approve-note").textContent = note || "";
}

function showProjection(p) {
  const warn = $("projected-warning");
  if (!p) {
    for (const id of ["projected-d90", "projected-v100", "projected-seeds", "projected-now"]) $(id).textContent = "—";
    warn.hidden = true;
    return;
  }
  const rx = p.prescription_gy;
  $("projected-d90").textContent = `${num(p.D90_gy, 1)} Gy` + (rx ? (p.D90_gy >= rx ? " (≥ Rx)" : " (below Rx)") : "");
  $("projected-d90").className = p.D90_gy >= rx ? "ok-text" : "bad-text";
  $("projected-v100").textContent = `${num(p.V100_pct, 1)} %`;
  $("projected-seeds").textContent = `${p.released} / ${p.remaining}`;
  $("projected-now").textContent = `${num(p.D90_released_gy, 1)} Gy`;
  let text = "";
  if (p.below_rx) text = `The projected CTV D90 ${num(p.D90_gy, 1)} Gy is below the prescription ${num(rx, 1)} Gy.`;
  else if (p.stopped_with_seeds_left) text = `The delivery stopped with ${p.remaining} seeds left: the CTV D90 is ` +
    `${num(p.D90_released_gy, 1)} Gy now, ${num(p.D90_gy, 1)} Gy if the rest go as planned (Rx ${num(rx, 1)} Gy).`;
  if (text && p.replan_offered) text += " Start the delivery again for the rest, or re-plan what is left (Re-plan below).";
  else if (text && p.rest_replan_approved) text += ` Re-plan ${p.rest_replan_approved} of what is left is approved: ` +
    "start the delivery.";
  warn.textContent = text;
  warn.hidden = !text;
}

async function refreshDelivery() {
  const r = await api("GET", "/api/delivery");
  if (!r.ok) {
    $("delivery").hidden = true;
    $("delivery-empty").hidden = false;
    if (r.status !== 404) $("delivery-empty").textContent = `Delivery unavailable — ${r.message}`;
    return;
  }
  const d = r.data;
  $("delivery-empty").hidden = true;
  $("delivery").hidden = false;
  const released = d.released ?? 0;
  const planned = d.planned ?? 0;
  $("delivery-count").textContent = `${released} of ${planned} seeds released`;
  $("delivery-bar").style.width = planned ? `${Math.min(100, (100 * released) / planned)}%` : "0";
  $("delivery-running").textContent = d.running ? "yes" : "no";
  $("delivery-reconciled").textContent = d.reconciled === undefined ? "—" : d.reconciled ? "yes" : "NO";
  $("delivery-device-total").textContent = d.device_released_total ?? "—";
  $("delivery-stopped").textContent = d.stopped_reason || "—";
  const facts = $("device-facts");
  clear(facts);
  const dev = d.device || {};
  const names = { url: "Applicator", last: "Last message", model: "Model", serial: "Serial", firmware: "Firmware",
                  protocol: "Protocol", state: "State", selected_hole: "Selected hole", docked_hole: "Docked hole", depth_mm: "Depth (mm)",
                  seeds_left: "Seeds left in cartridge", released_total: "Released since power-up" };
  const keys = Object.keys(dev);
  if (!keys.length) {
    const dt = document.createElement("dt"); dt.textContent = "Device"; facts.appendChild(dt);
    const dd = document.createElement("dd"); dd.textContent = "no status"; facts.appendChild(dd);
  }
  for (const key of keys) {
    const dt = document.createElement("dt");
    dt.textContent = names[key] || key;
    const dd = document.createElement("dd");
    const v = dev[key];
    dd.textContent = v === null || v === undefined ? "—" : typeof v === "number" && key.endsWith("_mm") ? num(v, 1) :
      typeof v === "object" ? JSON.stringify(v) : String(v);
    if (key === "state") dd.className = /FAULT|ESTOP/.test(String(v)) ? "bad-text" : "";
    facts.append(dt, dd);
  }
  $("delivery-start").disabled = !!d.running;
  $("delivery-stop").disabled = !d.running;
  showProjection(d.projected);
  const body = $("released-body");
  clear(body);
  (d.seeds || []).forEach((s, i) => {
    const tr = body.insertRow();
    cell(tr, String(i + 1));
    cell(tr, s.seed_id);
    cell(tr, s.hole || "—");
    cell(tr, num(s.depth_mm, 1), "num");
    cell(tr, String(s.device_index ?? "—"), "num");
  });
}

async function refreshPost() {
  const r = await api("GET", "/api/postimplant/latest");
  if (!r.ok) {
    ui.post = null;
    $("post").hidden = true;
    $("post-empty").hidden = false;
    if (r.status !== 404) $("post-empty").textContent = `Post-implant unavailable — ${r.message}`;
    return;
  }
  const p = r.data;
  const same = JSON.stringify(p) === JSON.stringify(ui.post);
  ui.post = p;
  if (same && !$("post").hidden) return;
  $("post-empty").hidden = true;
  $("post").hidden = false;
  $("post-seeds").textContent = `${(p.seeds || []).length} / ${p.expected_seeds ?? "—"}`;
  $("post-cold-count").textContent = String((p.cold_spots || []).length);
  const supp = (p.supplementary && p.supplementary.seeds) || [];
  $("post-supp-count").textContent = String(supp.length);

  const body = $("metrics-body");
  clear(body);
  const rows = p.comparison || metricRows(p);
  const rx = p.prescription_gy;
  $("post-rx").textContent = rx == null ? "—" : `${num(rx, 1)} Gy`;
  for (const row of rows) {
    const tr = body.insertRow();
    cell(tr, row.unit ? `${row.quantity} (${row.unit})` : row.quantity);
    for (const key of ["preplan", "postimplant", "with_supplementary"]) {
      const v = row[key];
      const digits = row.quantity === "seed count" ? 0 : row.quantity === "HI" ? 2 : 1;
      const td = cell(tr, v === null || v === undefined ? "—" : num(v, digits), "num");
      if (row.quantity === "D90" && rx && v != null) {
        td.classList.add(v >= rx ? "ok-text" : "bad-text");
        td.textContent += v >= rx ? " (≥ Rx)" : " (below Rx)";
      }
    }
  }
  const cold = $("cold-body");
  clear(cold);
  (p.cold_spots || []).forEach((c, i) => {
    const tr = cold.insertRow();
    cell(tr, String(i + 1));
    cell(tr, num(c.volume_cc, 2), "num");
    cell(tr, num(c.min_dose_gy, 1), "num");
    cell(tr, vec(c.centroid_mm, 1));
  });
  if (!(p.cold_spots || []).length) cell(cold.insertRow(), "No cold spot.", "muted").colSpan = 4;
  const sb = $("supp-body");
  clear(sb);
  supp.forEach((s, i) => {
    const tr = sb.insertRow();
    cell(tr, String(i + 1));
    cell(tr, [s.hole, s.path].filter(Boolean).join(" / ") || "—");
    cell(tr, vec(s.position_mm, 1));
    cell(tr, vec(s.entry_mm, 1));
  });
  if (!supp.length) cell(sb.insertRow(), "No supplementary seed proposed.", "muted").colSpan = 4;
  const warnings = $("post-warnings");
  clear(warnings);
  for (const w of p.warnings || []) {
    const li = document.createElement("li");
    li.textContent = w;
    warnings.appendChild(li);
  }
}

function metricRows(p) {
  // postimplant.json without "comparison": the contract's three metric sets side by side
  const sets = [p.preplan_metrics || {}, p.metrics || {}, (p.supplementary && p.supplementary.predicted_metrics) || {}];
  return [["CTV volume", "ctv_cc", "cc"], ["D90", "D90_gy", "Gy"], ["D100", "D100_gy", "Gy"], ["V100", "V100_pct", "%"],
          ["V150", "V150_pct", "%"], ["HI", "HI", ""]].map(([quantity, key, unit]) => ({
    quantity, unit, preplan: sets[0][key], postimplant: sets[1][key], with_supplementary: sets[2][key] }));
}

// --- screens -----------------------------------------------------------------------------------------------------
function showScreen(name, byHand) {
  if (byHand) $("follow").checked = false;
  ui.screen = name;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.screen === name);
  for (const s of document.querySelectorAll(".screen")) s.hidden = s.id !== `screen-${name}`;
  if (name === "view3d") View3D.draw();
}

// --- start ---------------------------------------------------------------------------------------------------------
async function start() {
  if (sessionStorage.getItem("navigator.signedOut")) return showLogin("");
  const r = await api("GET", "/api/me");  // who this cookie belongs to: the API, not this tab, says
  if (!r.ok) {
    if (r.status !== 401) showLogin(`The navigator answered ${r.message}`);
    return;
  }
  ui.user = r.data.username;
  ui.role = r.data.role;
  $("user-name").textContent = ui.user || "—";
  $("user-role").textContent = ui.role || "—";
  $("login").hidden = true;
  $("app").hidden = false;
  clear($("journal"));
  startLive();
  await refreshAll();
}

function wire() {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("take-control").addEventListener("click", takeControl);
  $("accept-button").addEventListener("click", acceptDeviations);
  $("replan-button").addEventListener("click", () => replan("check-message"));
  $("replan-approve-button").addEventListener("click", () => approveReplan("check-message"));
  $("replan-run").addEventListener("click", () => replan("replan-message"));
  $("replan-approve").addEventListener("click", () => approveReplan("replan-message"));
  $("delivery-start").addEventListener("click", () => postAction("/api/delivery/start", "delivery-message", "Delivery started."));
  $("delivery-stop").addEventListener("click", () => postAction("/api/delivery/stop", "delivery-message", "Delivery stopped."));
  $("supplement-approve").addEventListener("click", () =>
    postAction("/api/supplement/approve", "post-message", "Supplementary seeds approved for delivery."));
  for (const b of document.querySelectorAll(".page-button"))
    b.addEventListener("click", () => {
      $("report-frame").src = b.dataset.page;
      $("report-open").href = b.dataset.page;
    });
  $("release-control").addEventListener("click", releaseControl);
  $("next-scan-button").addEventListener("click", relabel);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showScreen(tab.dataset.screen, true));
  $("follow").addEventListener("change", () => { if ($("follow").checked) refreshSession(); });
  View3D.wire(() => ({ plan: ui.plan, check: ui.check, post: ui.post, structures: ui.structures }));
}

wire();
showScreen("needles", false);
start();
