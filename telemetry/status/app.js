// The status page: polls status.json every second and redraws. Rates come
// from the difference of two successive snapshots of each version's
// counters; the chart keeps the last HISTORY seconds of calls/s per version.
"use strict";

const HISTORY = 120;
const COLORS = ["#15803d", "#1d4ed8", "#b45309", "#7c3aed", "#be185d", "#0f766e"];

let previous = null;  // the last snapshot
let firstSeen = null; // the time of the first snapshot (ms)
const series = {};    // "module/version" -> [{t, rate}]
const colorOf = {};   // "module/version" -> color
const activeOf = {};  // module -> the active version's key last seen
const swaps = {};     // module -> [{t, label}]: when the active version changed

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c === undefined || c === null ? "" : c);
  return e;
}

function key(m, v) { return m + "/" + v.version + "@" + v.digest; }

function rates(snap) {
  const out = {};
  if (!previous) return out;
  const dt = (new Date(snap.time) - new Date(previous.time)) / 1000;
  if (dt <= 0) return out;
  const before = {};
  for (const m of previous.modules) for (const v of m.versions || []) before[key(m.name, v)] = v;
  for (const m of snap.modules) for (const v of m.versions || []) {
    const b = before[key(m.name, v)];
    if (!b) continue;
    const calls = Math.max(v.calls - b.calls, 0);
    const fails = Math.max(v.failures - b.failures, 0);
    out[key(m.name, v)] = { rate: calls / dt, errors: calls > 0 ? fails / calls : 0 };
  }
  return out;
}

function short(d) { return d ? d.slice(0, 12) : ""; }

function render(snap) {
  const r = rates(snap);
  const now = new Date(snap.time).getTime();
  const p = snap.process;
  document.getElementById("process").textContent =
    "pid " + p.pid + " · generation " + p.generation + (p.parent_pid ? " · parent " + p.parent_pid : "");
  const trust = document.getElementById("trust");
  trust.textContent = "trust: " + snap.trust_mode;
  trust.className = "badge" + (snap.trust_mode === "development" ? " warn" : "");
  const up = document.getElementById("upgrade");
  const busy = p.upgrade_phase !== "idle";
  up.textContent = "upgrade: " + p.upgrade_phase + (p.upgrade_pid ? " (pid " + p.upgrade_pid + ")" : "") +
    (!busy && p.last_upgrade ? " · last: " + p.last_upgrade : "") + (p.upgrades ? "" : " (upgrades off)");
  up.dataset.phase = p.upgrade_phase;
  up.className = "badge" + (busy ? " busy" : "");
  document.getElementById("updated").textContent = "updated " + new Date(snap.time).toLocaleTimeString();

  const mods = document.getElementById("modules");
  mods.replaceChildren();
  for (const m of snap.modules) {
    const active = (m.versions || []).find(v => v.role === "active");
    if (active) {
      const k = key(m.name, active);
      if (activeOf[m.name] && activeOf[m.name] !== k) {
        (swaps[m.name] = swaps[m.name] || []).push({ t: now, label: "→ " + active.version });
      }
      activeOf[m.name] = k;
    }
    const body = el("tbody");
    for (const v of m.versions || []) {
      const k = key(m.name, v);
      if (!colorOf[k]) colorOf[k] = COLORS[Object.keys(colorOf).length % COLORS.length];
      const rv = r[k];
      if (rv) {
        (series[k] = series[k] || []).push({ t: now, rate: rv.rate });
      }
      const row = el("tr", { class: v.role, "data-version": v.version, "data-role": v.role },
        el("td", {}, el("span", { class: "swatch", style: "background:" + colorOf[k] }), v.version),
        el("td", { class: "role" }, v.role),
        el("td", { class: "digest", title: v.digest }, short(v.digest)),
        el("td", {}, String(v.calls)),
        el("td", {}, rv ? rv.rate.toFixed(1) : "–"),
        el("td", {}, rv ? (100 * rv.errors).toFixed(2) + "%" : "–"),
        el("td", {}, String(v.in_flight)),
        el("td", {}, (v.memory_bytes / 1048576).toFixed(1) + " MiB"));
      body.append(row);
    }
    let canary = "";
    if (m.canary_state) canary = " · canary " + m.canary_state + ", step " + m.canary_step + ", weight " + (100 * m.canary_weight).toFixed(1) + "%";
    const canvas = el("canvas", { width: "900", height: "140", "data-module": m.name });
    const box = el("div", { class: "module", "data-module": m.name },
      el("h2", {}, m.name, el("span", { class: "muted" }, canary)),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["version", "role", "digest", "calls", "calls/s", "errors", "in flight", "memory"].map(h => el("th", {}, h)))),
        body),
      canvas);
    mods.append(box);
    draw(canvas, m, now);
  }

  const tbody = document.querySelector("#audit tbody");
  tbody.replaceChildren();
  for (const e of snap.audit) {
    tbody.append(el("tr", {},
      el("td", {}, new Date(e.time).toLocaleTimeString()),
      el("td", {}, e.action), el("td", {}, e.target),
      el("td", {}, (e.from || "").replace(/@sha256:.*/, "")),
      el("td", {}, (e.to || "").replace(/@sha256:.*/, "")),
      el("td", { class: e.result }, e.result),
      el("td", {}, e.actor || ""),
      el("td", {}, e.error || e.detail || "")));
  }
}

// draw plots calls/s of every version of module m seen in the last
// HISTORY seconds (or since the page opened, if that is shorter).
function draw(canvas, m, now) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 4;
  ctx.clearRect(0, 0, w, h);
  if (firstSeen === null) firstSeen = now;
  const from = Math.max(now - HISTORY * 1000, Math.min(firstSeen, now - 10000));
  const span = now - from;
  let maxRate = 1;
  const keys = Object.keys(series).filter(k => k.startsWith(m.name + "/"));
  for (const k of keys) {
    series[k] = series[k].filter(p => p.t >= from);
    for (const p of series[k]) maxRate = Math.max(maxRate, p.rate);
  }
  ctx.strokeStyle = "#dde1e6";
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  ctx.fillStyle = "#4b5561";
  ctx.font = "11px system-ui";
  ctx.fillText(maxRate.toFixed(0) + " calls/s", pad + 2, 12);
  const xOf = t => pad + (w - 2 * pad) * (t - from) / span;
  const marks = (swaps[m.name] || []).filter(s => s.t >= from);
  swaps[m.name] = marks;
  ctx.setLineDash([4, 3]);
  for (const s of marks) {
    ctx.strokeStyle = "#9aa4af";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(xOf(s.t), 16);
    ctx.lineTo(xOf(s.t), h - pad);
    ctx.stroke();
    const text = "swap " + s.label;
    const tw = ctx.measureText(text).width;
    ctx.fillText(text, xOf(s.t) + 3 + tw > w ? xOf(s.t) - 3 - tw : xOf(s.t) + 3, 26);
  }
  ctx.setLineDash([]);
  let lines = 0;
  for (const k of keys) {
    const pts = series[k];
    if (pts.length === 0) continue;
    if (pts.length > 1) lines++;
    ctx.strokeStyle = colorOf[k];
    ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((p, i) => {
      const x = xOf(p.t);
      const y = h - pad - (h - 2 * pad - 14) * p.rate / maxRate;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  // For tests and scripts: what the chart shows.
  canvas.dataset.lines = String(lines);
  canvas.dataset.swaps = String(marks.length);
}

async function poll() {
  try {
    const res = await fetch("status.json", { cache: "no-store" });
    if (res.ok) {
      const snap = await res.json();
      render(snap);
      previous = snap;
    }
  } catch (e) {
    document.getElementById("updated").textContent = "status unavailable: " + e;
  }
  setTimeout(poll, 1000);
}
poll();
