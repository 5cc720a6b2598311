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
const fmtP = p => p >= 0.001 ? p.toFixed(3) : p > 0 ? p.toExponential(1) : "0";  // never "p 0.000"
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
  const trained = h("div", { class: "muted trained-on", id: "trained-on" });
  const showTrained = () => {
    const r = runs.find(x => x.id === runSel.value);
    trained.textContent = r && r.trained_on ? "trained on: " + r.trained_on : "";
  };
  showTrained();
  runSel.addEventListener("change", showTrained);
  const box = h("span", {}, h("label", {}, "run "), runSel, " ", h("label", {}, "checkpoint "), stepSel);
  box.get = () => ({ run: runSel.value, step: stepSel.value ? Number(stepSel.value) : null });
  box.empty = runs.length === 0;
  box.runs = runs; box.runSel = runSel; box.stepSel = stepSel; box.trained = trained;
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
      h("tr", {}, ["run", "state", "shape", "step", "train loss (EMA)", "best val", "bits/byte", "tokens/s", "MFU",
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
        h("td", { class: "num" }, `${r.step} / ${r.max_steps}`), h("td", { class: "num", title: `last batch: ${fmt(r.train_loss_last)}` }, fmt(r.train_loss)),
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
      v => { xAxis = v; version = -1; refresh(); }),
    h("label", {}, "y"), seg("yaxis", [["log", "log"], ["lin", "linear"]], logY ? "log" : "lin",
      v => { logY = v === "log"; redraw(); }),
    h("a", { href: "/next?run=" + encodeURIComponent(id) }, "next token →"),
    h("a", { href: "/inspect?run=" + encodeURIComponent(id) }, "inspect →"),
    h("a", { href: "/surprise?run=" + encodeURIComponent(id) }, "surprise →"),
    h("a", { href: "/sample?run=" + encodeURIComponent(id) }, "sample →")),
  h("div", { class: "layout" }, charts, side));
  let configShown = false;
  const refresh = async () => {
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
    const axis = xAxis;
    const curves = await api(`/api/curves?run=${encodeURIComponent(id)}&x=${axis}`);
    if (axis !== xAxis) return;  // the axis changed while this was in flight
    last = curves;
    version = last.version;
    redraw();
  };
  every(POLL_MS, refresh);
}

function drawCurves(box, data, xAxis, logY) {
  if (!data) return;
  box.innerHTML = "";
  const incidents = data.events.filter(e => e.type !== "checkpoint" && e.type !== "compile");
  for (const [title, names] of CURVES) {
    const series = names.filter(n => data.series[n]).map((n, i) => ({ name: n.replaceAll("_", " "),
      x: data.series[n].x, y: data.series[n].y, color: NT.COLORS[i], dots: n.startsWith("val") }));
    if (!series.length) continue;
    const div = h("div", { class: "card", "data-chart": names[0] });
    box.append(div);
    const lossy = names[0].includes("loss") || names[0] === "val_ppl" || names[0] === "grad_norm";
    NT.chart(div, { title, series, events: names[0] === "train_loss" ? data.events : incidents,
      logY: logY && (lossy || names[0] === "lr"), xLabel: X_LABEL[xAxis] });
  }
  // --train.eval_tasks: per task, its accuracies and the bits per byte of its correct answers (docs/eval.md)
  for (const task of taskNames(data)) {
    for (const [title, keys] of [[`task ${task}: accuracy`, ["acc", "acc_norm"]], [`task ${task}: bits per byte`, ["bpb"]]]) {
      const series = keys.filter(k => data.series[`task/${task}/${k}`]).map((k, i) => {
        const s = data.series[`task/${task}/${k}`];
        return { name: k.replace("_", " "), x: s.x, y: s.y, color: NT.COLORS[i + 2], dots: true };
      });
      if (!series.length) continue;
      const div = h("div", { class: "card", "data-chart": `task/${task}/${keys[0]}` });
      box.append(div);
      NT.chart(div, { title, series, events: incidents, xLabel: X_LABEL[xAxis] });
    }
  }
  // a mixed run: one curve per source of its mix (val_loss:NAME), beside the mixture's own val loss
  for (const [title, base] of [["val loss per source", "val_loss"], ["val bits per byte per source", "val_bpb"]]) {
    const names = Object.keys(data.series).filter(n => n.startsWith(base + ":"));
    if (!names.length) continue;
    const series = [base, ...names].filter(n => data.series[n]).map((n, i) => ({
      name: n === base ? "mix" : n.slice(base.length + 1), x: data.series[n].x, y: data.series[n].y,
      color: NT.COLORS[i % NT.COLORS.length], dots: true }));
    const div = h("div", { class: "card", "data-chart": base + "_by_source" });
    box.append(div);
    NT.chart(div, { title, series, events: incidents, logY: logY && base === "val_loss", xLabel: X_LABEL[xAxis] });
  }
}

function taskNames(...curves) {
  const names = new Set();
  for (const c of curves) for (const k of Object.keys(c.series)) if (k.startsWith("task/")) names.add(k.split("/")[1]);
  return [...names].sort();
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
  const scoredBox = h("div", { class: "note", id: "target-scored" });
  const example = (p, t) => h("button", { class: "ghost", onclick: () => { prompt.value = p; target.value = t; truth = null; ask(); } },
    JSON.stringify(p + "…"));
  app.append(h("div", { class: "controls" }, picker, h("label", {}, "top"), topN), picker.trained,
    h("div", { class: "controls" }, h("label", {}, "examples"), example("The cat sat on the", "mat"),
      example("for i in range(", "10"), example("import os\nimport", "sys")),
    prompt,
    h("div", { class: "controls" }, h("label", {}, "true next text "), target,
      h("label", {}, "temperature "), temp, tempLabel,
      h("button", { class: "ghost", onclick: () => { temp.value = 0; render(); } }, "T = 1")),
    h("h2", {}, "The prompt as the model sees it"), tokens, info, scoredBox, readout, bars,
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
    scoredBox.innerHTML = "";
    const tg = data.target;
    if (tg) {
      const pieces = t => t.tokens.map(x => `${showTok(x.text)} ${x.neg_log_p.toFixed(2)}`).join(" + ");
      scoredBox.append(`scored “${showTok(tg.scored)}” as ${tg.tokens_in_target} token${tg.tokens_in_target > 1 ? "s" : ""}: `,
        h("b", {}, `${tg.neg_log_p_total.toFixed(3)} nats`), ` (${pieces(tg)}; each token from the prompt and the true tokens before it). The bars show its first token.`);
      if (tg.with_space) {
        const w = tg.with_space;
        scoredBox.append(h("br"), `With the leading space this tokenizer glues to a word, “${showTok(w.scored)}” costs `,
          h("b", {}, `${w.neg_log_p_total.toFixed(3)} nats`), ` (first token rank #${w.rank}) `,
          h("button", { class: "ghost", id: "use-space", onclick: () => { target.value = w.scored; truth = null; ask(); } }, "score that instead"));
      }
    }
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

// ---- surprise ----
function lossColor(loss, scale) {
  const t = Math.max(0, Math.min(1, loss / scale));
  return `rgba(214, 40, 40, ${(0.05 + 0.8 * t).toFixed(3)})`;
}

async function pageSurprise() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Surprise"));
  const picker = await runPicker(() => loadDocs());
  if (picker.empty) { app.append(h("p", { class: "muted" }, "No run with a checkpoint yet.")); return; }
  const text = h("textarea", { id: "text", rows: 6, cols: 90, placeholder: "paste a text" },
    "def total_count(items, value):\n    return items + value\n");
  const docs = h("select", { id: "doc" }, h("option", { value: "" }, "— or a val document —"));
  const out = h("div", { id: "surprise" });
  const go = h("button", { id: "score", onclick: () => score() }, "Score");
  app.append(h("div", { class: "controls" }, picker, docs), picker.trained, text, h("div", { class: "controls" }, go,
    h("span", { class: "note" }, "Teacher forcing: every token is scored at once, from the true text before it (not from what the model would have written). Each is shaded by its loss, \u2212log p; hover for what the model expected instead.")), out);
  docs.addEventListener("change", () => { if (docs.value !== "") score(); });
  text.addEventListener("input", () => { docs.value = ""; });  // your own text now: Score scores it

  async function loadDocs() {
    docs.length = 1;
    try {
      const d = await api("/api/docs?run=" + encodeURIComponent(picker.get().run));
      for (const doc of d.documents) docs.append(h("option", { value: doc.index }, `#${doc.index}: ${doc.preview.replace(/\s+/g, " ").slice(0, 60)}`));
    } catch (e) { docs.append(h("option", { value: "", disabled: true }, e.message)); }
  }

  async function score() {
    const sel = picker.get();
    const body = { run: sel.run, step: sel.step };
    if (docs.value !== "") body.doc = Number(docs.value); else body.text = text.value;
    out.innerHTML = "";
    out.append(h("p", { class: "muted" }, "scoring…"));
    let d;
    try { d = await api("/api/surprise", body); } catch (e) { out.innerHTML = ""; out.append(errorBox(e)); return; }
    out.innerHTML = "";
    if (body.doc !== undefined) text.value = d.tokens.map(t => t.text).join("");  // the document, to edit
    const card = (title, value, id, sub) => h("div", { class: "card", id }, h("small", {}, title), h("b", {}, value),
      sub ? h("small", {}, sub) : null);
    const bpt = d.loss / Math.LN2;
    out.append(h("div", { class: "readout" },
      card("loss (cross-entropy)", d.loss.toFixed(3) + " nats/token", "s-loss", "mean \u2212log p over the tokens"),
      card("perplexity", d.ppl.toFixed(2), "s-ppl", `= e^loss = e^${d.loss.toFixed(3)}`),
      card("bits per byte", d.bits_per_byte.toFixed(3), "s-bpb",
        `= loss / ln 2 \u00d7 tokens / bytes = ${bpt.toFixed(3)} \u00d7 ${d.n_tokens}/${d.n_bytes}`),
      card("tokens / bytes", `${d.n_tokens} / ${d.n_bytes}${d.truncated ? " (first 2048 tokens)" : ""}`, "s-n")));
    const scale = Math.max(2 * d.loss, 1);
    const box = h("div", { class: "text-surprise card" });
    for (const t of d.tokens) {
      const span = h("span", { "data-loss": t.loss.toFixed(3) }, t.text);
      span.style.background = lossColor(t.loss, scale);
      const alts = t.alternatives.map(a => `  ${showTok(a.text).padEnd(6)} p ${fmtP(a.p)}`).join("\n");
      const tipText = `${showTok(t.text)}: \u2212log p = ${t.loss.toFixed(3)} nats (p ${fmtP(Math.exp(-t.loss))})\nexpected:\n${alts}`;
      span.addEventListener("mousemove", e => NT.tip(e, tipText));
      span.addEventListener("mouseleave", e => NT.tip(e, null));
      box.append(span);
    }
    out.append(box, h("p", { class: "note" }, `Shading: 0 nats (white) to ${scale.toFixed(1)} nats and above (red).`));
  }
  loadDocs();
  score();
}

// ---- sample ----
async function pageSample() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Sample"));
  const picker = await runPicker();
  if (picker.empty) { app.append(h("p", { class: "muted" }, "No run with a checkpoint yet.")); return; }
  const prompt = h("textarea", { id: "sprompt", rows: 3, cols: 80 }, "def ");
  const num = (id, value, attrs = {}) => h("input", { type: "number", id, value, style: null, ...attrs });
  const temp = num("stemp", 0.8, { step: 0.05, min: 0 }), topK = num("topk", 50, { min: 1 }),
    topP = num("topp", "", { step: 0.05, min: 0, max: 1, placeholder: "off" }), n = num("ntok", 300, { min: 1, max: 2000 }),
    seed = num("seed", "", { placeholder: "random" });
  const out = h("div", { class: "sample-out card", id: "sample-out" });
  const meta = h("p", { class: "muted", id: "sample-meta" });
  const go = h("button", { id: "generate" }, "Generate");
  let controller = null;
  go.addEventListener("click", async () => {
    if (controller) { controller.abort(); return; }
    const sel = picker.get();
    const v = (el, f = Number) => el.value === "" ? null : f(el.value);
    const body = { run: sel.run, step: sel.step, prompt: prompt.value, temperature: v(temp), top_k: v(topK),
      top_p: v(topP), max_new_tokens: v(n), seed: v(seed) };
    out.innerHTML = ""; out.append(h("span", { class: "prompt" }, prompt.value));
    const gen = h("span"); out.append(gen);
    controller = new AbortController(); go.textContent = "Stop";
    try {
      const r = await fetch("/api/sample", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal });
      if (!r.ok) throw new Error((await r.json()).error);
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "", count = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
          if (line.seed !== undefined) meta.textContent = `seed ${line.seed} (enter it to repeat this sample) · ${line.checkpoint}`;
          if (line.text !== undefined) { gen.textContent += line.text; count++; }
          if (line.done) meta.textContent += ` · ${count} pieces`;
        }
      }
    } catch (e) { if (e.name !== "AbortError") out.append(errorBox(e)); }
    finally { controller = null; go.textContent = "Generate"; }
  });
  app.append(h("div", { class: "controls" }, picker), picker.trained, prompt,
    h("div", { class: "controls" }, h("label", {}, "temperature"), temp, h("label", {}, "top-k"), topK,
      h("label", {}, "top-p"), topP, h("label", {}, "tokens"), n, h("label", {}, "seed"), seed, go), meta, out);
}

// ---- compare ----
const COMPARE_CURVES = [["train loss", "train_loss"], ["val loss", "val_loss"], ["val bits per byte", "val_bpb"],
  ["learning rate", "lr"], ["gradient norm", "grad_norm"]];

async function pageCompare() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Compare"));
  const data = await api("/api/runs");
  const runs = data.runs.filter(r => !r.error);
  const chosen = new Set(params.getAll("run").length ? params.getAll("run") : runs.slice(0, 2).map(r => r.id));
  let xAxis = "step", logY = true;
  const pick = h("div", { class: "controls", id: "pick" });
  for (const r of runs) {
    const cb = h("input", { type: "checkbox", value: r.id, checked: chosen.has(r.id) ? "" : null });
    cb.addEventListener("change", () => { cb.checked ? chosen.add(r.id) : chosen.delete(r.id); draw(); });
    pick.append(h("label", {}, cb, " " + r.id));
  }
  const charts = h("div", { class: "grid", id: "compare-charts" }), diff = h("div", { id: "diff" });
  app.append(pick, h("div", { class: "controls" },
    h("label", {}, "x"), seg("cx", [["step", "steps"], ["tokens", "tokens"], ["time", "wall-clock"]], xAxis, v => { xAxis = v; draw(); }),
    h("label", {}, "y"), seg("cy", [["log", "log"], ["lin", "linear"]], "log", v => { logY = v === "log"; draw(); })),
    charts, h("h2", {}, "Config differences"), diff);

  async function draw() {
    const ids = runs.map(r => r.id).filter(id => chosen.has(id));
    history.replaceState(null, "", "/compare?" + ids.map(id => "run=" + encodeURIComponent(id)).join("&"));
    charts.innerHTML = ""; diff.innerHTML = "";
    if (!ids.length) { charts.append(h("p", { class: "muted" }, "Pick runs to overlay.")); return; }
    const curves = await Promise.all(ids.map(id => api(`/api/curves?run=${encodeURIComponent(id)}&x=${xAxis}`)));
    const tasks = taskNames(...curves).map(t => [`task ${t}: accuracy`, `task/${t}/acc`]);
    // runs with different mixes: each source's val loss overlaid, for every source any of the runs trains on
    const bySource = [...new Set(curves.flatMap(c => Object.keys(c.series).filter(n => n.startsWith("val_loss:"))))];
    const sources = bySource.map(n => ["val loss on " + n.slice(9), n]);
    for (const [title, name] of [...COMPARE_CURVES, ...tasks, ...sources]) {
      const series = [];
      curves.forEach((c, i) => { if (c.series[name]) series.push({ name: ids[i], x: c.series[name].x, y: c.series[name].y,
        color: NT.COLORS[i % NT.COLORS.length], dots: name.startsWith("val") || name.startsWith("task/") }); });
      if (!series.length) continue;
      const div = h("div", { class: "card", "data-chart": name });
      charts.append(div);
      NT.chart(div, { title, series, logY: logY && !name.startsWith("val_bpb") && !name.startsWith("task/"), xLabel: X_LABEL[xAxis] });
    }
    const cmp = await api("/api/compare?" + ids.map(id => "run=" + encodeURIComponent(id)).join("&"));
    const t = h("table", { class: "mono diff" }, h("tr", {}, h("th", {}, "field"), ids.map(id => h("th", {}, id))));
    for (const row of cmp.diff) t.append(h("tr", {}, h("td", {}, row.field), ids.map(id => h("td", {}, JSON.stringify(row.values[id])))));
    diff.append(cmp.diff.length ? h("div", { class: "scroll" }, t) : h("p", { class: "muted" }, "Same config."));
  }
  draw();
}

// ---- scaling ----
async function pageScaling() {
  app.innerHTML = "";
  app.append(h("h1", {}, "Scaling"));
  const runs = await api("/api/runs");
  const lawNames = (await api("/api/laws")).laws;
  const sweepSel = h("select", { id: "sweep" }, h("option", { value: "" }, "— no sweep —"),
    runs.sweeps.map(s => h("option", { value: s.id }, s.id)));
  if (params.get("sweep")) sweepSel.value = params.get("sweep");
  else if (runs.sweeps.length) sweepSel.value = runs.sweeps[0].id;
  const view = h("div", { id: "sweep-view" });
  const lawSel = h("select", { id: "law" });
  const input = (id, ph) => h("input", { type: "text", id, placeholder: ph, size: 10 });
  const C = input("p-flops", "e.g. 1e21"), N = input("p-params", "e.g. 7e9"), D = input("p-tokens", "e.g. 1.4e12"),
    tps = input("p-tps", "optional");
  C.value = "1e21";
  const planOut = h("div", { id: "plan-out" });
  app.append(h("div", { class: "controls" }, h("label", {}, "sweep"), sweepSel), view,
    h("h2", {}, "Plan a run"),
    h("div", { class: "controls" }, h("label", {}, "law"), lawSel, h("label", {}, "compute C (FLOPs)"), C,
      h("label", {}, "parameters N"), N, h("label", {}, "tokens D"), D, h("label", {}, "tokens/s"), tps,
      h("button", { id: "plan", onclick: () => plan() }, "Plan")),
    h("p", { class: "note" }, "One of C, N, D gives the compute-optimal others; two give the third (C = 6ND, or the sweep's exact FLOP count) and what that allocation costs against the optimum."),
    planOut);
  let sweepData = null;

  function fillLaws() {
    lawSel.innerHTML = "";
    if (sweepData && sweepData.has_fit_json) lawSel.append(h("option", { value: "fit" }, "this sweep's fit"));
    for (const l of lawNames) lawSel.append(h("option", { value: l }, l));
  }

  async function loadSweep() {
    view.innerHTML = ""; sweepData = null;
    if (sweepSel.value) {
      try { sweepData = await api("/api/sweep?sweep=" + encodeURIComponent(sweepSel.value)); }
      catch (e) { view.append(errorBox(e)); }
    }
    fillLaws();
    if (!sweepData) { if (!runs.sweeps.length) view.append(h("p", { class: "muted" }, "No sweep under the served directories (nextoken sweep --out DIR writes one); the calculator below uses the published laws.")); return; }
    const d = sweepData, f = d.fit;
    view.append(h("p", { class: "muted" }, `${d.runs_finished} of ${d.runs_planned} runs finished · fit: ${d.fit_source || "none yet (needs 5 finished runs)"}`));
    const grid = h("div", { class: "grid" });
    view.append(grid);
    const series = d.profiles.map((g, i) => ({ name: "C \u2248 " + fmt(g[0].budget || g[0].flops, 2), x: g.map(p => p.params),
      y: g.map(p => p.loss), color: NT.COLORS[i % NT.COLORS.length], dots: true }));
    const profs = (f && f.approach2 && f.approach2.profiles) || [];
    profs.forEach((pr, i) => {
      if (!pr.parabola) return;
      const xs = d.profiles[i] ? d.profiles[i].map(p => Math.log(p.params)) : [];
      if (!xs.length) return;
      const lo = Math.min(...xs), hi = Math.max(...xs), px = [], py = [];
      for (let k = 0; k <= 40; k++) { const x = lo + (hi - lo) * k / 40; px.push(Math.exp(x)); py.push(pr.parabola[0] * x * x + pr.parabola[1] * x + pr.parabola[2]); }
      series.push({ name: i === 0 ? "fitted parabolas" : "", x: px, y: py, color: "#adb5bd" });
    });
    const minima = profs.filter(p => p.params_opt);
    if (minima.length) series.push({ name: "minima", x: minima.map(p => p.params_opt), y: minima.map(p => p.loss_opt), color: "#c5221f", dots: true, line: false });
    const c1 = h("div", { class: "card", "data-chart": "isoflop" }); grid.append(c1);
    NT.chart(c1, { title: "IsoFLOP profiles: loss against parameters", series, logX: true, logY: true, xLabel: "parameters N" });
    if (minima.length >= 2 && f.approach2.a !== undefined) {
      const cs = minima.map(p => p.flops), lo = Math.min(...cs) / 3, hi = Math.max(...cs) * 3, fx = [], fy = [];
      for (let k = 0; k <= 20; k++) { const c = lo * Math.pow(hi / lo, k / 20); fx.push(c); fy.push(f.approach2.kN * Math.pow(c, f.approach2.a)); }
      const c2 = h("div", { class: "card", "data-chart": "frontier" }); grid.append(c2);
      NT.chart(c2, { title: "compute-optimal N against C", logX: true, logY: true, xLabel: "FLOPs C", series: [
        { name: "minima", x: cs, y: minima.map(p => p.params_opt), color: "#c5221f", dots: true, line: false },
        { name: `N_opt \u221d C^${f.approach2.a.toFixed(3)}`, x: fx, y: fy, color: "#2f5fd0" }] });
    }
    if (f) {
      const ci = { ...(f.ci90 || {}) };
      if (f.a_source !== "approach3") { delete ci.a; delete ci.b; }  // approach 3's intervals, not approach 2's a, b
      const t = h("table", { id: "law-constants" }, h("tr", {}, h("th", {}, "constant"), h("th", { class: "num" }, "fit"), h("th", { class: "num" }, "90% interval"), h("th", { class: "num" }, "Chinchilla")));
      for (const k of ["E", "A", "B", "alpha", "beta", "a", "b"]) {
        t.append(h("tr", {}, h("td", {}, k), h("td", { class: "num" }, fmt(f[k])),
          h("td", { class: "num" }, ci[k] ? `${fmt(ci[k][0])} \u2013 ${fmt(ci[k][1])}` : "\u2013"),
          h("td", { class: "num" }, f.chinchilla && f.chinchilla[k] !== undefined ? fmt(f.chinchilla[k]) : "")));
      }
      grid.append(h("div", { class: "card" }, h("h3", {}, "L(N, D) = E + A/N^\u03b1 + B/D^\u03b2 (Hoffmann et al. 2022, eq. 2)"), t,
        h("p", { class: "note" }, `a, b from ${f.a_source}; ${f.n_points} points; FLOPs ${f.flops_convention || "6ND"}`)));
    }
  }

  async function plan() {
    const q = new URLSearchParams();
    for (const [k, el] of [["flops", C], ["params", N], ["tokens", D], ["tokens_per_s", tps]]) if (el.value.trim()) q.set(k, el.value.trim());
    if (lawSel.value === "fit") q.set("sweep", sweepSel.value); else q.set("law", lawSel.value);
    planOut.innerHTML = "";
    let r;
    try { r = await api("/api/plan?" + q); } catch (e) { planOut.append(errorBox(e)); return; }
    const sh = r.shape || {};
    const rows = [["parameters N", fmt(r.params)], ["tokens D", fmt(r.tokens)], ["compute C (FLOPs)", r.flops.toExponential(3)],
      ["tokens per parameter", r.tokens_per_param.toFixed(1)], ["predicted loss (nats/token)", r.loss.toFixed(4)],
      ["shape", `${sh.n_layer} layers \u00d7 ${sh.d_model}, ${sh.n_head} heads`],
      ["compute-optimal at this C", `N ${fmt(r.optimal.params)}, D ${fmt(r.optimal.tokens)}, loss ${r.optimal.loss.toFixed(4)}`]];
    if (r.time_s) rows.push(["time", `${(r.time_s / 3600).toFixed(2)} h ${r.time_basis}`]);
    if (r.train_command) rows.push(["train it", r.train_command]);
    planOut.append(h("div", { class: "card" }, h("table", { id: "plan-table" },
      rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono wrap" }, v)))),
      ...(r.notes || []).map((n) => h("p", { class: "note" }, n.replace(/^note\s+/, "")))));
  }

  sweepSel.addEventListener("change", async () => { await loadSweep(); });
  await loadSweep();
  plan();
}

// ---- router ----
const PAGES = { "/": pageRuns, "/run": pageRun, "/next": pageNext, "/surprise": pageSurprise, "/sample": pageSample,
  "/compare": pageCompare, "/scaling": pageScaling };
(function route() {
  const path = location.pathname;
  document.querySelectorAll("header nav a").forEach(a => a.classList.toggle("on", a.dataset.page === path
    || (path === "/run" && a.dataset.page === "/")));
  const page = PAGES[path] || NT.pages && NT.pages[path];
  if (!page) { app.innerHTML = ""; app.append(errorBox(new Error("no page " + path))); return; }
  Promise.resolve(page()).catch(e => { app.append(errorBox(e)); });
})();
