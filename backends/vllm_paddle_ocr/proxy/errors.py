"""PaddleX-shaped error answers (`logId`, `errorCode`, `errorMsg`) and the exceptions that become them."""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable, Mapping

from starlette.responses import Response

from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

INTERNAL_ERROR_MESSAGE = "Internal server error"


def new_log_id() -> str:
    """A fresh request id in PaddleX's format (a UUID4 string)."""
    return str(uuid.uuid4())


class ProxyError(VllmPaddleOcrError):
    """An expected failure with the HTTP status and message the client gets."""

    status_code: int = 500

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds, sent as Retry-After
        if status_code is not None:
            self.status_code = status_code


class InputError(ProxyError):
    """The request's file or options cannot be used (PaddleX answers these with 422)."""

    status_code = 422


class LimitExceeded(ProxyError):
    """The request is over a configured size limit (body or pages)."""

    status_code = 413


class UpstreamError(ProxyError):
    """vLLM failed, timed out or is not ready; the message names the page and block when known."""

    status_code = 502


def dotted_location(loc: Iterable[str | int]) -> str:
    """Pydantic's error location as PaddleX writes it: `a.b[0].c`."""
    path = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if index > 0 else "") + str(part)
    return path


def validation_message(errors: Iterable[Mapping[str, Any]], prefix: tuple[str | int, ...] = ("body",)) -> str:
    """Pydantic errors as the JSON list PaddleX puts in errorMsg: type, dotted loc under `body`, msg."""
    return json.dumps(
        [
            {"type": error["type"], "loc": dotted_location((*prefix, *error["loc"])), "msg": error["msg"]}
            for error in errors
        ]
    )


def error_body(status_code: int, message: str, log_id: str | None = None) -> dict[str, Any]:
    """The JSON object of an error answer."""
    return {"logId": log_id or new_log_id(), "errorCode": status_code, "errorMsg": message}


def error_response(
    status_code: int, message: str, log_id: str | None = None, *, retry_after: int | None = None
) -> Response:
    """An error answer in PaddleX's shape, with the HTTP status equal to errorCode."""
    payload = json.dumps(error_body(status_code, message, log_id), ensure_ascii=False, separators=(",", ":"))
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return Response(payload, status_code=status_code, media_type="application/json", headers=headers)


def openai_error_response(status_code: int, message: str, kind: str) -> Response:
    """An error on a /v1 path in the OpenAI shape clients of vLLM already parse."""
    payload = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status_code}})
    return Response(payload, status_code=status_code, media_type="application/json")
