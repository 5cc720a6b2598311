// A small SVG line chart for nextoken serve: several series, linear or log y, event markers with their
// detail on hover, a crosshair readout. The server downsamples (min/max per bucket), so a chart never draws
// more than a few thousand points whatever the run's length.
"use strict";

const NT = window.NT || (window.NT = {});
const SVGNS = "http://www.w3.org/2000/svg";
NT.COLORS = ["#2f5fd0", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];
NT.EVENT_COLORS = { spike: "#e67700", skip: "#862e9c", rollback: "#c5221f", nan: "#c5221f", resume: "#0b7285",
  checkpoint: "#adb5bd", compile: "#adb5bd" };

NT.fmt = function (v, digits = 4) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e12) return v.toExponential(2);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
  if (a !== 0 && a < 1e-3) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
};

NT.tip = function (evt, text) {
  const tip = document.getElementById("tip");
  if (!text) { tip.hidden = true; return; }
  tip.textContent = text;
  tip.hidden = false;
  const x = Math.min(evt.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = x + "px";
  tip.style.top = (evt.clientY + 14) + "px";
};

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

function niceTicks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const step0 = span / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= step0) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function logTicks(lo, hi) {  // lo, hi in log10 units
  const out = [];
  const span = hi - lo;
  const mults = span < 0.6 ? [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9] : span < 2 ? [1, 2, 5] : [1];
  for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
    for (const m of mults) {
      const v = Math.log10(m) + e;
      if (v >= lo - 1e-9 && v <= hi + 1e-9) out.push(v);
    }
  }
  return out;
}

function nearest(xs, x) {  // index of the point of sorted xs nearest to x
  let lo = 0, hi = xs.length - 1;
  if (hi < 0) return -1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid; else hi = mid;
  }
  return Math.abs(xs[lo] - x) <= Math.abs(xs[hi] - x) ? lo : hi;
}

// opts: {title, series: [{name, x, y, color, dots}], events: [{x, type, detail, step}], logY, logX, xLabel}
NT.chart = function (container, opts) {
  container.classList.add("chart");
  container.innerHTML = "";
  if (opts.title) { const h = document.createElement("h3"); h.textContent = opts.title; container.appendChild(h); }
  const svg = el("svg", { role: "img", "aria-label": opts.title || "chart" }, container);
  const legend = document.createElement("div");
  legend.className = "legend";
  container.appendChild(legend);
  for (const s of opts.series) {
    if (!s.name) continue;
    const span = document.createElement("span");
    const i = document.createElement("i");
    i.style.background = s.color;
    span.appendChild(i);
    span.appendChild(document.createTextNode(s.name));
    legend.appendChild(span);
  }
  const draw = () => render(svg, opts);
  draw();
  if (window.ResizeObserver) {
    let last = container.clientWidth;
    new ResizeObserver(() => { if (container.clientWidth !== last) { last = container.clientWidth; draw(); } })
      .observe(container);
  }
  return svg;
};

function render(svg, opts) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = Math.max(svg.clientWidth || 400, 200), H = svg.clientHeight || 220;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const m = { l: 56, r: 12, t: 10, b: 26 };
  const ty = v => opts.logY ? (v > 0 ? Math.log10(v) : NaN) : v;
  const tx = v => opts.logX ? (v > 0 ? Math.log10(v) : NaN) : v;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const s of opts.series) {
    for (let i = 0; i < s.x.length; i++) {
      const X = tx(s.x[i]), Y = ty(s.y[i]);
      if (!isFinite(X) || !isFinite(Y)) continue;
      x0 = Math.min(x0, X); x1 = Math.max(x1, X); y0 = Math.min(y0, Y); y1 = Math.max(y1, Y);
    }
  }
  if (!isFinite(x0)) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", fill: "#6e6e73" }, svg).textContent =
      "no data yet";
    return;
  }
  if (x1 === x0) { x1 = x0 + 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = v => m.l + (tx(v) - x0) / (x1 - x0) * (W - m.l - m.r);
  const sy = v => m.t + (1 - (ty(v) - y0) / (y1 - y0)) * (H - m.t - m.b);
  const axis = el("g", { class: "axis" }, svg);
  let yt = opts.logY ? logTicks(y0, y1) : niceTicks(y0, y1, 5);
  if (opts.logY && yt.length < 3) {  // a narrow log range: evenly spaced values, placed on the log scale
    yt = niceTicks(Math.pow(10, y0), Math.pow(10, y1), 4).filter(v => v > 0).map(Math.log10);
  }
  for (const v of yt) {
    const val = opts.logY ? Math.pow(10, v) : v, y = sy(val);
    el("line", { x1: m.l, x2: W - m.r, y1: y, y2: y }, axis);
    el("text", { x: m.l - 6, y: y + 4, "text-anchor": "end" }, axis).textContent = NT.fmt(val, 3);
  }
  const xt = opts.logX ? logTicks(x0, x1) : niceTicks(x0, x1, Math.max(2, Math.floor(W / 110)));
  for (const v of xt) {
    const val = opts.logX ? Math.pow(10, v) : v, x = sx(val);
    el("line", { x1: x, x2: x, y1: H - m.b, y2: H - m.b + 4 }, axis);
    el("text", { x: x, y: H - m.b + 16, "text-anchor": "middle" }, axis).textContent = NT.fmt(val, 3);
  }
  el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }, axis);
  if (opts.xLabel) el("text", { x: W - m.r, y: H - 2, "text-anchor": "end" }, axis).textContent = opts.xLabel;

  for (const ev of opts.events || []) {
    const x = sx(ev.x);
    if (!isFinite(x) || x < m.l - 0.5 || x > W - m.r + 0.5) continue;  // outside this chart's x range
    const color = NT.EVENT_COLORS[ev.type] || "#868e96";
    el("line", { class: "event", x1: x, x2: x, y1: m.t, y2: H - m.b, stroke: color }, svg);
    const dot = el("circle", { class: "event-dot", cx: x, cy: m.t + 4, r: 4.5, fill: color }, svg);
    const detail = typeof ev.detail === "string" ? ev.detail : JSON.stringify(ev.detail);
    const text = `${ev.type} at step ${ev.step}${detail ? "\n" + detail : ""}`;
    dot.dataset.event = ev.type;
    dot.addEventListener("mousemove", e => NT.tip(e, text));
    dot.addEventListener("mouseleave", e => NT.tip(e, null));
  }
  for (const s of opts.series) {
    let d = "", pen = false;
    for (let i = 0; i < s.x.length; i++) {
      const X = sx(s.x[i]), Y = sy(s.y[i]);
      if (!isFinite(X) || !isFinite(Y)) { pen = false; continue; }
      d += (pen ? "L" : "M") + X.toFixed(1) + " " + Y.toFixed(1);
      pen = true;
    }
    if (s.line !== false) el("path", { class: "series", d: d, stroke: s.color, "data-series": s.name }, svg);
    if (s.dots || s.x.length < 40) {
      for (let i = 0; i < s.x.length; i++) {
        const X = sx(s.x[i]), Y = sy(s.y[i]);
        if (isFinite(X) && isFinite(Y)) el("circle", { cx: X, cy: Y, r: s.dots ? 3 : 1.8, fill: s.color }, svg);
      }
    }
  }
  // crosshair and readout
  const cross = el("line", { y1: m.t, y2: H - m.b, stroke: "#adb5bd", visibility: "hidden" }, svg);
  const hit = el("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "transparent" }, svg);
  svg.insertBefore(hit, svg.querySelector(".event-dot"));
  hit.addEventListener("mousemove", e => {
    const r = svg.getBoundingClientRect();
    const px = (e.clientX - r.left) * W / r.width;
    const xv = x0 + (px - m.l) / (W - m.l - m.r) * (x1 - x0);
    const xval = opts.logX ? Math.pow(10, xv) : xv;
    const lines = [];
    let snap = null;
    for (const s of opts.series) {
      const i = nearest(s.x, xval);
      if (i < 0 || !s.name) continue;
      if (snap === null) snap = s.x[i];
      lines.push(`${s.name}: ${NT.fmt(s.y[i])}  (${opts.xLabel || "x"} ${NT.fmt(s.x[i])})`);
    }
    if (snap !== null) {
      cross.setAttribute("x1", sx(snap)); cross.setAttribute("x2", sx(snap));
      cross.setAttribute("visibility", "visible");
    }
    NT.tip(e, lines.join("\n"));
  });
  hit.addEventListener("mouseleave", e => { cross.setAttribute("visibility", "hidden"); NT.tip(e, null); });
}
