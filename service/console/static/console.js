// The operations console. Every read and write goes to the admin JSON API with the key kept in
// sessionStorage; data is written into the page with textContent only (never innerHTML).
"use strict";

const KEY = "benefits.adminKey";
const VOCAB = JSON.parse(document.getElementById("vocab").textContent);

// -- helpers ---------------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") {
    if (Number.isInteger(x)) return x.toLocaleString("en");
    return x.toLocaleString("en", { maximumFractionDigits: digits === undefined ? 3 : digits });
  }
  if (typeof x === "object") return JSON.stringify(x);
  return String(x);
}

function pct(x) {
  return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %";
}

function tsText(ts) {
  return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "–";
}

function fill(tbody, rows, empty) {
  if (!rows.length && empty) {
    const cols = tbody.closest("table").querySelectorAll("thead th").length || 1;
    rows = [el("tr", { class: "empty" }, el("td", { colspan: cols, class: "muted" }, empty))];
  }
  tbody.replaceChildren(...rows);
}

function kvRows(tbody, obj) {
  fill(tbody, Object.entries(obj).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", { class: "num" }, fmt(v)))));
}

function flash(text, kind) {
  const box = document.getElementById("flash");
  box.className = kind || "info";
  box.textContent = text;
  if (text) setTimeout(() => { if (box.textContent === text) box.textContent = ""; }, 8000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body, contentType) {
  const headers = { "X-API-Key": sessionStorage.getItem(KEY) || "" };
  let payload;
  if (body !== undefined) {
    if (contentType) { headers["Content-Type"] = contentType; payload = body; }
    else { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
  }
  const resp = await fetch(path, { method, headers, body: payload });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (resp.status === 401) {
    sessionStorage.removeItem(KEY);
    location.href = "/console/login?next=" + encodeURIComponent(location.pathname);
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function confirmAction(text) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
  });
}

function bar(used, total) {
  const share = total ? Math.min(1, used / total) : 0;
  const cls = share >= 0.9 ? "bar hot" : share >= 0.7 ? "bar warm" : "bar";
  return el("span", { class: cls, title: pct(share) }, el("span", { style: null, "data-share": share.toFixed(3) }));
}

function paintBars(root) {
  // CSP allows no inline style attributes from markup, but CSSOM writes are fine.
  for (const s of root.querySelectorAll("[data-share]")) s.style.width = (100 * Number(s.dataset.share)) + "%";
}

let poller = null;
function every(ms, fn) {
  const run = () => fn().catch((e) => flash(e.message, "error"));
  run();
  poller = setInterval(() => { if (!document.hidden) run(); }, ms);
}

// -- login -----------------------------------------------------------------------------------------------

function initLogin() {
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    const err = document.getElementById("login-error");
    err.textContent = "";
    const resp = await fetch("/v1/admin/models", { headers: { "X-API-Key": key } });
    if (resp.ok) {
      sessionStorage.setItem(KEY, key);
      const next = new URLSearchParams(location.search).get("next");
      location.href = next && next.startsWith("/console/") ? next : "/console/catalogue";
    } else {
      const body = await resp.json().catch(() => ({}));
      err.textContent = resp.status === 403 ? "That key is not an admin key." : (body.message || `HTTP ${resp.status}`);
    }
  });
}

// -- catalogue -------------------------------------------------------------------------------------------

const OFFER_FIELDS = ["offer_id", "kind", "subtype", "title", "category", "value", "threshold", "cost", "inventory",
  "budget", "campaign_start_ts", "campaign_end_ts", "eligibility", "caps", "pinned", "active", "display_text", "image_key",
  "family"];
const OPTIONAL_TEXT = ["display_text", "image_key", "family"];

function initCatalogue() {
  let offers = [];
  let editing = null; // offer_id being edited, or null for a new offer
  let original = {}; // the offer as loaded: untouched times keep their exact seconds
  const tbody = document.querySelector("#offers tbody");
  const form = document.getElementById("offer-form");
  const editor = document.getElementById("editor");
  const filters = ["search", "filter-kind", "filter-category", "filter-status"].map((id) => document.getElementById(id));

  async function load() {
    const data = await api("GET", "/v1/admin/offers");
    offers = data.offers;
    document.getElementById("catalog-version").textContent = `version ${data.catalog_version}`;
    render();
  }

  function render() {
    const q = filters[0].value.trim().toLowerCase();
    const [kind, cat, status] = filters.slice(1).map((f) => f.value);
    const shown = offers.filter((o) =>
      (!q || o.offer_id.toLowerCase().includes(q) || o.title.toLowerCase().includes(q)) &&
      (!kind || o.kind === kind) && (!cat || o.category === cat) &&
      (!status || (status === "active") === o.active));
    document.getElementById("count").textContent = `${shown.length} of ${offers.length} offers`;
    fill(tbody, shown.map((o) => el("tr", { "data-offer": o.offer_id, class: o.active ? "" : "retired" },
      el("td", {}, el("code", {}, o.offer_id)), el("td", {}, o.kind), el("td", {}, o.subtype),
      el("td", {}, o.title, o.pinned ? el("span", { class: "tag" }, "pinned") : null),
      el("td", {}, o.category || "–"), el("td", { class: "num" }, fmt(o.value)),
      el("td", { class: "num" }, fmt(o.threshold)), el("td", { class: "num" }, fmt(o.inventory)),
      el("td", { class: "num" }, fmt(o.budget)), el("td", {}, o.active ? "active" : "retired"),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "edit", onclick: () => openEditor(o) }, "Edit"),
        o.active ? el("button", { type: "button", class: "retire", onclick: () => retire(o) }, "Retire") : null))));
  }

  function setSubtypes(kind, value) {
    const sel = form.elements.subtype;
    sel.replaceChildren(...VOCAB.subtypes[kind].map((s) => el("option", { selected: s === value }, s)));
  }

  function toLocal(ts) { return ts ? new Date(ts * 1000).toISOString().slice(0, 16) : ""; }
  // The picker shows minutes: an untouched field keeps the stored value to the second.
  function fromLocal(v, name) {
    if (original[name] && toLocal(original[name]) === v) return original[name];
    return v ? Date.parse(v + ":00Z") / 1000 : null;
  }

  function openEditor(o) {
    editing = o ? o.offer_id : null;
    original = o || {};
    document.getElementById("editor-title").textContent = o ? `Edit ${o.offer_id}` : "New offer";
    document.getElementById("offer-error").textContent = "";
    const f = form.elements;
    const v = o || { kind: "coupon", subtype: "threshold", value: 0, threshold: 0, cost: 0, active: true, pinned: false };
    f.offer_id.value = v.offer_id || "";
    f.offer_id.readOnly = !!o;
    f.kind.value = v.kind;
    setSubtypes(v.kind, v.subtype);
    for (const name of ["title", "value", "threshold", "cost"]) f[name].value = v[name] ?? "";
    f.category.value = v.category || "";
    for (const name of OPTIONAL_TEXT) f[name].value = v[name] || "";
    f.inventory.value = v.inventory ?? "";
    f.budget.value = v.budget ?? "";
    f.campaign_start_ts.value = toLocal(v.campaign_start_ts);
    f.campaign_end_ts.value = toLocal(v.campaign_end_ts);
    f.pinned.checked = !!v.pinned;
    f.active.checked = v.active !== false;
    f.eligibility.value = v.eligibility ? JSON.stringify(v.eligibility) : "";
    f.caps.value = v.caps ? JSON.stringify(v.caps) : "";
    const extra = {};
    for (const [k, val] of Object.entries(v)) if (!OFFER_FIELDS.includes(k) && val !== null) extra[k] = val;
    f.extra.value = Object.keys(extra).length ? JSON.stringify(extra) : "";
    editor.hidden = false;
    editor.scrollIntoView({ block: "nearest" });
    f.title.focus();
  }

  function readForm() {
    const f = form.elements;
    const num = (x) => (x.value === "" ? null : Number(x.value));
    const json = (x, name) => {
      if (!x.value.trim()) return undefined;
      try { return JSON.parse(x.value); } catch (e) { throw new Error(`${name}: not valid JSON`); }
    };
    const body = {
      offer_id: f.offer_id.value.trim(), kind: f.kind.value, subtype: f.subtype.value, title: f.title.value,
      category: f.category.value || null, value: num(f.value) ?? 0, threshold: num(f.threshold) ?? 0,
      cost: num(f.cost) ?? 0, inventory: num(f.inventory), budget: num(f.budget),
      campaign_start_ts: fromLocal(f.campaign_start_ts.value, "campaign_start_ts"),
      campaign_end_ts: fromLocal(f.campaign_end_ts.value, "campaign_end_ts"),
      pinned: f.pinned.checked, active: f.active.checked,
    };
    for (const name of OPTIONAL_TEXT) body[name] = f[name].value.trim() || null;
    const elig = json(f.eligibility, "eligibility"); if (elig !== undefined) body.eligibility = elig;
    const caps = json(f.caps, "caps"); if (caps !== undefined) body.caps = caps;
    Object.assign(body, json(f.extra, "other fields") || {});
    return body;
  }

  form.elements.kind.addEventListener("change", (ev) => setSubtypes(ev.target.value));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = document.getElementById("offer-error");
    err.textContent = "";
    try {
      const body = readForm();
      const out = editing
        ? await api("PUT", `/v1/admin/offers/${encodeURIComponent(editing)}`, body)
        : await api("POST", "/v1/admin/offers", body);
      editor.hidden = true;
      flash(`Saved ${out.offer.offer_id} (catalogue version ${out.catalog_version}).`, "ok");
      await load();
    } catch (e) {
      err.textContent = e.message;
    }
  });
  document.getElementById("offer-cancel").addEventListener("click", () => { editor.hidden = true; });
  document.getElementById("new-offer").addEventListener("click", () => openEditor(null));

  async function retire(o) {
    if (!(await confirmAction(`Retire ${o.offer_id} (“${o.title}”)? It stays in the catalogue but is never shown again.`))) return;
    try {
      const out = await api("DELETE", `/v1/admin/offers/${encodeURIComponent(o.offer_id)}`);
      flash(`Retired ${o.offer_id} (catalogue version ${out.catalog_version}).`, "ok");
      await load();
    } catch (e) { flash(e.message, "error"); }
  }

  for (const f of filters) f.addEventListener("input", render);

  // Import: validate (dry run) first, then apply the same file.
  const panel = document.getElementById("import-panel");
  const applyBtn = document.getElementById("import-apply");
  const report = document.getElementById("import-report");
  let file = null;
  document.getElementById("show-import").addEventListener("click", () => { panel.hidden = false; });
  document.getElementById("import-close").addEventListener("click", () => { panel.hidden = true; });
  document.getElementById("import-file").addEventListener("change", () => { applyBtn.disabled = true; report.replaceChildren(); });

  async function sendImport(dryRun) {
    const input = document.getElementById("import-file");
    file = input.files[0];
    if (!file) throw new Error("choose a file first");
    const type = file.name.toLowerCase().endsWith(".json") ? "application/json" : "text/csv";
    return api("POST", `/v1/admin/offers/import?dry_run=${dryRun}`, await file.arrayBuffer(), type);
  }

  function showReport(r) {
    const summary = el("p", { class: "summary" },
      `${r.rows} rows: ${r.valid} valid, ${r.refused_count} refused. `,
      `${r.created.length} to create, ${r.updated.length} to update, ${r.unchanged.length} unchanged. `,
      r.applied ? `Applied: catalogue version ${r.catalog_version}.` : r.dry_run ? "Nothing written yet (dry run)." : "Nothing to write.");
    const parts = [summary];
    for (const w of r.warnings) parts.push(el("p", { class: "warning" }, "Warning: " + w));
    if (r.refused.length) {
      parts.push(el("h3", {}, "Refused rows"));
      parts.push(el("table", { class: "data", id: "refused-rows" },
        el("thead", {}, el("tr", {}, el("th", {}, "Row"), el("th", {}, "Offer"), el("th", {}, "Field"), el("th", {}, "Why"))),
        el("tbody", {}, r.refused.flatMap((x) => x.errors.map((e) =>
          el("tr", {}, el("td", { class: "num" }, x.row), el("td", {}, x.offer_id || "–"), el("td", {}, el("code", {}, e.field)), el("td", {}, e.message)))))));
    }
    for (const [label, ids] of [["Create", r.created], ["Update", r.updated]]) {
      if (ids.length) parts.push(el("p", {}, el("strong", {}, label + ": "), ids.slice(0, 40).join(", "), ids.length > 40 ? ` … (+${ids.length - 40})` : ""));
    }
    report.replaceChildren(...parts);
    applyBtn.disabled = !r.dry_run || !(r.created.length + r.updated.length);
    applyBtn.textContent = `Apply ${r.created.length + r.updated.length} valid rows`;
  }

  document.getElementById("import-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try { showReport(await sendImport(true)); } catch (e) { report.replaceChildren(el("p", { class: "error" }, e.message)); }
  });
  applyBtn.addEventListener("click", async () => {
    try {
      const r = await sendImport(false);
      showReport(r);
      flash(`Imported: ${r.created.length} created, ${r.updated.length} updated.`, "ok");
      await load();
    } catch (e) { report.replaceChildren(el("p", { class: "error" }, e.message)); }
  });

  document.getElementById("export-csv").addEventListener("click", async (ev) => {
    ev.preventDefault();
    const resp = await fetch("/v1/admin/offers/export?format=csv", { headers: { "X-API-Key": sessionStorage.getItem(KEY) } });
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", { href: url, download: "catalogue.csv" });
    document.body.append(a); a.click(); a.remove();
    URL.revokeObjectURL(url);
  });

  load().catch((e) => flash(e.message, "error"));
}

// -- campaigns -------------------------------------------------------------------------------------------

function initCampaigns() {
  const only = document.getElementById("only-watched");
  const search = document.getElementById("search");
  let last = null;

  function render() {
    if (!last) return;
    const q = search.value.trim().toLowerCase();
    const rows = last.offers.filter((o) => (!only.checked || o.limited || o.budgeted) &&
      (!q || o.offer_id.toLowerCase().includes(q) || o.title.toLowerCase().includes(q)));
    // Closest to running out first: the larger of stock used and budget spent.
    const used = (o) => Math.max(o.inventory ? o.inventory_reserved / o.inventory : 0, o.budget_spent_share || 0);
    rows.sort((a, b) => used(b) - used(a) || a.offer_id.localeCompare(b.offer_id));
    const tbody = document.querySelector("#campaigns tbody");
    fill(tbody, rows.map((o) => el("tr", { "data-offer": o.offer_id, class: o.active ? "" : "retired" },
      el("td", {}, el("code", {}, o.offer_id), el("div", { class: "muted small" }, o.title)),
      el("td", {}, o.limited ? [bar(o.inventory_reserved, o.inventory), ` ${fmt(o.inventory_left)} / ${fmt(o.inventory)}`] : "unlimited"),
      el("td", {}, o.budgeted ? [bar(o.budget_spent, o.budget), ` ${fmt(o.budget_spent, 0)} / ${fmt(o.budget)}`] : "unbudgeted"),
      el("td", { class: "num" }, pct(o.campaign_elapsed_share)),
      el("td", { class: "num" + (o.pacing < 1 ? " warn" : "") }, fmt(o.pacing, 2)),
      el("td", { class: "num" }, fmt(o.claims)),
      el("td", { class: "num" }, o.claims_per_min === null ? "…" : fmt(o.claims_per_min, 1)))));
    paintBars(tbody);
    document.getElementById("rate-window").textContent = last.rate_window_seconds
      ? `claims/min over the last ${Math.round(last.rate_window_seconds)} s` : "claims/min: measuring…";

    // Refusals: one column per reason the service has reported; fills as claims are refused.
    const reasons = last.refusal_reasons;
    const table = document.getElementById("refusals");
    const withRefusals = last.offers.filter((o) => Object.keys(o.refusals).length);
    document.getElementById("no-refusals").hidden = withRefusals.length > 0;
    table.hidden = withRefusals.length === 0;
    fill(table.querySelector("thead tr"), [el("th", {}, "Offer"), el("th", { class: "num" }, "Accepted"),
      ...reasons.map((r) => el("th", { class: "num" }, r))]);
    fill(table.querySelector("tbody"), withRefusals.map((o) => el("tr", { "data-offer": o.offer_id },
      el("td", {}, el("code", {}, o.offer_id)), el("td", { class: "num" }, fmt(o.claims_accepted_here)),
      ...reasons.map((r) => el("td", { class: "num" }, fmt(o.refusals[r] || 0))))));
  }

  only.addEventListener("change", render);
  search.addEventListener("input", render);
  every(5000, async () => { last = await api("GET", "/v1/admin/campaigns"); render(); });
}

// -- models ----------------------------------------------------------------------------------------------

function initModels() {
  let status = null;

  async function load() {
    status = await api("GET", "/v1/admin/models");
    let ptrPrevious = status.previous ?? null;
    document.getElementById("serving").textContent = status.serving || "none";
    document.getElementById("promoted").textContent = status.promoted || "none";
    document.getElementById("previous").textContent = ptrPrevious || "–";
    const rb = document.getElementById("rollback");
    rb.disabled = !ptrPrevious;
    rb.dataset.previous = ptrPrevious || "";
    fill(document.querySelector("#models tbody"), status.versions.map((v) => {
      const metrics = v.metrics ? Object.entries(v.metrics).filter(([, x]) => typeof x !== "object")
        .map(([k, x]) => `${k}=${fmt(x)}`).join(", ") : "–";
      const state = [v.version === status.serving ? "serving" : null, v.version === status.promoted ? "promoted" : null]
        .filter(Boolean).join(", ");
      return el("tr", { "data-version": v.version, class: state ? "current" : "" },
        el("td", {}, el("code", {}, v.version)), el("td", { class: "small" }, metrics),
        el("td", { class: "small" }, v.feature_schema || "–"), el("td", {}, state || ""),
        el("td", {}, v.version === status.promoted ? null :
          el("button", { type: "button", class: "promote", onclick: () => promote(v.version) }, "Promote")));
    }));
    await loadExperiment();
    fill(document.querySelector("#refused tbody"), status.refused.map((r) =>
      el("tr", {}, el("td", {}, r.version), el("td", {}, r.reason), el("td", { class: "small" }, r.detail))), "No model refused.");
  }

  async function loadExperiment() {
    let xp = null;
    try { xp = await api("GET", "/v1/admin/experiment"); } catch (e) { if (e.status !== 404 && e.status !== 503) throw e; }
    document.getElementById("no-experiment").hidden = !!xp;
    document.getElementById("arms").hidden = !xp;
    document.getElementById("end-experiment").hidden = !xp;
    document.getElementById("experiment-id").textContent = xp ? xp.experiment.experiment_id : "";
    if (!xp) return;
    const arms = [...xp.experiment.arms];
    if (xp.experiment.holdout) arms.push({ name: "holdout", share: xp.experiment.holdout.share, policy: "holdout" });
    fill(document.querySelector("#arms tbody"), arms.map((a) => {
      const c = (xp.counts || {})[a.name] || {};
      return el("tr", { "data-arm": a.name }, el("td", {}, el("code", {}, a.name)), el("td", { class: "num" }, pct(a.share)),
        el("td", {}, a.policy || "model"), el("td", {}, a.model_version || (a.policy === "model" || !a.policy ? "promoted" : "–")),
        el("td", { class: "num" }, fmt(c.views || 0)), el("td", { class: "num" }, fmt(c.impressions || 0)),
        el("td", { class: "num" }, fmt(c.clicks || 0)), el("td", { class: "num" }, fmt(c.claims || 0)),
        el("td", { class: "num" }, c.views ? fmt((c.claims || 0) / c.views, 4) : "–"));
    }));
  }

  document.getElementById("end-experiment").addEventListener("click", async () => {
    if (!(await confirmAction("End the experiment? Every member gets the promoted model again."))) return;
    try { await api("DELETE", "/v1/admin/experiment"); flash("Experiment ended.", "ok"); } catch (e) { flash(e.message, "error"); }
    await load();
  });

  async function act(text, method, path) {
    if (!(await confirmAction(text))) return;
    try {
      const out = await api(method, path);
      flash(`Now serving ${out.serving} (previous ${out.previous || "none"}).`, "ok");
    } catch (e) { flash(e.message, "error"); }
    await load();
  }

  function promote(version) {
    act(`Promote model ${version}? Every replica swaps to it within a poll interval.`, "POST",
      `/v1/admin/models/${encodeURIComponent(version)}/promote`);
  }
  document.getElementById("rollback").addEventListener("click", (ev) =>
    act(`Roll back from ${status.promoted} to ${ev.target.dataset.previous}?`, "POST", "/v1/admin/models/rollback"));
  load().catch((e) => flash(e.message, "error"));
}

// -- health ----------------------------------------------------------------------------------------------

function initHealth() {
  every(5000, async () => {
    const [h, ready] = await Promise.all([
      api("GET", "/v1/admin/health"),
      fetch("/readyz").then((r) => r.json()).catch(() => ({ ready: false })),
    ]);
    document.getElementById("ready").textContent = ready.ready ? "ready" : "NOT READY";
    document.getElementById("ready").className = ready.ready ? "ok" : "bad";
    document.getElementById("model").textContent = h.model_version || "none";
    document.getElementById("catalog").textContent = `version ${fmt(h.catalog_version)} · ${fmt(h.catalog_offers)} offers`;
    document.getElementById("answers").textContent = fmt(h.answers);
    document.getElementById("degraded").textContent = pct(h.degraded_share);
    document.getElementById("deadline").textContent = fmt(h.deadline_exceeded);
    const share = (n) => (h.answers ? pct(n / h.answers) : "–");
    fill(document.querySelector("#modes tbody"), Object.entries(h.answers_by_mode).map(([m, n]) =>
      el("tr", {}, el("td", {}, m), el("td", { class: "num" }, fmt(n)), el("td", { class: "num" }, share(n)))), "No recommend answers yet.");
    fill(document.querySelector("#causes tbody"), Object.entries(h.degraded_by_cause).map(([c, n]) =>
      el("tr", {}, el("td", {}, c), el("td", { class: "num" }, fmt(n)), el("td", { class: "num" }, share(n)))), "No degraded answers.");
    fill(document.querySelector("#stages tbody"), Object.entries(h.stage_latency_ms).map(([s, r]) =>
      el("tr", {}, el("td", {}, s), el("td", { class: "num" }, fmt(r.count)), el("td", { class: "num" }, fmt(r.p50)),
        el("td", { class: "num" }, fmt(r.p95)), el("td", { class: "num" }, fmt(r.p99)))));
    fill(document.querySelector("#feedback tbody"), Object.entries(h.feedback).flatMap(([t, outs]) =>
      Object.entries(outs).map(([o, n]) => el("tr", {}, el("td", {}, t), el("td", {}, o), el("td", { class: "num" }, fmt(n))))), "No feedback received yet.");
    fill(document.querySelector("#edge tbody"), Object.entries(h.edge_rejected_by_cause).map(([c, n]) =>
      el("tr", {}, el("td", {}, c), el("td", { class: "num" }, fmt(n)))), "Nothing refused.");
  });
}

// -- member ----------------------------------------------------------------------------------------------

function initMember() {
  const form = document.getElementById("member-form");
  const params = new URLSearchParams(location.search);
  for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;

  async function show() {
    const f = form.elements;
    const id = f.member_id.value.trim();
    if (!id) return;
    history.replaceState(null, "", "?" + new URLSearchParams(new FormData(form)).toString());
    const context = { page_type: f.page_type.value, device: f.device.value, channel: f.channel.value };
    if (f.category.value) context.category = f.category.value;
    const note = document.getElementById("member-note");
    const [state, slate] = await Promise.all([
      api("GET", `/v1/admin/members/${encodeURIComponent(id)}`).catch((e) => { if (e.status === 404) return null; throw e; }),
      api("POST", `/v1/admin/members/${encodeURIComponent(id)}/preview`, context),
    ]);
    note.textContent = state ? "" : "No state is stored for this member: they are ranked as a cold start.";
    document.getElementById("member-result").hidden = false;
    document.getElementById("slate-meta").textContent =
      `mode ${slate.mode}${slate.degraded ? " (degraded: " + slate.degraded_cause + ")" : ""} · model ${slate.model_version || "none"} · ` +
      `${slate.eligible} eligible of ${slate.candidates}`;
    fill(document.querySelector("#slate tbody"), slate.offers.map((o) => el("tr", { "data-offer": o.offer_id },
      el("td", { class: "num" }, o.position + 1), el("td", {}, el("code", {}, o.offer_id), el("div", { class: "small" }, o.title)),
      el("td", {}, o.kind), el("td", { class: "num" }, fmt(o.score, 4)), el("td", { class: "num" }, fmt(o.propensity, 3)),
      el("td", {}, el("ul", { class: "reasons" }, o.reasons.map((r) => el("li", { title: r.code }, r.text)))))));
    fill(document.querySelector("#excluded tbody"), slate.excluded.map((x) => el("tr", { "data-offer": x.offer_id },
      el("td", {}, el("code", {}, x.offer_id)), el("td", {}, el("code", {}, x.reason)), el("td", {}, x.text))), "Every offer was eligible.");
    document.getElementById("excluded-count").textContent = `${slate.excluded.length} offers`;
    const s = state || { attributes: {}, features: {}, category_interest_7d: {}, offers: [] };
    const attrs = { ...s.attributes };
    for (const k of Object.keys(attrs)) if (k.endsWith("_ts")) attrs[k] = tsText(attrs[k]);
    kvRows(document.querySelector("#attributes tbody"), attrs);
    kvRows(document.querySelector("#features tbody"), s.features);
    kvRows(document.querySelector("#interest tbody"), s.category_interest_7d);
    fill(document.querySelector("#history tbody"), s.offers.map((o) => el("tr", {},
      el("td", {}, el("code", {}, o.offer_id), el("div", { class: "small" }, o.title || "(not in catalogue)")),
      el("td", { class: "num" }, o.shown), el("td", { class: "num" }, o.impressions_since_action),
      el("td", { class: "num" }, o.clicks), el("td", { class: "num" }, o.claims), el("td", { class: "num" }, o.dismisses),
      el("td", { class: "small" }, o.caps ? `max ${o.caps.max_claims_per_member} claim(s), ${o.caps.max_impressions_without_action} views w/o action, ` +
        `cool-down ${o.caps.cooldown_after_claim_hours} h after claim / ${o.caps.cooldown_after_dismiss_hours} h after dismiss` : "–"))), "No offer history.");
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); show().catch((e) => flash(e.message, "error")); });
  if (params.get("member_id")) show().catch((e) => flash(e.message, "error"));
}

// -- boot ------------------------------------------------------------------------------------------------

const PAGES = { login: initLogin, catalogue: initCatalogue, campaigns: initCampaigns, models: initModels,
  health: initHealth, member: initMember };

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page !== "login" && !sessionStorage.getItem(KEY)) {
    location.href = "/console/login?next=" + encodeURIComponent(location.pathname + location.search);
    return;
  }
  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.href = "/console/login"; });
  PAGES[page]();
});
