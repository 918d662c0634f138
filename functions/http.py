"""How HTTP functions answer: JSON bodies, and errors as application/problem+json (RFC 9457), mapped from
the product's exception hierarchy in this one place."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func
from pydantic import BaseModel
from pydantic import ValidationError as ModelError

from shared.errors import BridgeError, ValidationError

log = logging.getLogger(__name__)


def json_response(body: Any, *, status: int = 200) -> func.HttpResponse:
    if isinstance(body, BaseModel):
        text = body.model_dump_json(by_alias=True)
    elif isinstance(body, list) and body and isinstance(body[0], BaseModel):
        text = "[" + ",".join(b.model_dump_json(by_alias=True) for b in body) + "]"
    else:
        text = json.dumps(body, default=str)
    return func.HttpResponse(text, status_code=status, mimetype="application/json")


def problem(status: int, title: str, detail: str, *, errors: list[dict] | None = None) -> func.HttpResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return func.HttpResponse(json.dumps(body, default=str), status_code=status, mimetype="application/problem+json")


def body_of(req: func.HttpRequest) -> Any:
    try:
        return req.get_json()
    except ValueError as exc:
        raise ValidationError("the request body is not valid JSON") from exc


def query_int(req: func.HttpRequest, name: str, default: int, *, low: int = 1, high: int = 1000) -> int:
    """A whole-number query parameter within bounds, or a 400 naming it and the bounds."""
    value = req.params.get(name)
    if value is None:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise ValidationError(f"query parameter {name!r} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


def answers(fn: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[[func.HttpRequest], func.HttpResponse]:
    """Turn the product's errors and model validation errors into problem responses."""

    @functools.wraps(fn)
    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return fn(req)
        except BridgeError as exc:
            return problem(exc.status_code, exc.code.replace("_", " "), exc.message, errors=exc.details or None)
        except ModelError as exc:
            errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            return problem(400, "validation", f"{exc.error_count()} invalid field(s) in {exc.title}", errors=errors)

    return wrapper
