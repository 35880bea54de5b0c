"""GET /openapi.json (the PaddleX endpoints, from the pydantic schemas) and GET /docs (Swagger UI over it, offline)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..protocol import (
    INFER_ENDPOINT,
    RESTRUCTURE_PAGES_ENDPOINT,
    ErrorResponse,
    InferRequest,
    InferResult,
    JobStatus,
    PartialResult,
    RestructurePagesRequest,
    RestructurePagesResult,
    ResultResponse,
)
from .jobs import JOBS_PATH, MAX_WAIT_S
from .ui import html_page


# The API's description and its Swagger UI: nothing a user sent is behind them.
DOCS_PATHS = frozenset({"/openapi.json", "/docs"})


async def openapi(request: Request) -> Response:
    """OpenAPI description of the PaddleX endpoints this proxy serves."""
    return JSONResponse(openapi_document())


async def docs(request: Request) -> Response:
    """Swagger UI over /openapi.json, from the files shipped in the package (no CDN)."""
    return html_page("docs.html")


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for /layout-parsing, /restructure-pages and /health, from the pydantic schemas."""
    models = [
        (InferRequest, "validation"),
        (ResultResponse[InferResult], "serialization"),
        (RestructurePagesRequest, "validation"),
        (ResultResponse[RestructurePagesResult], "serialization"),
        (ErrorResponse, "serialization"),
        (ResultResponse[JobStatus], "serialization"),
        (ResultResponse[PartialResult], "serialization"),
    ]
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")

    def ref(model: Any, mode: str) -> dict[str, Any]:
        return refs[(model, mode)]

    error = {"content": {"application/json": {"schema": ref(ErrorResponse, "serialization")}}}

    def operation(op_id: str, summary: str, request_model: Any, result_model: Any) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(request_model, "validation")}},
                },
                "responses": {
                    "200": {
                        "description": "Success",
                        "content": {"application/json": {"schema": ref(result_model, "serialization")}},
                    },
                    **{
                        code: {"description": text, **error}
                        for code, text in (
                            ("413", "Over a size limit (body or pages)"),
                            ("422", "Invalid request or input file"),
                            ("429", "Over an admission bound; retry after Retry-After seconds"),
                            ("500", "Internal server error"),
                            ("502", "The model server failed"),
                            ("503", "The model server is not ready"),
                        )
                    },
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "PaddleOCR-VL layout parsing (PaddleX-compatible)", "version": "1"},
        "paths": {
            INFER_ENDPOINT: operation(
                "infer", "Parse a PDF or image into blocks and markdown", InferRequest, ResultResponse[InferResult]
            ),
            RESTRUCTURE_PAGES_ENDPOINT: operation(
                "restructurePages",
                "Merge tables and re-level titles across parsed pages",
                RestructurePagesRequest,
                ResultResponse[RestructurePagesResult],
            ),
            **_job_paths(ref, error),
            "/health": {
                "get": {
                    "operationId": "checkHealth",
                    "responses": {
                        "200": {"description": "Healthy", **error},
                        "503": {"description": "The model server is not ready", **error},
                    },
                }
            },
        },
        "components": {"schemas": schema.get("$defs", {})},
    }


def _job_paths(ref: Any, error: dict[str, Any]) -> dict[str, Any]:
    """The jobs' routes: submit, status, result (long poll) and cancel."""
    status = {"content": {"application/json": {"schema": ref(ResultResponse[JobStatus], "serialization")}}}
    job_id = {"name": "jobId", "in": "path", "required": True, "schema": {"type": "string"}}
    missing = {"404": {"description": "No such job (or its results were removed)", **error}}
    return {
        JOBS_PATH: {
            "post": {
                "operationId": "submitJob",
                "summary": "Queue a /layout-parsing request (same body) and answer at once",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref(InferRequest, "validation")}}},
                "responses": {
                    "202": {"description": "Queued; `result.jobId` names the job", **status},
                    "422": {"description": "Invalid request or input file", **error},
                    "429": {"description": "The queue is full; retry after Retry-After seconds", **error},
                },
            }
        },
        JOBS_PATH + "/{jobId}": {
            "get": {"operationId": "getJob", "parameters": [job_id], "responses": {"200": {"description": "Status", **status}, **missing}},
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or running job, or forget a finished one",
                "parameters": [job_id],
                "responses": {"200": {"description": "The job's last status", **status}, **missing},
            },
        },
        JOBS_PATH + "/{jobId}/result": {
            "get": {
                "operationId": "getJobResult",
                "parameters": [
                    job_id,
                    {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                     "description": "Seconds to hold the answer until the job finishes or a page past `from` is ready"},
                    {"name": "from", "in": "query", "schema": {"type": "integer", "minimum": 0},
                     "description": "Leave out the first pages (already read)"},
                ],  # fmt: skip
                "responses": {
                    "200": {
                        "description": "Done: what /layout-parsing answers",
                        "content": {"application/json": {"schema": ref(ResultResponse[InferResult], "serialization")}},
                    },
                    "202": {
                        "description": "Not done yet: the pages finished so far and the status",
                        "content": {"application/json": {"schema": ref(ResultResponse[PartialResult], "serialization")}},
                    },
                    "409": {"description": "The job was cancelled", **error},
                    **missing,
                },
            }
        },
    }

