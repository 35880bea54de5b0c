// The web page: documents in, their progress, then each page's blocks over its image beside its markdown.

import { ApiError, OcrClient, hasPages } from "./api.js";
import { drawBlocks, renderMarkdown } from "./render.js";

const IN_FLIGHT = 4; // documents sent at once; the server queues the jobs it cannot run yet
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

const ACTIVE = ["reading", "queued", "running"]; // statuses of a document the server is working on

function options() {
  const chosen = {};
  for (const box of $("options").querySelectorAll("input[type=checkbox]")) chosen[box.name] = box.checked;
  const range = $("page-range").value.trim();
  if (range) chosen.pageRange = range;
  return chosen;
}

/** What one document asks: the options chosen when it was added; a page range only where there are pages. */
function optionsFor(file, chosen) {
  const asked = { ...chosen };
  if (!hasPages(file)) delete asked.pageRange;
  return asked;
}

function addFiles(files) {
  const chosen = options();
  for (const file of files) {
    const doc = {
      file, name: file.name, status: "waiting", options: optionsFor(file, chosen), job: null, pages: [],
      envelope: null, error: null, waitNote: null, controller: null, item: null,
    };
    documents.push(doc);
    renderDocument(doc);
    if (/\.json$/i.test(file.name) || file.type === "application/json") openSaved(doc);
  }
  pump();
  renderOverall();
}

async function openSaved(doc) {
  doc.status = "reading";
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
  const busy = documents.filter((doc) => ACTIVE.includes(doc.status)).length;
  const next = documents.filter((doc) => doc.status === "waiting").slice(0, Math.max(0, IN_FLIGHT - busy));
  for (const doc of next) parseDocument(doc);
}

async function parseDocument(doc) {
  doc.controller = new AbortController();
  try {
    const envelope = await client.parse(doc.file, doc.options, {
      signal: doc.controller.signal,
      onProgress: (progress) => {
        doc.waitNote = null;
        if (progress.job) {
          doc.job = progress.job;
          doc.status = progress.job.status === "done" ? "running" : progress.job.status; // done once the answer is kept
          arrived(doc, progress.pages);
        } else {
          doc.status = progress.status;
        }
        renderDocument(doc);
      },
      onWait: (seconds, why) => {
        doc.waitNote = `${why === "unreachable" ? "server unreachable" : `server busy (${why})`}, asking again in ${Math.ceil(seconds)} s`;
        renderDocument(doc);
      },
    });
    finish(doc, envelope);
  } catch (error) {
    if (error.name === "AbortError") cancelled(doc);
    else fail(doc, error);
  }
  doc.controller = null;
  pump();
}

/** Pages finished so far: shown as they come, the first one as soon as nothing else is on screen. */
function arrived(doc, pages) {
  const before = doc.pages.length;
  doc.pages = pages.slice();
  if (doc.pages.length === before) return;
  if (!shown) show(doc, 0);
  else if (shown.doc === doc) showPager(doc, shown.page);
}

function cancel(doc) {
  if (doc.status === "waiting") {
    cancelled(doc);
    pump();
  } else if (doc.controller) {
    doc.controller.abort(); // parse() cancels the job on the server, then parseDocument() marks it
  }
}

function finish(doc, envelope) {
  doc.status = "done";
  doc.envelope = envelope;
  doc.pages = envelope.result.layoutParsingResults;
  renderDocument(doc);
  renderOverall();
  if (!shown) show(doc, 0);
  else if (shown.doc === doc) show(doc, shown.page); // the final pages (restructuring may have rewritten them)
}

function fail(doc, error) {
  doc.status = "failed";
  doc.error = error instanceof ApiError && error.status ? `${error.status}: ${error.message}` : error.message;
  renderDocument(doc);
  renderOverall();
  if (shown && shown.doc === doc) showPager(doc, shown.page);
}

function cancelled(doc) {
  doc.status = "cancelled";
  if (doc.job && doc.job.status !== "cancelled") doc.job = { ...doc.job, status: "cancelled" };
  renderDocument(doc);
  renderOverall();
  if (shown && shown.doc === doc) showPager(doc, shown.page);
}

function stateWords(doc) {
  const job = doc.job;
  if (doc.waitNote && ACTIVE.includes(doc.status)) return doc.waitNote;
  switch (doc.status) {
    case "waiting":
      return "waiting";
    case "reading":
      return "sending";
    case "queued": {
      const ahead = job && job.queuePosition;
      if (ahead === null || ahead === undefined) return "queued on the server";
      return ahead === 0 ? "queued on the server, next" : `queued on the server, ${ahead} ahead`;
    }
    case "running":
      return job && job.pagesTotal ? `page ${job.pagesDone} of ${job.pagesTotal} parsed` : "parsing";
    case "done": {
      const pages = doc.pages.length;
      return `${pages} page${pages === 1 ? "" : "s"}`;
    }
    case "cancelled":
      return doc.pages.length ? `cancelled after ${doc.pages.length} page${doc.pages.length === 1 ? "" : "s"}` : "cancelled";
    default:
      return doc.status;
  }
}

function renderDocument(doc) {
  if (!doc.item) {
    doc.item = document.createElement("li");
    doc.item.innerHTML =
      '<button type="button" class="name"></button><span class="state"></span>' +
      '<button type="button" class="cancel" aria-label="Cancel">Cancel</button><progress></progress><p class="error"></p>';
    doc.item.querySelector(".name").addEventListener("click", () => doc.pages.length && show(doc, 0));
    doc.item.querySelector(".cancel").addEventListener("click", () => cancel(doc));
    $("documents").append(doc.item);
  }
  const item = doc.item;
  const job = doc.job;
  item.dataset.status = doc.status;
  // Where the job stands, for styles and for anyone watching the page's structure.
  item.dataset.jobId = job ? job.jobId : "";
  item.dataset.pagesDone = job ? job.pagesDone : "";
  item.dataset.pagesTotal = job && job.pagesTotal !== null ? job.pagesTotal : "";
  item.dataset.pagesShown = doc.pages.length;
  item.dataset.queuePosition = job && job.queuePosition !== null && job.queuePosition !== undefined ? job.queuePosition : "";
  item.querySelector(".name").textContent = doc.name;
  item.querySelector(".state").textContent = stateWords(doc);
  item.querySelector(".cancel").hidden = !(doc.status === "waiting" || ACTIVE.includes(doc.status));
  const bar = item.querySelector("progress");
  if (doc.status === "done") {
    bar.max = 1;
    bar.value = 1;
  } else if (job && job.pagesTotal) {
    bar.max = job.pagesTotal;
    bar.value = job.pagesDone;
  } else if (doc.status !== "waiting") {
    bar.removeAttribute("value"); // indeterminate while the server has not counted the pages
  }
  bar.hidden = doc.status === "failed" || doc.status === "cancelled" || doc.status === "waiting";
  item.querySelector(".error").textContent = doc.error || "";
}

function renderOverall() {
  const count = (status) => documents.filter((doc) => doc.status === status).length;
  const [done, failed, stopped] = [count("done"), count("failed"), count("cancelled")];
  const line = $("overall");
  line.hidden = documents.length === 0;
  line.textContent =
    `${done} of ${documents.length} document${documents.length === 1 ? "" : "s"} parsed` +
    (failed ? `, ${failed} failed` : "") +
    (stopped ? `, ${stopped} cancelled` : "");
}

/** Jobs still queued or running when the tab closes are cancelled: nobody is left to read their results. */
function cancelOnLeave() {
  const jobs = documents.filter((doc) => doc.job && ACTIVE.includes(doc.status)).map((doc) => doc.job.jobId);
  if (jobs.length) client.cancelOnLeave(jobs);
}

// ------------------------------------------------------------------------------------------ viewer

function pageImage(doc, result) {
  if (result.inputImage) return `data:image/jpeg;base64,${result.inputImage}`;
  // The server sent no page image (visualize off): a picture document is its own page image.
  if (doc.file.type.startsWith("image/") && !hasPages(doc.file) && doc.pages.length === 1) {
    doc.objectUrl = doc.objectUrl || URL.createObjectURL(doc.file);
    return doc.objectUrl;
  }
  return null;
}

/** The pager's words: pages read so far, and while the job runs, how many it will have. */
function pagerWords(doc, page) {
  const words = `Page ${page + 1} / ${doc.pages.length}`;
  if (doc.status === "done") return words;
  const total = doc.job && doc.job.pagesTotal;
  if (ACTIVE.includes(doc.status)) return `${words} · ${total ? `of ${total}, ` : ""}still parsing`;
  return `${words} · ${doc.status}`;
}

/** The pager and downloads for the page shown; they change as more of the document arrives. */
function showPager(doc, page) {
  $("page-number").textContent = pagerWords(doc, page);
  $("prev").disabled = page === 0;
  $("next").disabled = page >= doc.pages.length - 1;
  // The downloads are of the whole answer, there once the document is done (or opened from a file).
  $("download-md").disabled = $("download-json").disabled = !doc.envelope;
}

function show(doc, page) {
  const results = doc.pages;
  if (!results.length) return;
  page = Math.max(0, Math.min(page, results.length - 1));
  shown = { doc, page };
  const result = results[page];
  const pruned = result.prunedResult;
  $("viewer").hidden = false;
  $("viewer-error").hidden = true;
  $("doc-name").textContent = doc.name;
  showPager(doc, page);
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
  // With a page range, page_index says which page of the document this is.
  const where = Number.isInteger(pruned.page_index) ? `page ${pruned.page_index + 1} of the document · ` : "";
  $("page-caption").textContent =
    `${where}${blocks} block${blocks === 1 ? "" : "s"} · ${pruned.width}×${pruned.height}` + (image ? "" : " · no page image (turn on “Return page images”)");

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
  window.addEventListener("pagehide", cancelOnLeave);
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
