"""`vllm_paddle_ocr parse`: files and directories in, one Markdown file (with its pictures) and one JSON per document out.

Each document is a job on the server; several are in flight at once, each with a bar that moves as its
pages finish. A document that fails is named at the end, after every other one has been written; an
interrupted run (Ctrl-C) cancels the jobs it started.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

from .api import DOCUMENT_SUFFIXES, JobProgress, LayoutParsingClient, ServerError, has_pages

API_KEY_ENV = "VLLM_PADDLE_OCR_API_KEY"
SERVER_ENV = "VLLM_PADDLE_OCR_SERVER"


class ParseError(VllmPaddleOcrError):
    """Some documents could not be parsed; the message names each of them."""


class Interrupted(ParseError):
    """The run was interrupted (Ctrl-C); the message says what was written and which jobs were cancelled."""

    exit_code = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


@dataclass(frozen=True)
class Document:
    """One input file and the directory its Markdown, JSON and pictures go to."""

    path: Path
    out_dir: Path

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass
class Outcome:
    """What became of one document."""

    document: Document
    markdown: Path | None = None
    pages: int = 0
    pictures: int = 0
    error: str | None = None
    job: JobProgress | None = None  # the document's job as the server last described it


@dataclass
class Inputs:
    """The documents to parse, and the files a directory held that are not documents (reported, not sent)."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def find_documents(paths: Sequence[Path], out: Path) -> Inputs:
    """Files as given, and the PDFs and images under each directory (sorted), each with its own output directory.

    A document's outputs go to OUT/<its path under the directory given>/<stem>/; two inputs that would
    share one (a.pdf and a.png) keep their suffix in the name.
    """
    found = Inputs()
    pairs: list[tuple[Path, PurePosixPath]] = []
    for given in paths:
        if given.is_dir():
            for path in sorted(p for p in given.rglob("*") if p.is_file()):
                if path.suffix.lower() in DOCUMENT_SUFFIXES:
                    pairs.append((path, PurePosixPath(path.relative_to(given).as_posix())))
                else:
                    found.skipped.append(path)
        elif given.is_file():
            pairs.append((given, PurePosixPath(given.name)))
        else:
            raise ParseError(f"{given} does not exist; pass files or directories of PDFs and images")
    seen: dict[PurePosixPath, int] = {}
    for _, relative in pairs:
        key = relative.with_suffix("")
        seen[key] = seen.get(key, 0) + 1
    for path, relative in pairs:
        key = relative.with_suffix("")
        name = relative.name if seen[key] > 1 else relative.stem
        found.documents.append(Document(path, out / relative.parent / name))
    return found


def _picture_path(out_dir: Path, relative: str) -> Path:
    """Where a picture the markdown names goes: inside the document's directory, never outside it."""
    target = (out_dir / relative).resolve()
    if out_dir.resolve() not in target.parents:
        raise ServerError(f"the answer names a picture outside the output directory: {relative!r}")
    return target


def write_outputs(document: Document, envelope: Mapping[str, Any], markdown: str) -> tuple[Path, int]:
    """The document's Markdown, its pictures beside it and the JSON answer; returns the Markdown path and picture count."""
    out_dir = document.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, str] = {}
    for result in envelope["result"]["layoutParsingResults"]:
        pictures.update((result.get("markdown") or {}).get("images") or {})
    for relative, data in pictures.items():
        target = _picture_path(out_dir, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(base64.b64decode(data, validate=True))
        except binascii.Error:
            raise ServerError(f"picture {relative} in the answer is not base64") from None
    markdown_path = out_dir / f"{document.stem}.md"
    markdown_path.write_text(markdown, encoding="utf-8")
    (out_dir / f"{document.stem}.json").write_text(json.dumps(envelope, ensure_ascii=False, indent=2), encoding="utf-8")
    return markdown_path, len(pictures)


def describe(job: JobProgress) -> str:
    """A job's state in a few words beside its bar."""
    if job.status == "queued":
        ahead = job.queue_position
        return "queued" if ahead is None else ("queued, next" if ahead == 0 else f"queued, {ahead} ahead")
    return "" if job.status in ("running", "done") else job.status


async def parse_documents(
    client: LayoutParsingClient,
    outcomes: Sequence[Outcome],
    options: Mapping[str, Any],
    *,
    concurrency: int,
    page_range: str | None = None,
    show_progress: bool | None = None,
) -> Sequence[Outcome]:
    """Parse each outcome's document, `concurrency` at a time, filling the outcome in as it goes.

    A failure is recorded and the others go on; an interruption leaves every outcome saying how far it got.
    `page_range` goes to the documents that have pages (PDFs, TIFFs); an image is its one page.
    """
    slots = asyncio.Semaphore(concurrency)
    # None: bars on a terminal only (tqdm's rule), so logs and pipes get the plain lines alone.
    disable = None if show_progress is None else not show_progress
    overall = tqdm(total=len(outcomes), desc="documents", unit="doc", position=0, disable=disable)
    free_rows = list(range(concurrency, 0, -1))

    def show_pages() -> None:
        done = sum(o.job.pages_done for o in outcomes if o.job is not None)
        overall.set_postfix_str(f"{done} page(s) done")

    async def one(outcome: Outcome) -> None:
        document = outcome.document
        async with slots:
            row = free_rows.pop()
            bar = tqdm(desc=document.path.name, unit="page", position=row, leave=False, disable=overall.disable)
            try:

                def progress(job: JobProgress) -> None:
                    outcome.job = job
                    bar.total = job.pages_total
                    bar.n = job.pages_done
                    bar.set_postfix_str(describe(job), refresh=False)
                    bar.refresh()
                    show_pages()

                data = await asyncio.to_thread(document.path.read_bytes)
                asked = dict(options)
                if page_range is not None and has_pages(document.path.name):
                    asked["pageRange"] = page_range
                envelope = await client.parse(data, name=document.path.name, options=asked, progress=progress)
                del data
                results = envelope["result"]["layoutParsingResults"]
                markdown = await client.join_pages(results, restructure=_restructure_options(options))
                outcome.markdown, outcome.pictures = await asyncio.to_thread(write_outputs, document, envelope, markdown)
                outcome.pages = len(results)
                overall.write(
                    f"{document.path}: {outcome.pages} page(s), {outcome.pictures} picture(s) -> {outcome.markdown}"
                )
            except (VllmPaddleOcrError, OSError) as exc:
                outcome.error = str(exc)
                overall.write(f"{document.path}: failed: {outcome.error}")
            except asyncio.CancelledError:
                outcome.error = "interrupted"
                raise
            finally:
                bar.close()
                free_rows.append(row)
                overall.update(1)

    try:
        await asyncio.gather(*(one(outcome) for outcome in outcomes))
    finally:
        overall.close()
    return outcomes


def request_options(
    *,
    layout_detection: bool = True,
    chart: bool = False,
    seal: bool = False,
    prompt_label: str | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """The /layout-parsing fields from parse's flags; `extra` holds KEY=VALUE pairs, VALUE read as JSON when it is."""
    options: dict[str, Any] = {
        "useLayoutDetection": layout_detection,
        "useChartRecognition": chart,
        "useSealRecognition": seal,
        "visualize": False,  # page images are for viewers; the files written here do not use them
    }
    if prompt_label is not None:
        options["promptLabel"] = prompt_label
    for pair in extra:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ParseError(f"--option {pair!r} is not KEY=VALUE (e.g. --option layoutThreshold=0.4)")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        options[key.strip()] = value
    return options


def _restructure_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The /layout-parsing options that also shape how /restructure-pages joins the pages."""
    keys = ("mergeTables", "relevelTitles", "prettifyMarkdown", "showFormulaNumber")
    return {key: options[key] for key in keys if key in options}


def run_parse(
    paths: Iterable[Path],
    *,
    server: str | None,
    out: Path,
    options: Mapping[str, Any],
    api_key: str | None = None,
    concurrency: int = 4,
    page_range: str | None = None,
    retries: int = 5,
    timeout_s: float = 3600.0,
    show_progress: bool | None = None,
) -> int:
    """The `parse` command: 0 when every document was written, else a ParseError naming the ones that failed."""
    server = server or os.environ.get(SERVER_ENV)
    if not server:
        raise ParseError(f"no server to send the documents to: pass --server URL (or set {SERVER_ENV})")
    if concurrency < 1:
        raise ParseError(f"--concurrency must be at least 1, got {concurrency}")
    inputs = find_documents(list(paths), out)
    for path in inputs.skipped:
        tqdm.write(f"{path}: skipped, not a PDF or an image ({', '.join(DOCUMENT_SUFFIXES)})")
    if not inputs.documents:
        raise ParseError("no PDF or image among the paths given")
    outcomes = [Outcome(document) for document in inputs.documents]
    whole = [d.path.name for d in inputs.documents if page_range is not None and not has_pages(d.path.name)]
    if whole:
        tqdm.write(f"--page-range applies to PDFs and TIFFs; {len(whole)} image(s) parsed whole: {', '.join(whole)}")

    async def main() -> None:
        async with LayoutParsingClient(
            server, api_key=api_key or os.environ.get(API_KEY_ENV), timeout_s=timeout_s, retries=retries
        ) as client:
            await parse_documents(
                client, outcomes, options, concurrency=concurrency, page_range=page_range, show_progress=show_progress
            )

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise Interrupted(interrupted_summary(outcomes, out)) from None
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    written = len(outcomes) - len(failed)
    tqdm.write(f"{written} of {len(outcomes)} document(s) written under {out}")
    if failed:
        names = "; ".join(f"{outcome.document.path} ({outcome.error})" for outcome in failed)
        raise ParseError(f"{len(failed)} of {len(outcomes)} document(s) failed: {names}")
    return 0


def interrupted_summary(outcomes: Sequence[Outcome], out: Path) -> str:
    """What an interrupted run did: documents written, jobs cancelled, and jobs the server may still run."""
    written = sum(1 for outcome in outcomes if outcome.markdown is not None)
    cancelled = [o for o in outcomes if o.job is not None and o.job.status == "cancelled"]
    left = [o for o in outcomes if o.job is not None and o.job.status in ("queued", "running") and o.markdown is None]
    parts = [f"interrupted; {written} of {len(outcomes)} document(s) written under {out}"]
    if cancelled:
        names = ", ".join(f"{o.document.path} (job {o.job.job_id})" for o in cancelled if o.job is not None)
        parts.append(f"cancelled {len(cancelled)} job(s) on the server: {names}")
    if left:
        names = ", ".join(f"{o.document.path} (job {o.job.job_id})" for o in left if o.job is not None)
        parts.append(f"could not cancel {len(left)} job(s), the server may still run them: {names}")
    return "; ".join(parts)
