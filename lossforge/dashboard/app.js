// lossforge dashboard: polls /api/run.json and draws it. No libraries; text goes in through textContent.
"use strict";
const POLL_MS = 2000;
// a finished or failed run changes only when it is resumed (or validated, tuned): checked less often
const IDLE_POLL_MS = 15000;
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function fmt(v, digits = 4) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "?";
  s = Math.round(Math.max(0, s));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// A small line/scatter chart: series = [{name, color, points: [[x, y]], line: bool, steps: bool}]
function chart(container, series, xlabel, ylabel, integerX) {
  const W = 560, H = 240, L = 50, R = 10, T = 10, B = 40;
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"});
  const pts = series.flatMap(s => s.points).filter(p => p[1] !== null && isFinite(p[1]));
  container.replaceChildren(svg);
  if (!pts.length) { svg.appendChild(svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no data yet")); return; }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (y1 - y) / (y1 - y0) * (H - T - B);
  const xticks = [];
  if (integerX) {
    const raw = Math.max(1, (x1 - x0) / 8), mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map(m => m * mag).find(v => v >= raw);  // 1, 2, 5 x 10^k: ticks read easily
    for (let x = Math.ceil(x0 / step) * step; x <= x1; x += step) xticks.push(x);  // multiples of the step
  } else { for (let i = 0; i <= 5; i++) xticks.push(x0 + i * (x1 - x0) / 5); }
  for (const x of xticks) {
    svg.appendChild(svgEl("line", {x1: sx(x), x2: sx(x), y1: T, y2: H - B, class: "grid"}));
    svg.appendChild(svgEl("text", {x: sx(x), y: H - B + 14, "text-anchor": "middle"}, integerX ? String(x) : x.toFixed(0)));
  }
  for (let i = 0; i <= 4; i++) {
    const y = y0 + i * (y1 - y0) / 4;
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid"}));
    svg.appendChild(svgEl("text", {x: L - 4, y: sy(y) + 4, "text-anchor": "end"}, y.toFixed(2)));
  }
  svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis"}));
  svg.appendChild(svgEl("line", {x1: L, x2: L, y1: T, y2: H - B, class: "axis"}));
  svg.appendChild(svgEl("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"}, xlabel));
  svg.appendChild(svgEl("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                                 transform: `rotate(-90 12 ${(T + H - B) / 2})`}, ylabel));
  for (const s of series) {
    const p = s.points.filter(q => q[1] !== null && isFinite(q[1]));
    if (s.hline !== undefined) {
      if (s.hline === null || s.hline < y0 || s.hline > y1) continue;
      svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: sy(s.hline), y2: sy(s.hline), stroke: s.color,
                                     "stroke-dasharray": "5 4"}));
      continue;
    }
    if (s.line && p.length > 1) {
      let d = `M${sx(p[0][0])},${sy(p[0][1])}`;
      for (let i = 1; i < p.length; i++) {
        d += s.steps ? ` H${sx(p[i][0])} V${sy(p[i][1])}` : ` L${sx(p[i][0])},${sy(p[i][1])}`;
      }
      svg.appendChild(svgEl("path", {d, fill: "none", stroke: s.color, "stroke-width": 2}));
    }
    for (const q of (s.line && p.length > 60 ? [] : p)) {  // markers only where they can be told apart
      const c = svgEl("circle", {cx: sx(q[0]), cy: sy(q[1]), r: s.r || 3, fill: s.color, opacity: s.opacity || 1});
      if (q[2]) c.appendChild(svgEl("title", {}, q[2]));
      svg.appendChild(c);
    }
  }
  const legend = el("div", null, "legend");
  for (const s of series) {
    if (s.hline === null) continue;
    const off = s.hline !== undefined && (s.hline < y0 || s.hline > y1) ? ` ${fmt(s.hline, 2)}, off the scale` : "";
    const span = el("span", `■ ${s.name}${off}`); span.style.color = s.color; legend.appendChild(span);
  }
  container.appendChild(legend);
}

function table(tbl, headers, rows) {
  const head = el("tr");
  headers.forEach(h => head.appendChild(el("th", h)));
  tbl.tHead.replaceChildren(head);
  tbl.tBodies[0].replaceChildren(...rows.map(cells => {
    const tr = el("tr");
    cells.forEach(c => tr.appendChild(c instanceof Node ? c : el("td", c)));
    return tr;
  }));
}
function num(v) { return el("td", fmt(v), "num"); }

function render(d) {
  document.getElementById("run-name").textContent = d.run;
  const badge = document.getElementById("status");
  badge.textContent = d.status; badge.className = `badge ${d.status}`;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const p = d.progress || {phase: d.status === "waiting" ? "waiting for the run file" : d.status, done: 0, total: 0};
  document.getElementById("phase").textContent = p.phase;
  const fraction = p.fraction !== undefined ? p.fraction : (p.total ? p.done / p.total : 0);
  document.getElementById("bar-fill").style.width = `${100 * fraction}%`;
  document.getElementById("progress-line").textContent = p.total
    ? (p.limit === "time" ? `generations done ${p.done} · time limit ${duration(p.time_s)}`
                          : `generations done ${p.done}/${p.total}`) +
      (p.done < p.total && p.in_generation !== undefined ? ` · this generation ${p.in_generation} recorded` : "") +
      ` · elapsed ${duration(p.elapsed_s)} · ETA ${d.status === "running" ? duration(p.eta_s) : "–"}`
    : "";
  const c = d.counts;
  document.getElementById("counts").textContent = c
    ? `proposed ${c.proposed} · screened ${c.screened} · trained ${c.trained} · complete ${c.complete} · ` +
      `rejected ${c.rejected} · failed ${c.failed}` : "";

  const gens = d.history || [];
  const base = (d.baselines || []).slice(0, 4);
  const colors = ["#8e44ad", "#16a085", "#7f8c8d", "#d35400"];
  chart(document.getElementById("fitness-chart"), [
    {name: "best", color: "#2a7de1", line: true, points: gens.map(g => [g.gen, g.best, g.best_formula])},
    {name: "median", color: "#e67e22", line: true, points: gens.map(g => [g.gen, g.median])},
    ...base.map((b, i) => ({name: `${b.name} (baseline)`, color: colors[i], hline: b.fitness, points: []})),
  ], "generation", "fitness", true);
  chart(document.getElementById("pareto-chart"), [
    {name: "complete candidates", color: "#b0b6c0", r: 2.5, opacity: 0.7,
     points: (d.complete || []).map(q => [q.complexity, q.fitness, q.formula])},
    {name: "Pareto front", color: "#c0392b", line: true, steps: true,
     points: (d.pareto || []).map(q => [q.complexity, q.fitness, q.formula])},
  ], "complexity", "fitness", true);

  const tasks = d.tasks || [];
  table(document.getElementById("hof"), ["rank", "fitness", "validation", "complexity", "formula", "rendered"],
    (d.hall_of_fame || []).map(h => {
      const code = el("td", null, "formula"); code.appendChild(el("code", h.formula));
      // a loss that trains as a known one is that loss, not a new one: said as `show` says it
      if (h.same_as_text) code.appendChild(el("span", ` (= ${h.same_as_text})`, "known"));
      const tex = el("td", null, "latex");
      if (h.latex_svg) tex.innerHTML = h.latex_svg;  // rendered on the server by matplotlib from sympy's LaTeX
      else tex.appendChild(el("code", h.latex || ""));
      tex.title = h.latex || "";
      return [el("td", String(h.rank), "num"), num(h.fitness), num(h.validation_fitness),
              el("td", String(h.complexity), "num"), code, tex];
    }));
  const best = (d.hall_of_fame || []).slice(0, 3);
  table(document.getElementById("tasks"), ["loss", "fitness", ...tasks],
    [...best.map(h => [el("td", `#${h.rank}`), num(h.fitness), ...tasks.map(t => num(h.tasks[t]))]),
     ...(d.baselines || []).map(b => [el("td", b.name), num(b.fitness), ...tasks.map(t => num(b.tasks[t]))])]);
  table(document.getElementById("rejections"), ["count", "state", "reason"],
    (d.rejections || []).map(r => [el("td", String(r.count), "num"), r.status, r.reason]));
}

async function runs() {
  try {
    const r = await fetch("api/runs.json", {cache: "no-store"});
    const names = (await r.json()).runs || [];
    const sel = document.getElementById("runs");
    sel.replaceChildren(...names.map(n => { const o = el("option", n); o.value = n; return o; }));
    sel.hidden = names.length < 2;
    if (params.get("run")) sel.value = params.get("run");
    sel.onchange = () => { params.set("run", sel.value); location.search = params.toString(); };
  } catch (e) { /* the run view still works */ }
}

async function poll() {
  let wait = POLL_MS;
  try {
    const q = params.get("run") ? `?run=${encodeURIComponent(params.get("run"))}` : "";
    const r = await fetch(`api/run.json${q}`, {cache: "no-store"});
    const d = await r.json();
    if (d.error) throw new Error(d.error);
    render(d);
    if (d.status === "finished" || d.status === "failed") wait = IDLE_POLL_MS;
  } catch (e) {
    const s = document.getElementById("status");
    s.textContent = `error: ${e.message}`; s.className = "badge failed";
  }
  setTimeout(poll, wait);
}
runs();
poll();
