// The web page: documents in, their progress, then each page's blocks over its image beside its markdown.

import { ApiError, OcrClient } from "./api.js";
import { drawBlocks, renderMarkdown } from "./render.js";

const IN_FLIGHT = 2; // documents parsed at once; the server bounds its own work per block
const $ = (id) => document.getElementById(id);

const client = new OcrClient({ askForKey });
const documents = [];
let shown = null; // { doc, page }

// ---------------------------------------------------------------------------------- server status

async function watchServer() {
  const badge = $("server-status");
  try {
    const health = await client.health();
    const ready = health.errorCode === 0;
    badge.dataset.state = ready ? "ready" : "starting";
    badge.textContent = ready ? "server ready" : health.errorMsg;
    if (!ready) setTimeout(watchServer, 5000);
  } catch (error) {
    badge.dataset.state = "down";
    badge.textContent = "server unreachable";
    setTimeout(watchServer, 5000);
  }
}

// ---------------------------------------------------------------------------------------- API key

function askForKey(message) {
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-message").textContent = message;
  input.value = "";
  return new Promise((resolve) => {
    const finish = (value) => {
      cleanup();
      dialog.close();
      resolve(value);
    };
    const ok = () => finish(input.value.trim() || null);
    const cancel = () => finish(null);
    const key = (event) => {
      if (event.key === "Enter") ok();
    };
    function cleanup() {
      $("key-ok").removeEventListener("click", ok);
      $("key-cancel").removeEventListener("click", cancel);
      input.removeEventListener("keydown", key);
      dialog.removeEventListener("cancel", cancel);
    }
    $("key-ok").addEventListener("click", ok);
    $("key-cancel").addEventListener("click", cancel);
    input.addEventListener("keydown", key);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    input.focus();
  });
}

// -------------------------------------------------------------------------------------- documents

function options() {
  const chosen = {};
  for (const box of $("options").querySelectorAll("input[type=checkbox]")) chosen[box.name] = box.checked;
  return chosen;
}

function addFiles(files) {
  for (const file of files) {
    const doc = { file, name: file.name, status: "queued", progress: null, envelope: null, error: null, item: null };
    documents.push(doc);
    renderDocument(doc);
    if (/\.json$/i.test(file.name) || file.type === "application/json") openSaved(doc);
  }
  pump();
  renderOverall();
}

async function openSaved(doc) {
  doc.status = "running";
  try {
    const envelope = JSON.parse(await doc.file.text());
    if (!envelope || !envelope.result || !Array.isArray(envelope.result.layoutParsingResults)) {
      throw new Error("not a /layout-parsing answer (no result.layoutParsingResults)");
    }
    finish(doc, envelope);
  } catch (error) {
    fail(doc, error);
  }
}

function pump() {
  const running = documents.filter((doc) => doc.status === "reading" || doc.status === "running").length;
  const next = documents.filter((doc) => doc.status === "queued").slice(0, Math.max(0, IN_FLIGHT - running));
  for (const doc of next) parseDocument(doc);
}

async function parseDocument(doc) {
  try {
    const envelope = await client.parse(doc.file, options(), (progress) => {
      doc.status = progress.status;
      doc.progress = progress;
      renderDocument(doc);
    });
    finish(doc, envelope);
  } catch (error) {
    fail(doc, error);
  }
  pump();
}

function finish(doc, envelope) {
  doc.status = "done";
  doc.envelope = envelope;
  renderDocument(doc);
  renderOverall();
  if (!shown) show(doc, 0);
}

function fail(doc, error) {
  doc.status = "failed";
  doc.error = error instanceof ApiError && error.status ? `${error.status}: ${error.message}` : error.message;
  renderDocument(doc);
  renderOverall();
}

function renderDocument(doc) {
  if (!doc.item) {
    doc.item = document.createElement("li");
    doc.item.innerHTML = '<button type="button" class="name"></button><span class="state"></span><progress></progress><p class="error"></p>';
    doc.item.querySelector(".name").addEventListener("click", () => doc.envelope && show(doc, 0));
    $("documents").append(doc.item);
  }
  const item = doc.item;
  item.dataset.status = doc.status;
  item.querySelector(".name").textContent = doc.name;
  const pages = doc.envelope ? doc.envelope.result.layoutParsingResults.length : null;
  const words = {
    queued: "queued",
    reading: "reading",
    running: doc.progress && doc.progress.pagesTotal ? `page ${doc.progress.pagesDone} of ${doc.progress.pagesTotal}` : "parsing",
    done: `${pages} page${pages === 1 ? "" : "s"}`,
    failed: "failed",
  };
  item.querySelector(".state").textContent = words[doc.status] || doc.status;
  const bar = item.querySelector("progress");
  if (doc.status === "done") {
    bar.max = 1;
    bar.value = 1;
  } else if (doc.progress && doc.progress.pagesTotal) {
    bar.max = doc.progress.pagesTotal;
    bar.value = doc.progress.pagesDone;
  } else if (doc.status !== "failed") {
    bar.removeAttribute("value"); // indeterminate while the server works
  }
  bar.hidden = doc.status === "failed";
  item.querySelector(".error").textContent = doc.error || "";
}

function renderOverall() {
  const done = documents.filter((doc) => doc.status === "done").length;
  const failed = documents.filter((doc) => doc.status === "failed").length;
  const line = $("overall");
  line.hidden = documents.length === 0;
  line.textContent = `${done} of ${documents.length} document${documents.length === 1 ? "" : "s"} parsed` + (failed ? `, ${failed} failed` : "");
}

// ------------------------------------------------------------------------------------------ viewer

function pageImage(doc, result) {
  if (result.inputImage) return `data:image/jpeg;base64,${result.inputImage}`;
  // The server sent no page image (visualize off): a picture document is its own page image.
  if (doc.file.type.startsWith("image/") && doc.envelope.result.layoutParsingResults.length === 1) {
    doc.objectUrl = doc.objectUrl || URL.createObjectURL(doc.file);
    return doc.objectUrl;
  }
  return null;
}

function show(doc, page) {
  const results = doc.envelope.result.layoutParsingResults;
  page = Math.max(0, Math.min(page, results.length - 1));
  shown = { doc, page };
  const result = results[page];
  const pruned = result.prunedResult;
  $("viewer").hidden = false;
  $("viewer-error").hidden = true;
  $("doc-name").textContent = doc.name;
  $("page-number").textContent = `Page ${page + 1} / ${results.length}`;
  $("prev").disabled = page === 0;
  $("next").disabled = page === results.length - 1;
  for (const other of documents) other.item && other.item.classList.toggle("shown", other === doc);

  const frame = $("page-view").querySelector(".page-frame");
  frame.style.aspectRatio = `${pruned.width} / ${pruned.height}`;
  const image = pageImage(doc, result);
  const img = $("page-image");
  img.hidden = !image;
  if (image) img.src = image;
  else img.removeAttribute("src");
  drawBlocks($("boxes"), pruned);
  const blocks = (pruned.parsing_res_list || []).length;
  $("page-caption").textContent =
    `${blocks} block${blocks === 1 ? "" : "s"} · ${pruned.width}×${pruned.height}` + (image ? "" : " · no page image (turn on “Return page images”)");

  const article = $("markdown");
  article.replaceChildren(renderMarkdown(result.markdown.text, result.markdown.images || {}));
  $("markdown-source").textContent = result.markdown.text;
}

function showTab(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  $("markdown").hidden = name !== "rendered";
  $("markdown-source").hidden = name !== "source";
}

// --------------------------------------------------------------------------------------- downloads

function stem(name) {
  return name.replace(/\.[^.]+$/, "") || "document";
}

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i += 1) bytes[i] = text.charCodeAt(i);
  return bytes;
}

async function downloadMarkdown() {
  const { doc } = shown;
  const results = doc.envelope.result.layoutParsingResults;
  let text;
  try {
    text = await client.joinPages(results);
  } catch (error) {
    $("viewer-error").textContent = `Markdown download failed: ${error.message}`;
    $("viewer-error").hidden = false;
    return;
  }
  const images = Object.assign({}, ...results.map((result) => result.markdown.images || {}));
  const name = `${stem(doc.name)}.md`;
  if (Object.keys(images).length === 0) {
    save(new Blob([text], { type: "text/markdown" }), name);
    return;
  }
  // The markdown with its pictures at the relative paths it names (imgs/...), in one zip.
  const files = { [name]: window.fflate.strToU8(text) };
  for (const [path, data] of Object.entries(images)) files[path] = bytesOf(data);
  save(new Blob([window.fflate.zipSync(files, { level: 0 })], { type: "application/zip" }), `${stem(doc.name)}.zip`);
}

function downloadJson() {
  const { doc } = shown;
  save(new Blob([JSON.stringify(doc.envelope, null, 2)], { type: "application/json" }), `${stem(doc.name)}.json`);
}

// ------------------------------------------------------------------------------------------ wiring

function wire() {
  const drop = $("drop");
  $("files").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  $("prev").addEventListener("click", () => show(shown.doc, shown.page - 1));
  $("next").addEventListener("click", () => show(shown.doc, shown.page + 1));
  $("download-md").addEventListener("click", downloadMarkdown);
  $("download-json").addEventListener("click", downloadJson);
  for (const tab of document.querySelectorAll("[data-tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  document.addEventListener("keydown", (event) => {
    if (!shown || event.target.closest("input, dialog")) return;
    if (event.key === "ArrowLeft") show(shown.doc, shown.page - 1);
    if (event.key === "ArrowRight") show(shown.doc, shown.page + 1);
  });
}

wire();
watchServer();
