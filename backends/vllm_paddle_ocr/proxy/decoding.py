"""A body's JSON and its request model: the checks every PaddleX endpoint and a job's stored body share."""

from __future__ import annotations

import json
from typing import Any

import pydantic

from .errors import InputError, validation_message
from .protocol import MAX_JSON_DEPTH


def decode_json(body: bytes) -> Any:
    """The body as JSON, or a 422 in PaddleX's shape: bad syntax, or nested deeper than MAX_JSON_DEPTH."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise InputError(_too_deep()) from None
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        errors = [{"type": "json_invalid", "loc": ("body", position), "msg": "JSON decode error"}]
        raise InputError(validation_message(errors, prefix=())) from None
    if _depth_exceeds(payload, MAX_JSON_DEPTH):
        raise InputError(_too_deep())
    return payload


def _too_deep() -> str:
    errors = [{"type": "json_invalid", "loc": (), "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels"}]
    return validation_message(errors)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def validate(model: type[pydantic.BaseModel], payload: Any) -> Any:
    """The payload as the endpoint's request model, or a 422 listing what is wrong, as PaddleX does."""
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise InputError(validation_message(exc.errors())) from None
