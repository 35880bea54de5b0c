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
    RestructurePagesRequest,
    RestructurePagesResult,
    ResultResponse,
)
from .ui import html_page


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
