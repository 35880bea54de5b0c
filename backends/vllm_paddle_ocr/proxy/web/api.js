// The page's one door to the server: the public API only, every URL relative to the page so a path prefix
// (GPUStack's /model/proxy/<route>/, any reverse proxy) is kept.
//
// A document is a job: POST /layout-parsing/jobs, then long polls of its result from the first page not
// yet read (`wait`, `from`), so pages arrive as they finish. A busy server (429/503) is asked again after
// its Retry-After; a job given up on (the cancel button, the tab closed) is cancelled with DELETE.

const KEY_STORAGE = "vllm-paddle-ocr.api-key";
const JOBS = "layout-parsing/jobs"; // relative, never the Location header's absolute path
const POLL_WAIT_S = 30; // how long the server may hold one poll (it holds at most 60 s)
const QUEUED_WAIT_S = 2; // shorter while queued: the server answers at the first page, the queue moves before
const TRIES = 6; // per request, while the server answers 429/503 or cannot be reached
const MAX_BACKOFF_S = 30; // without a Retry-After, waits grow 1, 2, 4 ... seconds, up to this
const MAX_RETRY_AFTER_S = 300;

/** A failed answer, with PaddleX's errorMsg when the server sent one. `ended`: the job itself failed. */
export class ApiError extends Error {
  constructor(status, message, logId, { ended = false } = {}) {
    super(message);
    this.status = status;
    this.logId = logId;
    this.ended = ended;
  }
}

/** PDF (0) or image (1) as /layout-parsing's fileType; undefined lets the server tell from the bytes. */
export function fileType(file) {
  if (file.type === "application/pdf" || /\.pdf$/i.test(file.name)) return 0;
  if (file.type.startsWith("image/")) return 1;
  return undefined;
}

/** Whether a page range applies to the file: a PDF's pages or a TIFF's frames (another image is one page). */
export function hasPages(file) {
  return fileType(file) === 0 || file.type === "image/tiff" || /\.tiff?$/i.test(file.name);
}

/** Retry-After in seconds (a number of seconds or an HTTP date); null when absent or unreadable. */
export function retryAfterSeconds(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason);
      return;
    }
    const stop = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener("abort", stop);
      resolve();
    }, seconds * 1000);
    if (signal) signal.addEventListener("abort", stop, { once: true });
  });
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(new ApiError(0, `cannot read ${file.name}: ${reader.error}`));
    reader.readAsDataURL(file);
  });
}

export class OcrClient {
  /**
   * @param {object} opts
   * @param {(message: string) => Promise<string|null>} opts.askForKey asked when the server answers 401
   */
  constructor({ askForKey }) {
    // The directory the page was served from: "/" for /ui and /, "/model/proxy/3/" under GPUStack.
    this.base = new URL(".", document.baseURI);
    this.askForKey = askForKey;
    this.pendingKey = null; // one question at a time, however many documents are in flight
  }

  get key() {
    return sessionStorage.getItem(KEY_STORAGE);
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  }

  /**
   * One request: {status, body, retryAfter} when its status is one of `accept` and it carries no error.
   * Asked again on 429/503 (after Retry-After) and when the server cannot be reached; a 401 asks for a key.
   * `job`: the path is a job's result, which answers the job's own error once it failed; a busy server
   * says when to ask again there, so a 429/503 without Retry-After is the job's, not the server's.
   */
  async request(path, init = {}, { accept = [200], signal, onWait, job = false, tries = TRIES } = {}) {
    let backoff = 1;
    for (let attempt = 1; ; attempt += 1) {
      const headers = this.headers(init.headers);
      let answer;
      try {
        answer = await fetch(new URL(path, this.base), { ...init, headers, signal });
      } catch (error) {
        if (error.name === "AbortError" || attempt >= tries) {
          throw error.name === "AbortError" ? error : new ApiError(0, `the server cannot be reached (${error.message})`);
        }
        if (onWait) onWait(backoff, "unreachable");
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_S);
        continue;
      }
      const text = await answer.text();
      let body = null;
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON: a proxy's error page; reported by status below
      }
      if (answer.status === 401) {
        const sentKey = headers.Authorization !== undefined;
        const message = (body && body.errorMsg) || "This server needs an API key.";
        if (!(await this.newKey(sentKey ? `The key was refused: ${message}` : message))) {
          throw new ApiError(401, message, body && body.logId);
        }
        continue;
      }
      const retryAfter = retryAfterSeconds(answer.headers.get("Retry-After"));
      if (accept.includes(answer.status) && body !== null && !body.errorCode) {
        return { status: answer.status, body, retryAfter };
      }
      const message = (body && body.errorMsg) || `HTTP ${answer.status} ${answer.statusText}`.trim();
      const busy = answer.status === 429 || answer.status === 503;
      const answered = body !== null && Boolean(body.errorCode);
      if (job && answered && answer.status !== 404 && !(busy && retryAfter !== null)) {
        throw new ApiError(answer.status, message, body.logId, { ended: true });
      }
      if (!busy || attempt >= tries) throw new ApiError(answer.status, message, body && body.logId);
      let wait = backoff;
      if (retryAfter !== null) wait = Math.min(retryAfter, MAX_RETRY_AFTER_S);
      else backoff = Math.min(backoff * 2, MAX_BACKOFF_S);
      if (onWait) onWait(wait, answer.status);
      await sleep(wait, signal);
    }
  }

  async newKey(message) {
    if (!this.pendingKey) {
      this.pendingKey = this.askForKey(message).finally(() => {
        this.pendingKey = null;
      });
    }
    const key = await this.pendingKey;
    if (!key) return false;
    sessionStorage.setItem(KEY_STORAGE, key);
    return true;
  }

  /** GET /health: PaddleX's health envelope (503 while vLLM is not ready, which is not an error here). */
  async health() {
    const answer = await fetch(new URL("health", this.base));
    return answer.json();
  }

  /**
   * Parse one document as a job; resolves to the /layout-parsing envelope.
   * `onProgress` hears {status: "reading"}, then {job, pages} after every answer: the job's status
   * (pagesDone, pagesTotal, queuePosition) and every page finished so far, in order. `onWait` hears
   * (seconds, why) before the client asks a busy server again. Aborting `signal` cancels the job.
   * @param {File} file
   * @param {object} options /layout-parsing options (useLayoutDetection, visualize, pageRange, ...)
   */
  async parse(file, options, { onProgress = () => {}, onWait, signal } = {}) {
    onProgress({ status: "reading" });
    const body = JSON.stringify({ file: await base64Of(file), fileType: fileType(file), ...options });
    const submitted = await this.request(
      JOBS,
      { method: "POST", headers: { "Content-Type": "application/json" }, body },
      { accept: [202], signal, onWait },
    );
    let job = submitted.body.result;
    const pages = [];
    onProgress({ job, pages });
    try {
      for (;;) {
        const answer = await this.request(
          `${JOBS}/${job.jobId}/result?wait=${job.status === "queued" ? QUEUED_WAIT_S : POLL_WAIT_S}&from=${pages.length}`,
          {},
          { accept: [200, 202], signal, onWait, job: true },
        );
        const result = answer.body.result;
        if (answer.status === 202) {
          pages.push(...result.layoutParsingResults);
          job = result.job;
          onProgress({ job, pages });
          if (result.layoutParsingResults.length === 0 && answer.retryAfter) await sleep(answer.retryAfter, signal);
          continue;
        }
        let envelope = answer.body;
        if (pages.length && options.restructurePages) {
          // Restructuring across pages rewrote the pages already read: read them all again.
          envelope = (await this.request(`${JOBS}/${job.jobId}/result`, {}, { signal, onWait, job: true })).body;
        } else if (pages.length) {
          envelope.result.layoutParsingResults = pages.concat(result.layoutParsingResults);
        }
        const count = envelope.result.layoutParsingResults.length;
        onProgress({ job: { ...job, status: "done", pagesDone: count, pagesTotal: count, queuePosition: null }, pages: envelope.result.layoutParsingResults });
        return envelope;
      }
    } catch (error) {
      if (!(error instanceof ApiError && error.ended)) {
        const last = await this.cancel(job.jobId);
        if (last) onProgress({ job: last, pages });
      }
      throw error;
    }
  }

  /** DELETE a job (its work on the server stops); its last status, or null when the server could not be told. */
  async cancel(jobId) {
    try {
      return (await this.request(`${JOBS}/${jobId}`, { method: "DELETE" }, { tries: 1 })).body.result;
    } catch {
      return null;
    }
  }

  /** Cancel jobs while the page goes away: a request the browser sends even as the tab closes. */
  cancelOnLeave(jobIds) {
    for (const jobId of jobIds) {
      fetch(new URL(`${JOBS}/${jobId}`, this.base), { method: "DELETE", headers: this.headers(), keepalive: true }).catch(() => {});
    }
  }

  /** One markdown for the whole document, pages joined by /restructure-pages as PaddleX joins them. */
  async joinPages(results, { mergeTables = true, relevelTitles = true } = {}) {
    const answer = await this.request("restructure-pages", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        pages: results.map((page) => ({ prunedResult: page.prunedResult })),
        concatenatePages: true,
        mergeTables,
        relevelTitles,
        returnMarkdownImages: false,
      }),
    });
    return answer.body.result.layoutParsingResults[0].markdown.text;
  }
}
