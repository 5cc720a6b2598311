// nextoken serve: inside the model (POST /api/inspect) and the lab reports (GET /api/labs, /api/lab). Loaded
// before app.js, whose helpers (h, api, runPicker, showTok, fmtP) these pages call when the router runs them.
"use strict";

(function () {
  const NT = window.NT;
  NT.pages = NT.pages || {};

  // white to blue by a value in [0, 1]
  const blue = v => `rgba(47, 95, 208, ${(0.04 + 0.9 * Math.max(0, Math.min(1, v))).toFixed(3)})`;

  const shade = (td, v) => { td.style.background = blue(v); if (v > 0.55) td.classList.add("dark"); };

  // one head's attention map on a canvas: row = query, column = key; masked (future) keys checkered grey.
  // One pixel per cell in an ImageData, scaled up without smoothing: 144 maps of 64 x 64 draw in milliseconds.
  function drawMap(canvas, A, size, causal, hoverRow) {
    const T = A.length, img = new ImageData(T, T), px = img.data;
    for (let q = 0; q < T; q++) {
      for (let k = 0; k < T; k++) {
        const o = 4 * (q * T + k);
        if (causal && k > q) { const g = (q + k) % 2 ? 233 : 244; px[o] = g; px[o + 1] = g; px[o + 2] = g - 2; }
        else {
          const a = 0.04 + 0.9 * Math.sqrt(Math.max(0, Math.min(1, A[q][k])));  // blue(): alpha over white
          px[o] = Math.round(255 + (47 - 255) * a); px[o + 1] = Math.round(255 + (95 - 255) * a); px[o + 2] = Math.round(255 + (208 - 255) * a);
        }
        px[o + 3] = 255;
      }
    }
    const src = document.createElement("canvas");
    src.width = src.height = T;
    src.getContext("2d").putImageData(img, 0, 0);
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(src, 0, 0, size, size);
    if (hoverRow !== null && hoverRow !== undefined) {
      const cell = size / T;
      ctx.strokeStyle = "#d9480f"; ctx.lineWidth = 2;
      ctx.strokeRect(1, hoverRow * cell + 1, size - 2, cell - 2);
    }
  }

  async function pageInspect() {
    const app = document.getElementById("app");
    app.innerHTML = "";
    app.append(h("h1", {}, "Inside the model"));
    const picker = await runPicker(() => { syncSlider(); ask(); });
    if (picker.empty) { app.append(h("p", { class: "muted" }, "No run with a checkpoint yet.")); return; }
    const params = new URLSearchParams(location.search);
    picker.stepSel.style.display = "none";  // the slider below picks the checkpoint
    picker.querySelectorAll("label")[1].style.display = "none";
    const prompt = h("textarea", { id: "prompt", rows: 2, cols: 70 }, params.get("prompt") || "def total(items):\n    return");
    const target = h("input", { type: "text", id: "target", size: 12, placeholder: "true next text" });
    const slider = h("input", { type: "range", id: "ckpt", min: 0, max: 0, step: 1, value: 0 });
    const sliderLabel = h("b", { id: "ckpt-step" }, "");
    const out = h("div", { id: "inspect" });
    const example = (p, t) => h("button", { class: "ghost", onclick: () => { prompt.value = p; target.value = t; ask(); } },
      JSON.stringify(p + "\u2026"));
    app.append(h("div", { class: "controls" }, picker), picker.trained,
      h("div", { class: "controls" }, h("label", {}, "examples"), example("The cat sat on the", "mat"),
        example("for i in range(", "10")),
      prompt,
      h("div", { class: "controls" }, h("label", {}, "true next text "), target,
        h("label", {}, "checkpoint"), slider, sliderLabel),
      h("p", { class: "note" }, "Drag the checkpoint slider to watch this prompt at every saved step of training: the ",
        "predictions, the attention and the logit lens as the model learns."),
      out);

    let steps = [];
    function syncSlider() {
      const r = picker.runs.find(x => x.id === picker.runSel.value);
      steps = r ? r.checkpoints.slice() : [];
      slider.max = Math.max(0, steps.length - 1);
      const want = params.get("step") ? steps.indexOf(Number(params.get("step"))) : -1;
      slider.value = want >= 0 ? want : steps.length - 1;
      sliderLabel.textContent = steps.length ? `step ${steps[slider.value]}` : "";
    }
    syncSlider();

    let timer = null, seq = 0, state = { layer: 0, head: 0, hover: null };
    const askSoon = () => { clearTimeout(timer); timer = setTimeout(ask, 250); };
    prompt.addEventListener("input", askSoon);
    target.addEventListener("input", askSoon);
    slider.addEventListener("input", () => { sliderLabel.textContent = `step ${steps[slider.value]}`; askSoon(); });

    async function ask() {
      const mine = ++seq;
      let d;
      try {
        d = await api("/api/inspect", { run: picker.runSel.value, step: steps.length ? steps[slider.value] : null,
          prompt: prompt.value, target: target.value || null });
      } catch (e) { if (mine === seq) { out.innerHTML = ""; out.append(errorBox(e)); } return; }
      if (mine !== seq) return;  // a newer request is on its way
      render(d);
    }

    function render(d) {
      out.innerHTML = "";
      out.dataset.step = d.step;
      const T = d.tokens.length, L = d.shape.n_layer, H = d.shape.n_head;
      state.layer = Math.min(state.layer, L - 1); state.head = Math.min(state.head, H - 1);
      const stage = (n, title, ...kids) => h("section", { class: "stage", id: "stage-" + n },
        h("h2", {}, h("span", { class: "num-badge" }, n), " ", title), ...kids);

      // 1. tokens and ids
      out.append(stage(1, "Text \u2192 tokens \u2192 ids",
        h("div", { class: "tokens", id: "ins-tokens" }, d.tokens.map(t =>
          h("span", { class: "tok tok-id" }, showTok(t.text), h("small", {}, t.id)))),
        h("p", { class: "note" }, `${T} tokens${d.truncated ? " (the prompt's last " + T + ")" : ""} from a vocabulary of ${d.shape.vocab_size}. `,
          "The tokenizer splits text into pieces it learned from the training data; a word it rarely saw is split into several.")));

      // 2. embedding
      const maxE = Math.max(...d.embedding_norm, 1e-9);
      out.append(stage(2, "Ids \u2192 embedding vectors",
        h("div", { class: "norms" }, d.embedding_norm.map((v, i) => h("div", { class: "norm", title: `‖x‖ = ${v}` },
          h("span", { class: "norm-bar", style: null }), h("small", {}, showTok(d.tokens[i].text))))),
        h("p", { class: "note" }, `Each id picks a row of the embedding table: a vector of ${d.shape.d_model} numbers (bar: its length, the norm).`)));
      out.querySelectorAll("#stage-2 .norm-bar").forEach((b, i) => { b.style.height = (40 * d.embedding_norm[i] / maxE).toFixed(1) + "px"; });

      // 3. residual stream
      const rows = [["embedding", d.embedding_norm], ...d.residual_norm.map((r, i) => [`after layer ${i + 1}`, r])];
      const maxR = Math.max(...rows.flatMap(r => r[1]), 1e-9);
      const resid = h("table", { class: "heat mono", id: "residual" },
        h("tr", {}, h("th", {}, ""), d.tokens.map(t => h("th", {}, showTok(t.text)))));
      for (const [name, vals] of rows) {
        resid.append(h("tr", {}, h("th", {}, name), vals.map(v => {
          const td = h("td", { title: `‖residual‖ = ${v}` }, v.toFixed(1)); shade(td, v / maxR); return td;
        })));
      }
      out.append(stage(3, `${L} transformer layers: the residual stream`, h("div", { class: "scroll" }, resid),
        h("p", { class: "note" }, "Each layer reads the stream, and its attention and MLP add to it; the norm of the stream per position grows as they write.")));

      // 4. attention
      const grid = h("div", { class: "att-grid", id: "att-grid" });
      grid.style.gridTemplateColumns = `auto repeat(${H}, 58px)`;
      grid.append(h("span"), ...Array.from({ length: H }, (_, j) => h("small", { class: "muted" }, "head " + (j + 1))));
      const big = h("canvas", { id: "att-big", width: 320, height: 320 });
      const bigLabel = h("p", { class: "muted", id: "att-label" });
      const qInfo = h("div", { class: "note", id: "att-query" });
      const causal = !d.bidirectional;
      const drawBig = () => {
        drawMap(big, d.attention[state.layer][state.head], 320, causal, state.hover);
        bigLabel.textContent = `layer ${state.layer + 1}, head ${state.head + 1}: rows are queries, columns keys` +
          (causal ? "; the grey triangle is the causal mask (a token cannot see the ones after it)" : "; bidirectional: every token sees both sides");
        grid.querySelectorAll("canvas").forEach(c => c.classList.toggle("on", +c.dataset.layer === state.layer && +c.dataset.head === state.head));
      };
      for (let l = 0; l < L; l++) {
        grid.append(h("small", { class: "muted" }, "layer " + (l + 1)));
        for (let j = 0; j < H; j++) {
          const c = h("canvas", { class: "att-mini", "data-layer": l, "data-head": j, title: `layer ${l + 1}, head ${j + 1}: click to enlarge` });
          drawMap(c, d.attention[l][j], 56, causal, null);
          c.addEventListener("click", () => { state.layer = l; state.head = j; drawBig(); });
          grid.append(c);
        }
      }
      big.addEventListener("mousemove", e => {
        const r = big.getBoundingClientRect(), q = Math.floor((e.clientY - r.top) / r.height * T);
        if (q < 0 || q >= T || q === state.hover) return;
        state.hover = q; drawBig();
        const row = d.attention[state.layer][state.head][q];
        const order = row.map((p, k) => [p, k]).filter(x => x[0] > 0).sort((a, b) => b[0] - a[0]).slice(0, 5);
        qInfo.textContent = `query ${showTok(d.tokens[q].text)} (position ${q}) attends to: ` +
          order.map(([p, k]) => `${showTok(d.tokens[k].text)}@${k} ${(100 * p).toFixed(0)}%`).join(", ");
      });
      big.addEventListener("mouseleave", () => { state.hover = null; drawBig(); });
      const keys = h("div", { class: "tokens small" }, d.tokens.map((t, i) => h("span", { class: "tok", title: "position " + i }, showTok(t.text))));
      out.append(stage(4, "Attention: every layer \u00d7 head",
        h("div", { class: "att" }, grid, h("div", { class: "att-big" }, big, bigLabel, keys, qInfo)),
        h("p", { class: "note" }, "Each map: softmax(q\u00b7k / \u221aK) of one head, each row (a query token) summing to 1. ",
          "Click a head to enlarge it; hover a row of the large map to see where that token looks.")));
      drawBig();

      // 5. logit lens
      const lens = h("table", { class: "heat mono", id: "lens" },
        h("tr", {}, h("th", {}, ""), d.tokens.map((t, i) => h("th", { title: "position " + i }, showTok(t.text)))));
      for (const row of d.lens) {
        lens.append(h("tr", {}, h("th", {}, row.name), row.positions.map((c, pos) => {
          const top = c.top[0];
          const truthId = pos + 1 < T ? d.tokens[pos + 1].id : (d.target ? d.target.tokens[0].id : null);
          const hit = !d.bidirectional && truthId !== null && top.id === truthId || d.bidirectional && top.id === d.tokens[pos].id;
          const td = h("td", { class: hit ? "hit" : "", title: c.top.map(x => `${showTok(x.text)} ${fmtP(x.p)}`).join("\n") +
            (c.true_rank ? `\ntrue token: rank ${c.true_rank}, p ${fmtP(c.true_p)}` : "") },
            showTok(top.text), c.true_rank ? h("sub", {}, "#" + c.true_rank) : null);
          shade(td, top.p);
          return td;
        })));
      }
      out.append(stage(5, "The logit lens: what each layer would predict",
        h("div", { class: "scroll" }, lens),
        h("p", { class: "note" }, "The final norm and the output layer applied to the residual stream after each layer ",
          "(nostalgebraist 2020): each cell is the top token that layer would predict at that position (shade: its p), ",
          "#n the true next token's rank, outlined green where it is the top. The last row is the model's own output. ",
          "Hover a cell for the top tokens.")));

      // 6. final distribution
      const bars = h("div", { class: "bars", id: "ins-bars" });
      for (const t of d.final.top.slice(0, 10)) {
        const row = h("div", { class: "bar" + (d.target && t.id === d.target.tokens[0].id ? " truth" : "") },
          h("span", { class: "label" }, showTok(t.text)), h("span", { class: "track" }, h("span", { class: "fill" })),
          h("span", { class: "p" }, fmtP(t.p)), h("span", { class: "nl" }, (-Math.log(t.p)).toFixed(2)));
        row.querySelector(".fill").style.width = (100 * t.p).toFixed(2) + "%";
        bars.append(row);
      }
      out.append(stage(6, "Softmax: the next-token distribution", bars,
        h("p", { class: "note" }, `After the last token: entropy ${d.final.entropy_nats.toFixed(3)} nats (e^H \u2248 ${Math.exp(d.final.entropy_nats).toFixed(1)} equally likely tokens).`)));

      // 7. cross-entropy and teacher forcing
      const tf = d.teacher_forcing;
      const tft = h("table", { class: "mono compact", id: "forcing" }, h("tr", {}, ["position", "input", "true next", "model's top", "\u2212log p (nats)"].map(x => h("th", {}, x))));
      for (const f of tf.positions) {
        tft.append(h("tr", {}, h("td", {}, f.position), h("td", {}, showTok(f.input)), h("td", {}, showTok(f.true)),
          h("td", { class: f.predicted === f.true ? "good" : "" }, showTok(f.predicted)), h("td", { class: "num" }, f.neg_log_p.toFixed(3))));
      }
      const tgt = d.target ? h("p", { id: "ins-target" }, `The true next text \u201c${showTok(d.target.text)}\u201d: `,
        h("b", {}, `cross-entropy ${d.target.neg_log_p.toFixed(3)} nats`), ` over ${d.target.tokens_in_target} token(s) (` +
        d.target.tokens.map(x => `${showTok(x.text)} ${x.neg_log_p.toFixed(2)}`).join(" + ") + ")" +
        (d.target.with_space ? `; with a leading space \u201c${showTok(d.target.with_space.text)}\u201d: ${d.target.with_space.neg_log_p.toFixed(3)} nats` : "")) : null;
      out.append(stage(7, "Cross-entropy against the true tokens: teacher forcing",
        h("p", { class: "note" }, d.bidirectional ? "A bidirectional model predicts each position's own token (as if it were [MASK]); all at once."
          : "In training every position predicts its next token at once, from the true tokens before it (not from the model's own guesses): one forward pass gives all these losses."),
        tf.loss !== null ? h("p", {}, `mean loss ${tf.loss.toFixed(3)} nats/token, perplexity e^loss = ${tf.ppl.toFixed(2)}`) : null,
        h("div", { class: "scroll" }, tft), tgt));
    }

    ask();
  }

  // ---- lab reports ----
  function markdown(text) {  // the few forms report.md uses: headings, tables, images, paragraphs, code
    const box = h("div", { class: "md" });
    const lines = text.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      if (/^#{1,4} /.test(line)) { box.append(h("h" + Math.min(4, line.indexOf(" ") + 1), {}, line.replace(/^#+ /, ""))); continue; }
      if (line.startsWith("|")) {
        const t = h("table", { class: "mono" });
        for (; i < lines.length && lines[i].startsWith("|"); i++) {
          if (/^\|[\s:|-]+\|$/.test(lines[i])) continue;
          t.append(h("tr", {}, lines[i].slice(1, -1).split("|").map(c => h("td", {}, c.trim()))));
        }
        i--; box.append(h("div", { class: "scroll" }, t)); continue;
      }
      if (/^!\[.*\]\(.*\)$/.test(line.trim())) continue;  // the figure is drawn from /api/lab/figure
      if (line.trim()) box.append(h("p", {}, line));
    }
    return box;
  }

  async function pageLabs() {
    const app = document.getElementById("app");
    app.innerHTML = "";
    app.append(h("h1", {}, "Lab reports"));
    const data = await api("/api/labs");
    if (!data.labs.length) {
      app.append(h("p", { class: "muted" }, "No lab experiment under the served directories: `nextoken lab run NAME` writes one to lab/NAME-BUDGET; serve it with `nextoken serve lab`."));
      return;
    }
    const table = h("table", { id: "labs" }, h("tr", {}, ["experiment", "budget", "verdict", "claim"].map(x => h("th", {}, x))));
    const view = h("div", { id: "lab-view" });
    for (const l of data.labs) {
      table.append(h("tr", { class: "click", "data-lab": l.id, onclick: () => show(l.id) },
        h("td", {}, l.id), h("td", {}, l.budget || ""), h("td", {}, l.verdict ? h("span", { class: "state " + (l.verdict === "held" ? "finished" : l.verdict === "did not hold" ? "crashed" : "interrupted") }, l.verdict) : h("span", { class: "muted" }, l.error || "not measured yet")),
        h("td", { class: "wrap" }, l.claim || "")));
    }
    app.append(h("div", { class: "scroll" }, table), view);
    async function show(id) {
      history.replaceState(null, "", "/labs?lab=" + encodeURIComponent(id));
      view.innerHTML = "";
      let r;
      try { r = await api("/api/lab?lab=" + encodeURIComponent(id)); } catch (e) { view.append(errorBox(e)); return; }
      view.append(h("h2", {}, r.id), r.report ? markdown(r.report) : h("p", { class: "muted" }, "No report.md yet (the experiment is still running, or `nextoken lab report DIR` rewrites it)."));
      if (r.has_figure) view.append(h("img", { class: "lab-figure", src: "/api/lab/figure?lab=" + encodeURIComponent(id), alt: "the experiment's figure" }));
      if (r.run_ids.length) view.append(h("p", {}, "runs: ", r.run_ids.map(rid => h("a", { href: "/run?run=" + encodeURIComponent(rid), style: null }, rid + " "))),
        h("p", {}, h("a", { href: "/compare?" + r.run_ids.map(x => "run=" + encodeURIComponent(x)).join("&") }, "compare its runs \u2192")));
    }
    const want = new URLSearchParams(location.search).get("lab");
    show(want && data.labs.some(l => l.id === want) ? want : data.labs[0].id);
  }

  NT.pages["/inspect"] = pageInspect;
  NT.pages["/labs"] = pageLabs;
})();
