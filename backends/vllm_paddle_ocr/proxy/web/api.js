// The page's one door to the server: the public API only, every URL relative to the page so a path prefix
// (GPUStack's /model/proxy/<route>/, any reverse proxy) is kept.
//
// A document is parsed with one POST /layout-parsing today. `parse` already reports progress and takes
// the options the jobs API adds (pageRange), so moving to POST /layout-parsing/jobs + polling changes
// this file only.

const KEY_STORAGE = "vllm-paddle-ocr.api-key";

/** A failed answer, with PaddleX's errorMsg when the server sent one. */
export class ApiError extends Error {
  constructor(status, message, logId) {
    super(message);
    this.status = status;
    this.logId = logId;
  }
}

/** PDF (0) or image (1) as /layout-parsing's fileType; undefined lets the server tell from the bytes. */
export function fileType(file) {
  if (file.type === "application/pdf" || /\.pdf$/i.test(file.name)) return 0;
  if (file.type.startsWith("image/")) return 1;
  return undefined;
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

  async request(path, init = {}) {
    for (;;) {
      const headers = { ...(init.headers || {}) };
      if (this.key) headers.Authorization = `Bearer ${this.key}`;
      let answer;
      try {
        answer = await fetch(new URL(path, this.base), { ...init, headers });
      } catch (error) {
        throw new ApiError(0, `the server cannot be reached (${error.message})`);
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
      if (!answer.ok || (body && body.errorCode)) {
        const message = (body && body.errorMsg) || `HTTP ${answer.status} ${answer.statusText}`.trim();
        throw new ApiError(answer.status, message, body && body.logId);
      }
      if (body === null) throw new ApiError(answer.status, "the server's answer is not JSON");
      return body;
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
   * Parse one document; resolves to the /layout-parsing envelope.
   * @param {File} file
   * @param {object} options /layout-parsing options (useLayoutDetection, visualize, ...)
   * @param {(p: {status: string, pagesDone?: number, pagesTotal?: number}) => void} onProgress
   */
  async parse(file, options, onProgress) {
    onProgress({ status: "reading" });
    const body = { file: await base64Of(file), fileType: fileType(file), ...options };
    onProgress({ status: "running" });
    const envelope = await this.request("layout-parsing", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const pages = envelope.result.layoutParsingResults.length;
    onProgress({ status: "done", pagesDone: pages, pagesTotal: pages });
    return envelope;
  }

  /** One markdown for the whole document, pages joined by /restructure-pages as PaddleX joins them. */
  async joinPages(results, { mergeTables = true, relevelTitles = true } = {}) {
    const envelope = await this.request("restructure-pages", {
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
    return envelope.result.layoutParsingResults[0].markdown.text;
  }
}
