// meshgate dashboard: reads /v1/overview every few seconds and draws it. No framework, no CDN:
// DOM nodes are built with h()/svg() (never innerHTML, so names from the API cannot inject
// markup), plots are hand-made SVG. The session is an HttpOnly cookie set by POST /ui/session.
"use strict";

const REFRESH_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGES = ["models", "experiments", "canaries", "keys", "gateways"];
let timer = null;
let latest = null;

function $(id) { return document.getElementById(id); }

function build(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
function h(tag, attrs, ...children) { return build(document.createElement(tag), attrs, children); }
function svg(tag, attrs, ...children) { return build(document.createElementNS(SVG_NS, tag), attrs, children); }

// -- formatting ------------------------------------------------------------------------
function pct(x, digits = 1) { return x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)}%`; }
function num(x, digits = 2) {
  if (x === null || x === undefined) return "–";
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en");
  return Number(x).toFixed(digits);
}
function pval(p) { return p === null || p === undefined ? "–" : p < 0.0001 ? "<0.0001" : p.toFixed(4); }
function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }
function pill(text, cls) { return h("span", { class: `pill ${cls}`, text }); }
function breakerPill(state) {
  if (!state) return h("span", { class: "muted", text: "–" });
  return pill(state.replace("_", "-"), state === "closed" ? "ok" : state === "open" ? "bad" : "warn");
}

// -- session ---------------------------------------------------------------------------
async function boot() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => render());
  const r = await fetch("/ui/session", { credentials: "same-origin" });
  const body = await r.json();
  if (body.signed_in) start(); else showSignIn("");
}

// Signed out or expired: forget the data too, so no page (a #hash change renders) shows it.
function showSignIn(message) {
  if (timer !== null) { clearInterval(timer); timer = null; }
  latest = null;
  $("signin").hidden = false;
  $("nav").hidden = true;
  $("signout").hidden = true;
  for (const p of PAGES) { $(`page-${p}`).hidden = true; $(`page-${p}`).replaceChildren(); }
  $("signin-error").textContent = message;
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value;
  const r = await fetch("/ui/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  $("token").value = "";
  if (r.status === 204) { start(); return; }
  let message = `sign-in failed (${r.status})`;
  try { message = (await r.json()).error.message; } catch (e) { /* keep the status text */ }
  showSignIn(message);
}

async function signOut() {
  await fetch("/ui/session", { method: "DELETE", credentials: "same-origin" });
  showSignIn("signed out");
}

function start() {
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  refresh();
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  let r;
  try {
    r = await fetch("/v1/overview", { credentials: "same-origin" });
  } catch (e) {
    $("status").textContent = "control plane unreachable; retrying";
    return;
  }
  if (r.status === 401) { showSignIn("session expired: sign in again"); return; }
  if (!r.ok) { $("status").textContent = `overview failed: HTTP ${r.status}`; return; }
  const overview = await r.json();
  if (timer === null) return;  // signed out while this refresh was on its way
  latest = overview;
  render();
}

// -- pages -----------------------------------------------------------------------------
function render() {
  if (latest === null) return;
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "models";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  const dp = latest.data_plane;
  $("status").textContent = `config v${latest.config_version}` +
    (dp ? ` · data plane v${dp.config_version} · ${dp.requests.toLocaleString("en")} requests` : " · no data plane here") +
    ` · updated ${new Date(latest.generated_at * 1000).toLocaleTimeString()}`;
  const target = $(`page-${page}`);
  const pages = { models: modelsPage, experiments: experimentsPage, canaries: canariesPage, keys: keysPage, gateways: gatewaysPage };
  const content = pages[page](latest);
  target.replaceChildren(...content);
}

function shareBars(configured, live) {
  const w = 160;
  return svg("svg", { width: w, height: 22, viewBox: `0 0 ${w} 22`, role: "img", "aria-label": `configured ${pct(configured)}, live ${pct(live)}` },
    svg("rect", { class: "bar-conf", x: 0, y: 2, height: 8, width: (configured || 0) * w }),
    svg("rect", { class: "bar-live", x: 0, y: 12, height: 8, width: (live || 0) * w }));
}

function modelsPage(data) {
  if (!data.models.length) return [h("p", { class: "muted", text: "No models registered yet." })];
  return data.models.map((m) => h("div", { class: "card", "data-model": m.name },
    h("div", { class: "head" }, h("h2", { text: m.name }),
      h("span", { class: "muted" }, `default ${m.default_version || "–"}`),
      m.experiment ? pill(`${m.experiment_kind === "canary" ? "canary" : "experiment"} ${m.experiment}`, "warn") : null),
    h("table", {},
      h("thead", {}, h("tr", {}, ...["version", "traffic (configured / live)", "configured", "live", "live rps", "breaker", "in flight"]
        .map((c, i) => h("th", { class: i > 1 ? "num" : null, text: c })))),
      h("tbody", {}, ...m.versions.map((v) => h("tr", {},
        h("td", {}, v.version, v.default ? h("span", { class: "muted" }, " (default)") : null),
        h("td", {}, shareBars(v.configured_share, v.live_share)),
        h("td", { class: "num", text: pct(v.configured_share) }),
        h("td", { class: "num", text: pct(v.live_share) }),
        h("td", { class: "num", text: num(v.live_rps, 1) }),
        h("td", { class: "num" }, breakerPill(v.breaker)),
        h("td", { class: "num", text: v.in_flight ?? "–" }))))),
    h("h3", { text: "endpoints" }),
    h("table", {},
      h("thead", {}, h("tr", {}, ...["version", "endpoint", "state", "EWMA latency (ms)", "in flight", "consecutive failures"]
        .map((c, i) => h("th", { class: i > 2 ? "num" : null, text: c })))),
      h("tbody", {}, ...m.versions.flatMap((v) => v.endpoints.map((e) => h("tr", {},
        h("td", { text: v.version }),
        h("td", { text: e.endpoint }),
        h("td", {}, e.ejected === undefined ? h("span", { class: "muted", text: "no data plane" })
          : e.ejected ? pill(`ejected ${num(e.ejected_for_s, 0)} s (${e.ejection_reason})`, "bad")
          : e.available ? pill("available", "ok") : pill("unavailable", "warn")),
        h("td", { class: "num", text: num(e.ewma_ms) }),
        h("td", { class: "num", text: e.in_flight ?? "–" }),
        h("td", { class: "num", text: e.consecutive_failures ?? "–" }))))))));
}

// A forest plot of relative lifts: one row per treatment arm, its interval and estimate.
function intervalPlot(metric, control) {
  const rows = metric.arms.filter((a) => !a.is_control && a.rel_lift);
  const width = 420, rowH = 26, pad = 70, top = 18;
  let span = 0.01;
  for (const a of rows) for (const v of [...a.rel_lift.ci, a.rel_lift.estimate]) if (v !== null && Number.isFinite(v)) span = Math.max(span, Math.abs(v));
  span *= 1.15;
  const x = (v) => pad + ((v + span) / (2 * span)) * (width - pad - 10);
  const height = top + rows.length * rowH + 4;
  const plot = svg("svg", { class: "forest", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `relative lift of ${metric.name} vs ${control}` },
    svg("line", { class: "axis", x1: pad, x2: width - 10, y1: height - 2, y2: height - 2 }),
    svg("line", { class: "zero", x1: x(0), x2: x(0), y1: 4, y2: height - 2 }),
    svg("text", { x: x(-span), y: 12, text: pct(-span, 0) }),
    svg("text", { x: x(0) - 6, y: 12, text: "0" }),
    svg("text", { x: x(span) - 30, y: 12, text: `+${pct(span, 0)}` }));
  rows.forEach((a, i) => {
    const y = top + i * rowH + rowH / 2;
    const [lo, hi] = a.rel_lift.ci;
    const better = metric.higher_is_better ? lo !== null && lo > 0 : hi !== null && hi < 0;
    const worse = metric.higher_is_better ? hi !== null && hi < 0 : lo !== null && lo > 0;
    plot.append(
      svg("text", { x: 4, y: y + 4, text: a.arm }),
      svg("line", { class: `ci${better ? " win" : worse ? " lose" : ""}`, x1: x(lo === null ? -span : Math.max(lo, -span)),
        x2: x(hi === null ? span : Math.min(hi, span)), y1: y, y2: y }),
      svg("circle", { class: "point", cx: x(Math.max(-span, Math.min(span, a.rel_lift.estimate))), cy: y, r: 4 }));
  });
  return plot;
}

function experimentsPage(data) {
  if (!data.experiments.length) return [h("p", { class: "muted", text: "No experiments yet." })];
  return data.experiments.map((e) => {
    const r = e.results;
    const card = h("div", { class: "card", "data-experiment": e.name },
      h("div", { class: "head" }, h("h2", { text: e.name }),
        h("span", { class: "muted" }, `${e.model} · ${e.engine} · α=${e.alpha} · control ${e.control}`),
        pill(e.status, e.status === "running" ? "ok" : "warn")));
    if (!r) { card.append(h("p", { class: "muted", text: "Results are shown while the experiment runs." })); return card; }
    if (r.error) { card.append(h("p", { class: "error", text: r.error })); return card; }
    const srm = r.srm;
    card.append(srm.flagged
      ? h("div", { class: "banner bad", role: "alert" }, `Sample ratio mismatch (p=${pval(srm.p_value)}): ${srm.reason}. Do not trust these results until the assignment is fixed.`)
      : h("p", { class: "muted" }, `Sample ratio check: OK (p=${pval(srm.p_value)})`));
    const total = r.arms.reduce((sum, a) => sum + a.weight, 0);  // weights are relative: show shares
    card.append(h("table", { class: "arms" },
      h("thead", {}, h("tr", {}, ...["arm", "traffic share", "requests", "error rate", "p50 ms", "p99 ms"]
        .map((c, i) => h("th", { class: i ? "num" : null, text: c })))),
      h("tbody", {}, ...r.arms.map((a) => h("tr", { "data-arm": a.arm },
        h("td", {}, a.arm, a.arm === r.control ? h("span", { class: "muted" }, " (control)") : null),
        h("td", { class: "num share", text: pct(total > 0 ? a.weight / total : null) }),
        h("td", { class: "num", text: a.requests.toLocaleString("en") }),
        h("td", { class: "num", text: pct(a.error_rate, 2) }),
        h("td", { class: "num", text: num(a.latency_ms.p50) }),
        h("td", { class: "num", text: num(a.latency_ms.p99) }))))));
    const llm = r.arms.filter((a) => a.llm);  // LLM traffic: what the OpenAI-compatible routes measured
    if (llm.length) {
      card.append(h("h3", { text: "LLM" }));
      card.append(h("table", { class: "llm" },
        h("thead", {}, h("tr", {}, ...["arm", "requests", "streams", "TTFT p50 ms", "TTFT p99 ms [interval]", "inter-token ms",
          "prompt tokens", "completion tokens", "cost USD", "USD / request", "broken streams"]
          .map((c, i) => h("th", { class: i ? "num" : null, text: c })))),
        h("tbody", {}, ...llm.map(({ arm, llm: l }) => h("tr", { "data-llm-arm": arm },
          h("td", { text: arm }),
          h("td", { class: "num", text: l.requests.toLocaleString("en") }),
          h("td", { class: "num", text: l.streams.toLocaleString("en") }),
          h("td", { class: "num ttft-p50", text: num(l.ttft_ms.p50) }),
          h("td", { class: "num ttft-p99", text: `${num(l.ttft_ms.p99)} [${num(l.ttft_ms.ci.p99?.[0])}, ${num(l.ttft_ms.ci.p99?.[1])}]` }),
          h("td", { class: "num", text: num(l.inter_token_ms) }),
          h("td", { class: "num", text: l.prompt_tokens.total.toLocaleString("en") }),
          h("td", { class: "num", text: l.completion_tokens.total.toLocaleString("en") }),
          h("td", { class: "num cost", text: num(l.cost_usd.total, 6) }),
          h("td", { class: "num", text: num(l.cost_usd.mean, 8) }),
          h("td", { class: "num", text: pct(l.broken_stream_rate, 2) }))))));
    }
    for (const m of r.metrics) {
      const ms = ["latency", "ttft", "inter_token"].includes(m.name);  // the gateway's own times are kept in seconds
      const mean = (x) => num(x === null || x === undefined ? x : ms ? x * 1000 : x, 4);
      // the p-value the verdict uses: the experiment's engine, Holm-adjusted over its arms
      const p = (a) => r.engine === "sequential" ? a.sequential_p_value_adjusted : a.p_value_adjusted;
      card.append(h("h3", {}, `${m.name} `, h("span", { class: "muted", text: `(${m.kind}, ${ms ? "ms, " : ""}${m.higher_is_better ? "higher" : "lower"} is better)` })));
      card.append(h("table", { "data-metric": m.name },
        h("thead", {}, h("tr", {}, ...["arm", "n", "mean", "relative lift [interval]", "p-value", "chance to beat control", "verdict"]
          .map((c, i) => h("th", { class: i ? "num" : null, text: c })))),
        h("tbody", {}, ...m.arms.map((a) => h("tr", {},
          h("td", { text: a.arm + (a.is_control ? " (control)" : "") }),
          h("td", { class: "num", text: a.n.toLocaleString("en") }),
          h("td", { class: "num mean", text: mean(a.mean) }),
          h("td", { class: "num", text: a.is_control || !a.rel_lift ? "–"
            : `${pct(a.rel_lift.estimate)} [${pct(a.rel_lift.ci[0])}, ${pct(a.rel_lift.ci[1])}]` }),
          h("td", { class: "num p-value", title: p(a), text: pval(p(a)) }),
          h("td", { class: "num", text: pct(a.chance_to_beat_control) }),
          h("td", { class: "num", text: a.verdict || "–" }))))));
      if (m.arms.some((a) => !a.is_control && a.rel_lift)) card.append(intervalPlot(m, r.control));
    }
    return card;
  });
}

function canariesPage(data) {
  if (!data.canaries.length) return [h("p", { class: "muted", text: "No canaries yet." })];
  return data.canaries.map((c) => {
    const card = h("div", { class: "card", "data-canary": c.name },
      h("div", { class: "head" }, h("h2", { text: c.name }), h("span", { class: "muted", text: c.model }),
        c.status ? pill(c.status, c.status === "running" || c.status === "promoted" ? "ok" : c.status === "rolled_back" ? "bad" : "warn") : null));
    if (c.error) { card.append(h("p", { class: "error", text: c.error })); return card; }
    const cfg = c.canary, step = c.progress ? c.progress.step : -1;
    card.append(h("p", {}, `baseline ${cfg.baseline} → candidate ${cfg.candidate}, every ${cfg.interval_s} s, at least ${cfg.min_requests} requests per step`));
    card.append(h("div", { class: "steps" }, ...cfg.steps.map((s, i) =>
      h("span", { class: i < step ? "done" : i === step ? "current" : null, text: `${s}%` }))));
    const ev = c.evaluation;
    if (ev && c.status === "running") {
      card.append(h("p", {}, "next decision: ", h("span", { class: ev.action, text: ev.action }), ` — ${ev.reason}`));
      card.append(checksList(ev.checks));
    }
    card.append(h("h3", { text: "timeline" }));
    const events = [...c.events].reverse();
    card.append(events.length ? h("ol", { class: "timeline" }, ...events.map((e) => h("li", { class: e.type },
      h("strong", { text: e.type }), " ", h("span", { class: "muted", text: when(e.time) }), h("div", { text: e.reason }),
      e.details && e.details.checks ? checksList(e.details.checks) : null)))
      : h("p", { class: "muted", text: "no events yet" }));
    return card;
  });
}

// The live data plane: one row per gateway process heartbeat (per worker with --workers).
function gatewaysPage(data) {
  const gateways = data.gateways || [];
  if (!gateways.length) return [h("p", { class: "muted", text: "No live gateways (none has sent a heartbeat within its TTL)." })];
  const dropping = gateways.filter((g) => g.dropped);
  return [h("div", { class: "card" },
    h("div", { class: "head" }, h("h2", { text: "gateways" }), h("span", { class: "muted", text: `${gateways.length} live` })),
    ...dropping.map((g) => h("div", { class: "banner bad", role: "alert" },
      `Gateway ${g.id} dropped ${g.dropped} counter updates or join records (store: ${g.last_error || "unreachable"}).`)),
    h("table", { class: "gateways" },
      h("thead", {}, h("tr", {}, ...["id", "address", "version", "last seen", "ready", "config", "requests", "buffered", "dropped"]
        .map((c, i) => h("th", { class: i > 4 ? "num" : null, text: c })))),
      h("tbody", {}, ...gateways.map((g) => h("tr", { "data-gateway": g.id },
        h("td", { text: g.id }),
        h("td", { text: g.address || "–" }),
        h("td", { text: g.version || "–" }),
        h("td", { text: `${num(g.age_s, 1)} s ago` }),
        h("td", {}, g.ready ? pill("ready", "ok") : pill("not ready", "warn")),
        h("td", { class: "num config" }, String(g.config_version ?? "–"),
          g.config_error ? h("span", { title: g.config_error }, " ", pill("newest does not compile", "bad")) : null),
        h("td", { class: "num", text: g.requests === null || g.requests === undefined ? "–" : g.requests.toLocaleString("en") }),
        h("td", { class: "num", text: g.buffered }),
        h("td", { class: "num" }, g.dropped ? pill(String(g.dropped), "bad") : "0"))))))];
}

// Client keys of the LLM routes: limits and usage (last minute, sliding, and all time).
function usageCell(used, limit) {
  if (limit === null || limit === undefined) return h("td", { class: "num", text: used.toLocaleString("en") });
  const share = limit ? used / limit : 0;
  return h("td", { class: "num" }, `${used.toLocaleString("en")} / ${limit.toLocaleString("en")} `,
    pill(pct(Math.min(share, 9.99), 0), share >= 1 ? "bad" : share >= 0.8 ? "warn" : "ok"));
}

function keysPage(data) {
  const keys = data.keys || [];
  if (!keys.length) return [h("p", { class: "muted", text: "No client keys: the LLM routes take any caller. Create one with `meshgate keys create NAME`." })];
  return [h("div", { class: "card" },
    h("div", { class: "head" }, h("h2", { text: "client keys" }),
      h("span", { class: "muted", text: `${keys.filter((k) => !k.revoked).length} active` })),
    h("table", { class: "keys" },
      h("thead", {}, h("tr", {}, ...["name", "id", "status", "models", "requests last minute", "tokens last minute", "total requests", "total tokens"]
        .map((c, i) => h("th", { class: i > 3 ? "num" : null, text: c })))),
      h("tbody", {}, ...keys.map((k) => h("tr", { "data-key": k.name },
        h("td", { text: k.name }),
        h("td", { text: k.id }),
        h("td", {}, k.revoked ? pill("revoked", "bad") : pill("active", "ok")),
        h("td", { text: k.models.length ? k.models.join(", ") : "all" }),
        usageCell(k.usage.requests_last_minute, k.rpm),
        usageCell(k.usage.tokens_last_minute, k.tpm),
        h("td", { class: "num", text: k.usage.total_requests.toLocaleString("en") }),
        h("td", { class: "num", text: k.usage.total_tokens.toLocaleString("en") }))))))];
}

function checksList(checks) {
  return h("ul", { class: "checks" }, ...(checks || []).map((k) =>
    h("li", {}, h("span", { class: k.status, text: k.status }), ` ${k.name}: ${k.detail}`)));
}

document.addEventListener("DOMContentLoaded", () => { boot().catch((e) => { $("status").textContent = `dashboard failed: ${e}`; }); });
