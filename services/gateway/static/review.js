// radreport review page: sign in with a token, the worklist, a grounded report (the study
// image with each sentence's overlay), edit, sign, FHIR. Plain ES2020 module: no build step,
// no network beyond this gateway. Every value from the API is written with textContent.

const API = "/api/v1";
const TOKEN_KEY = "radreport-token";
const $ = (selector) => document.querySelector(selector);
const VIEWS = ["login-view", "worklist-view", "report-view"];
const STATUS_WORDS = { draft: "Draft", signed: "Signed", amended: "Amended" };
const PRIORITY_WORDS = { critical: "Critical", review: "Review", routine: "Routine" };
const IN_PROGRESS = new Set(["queued", "preprocessing", "inferring", "formatting"]);
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "short" });

const state = {
  session: 0,          // bumped on sign-out: answers to older requests are dropped
  me: null,            // {subject, role}
  report: null,        // the report on screen
  saved: null,         // {findings, impression} as last loaded or saved
  selected: null,      // index of the selected sentence, or null
  images: new Map(),   // API path -> Promise of an object URL (this report's images)
  imageTicket: 0,      // the latest image asked for wins
  hoverTimer: 0,
  stash: null,         // unsaved edits kept over a re-sign-in: {reportId, findings, impression}
  lastReportId: null,  // to put the focus back on its worklist row
  ignoreHash: false,
};

class Unauthenticated extends Error {}
class Stale extends Error {}
class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

// ---------------------------------------------------------------- API

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function detailMessage(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {  // FastAPI validation errors
    return detail.map((e) => {
      const where = (e.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${e.msg}` : e.msg;
    }).join("; ");
  }
  return `The server answered ${status}.`;
}

async function readJson(response) {
  try { return await response.json(); } catch { return null; }
}

async function api(path, { method = "GET", json } = {}) {
  const session = state.session;
  const headers = { Authorization: `Bearer ${token()}` };
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
      method, headers, cache: "no-store", credentials: "omit",
      body: json === undefined ? undefined : JSON.stringify(json),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Check the connection and try again.", 0);
  }
  if (session !== state.session) throw new Stale();
  if (response.status === 401) {
    const message = detailMessage(await readJson(response), 401);
    const reason = message.replace(/\.$/, "");
    signOut(state.me ? `Your session has ended (${reason}). Sign in again to continue.`
                     : `Sign-in failed: ${reason}.`, { keepEdits: true });
    throw new Unauthenticated(message);
  }
  if (!response.ok) throw new ApiError(detailMessage(await readJson(response), response.status),
                                       response.status);
  return response;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

// Runs an action and shows what went wrong; a 401 has already gone back to sign-in.
async function run(action) {
  try {
    return await action();
  } catch (error) {
    if (error instanceof Unauthenticated || error instanceof Stale) return undefined;
    showAlert(error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`);
    if (!(error instanceof ApiError)) console.error(error);
    return undefined;
  }
}

// ---------------------------------------------------------------- page furniture

function el(tag, { className, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function badge(text, kind) { return el("span", { className: `badge ${kind || ""}`.trim(), text }); }

function timeEl(iso) {
  if (!iso) return el("span", { text: "—" });
  const date = new Date(iso);
  return el("time", { text: Number.isNaN(date.getTime()) ? iso : dateFormat.format(date),
                      attrs: { datetime: iso } });
}

function showAlert(message) {
  const alert = $("#alert");
  if (!message) { alert.replaceChildren(); return; }
  const close = el("button", { className: "alert-close", text: "×",
                               attrs: { type: "button", "aria-label": "Dismiss message" } });
  close.addEventListener("click", () => showAlert(""));
  const text = message.charAt(0).toUpperCase() + message.slice(1);
  alert.replaceChildren(el("span", { className: "alert-text", text }), close);
}

function announce(message) {
  const notice = $("#notice");
  notice.textContent = "";
  window.setTimeout(() => { notice.textContent = message; }, 50);
}

function show(view, focusSelector) {
  for (const id of VIEWS) document.getElementById(id).hidden = id !== view;
  if (focusSelector) $(focusSelector).focus({ preventScroll: false });
}

function setBusy(button, busy) {
  button.disabled = busy;
  button.toggleAttribute("aria-busy", busy);
}

// ---------------------------------------------------------------- sign-in

function showLogin(message) {
  $("#session").hidden = true;
  $("#token").value = "";
  show("login-view", "#token");
  showAlert(message || "");
}

function signOut(message, { keepEdits = false } = {}) {
  if (keepEdits && state.report && isDirty()) {
    state.stash = { reportId: state.report.report_id, ...currentText() };
  } else if (!keepEdits) {
    state.stash = null;
  }
  state.session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  leaveReport();
  if (!keepEdits) replaceHash("");
  showLogin(message);
}

async function startSession() {
  const me = await apiJson("auth/me");
  state.me = me;
  $("#user").textContent = `${me.subject} (${me.role})`;
  $("#session").hidden = false;
  showAlert("");
  try {
    await route();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 403)) throw error;
    signOut(`${error.message}: the review page needs a radiologist or admin token.`);
  }
}

// ---------------------------------------------------------------- routing (#/worklist, #/reports/ID)

function reportIdFromHash() {
  const match = location.hash.match(/^#\/reports\/([^/?#]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function replaceHash(hash) {
  history.replaceState(null, "", `${location.pathname}${location.search}${hash}`);
}

function navigate(hash) {
  if (location.hash === hash) { run(route); return; }
  location.hash = hash;  // hashchange routes
}

async function route() {
  if (!token()) { showLogin(""); return; }
  const reportId = reportIdFromHash();
  if (!reportId) { await openWorklist(); return; }
  try {
    await openReport(reportId);
  } catch (error) {
    // An unknown or unreadable report: the worklist, with the reason.
    if (!(error instanceof ApiError) || error.status === 403) throw error;
    replaceHash("#/worklist");
    await openWorklist();
    showAlert(error.message);
  }
}

window.addEventListener("hashchange", (event) => {
  if (state.ignoreHash) { state.ignoreHash = false; return; }
  const leaving = state.report && reportIdFromHash() !== state.report.report_id;
  if (leaving && isDirty() && !window.confirm("Leave this report? Your edits are not saved.")) {
    state.ignoreHash = true;
    location.hash = new URL(event.oldURL).hash;
    return;
  }
  run(route);
});

window.addEventListener("beforeunload", (event) => {
  if (state.report && isDirty()) { event.preventDefault(); event.returnValue = ""; }
});

// ---------------------------------------------------------------- worklist

async function openWorklist() {
  leaveReport();
  const items = await apiJson("worklist");
  renderWorklist(items);
  const row = state.lastReportId
    && document.querySelector(`tr.worklist-row[data-report-id="${CSS.escape(state.lastReportId)}"]`);
  show("worklist-view", row ? null : "#worklist-heading");
  if (row) row.focus();
}

function renderWorklist(items) {
  const body = $("#worklist tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.className = `worklist-row priority-${item.priority}`;
    row.dataset.reportId = item.report_id;
    row.tabIndex = 0;

    const priority = row.insertCell();
    priority.append(badge(PRIORITY_WORDS[item.priority] || item.priority, item.priority));
    if (item.critical_findings && item.critical_findings.length) {
      priority.append(el("div", { className: "critical-list", text: item.critical_findings.join(", ") }));
    }
    const study = row.insertCell();
    study.append(el("div", { className: "study-id", text: item.study_id }),
                 el("div", { className: "muted small mono", text: item.report_id }));
    const pipeline = row.insertCell();
    pipeline.append(el("span", { className: `status status-${item.status}`, text: item.status }));
    row.insertCell().append(badge(STATUS_WORDS[item.review_status] || item.review_status,
                                  item.review_status));
    row.insertCell().append(timeEl(item.created_at));

    row.addEventListener("click", () => openRow(row));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); openRow(row); }
      else if (event.key === "ArrowDown" && row.nextElementSibling) { event.preventDefault(); row.nextElementSibling.focus(); }
      else if (event.key === "ArrowUp" && row.previousElementSibling) { event.preventDefault(); row.previousElementSibling.focus(); }
    });
  }
  $("#worklist-empty").hidden = items.length > 0;
  $("#worklist").hidden = items.length === 0;
  const critical = items.filter((i) => i.priority === "critical" && i.review_status !== "signed").length;
  $("#worklist-count").textContent = `${items.length} report${items.length === 1 ? "" : "s"}`
    + (critical ? ` · ${critical} critical unsigned` : "");
  $("#worklist-updated").textContent = `Updated ${timeFormat.format(new Date())}`;
}

function openRow(row) {
  showAlert("");
  navigate(`#/reports/${encodeURIComponent(row.dataset.reportId)}`);
}

// ---------------------------------------------------------------- report

function leaveReport() {
  window.clearTimeout(state.hoverTimer);
  state.imageTicket += 1;
  const old = [...state.images.values()];
  window.setTimeout(() => {  // after any image still decoding has finished with it
    for (const promise of old) promise.then((url) => URL.revokeObjectURL(url), () => {});
  }, 5000);
  state.images.clear();
  const image = $("#study-image");
  image.removeAttribute("src");
  image.alt = "";
  image.dataset.showing = "none";
  const download = $("#fhir-download");
  if (download.href.startsWith("blob:")) URL.revokeObjectURL(download.href);
  state.report = null;
  state.saved = null;
  state.selected = null;
}

async function openReport(reportId) {
  if (state.report && state.report.report_id === reportId) { show("report-view"); return; }
  leaveReport();
  const report = await apiJson(`reports/${encodeURIComponent(reportId)}`);
  state.lastReportId = report.report_id;
  renderReport(report, { fresh: true });
  if (state.stash && state.stash.reportId === report.report_id && canEdit(report)) {
    $("#findings-text").value = state.stash.findings;
    $("#impression-text").value = state.stash.impression;
    updateDirty();
    announce("Your unsaved edits were restored.");
  }
  state.stash = null;
  show("report-view", "#report-title");
  window.scrollTo(0, 0);
  if (report.status === "completed") await display(null);
}

function canEdit(report) {
  return Boolean(state.me && state.me.role === "radiologist" && report.status === "completed");
}

function renderReport(report, { fresh = false } = {}) {
  state.report = report;
  state.saved = { findings: report.findings || "", impression: report.impression || "" };
  $("#report-title").textContent = report.study_id;

  const review = $("#review-status");
  review.textContent = STATUS_WORDS[report.review_status] || report.review_status;
  review.className = `badge ${report.review_status}`;
  $("#signed-info").textContent = report.signed_by
    ? `Signed by ${report.signed_by} at ${report.signed_at ? dateFormat.format(new Date(report.signed_at)) : "—"}`
    : "Not signed";

  renderMeta(report);
  const outside = report.out_of_distribution === true;
  $("#ood-badge").hidden = !outside;
  $("#ood-warning").hidden = !outside;
  const completed = report.status === "completed";
  for (const part of ["#report-view .columns", "#report-view .lower", "#report-view .editor"]) {
    $(part).hidden = !completed;
  }
  if (fresh) {
    const image = $("#study-image");
    image.removeAttribute("src");
    image.alt = "";
    image.dataset.showing = "none";
    $("#image-placeholder").textContent = "Loading image…";
    $("#image-placeholder").hidden = false;
    $("#image-caption").textContent = "Study image";
    $("#show-plain").hidden = true;
  }
  renderState(report);
  if (fresh) {
    renderSentences(report);
  } else {
    // The text may have changed, the grounding has not: keep the selection and the image.
    for (const item of document.querySelectorAll("li.sentence")) {
      const sentence = report.sentences[Number(item.dataset.index)];
      if (sentence) item.querySelector(".sentence-text").textContent = sentence.text;
    }
  }
  renderFindings(report);
  renderReasons(report);

  const editable = canEdit(report);
  for (const id of ["#findings-text", "#impression-text"]) $(id).readOnly = !editable;
  $("#findings-text").value = state.saved.findings;
  $("#impression-text").value = state.saved.impression;
  $("#save-button").disabled = !editable;
  $("#sign-button").disabled = !editable;
  let note = "";
  if (report.status !== "completed") note = "A report can be edited and signed once it is completed.";
  else if (!state.me || state.me.role !== "radiologist") note = `Your role (${state.me ? state.me.role : "unknown"}) can read this report but not edit or sign it.`;
  else if (report.review_status === "signed") note = "Saving a change to a signed report makes it amended; sign again to finalise the amendment.";
  else note = "Edit the AI draft as needed, then sign. Signing makes the FHIR DiagnosticReport final.";
  $("#editor-note").textContent = note;
  updateDirty();
  if (fresh) {
    $("#fhir-panel").hidden = true;
    $("#show-fhir").setAttribute("aria-expanded", "false");
    $("#fhir-json").textContent = "";
  }
}

function renderMeta(report) {
  const rows = [
    ["Report", report.report_id],
    ["Model", report.model_version || "—"],
    ["Pipeline", report.status],
    ["Created", report.created_at ? dateFormat.format(new Date(report.created_at)) : "—"],
    ["Model confidence", typeof report.confidence === "number" ? `${Math.round(report.confidence * 100)}%` : "—"],
  ];
  // The safety net (model v2): shown only when the report has it
  if (typeof report.calibrated_confidence === "number") {
    rows.push(["Calibrated confidence", `${Math.round(report.calibrated_confidence * 100)}%`]);
  }
  if (typeof report.ood_score === "number") {
    const limit = typeof report.ood_threshold === "number" ? ` (limit ${report.ood_threshold.toFixed(1)})` : "";
    const verdict = report.out_of_distribution ? " · outside the training distribution" : "";
    rows.push(["OOD score", `${report.ood_score.toFixed(1)}${limit}${verdict}`]);
  }
  if ((report.uncertain_findings || []).length) {
    rows.push(["Uncertain findings", report.uncertain_findings.join(", ")]);
  }
  if (typeof report.edit_distance === "number") {
    rows.push(["Edited from draft", `${(report.edit_distance * 100).toFixed(1)}%`]);
  }
  $("#report-meta").replaceChildren(...rows.map(([term, value]) =>
    el("div", { className: "meta-item" }, el("dt", { text: term }), el("dd", { text: value }))));
}

function renderState(report) {
  const banner = $("#report-state");
  if (report.status === "completed") { banner.hidden = true; banner.replaceChildren(); return; }
  const inProgress = IN_PROGRESS.has(report.status);
  const text = inProgress
    ? `This report is still being generated (${report.status}).`
    : `This report ${report.status === "failed" ? "failed" : `is ${report.status}`}${report.status_reason ? `: ${report.status_reason}` : "."}`;
  banner.className = `state-banner ${inProgress ? "info" : "error"}`;
  banner.replaceChildren(el("span", { text }));
  if (inProgress) {
    const reload = el("button", { className: "button small", text: "Reload", attrs: { type: "button" } });
    reload.addEventListener("click", () => run(async () => {
      const id = state.report.report_id;
      leaveReport();
      await openReport(id);
    }));
    banner.append(reload);
  }
  banner.hidden = false;
}

// -------------------------------------------------- sentences and the image

function renderSentences(report) {
  const list = $("#sentences");
  list.replaceChildren();
  const critical = new Set((report.findings_structured || []).filter((f) => f.is_critical).map((f) => f.finding));
  const groups = new Map();
  for (const sentence of report.sentences || []) {
    if (!groups.has(sentence.section)) {
      const name = sentence.section === "impression" ? "Impression" : "Findings";
      const group = el("ul", { className: "sentence-group", attrs: { role: "group", "aria-label": name, "data-label": name } });
      groups.set(sentence.section, group);
      list.append(group);
    }
    const item = el("li", {
      className: "sentence",
      attrs: { role: "option", "aria-selected": "false", id: `sentence-${sentence.index}`,
               "data-index": String(sentence.index) },
    });
    item.tabIndex = -1;
    const tags = el("span", { className: "sentence-tags" });
    for (const label of sentence.labels || []) {
      tags.append(el("span", { className: `chip${critical.has(label) ? " chip-critical" : ""}`, text: label }));
    }
    item.append(el("span", { className: "sentence-number", text: String(sentence.index + 1), attrs: { "aria-hidden": "true" } }),
                el("span", { className: "sentence-body" }, el("span", { className: "sentence-text", text: sentence.text }), tags));
    item.addEventListener("click", () => selectSentence(sentence.index));
    item.addEventListener("focus", () => selectSentence(sentence.index));
    item.addEventListener("mouseenter", () => hover(sentence.index));
    groups.get(sentence.section).append(item);
  }
  const first = list.querySelector("li.sentence");
  if (first) first.tabIndex = 0;
  else list.append(el("p", { className: "empty", text: "The report has no sentences." }));
}

function sentenceItems() { return [...document.querySelectorAll("li.sentence")]; }

function selectSentence(index) {
  window.clearTimeout(state.hoverTimer);
  const items = sentenceItems();
  for (const item of items) {
    const chosen = index !== null && Number(item.dataset.index) === index;
    item.classList.toggle("selected", chosen);
    item.setAttribute("aria-selected", String(chosen));
    item.tabIndex = chosen ? 0 : -1;
  }
  if (index === null && items.length) items[0].tabIndex = 0;
  state.selected = index;
  $("#show-plain").hidden = index === null;
  run(() => display(index));
}

function hover(index) {
  window.clearTimeout(state.hoverTimer);
  state.hoverTimer = window.setTimeout(() => run(() => display(index)), 60);
}

function imagePath(index) {
  const report = state.report;
  if (index === null) return `${API}/reports/${encodeURIComponent(report.report_id)}/image.png?size=preview`;
  const url = report.sentences[index].overlay_url;
  return `${url}${url.includes("?") ? "&" : "?"}size=preview`;
}

function objectUrl(path) {
  if (!state.images.has(path)) {
    const promise = api(path).then((response) => response.blob()).then((blob) => URL.createObjectURL(blob));
    promise.catch(() => state.images.delete(path));
    state.images.set(path, promise);
  }
  return state.images.get(path);
}

// Shows the plain image (index null) or sentence index's overlay; the latest request wins.
async function display(index) {
  const report = state.report;
  if (!report || report.status !== "completed") return;
  const showing = index === null ? "image" : `sentence-${index}`;
  const image = $("#study-image");
  const ticket = ++state.imageTicket;
  if (image.dataset.showing === showing && image.getAttribute("src")) return;
  const placeholder = $("#image-placeholder");
  let url;
  try {
    url = await objectUrl(imagePath(index));
    const preload = new Image();
    preload.src = url;
    await preload.decode();
  } catch (error) {
    if (error instanceof Unauthenticated || error instanceof Stale) throw error;
    if (ticket !== state.imageTicket) return;  // superseded (or the report was left): no matter
    image.removeAttribute("src");
    image.dataset.showing = "none";
    placeholder.textContent = `Image unavailable: ${error.message || "it could not be decoded"}`;
    placeholder.hidden = false;
    return;
  }
  if (ticket !== state.imageTicket || state.report !== report) return;
  image.src = url;
  try { await image.decode(); } catch { /* a newer image took its place */ }
  if (ticket !== state.imageTicket || state.report !== report) return;
  image.dataset.showing = showing;
  placeholder.hidden = true;
  if (index === null) {
    image.alt = `Study ${report.study_id}, frontal chest radiograph, without overlay`;
    $("#image-caption").textContent = "Study image (no overlay)";
  } else {
    const sentence = report.sentences[index];
    image.alt = `Study ${report.study_id} with the model's attention for sentence ${index + 1}: ${sentence.text}`;
    $("#image-caption").textContent = `${index + 1}. ${sentence.text}`;
  }
}

$("#sentences").addEventListener("mouseleave", () => hover(state.selected));
$("#sentences").addEventListener("keydown", (event) => {
  const items = sentenceItems();
  if (!items.length) return;
  const at = items.indexOf(document.activeElement);
  let next = null;
  if (event.key === "ArrowDown") next = items[Math.min(at + 1, items.length - 1)];
  else if (event.key === "ArrowUp") next = items[Math.max(at - 1, 0)];
  else if (event.key === "Home") next = items[0];
  else if (event.key === "End") next = items[items.length - 1];
  else if (event.key === "Escape") { event.preventDefault(); selectSentence(null); return; }
  if (next) { event.preventDefault(); next.focus(); }
});
$("#show-plain").addEventListener("click", () => selectSentence(null));

// -------------------------------------------------- findings and reasons

// Whether the label head and the text disagree on a finding. With calibrated decisions
// (model v2) the head's threshold is the model's, not 0.5: a finding the text omits is
// listed only because the head decided it present, and critical disagreements either way
// are among the review reasons.
function disagrees(finding, report) {
  const prefix = `critical finding disagreement: ${finding.finding} (`;
  if ((report.review_reasons || []).some((reason) => reason.startsWith(prefix))) return true;
  if (typeof finding.calibrated_probability === "number") return !finding.mentioned_in_text;
  return (!finding.mentioned_in_text && finding.confidence >= 0.5)
    || (finding.mentioned_in_text && finding.confidence < 0.5);
}

function percentCell(row, probability) {
  const cell = row.insertCell();
  if (typeof probability !== "number") { cell.textContent = "—"; return null; }
  const percent = Math.round(probability * 100);
  const fill = el("span", { className: "conf-fill" });
  fill.style.width = `${percent}%`;  // CSSOM, so a strict style-src CSP still allows it
  const bar = el("span", { className: "conf-bar", attrs: { "aria-hidden": "true" } }, fill);
  cell.append(el("span", { className: "confidence" }, bar, el("span", { className: "conf-value", text: `${percent}%` })));
  return percent;
}

function renderFindings(report) {
  const findings = report.findings_structured || [];
  const uncertain = new Set(report.uncertain_findings || []);
  const body = $("#findings-table tbody");
  body.replaceChildren();
  for (const finding of findings) {
    const row = body.insertRow();
    if (finding.is_critical && finding.present) row.className = "critical-row";
    row.insertCell().append(el("span", { className: "finding-name", text: finding.finding }));
    row.insertCell().append(el("span", { className: `present ${finding.present ? "yes" : "no"}`,
                                         text: finding.present ? "Yes" : "No" }));
    const percent = percentCell(row, finding.confidence);
    const calibrated = percentCell(row, finding.calibrated_probability);
    row.insertCell().textContent = finding.severity || "—";
    const flags = row.insertCell();
    flags.className = "flags";
    if (finding.is_critical) flags.append(badge("Critical", "critical"));
    if (uncertain.has(finding.finding)) flags.append(badge("Uncertain", "uncertain"));
    if (disagrees(finding, report)) {
      const shown = calibrated === null ? `${percent}%` : `${calibrated}% (calibrated)`;
      const why = finding.mentioned_in_text
        ? `The text reports ${finding.finding} but the label head gives it ${shown}.`
        : `The label head gives ${finding.finding} ${shown} but the text does not report it.`;
      flags.append(el("span", { className: "disagree", attrs: { title: why } },
                      el("span", { className: "disagree-icon", text: "⚠", attrs: { "aria-hidden": "true" } }),
                      el("span", { text: " Text and label head disagree" }),
                      el("span", { className: "visually-hidden", text: `: ${why}` })));
    }
  }
  if (!findings.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 6;
    cell.className = "empty";
    cell.textContent = "No findings from the label head.";
  }
}

function renderReasons(report) {
  const reasons = report.review_reasons || [];
  const list = $("#review-reasons");
  list.replaceChildren(...reasons.map((reason) => el("li", { text: reason })));
  if (!reasons.length && report.requires_radiologist_review) {
    list.append(el("li", { text: "Flagged for radiologist review." }));
  }
  $("#review-reasons-card").hidden = list.children.length === 0;
}

// -------------------------------------------------- editing, signing, FHIR

function currentText() {
  return { findings: $("#findings-text").value, impression: $("#impression-text").value };
}

function isDirty() {
  if (!state.saved || !state.report) return false;
  const text = currentText();
  return text.findings !== state.saved.findings || text.impression !== state.saved.impression;
}

function updateDirty() { $("#dirty-flag").hidden = !isDirty(); }

for (const id of ["#findings-text", "#impression-text"]) $(id).addEventListener("input", updateDirty);

async function submitText(sign) {
  const button = sign ? $("#sign-button") : $("#save-button");
  const id = encodeURIComponent(state.report.report_id);
  setBusy(button, true);
  try {
    const report = await apiJson(`reports/${id}/${sign ? "sign" : "text"}`,
                                 { method: sign ? "POST" : "PUT", json: currentText() });
    showAlert("");
    renderReport(report);
    announce(sign ? `Report signed by ${report.signed_by}.`
                  : `Draft saved at ${timeFormat.format(new Date())}.`);
    if (!$("#fhir-panel").hidden) await loadFhir();
  } finally {
    if (state.report) {
      button.disabled = !canEdit(state.report);
      button.removeAttribute("aria-busy");
    }
  }
}

async function loadFhir() {
  const bundle = await apiJson(`reports/${encodeURIComponent(state.report.report_id)}/fhir`);
  const text = JSON.stringify(bundle, null, 2);
  $("#fhir-json").textContent = text;
  const download = $("#fhir-download");
  if (download.href.startsWith("blob:")) URL.revokeObjectURL(download.href);
  download.href = URL.createObjectURL(new Blob([text], { type: "application/fhir+json" }));
  download.download = `${state.report.report_id}.fhir.json`;
}

$("#save-button").addEventListener("click", () => run(() => submitText(false)));
$("#sign-button").addEventListener("click", () => run(() => submitText(true)));
$("#show-fhir").addEventListener("click", () => run(async () => {
  const button = $("#show-fhir");
  const panel = $("#fhir-panel");
  if (!panel.hidden) {
    panel.hidden = true;
    button.setAttribute("aria-expanded", "false");
    return;
  }
  setBusy(button, true);
  try {
    await loadFhir();
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}));

// -------------------------------------------------- wiring

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("#token").value.trim().replace(/^Bearer\s+/i, "");
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  $("#token").value = "";
  run(startSession);
});
$("#sign-out").addEventListener("click", () => {
  if (state.report && isDirty() && !window.confirm("Sign out? Your edits are not saved.")) return;
  signOut("");
});
$("#back-to-worklist").addEventListener("click", () => navigate("#/worklist"));
$("#refresh-worklist").addEventListener("click", () => run(openWorklist));

if (token()) run(startSession);
else showLogin("");
