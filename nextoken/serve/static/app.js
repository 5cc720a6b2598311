// nextoken serve: the pages. Each page is a function of the JSON API (docs/serve.md); nothing here talks to
// anything but this origin.
"use strict";

const POLL_MS = 2000;
const $ = (sel, root = document) => root.querySelector(sel);
const app = document.getElementById("app");
const params = new URLSearchParams(location.search);
let timers = [];

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid.nodeType ? kid : String(kid));
  return e;
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify(body) };
  const r = await fetch(path, init);
  let data;
  try { data = await r.json(); } catch (e) { throw new Error(`${path}: ${r.status} ${r.statusText}`); }
  if (!r.ok) throw new Error(data.error || `${r.status}`);
  return data;
}

function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); $("#status").textContent = "live · " + new Date().toLocaleTimeString(); }
    catch (e) { $("#status").textContent = e.message; }
    finally { busy = false; }
  };
  tick();
  timers.push(setInterval(tick, ms));
}

function errorBox(e) { return h("p", { class: "err" }, e.message || String(e)); }
const fmt = NT.fmt;
const pct = v => (v === null || v === undefined) ? "–" : (100 * v).toFixed(1) + "%";
const stateTag = s => h("span", { class: "state " + s }, s);

// ---- run and checkpoint pickers, shared by the probing pages ----
async function runPicker(onChange) {
  const data = await api("/api/runs");
  const runs = data.runs.filter(r => r.checkpoints && r.checkpoints.length);
  const runSel = h("select", { id: "run" });
  const stepSel = h("select", { id: "step" });
  for (const r of runs) runSel.append(h("option", { value: r.id }, r.id));
  if (params.get("run") && runs.some(r => r.id === params.get("run"))) runSel.value = params.get("run");
  const fillSteps = () => {
    const r = runs.find(x => x.id === runSel.value);
    stepSel.innerHTML = "";
    for (const s of (r ? r.checkpoints : []).slice().reverse()) stepSel.append(h("option", { value: s }, "step " + s));
    if (params.get("step")) stepSel.value = params.get("step");
  };
  fillSteps();
  runSel.addEventListener("change", () => { fillSteps(); onChange && onChange(); });
  stepSel.addEventListener("change", () => onChange && onChange());
  const box = h("span", {}, h("label", {}, "run "), runSel, " ", h("label", {}, "checkpoint "), stepSel);
  box.get = () => ({ run: runSel.value, step: stepSel.value ? Number(stepSel.value) : null });
  box.empty = runs.length === 0;
  return box;
}

// ---- runs ----
async function pageRuns() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Runs"));
  const body = h("div");
  app.append(body);
  every(POLL_MS * 1.5, async () => {
    const data = await api("/api/runs");
    const table = h("table", { id: "runs" },
      h("tr", {}, ["run", "state", "shape", "step", "train loss", "best val", "bits/byte", "tokens/s", "MFU",
        "last incident"].map((t, i) => h("th", { class: i >= 3 && i <= 8 ? "num" : "" }, t))));
    for (const r of data.runs) {
      if (r.error) {
        table.append(h("tr", {}, h("td", {}, r.id), h("td", {}, stateTag("unreadable")),
          h("td", { colspan: 8, class: "err" }, r.error)));
        continue;
      }
      const inc = r.last_incident;
      const tr = h("tr", { class: "click", "data-run": r.id, title: r.state_why,
        onclick: () => { location.href = "/run?run=" + encodeURIComponent(r.id); } },
        h("td", {}, h("a", { href: "/run?run=" + encodeURIComponent(r.id) }, r.id)),
        h("td", {}, stateTag(r.state)), h("td", { class: "muted" }, r.shape),
        h("td", { class: "num" }, `${r.step} / ${r.max_steps}`), h("td", { class: "num" }, fmt(r.train_loss)),
        h("td", { class: "num" }, fmt(r.best_val_loss)), h("td", { class: "num" }, fmt(r.best_val_bpb)),
        h("td", { class: "num" }, fmt(r.tokens_per_s, 3)), h("td", { class: "num" }, pct(r.mfu)),
        h("td", { class: "muted" }, inc ? `${inc.type} @ ${inc.step}` : ""));
      table.append(tr);
    }
    body.innerHTML = "";
    if (!data.runs.length) body.append(h("p", { class: "muted" },
      `No runs under ${Object.values(data.roots).join(", ")} yet; they appear here as soon as nextoken train writes them.`));
    else body.append(table);
    if (data.sweeps.length) {
      body.append(h("h2", {}, "Sweeps"));
      for (const s of data.sweeps) body.append(h("p", {}, h("a", { href: "/scaling?sweep=" + encodeURIComponent(s.id) }, s.id)));
    }
  });
}

// ---- one run ----
const CURVES = [
  ["loss (nats/token)", ["train_loss", "val_loss"]], ["val perplexity", ["val_ppl"]], ["val bits per byte", ["val_bpb"]],
  ["learning rate", ["lr"]], ["gradient norm", ["grad_norm"]], ["tokens/s", ["tokens_per_s"]], ["MFU", ["mfu"]],
];
const X_LABEL = { step: "step", tokens: "tokens", time: "seconds" };

function seg(name, options, value, onChange) {
  const box = h("span", { class: "seg", id: name });
  for (const [v, label] of options) {
    const b = h("button", { "data-v": v, class: v === value ? "on" : "" }, label);
    b.addEventListener("click", () => {
      box.querySelectorAll("button").forEach(x => x.classList.toggle("on", x === b));
      onChange(v);
    });
    box.append(b);
  }
  return box;
}

async function pageRun() {
  const id = params.get("run");
  app.innerHTML = "";
  if (!id) { app.append(h("p", {}, "No run given; pick one on ", h("a", { href: "/" }, "the runs page"), ".")); return; }
  let xAxis = params.get("x") || "step", logY = params.get("log") !== "0", version = -1, last = null;
  const head = h("div"), charts = h("div", { class: "grid", id: "charts" }), side = h("div");
  const redraw = () => drawCurves(charts, last, xAxis, logY);
  app.append(head, h("div", { class: "controls" },
    h("label", {}, "x"), seg("xaxis", [["step", "steps"], ["tokens", "tokens"], ["time", "wall-clock"]], xAxis,
      v => { xAxis = v; version = -1; }),
    h("label", {}, "y"), seg("yaxis", [["log", "log"], ["lin", "linear"]], logY ? "log" : "lin",
      v => { logY = v === "log"; redraw(); }),
    h("a", { href: "/next?run=" + encodeURIComponent(id) }, "next token →"),
    h("a", { href: "/surprise?run=" + encodeURIComponent(id) }, "surprise →"),
    h("a", { href: "/sample?run=" + encodeURIComponent(id) }, "sample →")),
  h("div", { class: "layout" }, charts, side));
  let configShown = false;
  every(POLL_MS, async () => {
    const run = await api("/api/run?run=" + encodeURIComponent(id));
    head.innerHTML = "";
    head.append(h("h1", {}, run.name, " ", stateTag(run.state)),
      h("p", { class: "muted" }, `${run.state_why} · ${run.shape} · step ${run.step} / ${run.max_steps} · `,
        `${fmt(run.tokens)} tokens · train loss ${fmt(run.train_loss)} · best val ${fmt(run.best_val_loss)} `,
        `(${fmt(run.best_val_bpb)} bits/byte)`));
    if (!configShown) {
      configShown = true;
      const t = h("table", { class: "config mono" });
      for (const [section, fields] of Object.entries(run.config)) {
        t.append(h("tr", {}, h("th", { colspan: 2 }, section)));
        for (const [k, v] of Object.entries(fields)) t.append(h("tr", {}, h("td", {}, k), h("td", {}, JSON.stringify(v))));
      }
      side.append(h("h2", {}, "Resolved config"), h("div", { class: "card" }, t));
    }
    if (run.version === version) return;  // nothing new in metrics.jsonl
    last = await api(`/api/curves?run=${encodeURIComponent(id)}&x=${xAxis}`);
    version = last.version;
    redraw();
  });
}

function drawCurves(box, data, xAxis, logY) {
  if (!data) return;
  box.innerHTML = "";
  const incidents = data.events.filter(e => e.type !== "checkpoint" && e.type !== "compile");
  for (const [title, names] of CURVES) {
    const series = names.filter(n => data.series[n]).map((n, i) => ({ name: n.replace("_", " "),
      x: data.series[n].x, y: data.series[n].y, color: NT.COLORS[i], dots: n.startsWith("val") }));
    if (!series.length) continue;
    const div = h("div", { class: "card", "data-chart": names[0] });
    box.append(div);
    const lossy = names[0].includes("loss") || names[0] === "val_ppl" || names[0] === "grad_norm";
    NT.chart(div, { title, series, events: names[0] === "train_loss" ? data.events : incidents,
      logY: logY && (lossy || names[0] === "lr"), xLabel: X_LABEL[xAxis] });
  }
}

// ---- router ----
const PAGES = { "/": pageRuns, "/run": pageRun };
(function route() {
  const path = location.pathname;
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("on", a.dataset.page === path
    || (path === "/run" && a.dataset.page === "/")));
  const page = PAGES[path] || NT.pages && NT.pages[path];
  if (!page) { app.innerHTML = ""; app.append(errorBox(new Error("no page " + path))); return; }
  Promise.resolve(page()).catch(e => { app.append(errorBox(e)); });
})();
