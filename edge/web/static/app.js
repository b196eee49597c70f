// LeukoScreen device page: preview, classify, latest result, history, export, status.
// Plain JavaScript, no external assets (the device is offline). Results are screening aids for
// research use only, never a diagnosis.
"use strict";

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"];
const DECISIONS = { no_blasts: "No blasts suggested", indeterminate: "Indeterminate", retake: "Retake",
  unfamiliar: "Not screened: unlike the images this model was made for",
  possible_blasts: "Possible blasts: refer", error: "Error" };
let deviceStatus = null;
let previewUrl = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function showProblem(text) {
  $("problem").textContent = text || "";
  $("problem").hidden = !text;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { location.reload(); throw new Error("access token needed"); }
  return response;
}

async function detail(response) {
  try {
    const body = await response.json();
    return body.detail || body.message || response.statusText;
  } catch (error) {
    return response.statusText;
  }
}

// --- status ---------------------------------------------------------------------------------------
async function refreshStatus() {
  try {
    const response = await api("/api/status");
    deviceStatus = await response.json();
  } catch (error) {
    showProblem("The device does not answer: " + error.message);
    return;
  }
  const s = deviceStatus;
  const problems = [];
  if (s.disk.free_mb !== null && s.disk.free_mb < s.disk.min_free_mb) problems.push("Storage full: export and free space.");
  if (s.message) problems.push(s.message);  // the camera's problem, a refused model reload, a read-only store
  else if (!s.camera.startsWith("connected")) problems.push("Camera not connected; the device keeps trying.");
  showProblem(problems.join(" "));
  const rows = [
    ["State", s.state + (s.busy ? " (classifying)" : "")],
    ["Message", s.message || "none"],
    ["Model bundle", `${s.bundle.name} ${s.bundle.version} (${s.bundle.format}, ${s.bundle.input_kind} input)`],
    ["Runtime", s.bundle.runtime],
    ["Classes", s.bundle.classes.join(", ")],
    ["Bundle sha256", s.bundle.sha256.slice(0, 16) + "..."],
    ["Compared bundles", s.compared_bundles.length ? s.compared_bundles.join(", ") : "none"],
    ["Camera", s.camera],
    ["Free disk", s.disk.free_mb === null ? "unknown" : `${Math.round(s.disk.free_mb)} MB (minimum ${s.disk.min_free_mb} MB)`],
    ["Captures since start", String(s.captures)],
    ...(s.outbox ? [["MQTT outbox", `${s.outbox.waiting} waiting; ${s.outbox.connected ? "connected to" : "not connected to"} `
      + `${s.outbox.broker} (${s.outbox.topics})` + (s.outbox.problem ? `: ${s.outbox.problem}` : "")],
      ["Last sent", s.outbox.last_sent || "never"]] : []),
    ["Uptime", formatDuration(s.uptime_s)],
    ["Software", "leukoscreen " + s.software_version],
  ];
  $("status").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k }, v)]));
}

function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "-";
}

function formatDuration(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = Math.floor(seconds % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

// --- live preview -----------------------------------------------------------------------------------
async function previewLoop() {
  if (!$("view-screen").hidden && document.visibilityState === "visible") {
    try {
      const response = await api("/api/preview.jpg");
      if (response.ok) {
        const url = URL.createObjectURL(await response.blob());
        $("preview").src = url;
        if (previewUrl) URL.revokeObjectURL(previewUrl);
        previewUrl = url;
        $("focus").textContent = response.headers.get("X-Focus-Score");
      } else {
        $("focus").textContent = await detail(response);
      }
    } catch (error) {
      $("focus").textContent = "no preview";
    }
  }
  setTimeout(previewLoop, 1000);
}

// --- classification ---------------------------------------------------------------------------------
async function classify(body, headers) {
  $("classify").disabled = $("upload").disabled = true;
  $("classify-state").textContent = "Classifying...";
  try {
    const response = await api("/api/classify", { method: "POST", body, headers });
    const answer = await response.json();
    if (response.ok) {
      $("classify-state").textContent = "";
      showResult(answer, "Latest result");
    } else {
      $("classify-state").textContent = answer.detail || answer.message || response.statusText;
    }
  } catch (error) {
    $("classify-state").textContent = "The device did not answer: " + error.message;
  } finally {
    $("classify").disabled = $("upload").disabled = false;
    refreshStatus();
  }
}

function classColour(name) {
  const classes = deviceStatus ? deviceStatus.bundle.classes : [];
  const index = classes.indexOf(name);
  return index < 0 ? "#0057b8" : PALETTE[index % PALETTE.length];
}

// A cell's label and colour: its class and blast score, or grey when the model's guard found it unfamiliar.
function cellLabel(cell) {
  if (!cell.predicted) return "cell";
  return cell.unfamiliar ? "unfamiliar, not read" : `${cell.predicted} ${Math.round(100 * cell.blast_score)}%`;
}
const cellColour = (cell) => (cell.unfamiliar ? "#777777" : classColour(cell.predicted));

// A cell model's cells as crops, most blast-like first, each framed in its class colour.
function showGallery(image, cells) {
  const judged = cells.filter((cell) => cell.predicted).sort((a, b) => b.blast_score - a.blast_score);
  $("result-gallery").replaceChildren(...judged.map((cell) => {
    const [x, y, w, h] = cell.box;
    const canvas = el("canvas", { width: 72, height: 72 });
    canvas.style.borderColor = cellColour(cell);
    canvas.getContext("2d").drawImage(image, x, y, w, h, 0, 0, 72, 72);
    return el("figure", {}, canvas, el("figcaption", {}, cellLabel(cell)));
  }));
}

function showResult(capture, title) {
  const result = capture.result;
  $("result").hidden = false;
  $("result-title").textContent = title;
  $("result-decision").textContent = capture.message;
  $("result-decision").className = "decision " + capture.decision;
  const image = $("result-image"), svg = $("result-boxes");
  svg.replaceChildren();
  $("result-gallery").replaceChildren();
  image.onload = () => {
    svg.setAttribute("viewBox", `0 0 ${image.naturalWidth} ${image.naturalHeight}`);
    for (const cell of result.cells || []) {
      const [x, y, w, h] = cell.box;
      const colour = cellColour(cell);
      const label = cellLabel(cell);
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      for (const [k, v] of Object.entries({ x, y, width: w, height: h, stroke: colour, class: "cell-box" })) rect.setAttribute(k, v);
      rect.dataset.label = label;
      const text = document.createElementNS("http://www.w3.org/2000/svg", "text");
      text.setAttribute("x", x);
      text.setAttribute("y", Math.max(y - 3, 10));
      text.setAttribute("fill", colour);
      text.textContent = label;
      svg.append(rect, text);
    }
    showGallery(image, result.cells || []);
  };
  image.src = capture.image_url;
  const fieldModel = (result.cells || []).every((cell) => !cell.predicted);
  $("result-legend").textContent = fieldModel
    ? "This model reads the whole field: the boxes mark the white cells found; the class probabilities below are for the field."
    : "Boxes are coloured by each cell's class, labelled with its blast probability.";
  const rows = [["Cells found", String(result.cells_found ?? (result.cells || []).length)]];
  for (const [name, count] of Object.entries(result.counts || {})) rows.push([`${name} cells`, String(count)]);
  for (const [name, p] of Object.entries(result.probabilities || {})) rows.push([`P(${name})`, `${(100 * p).toFixed(1)}%`]);
  if (capture.blast_score !== null && capture.blast_score !== undefined) rows.push(["Blast score", `${(100 * capture.blast_score).toFixed(1)}%`]);
  if (result.um_per_px) rows.push(["Pixel size", `${result.um_per_px.toFixed(3)} µm (${result.scale_source})`]);
  if (result.quality && result.quality.focus !== undefined) rows.push(["Focus score", result.quality.focus.toFixed(1)]);
  $("result-table").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const compared = (result.compared || []).map((other) => el("tr", {}, el("th", {}, other.bundle),
    el("td", {}, other.message + (other.blast_score === null || other.blast_score === undefined ? ""
      : ` (blast score ${(100 * other.blast_score).toFixed(1)}%)`))));
  $("result-compared").hidden = compared.length === 0;
  $("result-compared-table").replaceChildren(...compared);
  $("result-meta").textContent = `Sample ${capture.sample_id}, capture ${capture.id}, ${formatTime(capture.time)}, ` +
    `model ${capture.bundle}, ${result.source || "camera"}`;
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });  // on a phone it is far below the button
}

// --- history and export -----------------------------------------------------------------------------
function card(thumbnail, title, href, lines) {
  const link = el("a", { href }, thumbnail ? el("img", { src: thumbnail, alt: "", loading: "lazy" }) : "", el("strong", {}, title));
  return el("li", {}, link, ...lines.map((line) => el("span", {}, line)));
}

async function showHistory() {
  const response = await api("/api/samples");
  const { samples } = await response.json();
  $("samples").replaceChildren(...(samples.length ? samples.map((s) => card(s.thumbnail_url, s.id,
    "#/sample/" + encodeURIComponent(s.id), [`${s.captures} capture(s), last ${formatTime(s.last_time)}`, s.decisions.map((d) => DECISIONS[d] || d).join(", ")]))
    : [el("li", {}, "No results stored yet.")]));
}

async function showSample(sampleId) {
  $("sample-title").textContent = sampleId;
  $("view-sample").dataset.sample = sampleId;
  const response = await api("/api/samples/" + encodeURIComponent(sampleId));
  if (!response.ok) { $("captures").replaceChildren(el("li", {}, await detail(response))); return; }
  const { captures } = await response.json();
  $("captures").replaceChildren(...captures.map((c) => card(c.thumbnail_url, `Capture ${c.id}`, "#/capture/" + c.id,
    [formatTime(c.time), c.message])));
}

async function download(fields) {
  const body = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v) body.append(k, v);
  const response = await api("/api/export", { method: "POST", body });
  if (!response.ok) { showProblem("Export failed: " + (await detail(response))); return; }
  const disposition = response.headers.get("Content-Disposition") || "";
  const utf8 = disposition.match(/filename\*=UTF-8''([^;]+)/), plain = disposition.match(/filename="([^"]+)"/);
  const name = utf8 ? decodeURIComponent(utf8[1]) : plain ? plain[1] : "export";
  const link = el("a", { href: URL.createObjectURL(await response.blob()), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

// --- views ------------------------------------------------------------------------------------------
async function route() {
  const [, view, id] = location.hash.split("/");
  const name = { history: "history", sample: "sample", status: "status", capture: "screen" }[view] || "screen";
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== "view-" + name;
  try {
    if (name === "history") await showHistory();
    if (name === "sample") await showSample(decodeURIComponent(id));
    if (name === "status") await refreshStatus();
    if (view === "capture") {
      const response = await api("/api/results/" + encodeURIComponent(id));
      if (response.ok) showResult(await response.json(), `Capture ${id}`);
    }
  } catch (error) {
    showProblem(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("classify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    classify(JSON.stringify({ sample_id: $("sample-id").value }), { "Content-Type": "application/json" });
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("upload-file").files[0];
    if (!file) { $("classify-state").textContent = "Choose an image file first."; return; }
    const body = new FormData();
    body.append("file", file);
    body.append("sample_id", $("sample-id").value);
    classify(body, {});
  });
  $("export-form").addEventListener("submit", (event) => {
    event.preventDefault();
    download(Object.fromEntries(new FormData(event.target)));
  });
  for (const button of document.querySelectorAll(".export-sample")) {
    button.addEventListener("click", () => download({ format: button.dataset.format, sample_id: $("view-sample").dataset.sample }));
  }
  window.addEventListener("hashchange", route);
  refreshStatus().then(route);
  setInterval(refreshStatus, 5000);
  previewLoop();
});
