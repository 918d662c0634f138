"""How HTTP functions answer: JSON bodies, and errors as application/problem+json (RFC 9457), mapped from
the product's exception hierarchy in this one place."""

from __future__ import annotations

import functools
import json
import logging
import re
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


MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_DEPTH = 32
# A route's own id: what a lookup may carry to Table storage as a key (ids we generate, such as an audience
# load's, run past the 64 characters of the ids you choose, which each model checks on save).
ROUTE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def body_of(req: func.HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it: not JSON, not an object,
    over MAX_BODY_BYTES, or nested deeper than MAX_BODY_DEPTH."""
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY_BYTES:
        raise ValidationError(f"the request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}")
    if _depth(raw) > MAX_BODY_DEPTH:
        raise ValidationError(f"the request body nests objects or arrays deeper than {MAX_BODY_DEPTH} levels")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError(f"the request body must be a JSON object, not {type(body).__name__}: {raw[:40]!r}")
    return body


def _depth(raw: bytes) -> int:
    """How deep arrays and objects nest, counted outside strings, without parsing (which would recurse)."""
    depth = deepest = 0
    for char in _STRING.sub(b"", raw):
        if char in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in b"]}":
            depth -= 1
    return deepest


def route_id(req: func.HttpRequest) -> str | None:
    """The route's `{id}`, or a 400 when it could not be anybody's id (it would reach storage as a key)."""
    value = req.route_params.get("id")
    if value and not ROUTE_ID.fullmatch(value):
        raise ValidationError(
            f"{value[:40]!r}{'…' if len(value) > 40 else ''} ({len(value)} characters) is not an id: "
            "letters, digits, '_', '-', '.', ':', at most 256 characters"
        )
    return value


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
            route_id(req)
            return fn(req)
        except BridgeError as exc:
            return problem(exc.status_code, exc.code.replace("_", " "), exc.message, errors=exc.details or None)
        except ModelError as exc:
            errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
            return problem(400, "validation", f"{exc.error_count()} invalid field(s) in {exc.title}", errors=errors)

    return wrapper
