// fasterdata console: one page, views chosen by the URL's hash, each polling its JSON API (/api/<view>).
"use strict";

const POLL_MS = 2000;
const state = { sort: "time", db: null, app: null, user: null, fold: true, kind: null, calls: {} };
let timer = null;
let generation = 0; // a reply for a view left meanwhile is dropped

// ---- small helpers ---------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Thousands separators; a decimal string keeps every decimal it has ("17790.50" → "17,790.50").
function num(value) {
  if (value === undefined || value === null || value === "") return "—";
  const s = String(value);
  const neg = s.startsWith("-");
  const [whole, frac] = (neg ? s.slice(1) : s).split(".");
  return (neg ? "-" : "") + whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (frac !== undefined ? "." + frac : "");
}
const ms = (us) => (us === undefined || us === null ? "—" : num((us / 1000).toFixed(2)));
const secs = (us) => num((us / 1e6).toFixed(2));
const iso = (msec) => new Date(msec).toISOString().replace("T", " ").slice(0, 19);
const fromUs = (us) => (us ? iso(Number(us) / 1000) : "—");
const age = (raw) => { const s = raw === null || raw === undefined ? raw : Math.max(0, raw); return s === null || s === undefined ? "—" : s < 1 ? `${(s * 1000).toFixed(0)}ms`
  : s < 120 ? `${s.toFixed(1)}s` : s < 7200 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`; }; // clocks differ a little
const empty = (text) => h("p", { class: "empty" }, text);
const labelText = (labels) => Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(" ") || "(all)";

// columns: strings, or [label] for a right-aligned number column
function table(columns, rows, attrs) {
  const head = columns.map((c) => (c instanceof Node ? c : Array.isArray(c) ? h("th", { class: "num" }, c[0]) : h("th", {}, c)));
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, head)), h("tbody", {}, rows));
}

async function fetchJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || resp.statusText);
  return body;
}

function chart(id, traces, layout) {
  const el = document.getElementById(id);
  if (!el || !window.Plotly) return;
  const base = { margin: { l: 60, r: 20, t: 10, b: 40 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { size: 11 }, showlegend: traces.length > 1, legend: { orientation: "h" } };
  Plotly.react(el, traces, { ...base, ...layout }, { displayModeBar: false, responsive: true });
}

function setStatus(text, down) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("down", !!down);
}

// ---- statements --------------------------------------------------------------------------------------
const SORTS = [["time", "total s"], ["calls", "calls"], ["mean", "mean ms"], ["p99", "p99 ms"], ["errors", "errors"],
  ["rows", "rows"]];

// A filter's first option is "all" (no filter); the others name a value, "" included (application_name unset).
function filterSelect(name, values) {
  const onchange = (e) => { state[name] = e.target.selectedIndex ? values[e.target.selectedIndex - 1] : null; refresh(true); };
  return h("label", {}, `${name} `, h("select", { id: `filter-${name}`, onchange },
    h("option", { value: "" }, "all"),
    values.map((v) => h("option", { value: v, selected: v === state[name] }, v || "(none)"))));
}

async function topView() {
  const q = new URLSearchParams({ sort: state.sort, fold: state.fold ? "1" : "0", limit: "50" });
  for (const f of ["db", "app", "user"]) if (state[f] !== null) q.set(f, state[f]);
  const data = await fetchJSON(`/api/top?${q}`);
  const head = ["statement", "db", "app"].concat(SORTS.map(([key, label]) => h("th", {
    class: `num sort${state.sort === key ? " on" : ""}`, "data-sort": key, onclick: () => { state.sort = key; refresh(true); } }, label)));
  const rows = data.rows.map((r) => h("tr", { "data-fp": r.fp },
    h("td", { class: "sql" }, h("a", { href: `#/fp/${r.fp}` }, r.text || r.fp)), h("td", {}, r.db), h("td", {}, r.app),
    h("td", { class: "num total" }, secs(r.total_us)), h("td", { class: "num calls" }, num(r.calls)),
    h("td", { class: "num mean" }, ms(r.mean_us)), h("td", { class: "num p99" }, ms(r.p99_us)),
    h("td", { class: `num errors${r.errors ? " bad" : ""}` }, num(r.errors)), h("td", { class: "num rows" }, num(r.rows))));
  const f = data.folded;
  if (f && f.entries) {
    rows.push(h("tr", { class: "folded muted" }, h("td", { class: "sql" }, `transaction control, folded: ${f.entries} statements (BEGIN, COMMIT, SAVEPOINT …)`),
      h("td", {}), h("td", {}), h("td", { class: "num total" }, secs(f.total_us)), h("td", { class: "num calls" }, num(f.calls)),
      h("td", { class: "num" }, ms(f.calls ? f.total_us / f.calls : null)), h("td", {}), h("td", {}), h("td", {})));
  }
  const fold = h("label", {}, h("input", { type: "checkbox", id: "fold", checked: state.fold,
    onchange: (e) => { state.fold = e.target.checked; refresh(true); } }), " fold BEGIN/COMMIT-class");
  const key = { time: "total_us", calls: "calls", mean: "mean_us", p99: "p99_us", errors: "errors", rows: "rows" }[state.sort];
  const div = { time: 1e6, mean: 1000, p99: 1000 }[state.sort] || 1;
  const top10 = data.rows.slice(0, 10).reverse();
  return {
    node: [h("div", { class: "card" },
      h("div", { class: "filters" }, filterSelect("db", data.choices.db), filterSelect("app", data.choices.app),
        filterSelect("user", data.choices.user), fold, h("span", { class: "muted" }, `${num(data.matched)} entries`)),
      data.rows.length || rows.length ? table(head, rows, { id: "top-table" }) : empty("no statements yet")),
    h("div", { class: "card" }, h("h2", {}, `Top 10 by ${SORTS.find((s) => s[0] === state.sort)[1]}`), h("div", { id: "top-chart", class: "chart" }))],
    after() {
      chart("top-chart", [{ type: "bar", orientation: "h", x: top10.map((r) => (r[key] || 0) / div),
        y: top10.map((r) => `${(r.text || "").slice(0, 40)} [${r.app}] · ${r.fp.slice(0, 6)}`), marker: { color: "#2f6fdb" } }],
      { margin: { l: 20, r: 20, t: 10, b: 30 }, yaxis: { automargin: true } });
    },
  };
}

// ---- one fingerprint ---------------------------------------------------------------------------------
// A statement in a transaction shape: its first words, or its fingerprint when its text is gone.
const short = (text, fp) => (text ? (text.length > 32 ? text.slice(0, 30) + "…" : text) : fp.slice(0, 8));

function sampleTable(list, id) {
  const rows = list.map((s) => h("tr", { class: "sample" },
    h("td", {}, fromUs(s.ts)), h("td", { class: "num dur" }, ms(s.dur_us)), h("td", { class: "num" }, num(s.rows)),
    h("td", { class: "sql" }, s.sql || ""), h("td", { class: "sql params" }, s.params ?? ""),
    h("td", {}, s.app || ""), h("td", {}, s.user || ""), h("td", {}, s.client || ""), h("td", {}, s.sid || ""),
    h("td", { class: s.err ? "bad" : "" }, [s.err, s.errmsg].filter(Boolean).join(" "))));
  return table(["time", ["ms"], ["rows"], "sql", "parameters", "app", "user", "client", "session", "error"], rows, { id });
}

async function fpView(fp) {
  const d = await fetchJSON(`/api/fingerprint?fp=${encodeURIComponent(fp)}`);
  const seen = (state.calls[fp] = state.calls[fp] || []);
  seen.push([Date.now(), d.calls]);
  if (seen.length > 300) seen.shift();
  const plan = d.plan;
  const planBody = !plan ? empty("no plan recorded (the analyzers explain slow SELECTs' samples when explain_dsn is set)")
    : plan.plan ? h("pre", { id: "plan" }, JSON.stringify(plan.plan, null, 2))
      : empty(`${plan.status}${plan.reason ? ": " + plan.reason : ""}`);
  const shapes = d.shapes.map((s) => h("tr", {}, h("td", {}, s.app), h("td", { class: "num" }, num(s.count)),
    h("td", { class: "num" }, ms(s.mean_us)), h("td", { class: "num" }, s.stmts_per_txn),
    h("td", { class: "num" }, `${(100 * s.rollback_rate).toFixed(1)}%`),
    h("td", { class: "sql" }, s.fps.map((x, i) => [i ? " → " : "", x === fp ? h("strong", { title: d.text }, short(d.text, x))
      : h("a", { href: `#/fp/${x}`, title: d.texts[x] || x }, short(d.texts[x], x))]))));
  const who = d.users.length ? d.users : d.entries;
  const figures = [["calls", num(d.calls), "fp-calls"], ["total s", secs(d.total_us)], ["mean ms", ms(d.mean_us)],
    ["min · max ms", `${ms(d.min_us)} · ${ms(d.max_us)}`], ["stddev ms", ms(d.stddev_us)],
    ["p50 · p95 · p99 ms", `${ms(d.p50_us)} · ${ms(d.p95_us)} · ${ms(d.p99_us)}`], ["rows", num(d.rows)],
    ["errors", num(d.errors)], ["op · tables", `${d.op} · ${d.tables.join(", ") || "—"}`]];
  return {
    node: [h("div", { class: "card" }, h("h2", {}, "Fingerprint ", h("code", {}, d.fp)), h("pre", { id: "fp-text" }, d.text),
      h("dl", { class: "kv" }, figures.map(([k, v, id]) => [h("dt", {}, k), h("dd", { id }, v)]))),
    h("div", { class: "row" },
      h("div", { class: "card" }, h("h2", {}, "Latency histogram"), h("div", { id: "fp-hist", class: "chart" })),
      h("div", { class: "card" }, h("h2", {}, (d.series || []).length ? "Last hour, a minute a point: calls and mean ms"
        : "Recent samples (ms), and calls/s while this page is open"),
        h("div", { id: "fp-series", class: "chart" }))),
    h("div", { class: "card" }, h("h2", {}, d.users.length ? "By user" : "By database and application"),
      table(["db", "app", "user", ["calls"], ["total s"], ["mean ms"], ["max ms"], ["errors"]],
        who.map((u) => h("tr", {}, h("td", {}, u.db), h("td", {}, u.app), h("td", {}, u.user ?? "—"), h("td", { class: "num" }, num(u.calls)),
          h("td", { class: "num" }, secs(u.total_us)), h("td", { class: "num" }, ms(u.mean_us)), h("td", { class: "num" }, ms(u.max_us)),
          h("td", { class: "num" }, num(u.errors)))), { id: "fp-users" })),
    h("div", { class: "card" }, h("h2", {}, "Slowest samples"),
      d.samples.slowest.length ? sampleTable(d.samples.slowest, "samples-slow") : empty("no samples kept")),
    h("div", { class: "card" }, h("h2", {}, "Most recent samples"),
      d.samples.recent.length ? sampleTable(d.samples.recent, "samples-recent") : empty("no samples kept")),
    h("div", { class: "card" }, h("h2", {}, "Plan", plan && plan.at ? h("span", { class: "muted" }, ` (${plan.status}, ${iso(plan.at * 1000)})`) : ""),
      plan && plan.sql ? h("p", { class: "muted" }, `EXPLAIN of ${plan.sql}  ${plan.params ? JSON.stringify(plan.params) : ""}`) : "", planBody),
    h("div", { class: "card" }, h("h2", {}, "Transaction shapes it appears in"),
      shapes.length ? table(["app", ["count"], ["mean ms"], ["stmts/txn"], ["rolled back"], "shape"], shapes, { id: "shapes" })
        : empty("no transaction shapes recorded"))],
    after() {
      const bars = d.histogram.filter((b) => b.count || d.histogram.some((x) => x.count));
      chart("fp-hist", [{ type: "bar", x: bars.map((b) => (b.le === "+Inf" ? "+Inf" : `≤${num(b.le * 1000)} ms`)),
        y: bars.map((b) => b.count), marker: { color: "#2f6fdb" } }], { xaxis: { type: "category" } });
      const minutes = d.series || [];
      let traces;
      if (minutes.length) { // the analyzers' per-minute series (event time)
        const at = minutes.map((p) => new Date(p.minute * 1000));
        traces = [{ type: "bar", name: "calls", x: at, y: minutes.map((p) => p.calls), marker: { color: "#9db8ea" } },
          { type: "scatter", mode: "lines+markers", name: "mean ms", yaxis: "y2", x: at, y: minutes.map((p) => p.mean_us / 1000) }];
      } else { // no series kept: the recent samples, and the calls counted between this page's polls
        const rec = d.samples.recent.slice().reverse();
        traces = [{ type: "scatter", mode: "lines+markers", name: "sample ms", x: rec.map((s) => new Date(Number(s.ts) / 1000)),
          y: rec.map((s) => s.dur_us / 1000) }];
        const rates = seen.slice(1).map(([t, c], i) => [new Date(t), ((c - seen[i][1]) * 1000) / (t - seen[i][0])]);
        if (rates.length) traces.push({ type: "scatter", mode: "lines", name: "calls/s", yaxis: "y2", x: rates.map((r) => r[0]), y: rates.map((r) => r[1]) });
      }
      chart("fp-series", traces, { yaxis2: { overlaying: "y", side: "right", rangemode: "tozero" } });
    },
  };
}

// ---- business ----------------------------------------------------------------------------------------
const TOP_LABELS = 10;

// A chart's axis needs only the decimals the values use (the tables show every stored decimal).
function decimalsShown(rule) {
  let places = 0;
  for (const d of rule.days) {
    for (const v of d.values) {
      const frac = (String(v.value).split(".")[1] || "").replace(/0+$/, "");
      places = Math.max(places, frac.length);
    }
  }
  return Math.min(places, rule.scale || 0);
}

async function businessView() {
  const data = await fetchJSON("/api/business?days=31");
  const cards = data.rules.map((rule) => h("div", { class: "card", "data-rule": rule.rule },
    h("h2", {}, rule.rule, h("span", { class: "muted" }, ` · ${rule.aggregate}${rule.labels.length ? " by " + rule.labels.join(", ") : ""}`)),
    rule.description ? h("p", { class: "muted" }, rule.description) : "",
    h("dl", { class: "kv" }, h("dt", {}, `today (${data.day}, UTC)`),
      h("dd", { class: "total", "data-rule": rule.rule }, num(rule.total))),
    rule.values.length ? table(["labels", ["value"]], rule.values.slice(0, TOP_LABELS).map((v) => h("tr", {}, h("td", {}, labelText(v.labels)),
      h("td", { class: "num value", "data-rule": rule.rule, "data-key": v.key }, num(v.value))))) : empty("nothing today"),
    rule.values.length > TOP_LABELS ? h("p", { class: "muted" }, `… and ${rule.values.length - TOP_LABELS} more label sets`) : "",
    rule.days.length ? h("div", { id: `biz-${rule.rule}`, class: "chart" }) : ""));
  return {
    node: [h("div", { class: "row" }, cards.length ? cards : empty("no business rule has written yet"))],
    after() {
      for (const rule of data.rules) {
        const keys = [...new Set(rule.days.flatMap((d) => d.values.map((v) => v.key)))].slice(0, TOP_LABELS);
        const places = decimalsShown(rule);
        const names = Object.fromEntries(rule.days.flatMap((d) => d.values.map((v) => [v.key, labelText(v.labels)])));
        const traces = keys.map((k) => ({ type: "bar", name: names[k] === "(all)" ? rule.rule : names[k], x: rule.days.map((d) => d.day),
          y: rule.days.map((d) => { const v = d.values.find((x) => x.key === k); return v ? Number(v.value) : 0; }),
          hovertemplate: `%{y:,.${places}f}<extra>${names[k]}</extra>` }));
        chart(`biz-${rule.rule}`, traces, { barmode: ["sum", "count"].includes(rule.aggregate) ? "stack" : "group",
          yaxis: { tickformat: `,.${places}f` }, xaxis: { type: "category" } });
      }
    },
  };
}

// ---- alerts ------------------------------------------------------------------------------------------
async function alertsView() {
  const data = await fetchJSON(`/api/alerts?limit=100${state.kind ? "&kind=" + encodeURIComponent(state.kind) : ""}`);
  const shown = new Set(["id", "at_ms", "kind", "rule", "severity", "app", "evidence", "text", "fp", "ts", "at"]);
  const rows = data.alerts.map((a) => h("tr", { class: "alert", "data-rule": a.rule || "", "data-kind": a.kind || "" },
    h("td", {}, iso(a.at_ms)), h("td", {}, a.kind || ""), h("td", { class: `sev-${a.severity || ""}` }, a.severity || ""),
    h("td", { class: "rule" }, a.rule || ""), h("td", {}, a.app || a.series || ""), h("td", { class: "evidence" }, a.evidence || ""),
    h("td", { class: "sql" }, a.fp ? h("a", { href: `#/fp/${a.fp}` }, a.text || a.fp) : a.text || ""),
    h("td", { class: "muted more" }, Object.entries(a).filter(([k, v]) => !shown.has(k) && v).map(([k, v]) => `${k}=${v}`).join("  "))));
  const counts = Object.entries(data.counts).sort((a, b) => b[1] - a[1]);
  return {
    node: [h("div", { class: "card" }, h("h2", {}, "Findings by rule (all counted)"),
      counts.length ? h("div", { id: "alert-chart", class: "chart" }) : empty("no findings counted")),
      h("div", { class: "card" }, h("h2", {}, "Latest alerts"), h("div", { class: "filters" }, filterSelect("kind", data.kinds)),
        rows.length ? table(["time", "kind", "severity", "rule", "app", "evidence", "statement", "more"], rows, { id: "alerts" }) : empty("no alerts"))],
    after() {
      chart("alert-chart", [{ type: "bar", x: counts.map((c) => c[0]), y: counts.map((c) => c[1]), marker: { color: "#c62f2f" } }]);
    },
  };
}

// ---- proxies and workers -----------------------------------------------------------------------------
async function pipelineView() {
  const d = await fetchJSON("/api/pipeline");
  const streams = d.streams.map((s) => h("tr", {}, h("td", {}, s.stream), h("td", { class: "num" }, num(s.length)),
    h("td", { class: "num" }, num(s.pending)), h("td", { class: "num" }, num(s.undelivered)),
    h("td", { class: `num trimmed${s.trimmed ? " bad" : ""}` }, num(s.trimmed)), h("td", { class: "num" }, age(s.last_age))));
  const workers = d.workers.map((w) => h("tr", { class: w.stale ? "muted" : "" }, h("td", {}, w.name),
    h("td", { class: "num" }, num(w.statements ?? w.entries)), h("td", { class: "num" }, num(Math.round(w.rate || 0))),
    h("td", { class: "num" }, num(w.pending)), h("td", { class: "num" }, num(w.lag_entries)),
    h("td", { class: "num" }, age(w.lag_seconds)), h("td", { class: "num" }, num(w.unparsed)), h("td", { class: "num" }, age(w.age))));
  const rate = (r) => (r === null || r === undefined ? "—" : num(Math.round(r)));
  const sinks = d.sinks.map((p) => h("tr", {}, h("td", {}, p.instance), h("td", {}, p.stream),
    h("td", { class: "num" }, num(p.events)), h("td", { class: "num" }, rate(p.rate))));
  const proxies = d.proxies.map((p) => h("tr", { class: p.error ? "bad" : "" }, h("td", {}, p.url),
    p.error ? h("td", { colspan: 6 }, p.error) : [h("td", { class: "num" }, num(p.sent)), h("td", { class: "num" }, rate(p.rate)),
      h("td", { class: `num spooled${p.spooled ? " bad" : ""}` }, num(p.spooled)),
      h("td", { class: `num dropped${p.dropped ? " bad" : ""}` }, num(p.dropped)),
      h("td", { class: `num${p.trimmed_unread ? " bad" : ""}` }, num(p.trimmed_unread)), h("td", { class: "num" }, num(p.spool_events))]));
  return {
    node: [h("div", { class: "card" }, h("h2", {}, "Statement streams"),
      table(["stream", ["statements"], ["pending"], ["undelivered"], ["trimmed unread"], ["newest"]], streams, { id: "streams" })),
    h("div", { class: "row" },
      h("div", { class: "card" }, h("h2", {}, "Proxies"),
        proxies.length ? table(["metrics", ["sent"], ["events/s"], ["spooled"], ["dropped"], ["trimmed unread"], ["in spool"]], proxies, { id: "proxies" })
          : h("p", { class: "muted" }, "Dropped and spooled counts come from each proxy's /metrics: start the console with --proxy-metrics URL."),
        h("h2", {}, "Sink instances writing to Redis"),
        sinks.length ? table(["instance", "stream tag", ["events sent"], ["events/s"]], sinks, { id: "sinks" })
          : empty("no proxy marker in Redis (they expire when a proxy stops)")),
      h("div", { class: "card" }, h("h2", {}, "Worker throughput (statements/s)"), h("div", { id: "worker-chart", class: "chart" }))),
    h("div", { class: "card" }, h("h2", {}, "Analyzer workers"),
      workers.length ? table(["worker", ["statements"], ["rate/s"], ["pending"], ["lag entries"], ["lag"], ["unparsed"], ["last beat"]], workers, { id: "workers" })
        : empty("no worker heartbeat"))],
    after() {
      chart("worker-chart", [{ type: "bar", x: d.workers.map((w) => w.name), y: d.workers.map((w) => w.rate || 0), marker: { color: "#2f6fdb" } }]);
    },
  };
}

// ---- ledger cache ------------------------------------------------------------------------------------
async function ledgerView() {
  const d = await fetchJSON("/api/ledger");
  const cards = d.tables.map((t) => h("div", { class: "card", "data-table": t.table }, h("h2", {}, t.table),
    table(["day", ["rows"], ["patches"], ["pending"], "loaded", ["load s"], ["expires in"]],
      t.days.map((x) => h("tr", { "data-day": x.day }, h("td", {}, x.day), h("td", { class: "num rows" }, num(x.rows)),
        h("td", { class: "num" }, num(x.patches)), h("td", { class: "num" }, num(x.patches_pending)),
        h("td", {}, x.loaded_at ? (typeof x.loaded_at === "number" ? iso(x.loaded_at * 1000) : String(x.loaded_at)) : "—"),
        h("td", { class: "num" }, x.load_seconds ?? "—"), h("td", { class: "num" }, age(x.ttl))))),
    h("div", { id: `gl-${t.table}`, class: "chart" })));
  return {
    node: cards.length ? cards : [empty("no ledger days cached (fasterdata gl warm DATE)")],
    after() {
      for (const t of d.tables) {
        const days = t.days.slice().reverse();
        chart(`gl-${t.table}`, [{ type: "bar", x: days.map((x) => x.day), y: days.map((x) => x.rows || 0) }], { xaxis: { type: "category" } });
      }
    },
  };
}

// ---- routing and polling -----------------------------------------------------------------------------
const views = { top: topView, fp: fpView, business: businessView, alerts: alertsView, pipeline: pipelineView, ledger: ledgerView };

function route() {
  const parts = (location.hash || "#/top").slice(2).split("/");
  return views[parts[0]] ? { name: parts[0], arg: decodeURIComponent(parts.slice(1).join("/")) } : { name: "top", arg: "" };
}

async function refresh(asked) {
  clearTimeout(timer);
  const active = document.activeElement;
  if (!asked && active && active.tagName === "SELECT" && document.getElementById("view").contains(active)) {
    timer = setTimeout(refresh, POLL_MS); // a choice being made: redraw after it
    return;
  }
  const mine = ++generation;
  const { name, arg } = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.view === (name === "fp" ? "top" : name)));
  try {
    const { node, after } = await views[name](arg);
    if (mine !== generation) return;
    const main = document.getElementById("view");
    main.replaceChildren(...[].concat(node));
    if (after) after();
    main.dataset.view = name;
    main.dataset.updated = String(Date.now());
    setStatus(`live · ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (mine === generation) setStatus(err instanceof TypeError ? `console unreachable: ${err.message}` : err.message, true);
  }
  if (mine === generation) timer = setTimeout(refresh, POLL_MS);
}

window.addEventListener("hashchange", refresh);
window.addEventListener("DOMContentLoaded", refresh);
