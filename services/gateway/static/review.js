// radreport review page: worklist, grounded report, edit and sign. No build step, no CDN.
const API = "/api/v1";
const $ = (selector) => document.querySelector(selector);
let current = null; // the report on screen
const imageUrls = new Map(); // object URLs of fetched images, by API path

function token() { return sessionStorage.getItem("radreport-token"); }

function showAlert(message) {
  const alert = $("#alert");
  alert.textContent = message || "";
  alert.hidden = !message;
}

function show(view) {
  for (const id of ["login-view", "worklist-view", "report-view"]) {
    document.getElementById(id).hidden = id !== view;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token()}`,
               ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    signOut(body.detail || "Please sign in again.");
    throw new Error("unauthenticated");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const message = typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
    showAlert(message);
    throw new Error(message);
  }
  return response;
}

async function imageUrl(path) {
  if (!imageUrls.has(path)) {
    const blob = await (await api(path)).blob();
    imageUrls.set(path, URL.createObjectURL(blob));
  }
  return imageUrls.get(path);
}

function signOut(message) {
  sessionStorage.removeItem("radreport-token");
  $("#session").hidden = true;
  show("login-view");
  showAlert(message || "");
}

async function signIn(value) {
  sessionStorage.setItem("radreport-token", value.trim());
  try {
    const me = await (await api("auth/me")).json();
    $("#user").textContent = `${me.subject} (${me.role})`;
    $("#session").hidden = false;
    showAlert("");
    await openWorklist();
  } catch (error) { /* api() has shown why */ }
}

function cell(row, text, className) {
  const td = row.insertCell();
  if (className) {
    const badge = document.createElement("span");
    badge.className = `badge ${className}`;
    badge.textContent = text;
    td.append(badge);
  } else {
    td.textContent = text;
  }
}

async function openWorklist() {
  const items = await (await api("worklist")).json();
  const body = $("#worklist tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.className = "worklist-row";
    row.dataset.reportId = item.report_id;
    row.tabIndex = 0;
    cell(row, item.priority + (item.critical_findings.length ? `: ${item.critical_findings.join(", ")}` : ""), item.priority);
    cell(row, item.study_id);
    cell(row, item.status);
    cell(row, item.review_status, item.review_status);
    cell(row, new Date(item.created_at).toLocaleString());
    const open = () => openReport(item.report_id);
    row.addEventListener("click", open);
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  }
  show("worklist-view");
}

async function showImage(kind, sentence) {
  const image = $("#study-image");
  const path = kind === "image"
    ? `${API}/reports/${current.report_id}/image.png?size=preview`
    : `${sentence.overlay_url}?size=preview`;
  image.src = await imageUrl(path);
  image.dataset.showing = kind === "image" ? "image" : `sentence-${sentence.index}`;
  $("#image-caption").textContent = kind === "image" ? "Study image" : sentence.text;
}

function selectSentence(item, sentence) {
  for (const other of document.querySelectorAll("li.sentence")) {
    other.classList.toggle("selected", other === item);
    other.setAttribute("aria-selected", String(other === item));
  }
  showImage("sentence", sentence);
}

function renderReport(report) {
  current = report;
  $("#report-title").textContent = `Study ${report.study_id} — model ${report.model_version}`;
  const list = $("#sentences");
  list.replaceChildren();
  for (const sentence of report.sentences) {
    const item = document.createElement("li");
    item.className = "sentence";
    item.dataset.index = sentence.index;
    item.tabIndex = 0;
    item.setAttribute("role", "option");
    item.setAttribute("aria-selected", "false");
    item.textContent = sentence.text;
    item.addEventListener("click", () => selectSentence(item, sentence));
    item.addEventListener("focus", () => selectSentence(item, sentence));
    item.addEventListener("mouseenter", () => showImage("sentence", sentence));
    list.append(item);
  }
  const body = $("#findings-table tbody");
  body.replaceChildren();
  for (const finding of report.findings_structured) {
    const row = body.insertRow();
    cell(row, finding.finding);
    cell(row, finding.present ? "yes" : "no");
    cell(row, `${Math.round(finding.confidence * 100)}%`);
    cell(row, finding.severity || "");
    const disagree = finding.mentioned_in_text !== (finding.confidence >= 0.5);
    const flags = row.insertCell();
    if (finding.is_critical) {
      const badge = document.createElement("span");
      badge.className = "badge critical";
      badge.textContent = "critical";
      flags.append(badge);
    }
    if (disagree) {
      const mark = document.createElement("span");
      mark.className = "disagree";
      mark.textContent = " ⚠ label head and text disagree";
      flags.append(mark);
    }
  }
  if (!report.findings_structured.length) {
    const row = body.insertRow();
    const td = row.insertCell();
    td.colSpan = 5;
    td.textContent = "No finding called present by the text or the label head.";
  }
  const reasons = $("#review-reasons");
  reasons.replaceChildren(...report.review_reasons.map((reason) => {
    const li = document.createElement("li");
    li.textContent = `Review: ${reason}`;
    return li;
  }));
  $("#findings-text").value = report.findings || "";
  $("#impression-text").value = report.impression || "";
  const status = $("#review-status");
  status.textContent = report.review_status;
  status.className = `badge ${report.review_status}`;
  $("#signed-info").textContent = report.signed_by
    ? `Signed by ${report.signed_by} at ${new Date(report.signed_at).toLocaleString()}` : "";
  $("#fhir-json").hidden = true;
}

async function openReport(reportId) {
  imageUrls.clear();
  const report = await (await api(`reports/${reportId}`)).json();
  renderReport(report);
  show("report-view");
  await showImage("image");
}

async function submitText(action) {
  const body = JSON.stringify({ findings: $("#findings-text").value,
                                impression: $("#impression-text").value });
  const path = `reports/${current.report_id}/${action === "sign" ? "sign" : "text"}`;
  const report = await (await api(path, { method: action === "sign" ? "POST" : "PUT", body })).json();
  const selected = document.querySelector("li.sentence.selected");
  renderReport(report);
  showAlert("");
  if (selected) selectSentence(document.querySelector(`li.sentence[data-index="${selected.dataset.index}"]`), report.sentences[Number(selected.dataset.index)]);
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#token").value);
});
$("#sign-out").addEventListener("click", () => signOut(""));
$("#back-to-worklist").addEventListener("click", openWorklist);
$("#save-button").addEventListener("click", () => submitText("save").catch(() => {}));
$("#sign-button").addEventListener("click", () => submitText("sign").catch(() => {}));
$("#show-fhir").addEventListener("click", async () => {
  const bundle = await (await api(`reports/${current.report_id}/fhir`)).json();
  const pre = $("#fhir-json");
  pre.textContent = JSON.stringify(bundle, null, 2);
  pre.hidden = false;
});

if (token()) { signIn(token()); } else { show("login-view"); }
