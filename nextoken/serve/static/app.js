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
const showTok = t => JSON.stringify(t).slice(1, -1).replace(/ /g, "\u2423");  // a space shows as ␣
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

// ---- next token ----
// The server returns the top-N logits, the log-sum-exp of all the others (exact at T = 1) and a histogram of
// them; any temperature is computed here, with no round trip per tick of the slider.
function distribution(d, T) {
  const a = d.top.map(t => t.logit / T);
  const hist = d.rest_hist, b = hist.mean.map(m => m / T);
  let logCorr = 0;  // makes the binned rest exact at T = 1
  if (d.lse_rest !== null && hist.count.length) {
    const at1 = logSumExp(hist.mean.map((m, i) => m + Math.log(hist.count[i])));
    logCorr = d.lse_rest - at1;
  }
  const restTerms = b.map((v, i) => v + Math.log(hist.count[i]) + logCorr / T);
  const logZ = logSumExp(a.concat(restTerms));
  const p = a.map(v => Math.exp(v - logZ));
  let H = 0;
  for (const v of a) { const lp = v - logZ; H -= Math.exp(lp) * lp; }
  b.forEach((v, i) => { const lp = v + logCorr / T - logZ; H -= hist.count[i] * Math.exp(lp) * lp; });
  return { p, logZ, H };
}

function logSumExp(xs) {
  if (!xs.length) return -Infinity;
  const m = Math.max(...xs);
  return m + Math.log(xs.reduce((s, x) => s + Math.exp(x - m), 0));
}

async function pageNext() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Next token"));
  let data = null, truth = null;
  const picker = await runPicker(() => ask());
  if (picker.empty) { app.append(h("p", { class: "muted" }, "No run with a checkpoint yet.")); return; }
  const prompt = h("textarea", { id: "prompt", rows: 3, cols: 70, placeholder: "type a prompt" },
    params.get("prompt") || "def alpha");
  const target = h("input", { type: "text", id: "target", size: 12, placeholder: "true next token" });
  const topN = h("select", { id: "top" }, [10, 20, 50].map(n => h("option", { value: n }, n)));
  topN.value = "20";
  const temp = h("input", { type: "range", id: "temp", min: -3, max: 1.1, step: 0.01, value: 0 });  // log2 T
  const tempLabel = h("b", { id: "temp-value" }, "1.00");
  const tokens = h("div", { class: "tokens", id: "prompt-tokens" });
  const readout = h("div", { class: "readout" });
  const bars = h("div", { class: "bars", id: "bars" });
  const info = h("p", { class: "muted", id: "next-info" });
  app.append(h("div", { class: "controls" }, picker, h("label", {}, "top"), topN),
    prompt,
    h("div", { class: "controls" }, h("label", {}, "true next token "), target,
      h("label", {}, "temperature "), temp, tempLabel,
      h("button", { class: "ghost", onclick: () => { temp.value = 0; render(); } }, "T = 1")),
    h("h2", {}, "The prompt as the model sees it"), tokens, info, readout, bars,
    h("p", { class: "note" }, "Temperature divides the logits before the softmax: it reshapes what sampling draws ",
      "from. The loss is always measured at temperature 1, so the cross-entropy of the true token does not change ",
      "as you drag the slider. e^H is the number of equally likely tokens with the same entropy: the model's ",
      "\u201ceffective choices\u201d. Click a bar to make it the true token."));

  let timer = null;
  const askSoon = () => { clearTimeout(timer); timer = setTimeout(ask, 250); };
  prompt.addEventListener("input", askSoon);
  target.addEventListener("input", () => { truth = null; askSoon(); });
  topN.addEventListener("change", ask);
  temp.addEventListener("input", render);

  async function ask() {
    const sel = picker.get();
    try {
      data = await api("/api/next", { run: sel.run, step: sel.step, prompt: prompt.value, top: Number(topN.value),
        target: target.value || null });
    } catch (e) { bars.innerHTML = ""; bars.append(errorBox(e)); return; }
    truth = data.target ? data.target.id : truth;
    tokens.innerHTML = "";
    for (const t of data.prompt_tokens) tokens.append(h("span", { class: "tok", title: "id " + t.id }, showTok(t.text)));
    info.textContent = `${data.prompt_tokens.length} tokens · ${data.checkpoint} · vocabulary ${data.vocab_size}`;
    render();
  }

  function render() {
    if (!data) return;
    const T = Math.pow(2, Number(temp.value));
    tempLabel.textContent = T.toFixed(2);
    const dist = distribution(data, T), at1 = distribution(data, 1);
    const rows = data.top.map((t, i) => ({ ...t, p: dist.p[i], rank: i + 1 }));
    if (data.target && !rows.some(r => r.id === data.target.id)) {
      rows.push({ id: data.target.id, text: data.target.text, logit: data.target.logit, rank: data.target.rank,
        p: Math.exp(data.target.logit / T - dist.logZ) });
    }
    bars.innerHTML = "";
    for (const r of rows) {
      const nl = -Math.log(r.p);
      const row = h("div", { class: "bar" + (r.id === truth ? " truth" : ""), "data-id": r.id,
        title: `rank ${r.rank} · logit ${r.logit.toFixed(3)} · -log p at T=1: ${(at1.logZ - r.logit).toFixed(3)}`,
        onclick: () => { truth = r.id; target.value = ""; render(); } },
        h("span", { class: "label" }, (r.rank > data.top.length ? `#${r.rank} ` : "") + showTok(r.text)),
        h("span", { class: "track" }, h("span", { class: "fill", style: null })),
        h("span", { class: "p" }, r.p.toFixed(3)), h("span", { class: "nl" }, nl.toFixed(2)));
      row.querySelector(".fill").style.width = (100 * r.p).toFixed(2) + "%";
      bars.append(row);
    }
    bars.prepend(h("div", { class: "bar muted" }, h("span", { class: "label" }, "token"), h("span", {}, "p at T = " + T.toFixed(2)),
      h("span", { class: "p" }, "p"), h("span", { class: "nl" }, "\u2212log p")));
    const tr = rows.find(r => r.id === truth);
    readout.innerHTML = "";
    const card = (title, value, sub, id) => h("div", { class: "card", id }, h("small", {}, title), h("b", {}, value), h("small", {}, sub));
    readout.append(
      card("entropy H (temperature-scaled)", dist.H.toFixed(3) + " nats", `at T = 1: ${at1.H.toFixed(3)}`, "entropy"),
      card("effective choices e^H", Math.exp(dist.H).toFixed(1), `at T = 1: ${Math.exp(at1.H).toFixed(1)}`, "eh"),
      tr ? card("loss of the true token (T = 1)", (at1.logZ - tr.logit).toFixed(3) + " nats",
        `\u2212log p(${JSON.stringify(tr.text)}) \u2014 unchanged by temperature`, "loss")
        : card("loss of the true token (T = 1)", "\u2013", "type or click the true next token", "loss"),
      tr ? card("\u2212log p at this temperature", (dist.logZ - tr.logit / T).toFixed(3), "sampling only, not the loss", "nl-t")
        : card("\u2212log p at this temperature", "\u2013", "", "nl-t"));
  }
  ask();
}

// ---- router ----
const PAGES = { "/": pageRuns, "/run": pageRun, "/next": pageNext };
(function route() {
  const path = location.pathname;
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("on", a.dataset.page === path
    || (path === "/run" && a.dataset.page === "/")));
  const page = PAGES[path] || NT.pages && NT.pages[path];
  if (!page) { app.innerHTML = ""; app.append(errorBox(new Error("no page " + path))); return; }
  Promise.resolve(page()).catch(e => { app.append(errorBox(e)); });
})();
