"""How HTTP functions answer. Each function declares its operations (`answers(Op(...), ...)`): method, path,
request and response models. `/api/openapi.json` is generated from those declarations, and the tests check
every response they see against them. Bodies are camelCase JSON (`shared.models.ApiModel`), requests are read
through their model (`read`), and errors are application/problem+json (RFC 9457), mapped from the product's
exception hierarchy in this one place."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import azure.functions as func
from pydantic import BaseModel
from pydantic import ValidationError as ModelError
from pydantic_core import to_jsonable_python

from shared.errors import BridgeError, ValidationError
from shared.models import DEPRECATED_FIELDS

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Op:
    """One operation of the HTTP API, as `/api/openapi.json` documents it."""

    method: str
    path: str
    summary: str
    request: type[BaseModel] | str | None = None  # a model, or the media type of a raw body
    response: Any = None  # a model, list[model], or None for a free-form object
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)
    media: str = "application/json"
    location: bool = False  # the answer carries a Location header


OPERATIONS: list[Op] = []  # every declared operation, in declaration order


def json_response(body: Any, *, status: int = 200, location: str | None = None) -> func.HttpResponse:
    """A JSON answer: models (also inside lists and dicts) by their camelCase names."""
    text = json.dumps(to_jsonable_python(body, by_alias=True, fallback=str))
    response = func.HttpResponse(text, status_code=status, mimetype="application/json")
    if location:
        response.headers["Location"] = location
    return response


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


# The snake_case request fields one request used (read by `read`, answered by `answers`).
_DEPRECATED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("deprecated_fields", default=None)
# RFC 9745: snake_case request fields are deprecated since 2026-12-03 (release 0.2.0) and go in the next release.
DEPRECATED_SINCE = "@1796256000"


def read(req: func.HttpRequest, model: type[M], **route: Any) -> M:
    """The request body as `model`, with values from the route (its id) over the body's. An empty body
    reads as `{}`. Fields given by their old snake_case names still work, with a `Deprecation` header."""
    body = body_of(req) if req.get_body() else {}
    noted = _DEPRECATED.get()
    return model.model_validate({**body, **route}, context={DEPRECATED_FIELDS: noted if noted is not None else []})


def answers(*operations: Op) -> Callable[[Callable[..., func.HttpResponse]], Callable[..., func.HttpResponse]]:
    """Declare the operations an HTTP function answers, and turn the product's errors and model validation
    errors into problem responses."""
    OPERATIONS.extend(operations)

    def decorate(
        fn: Callable[[func.HttpRequest], func.HttpResponse],
    ) -> Callable[[func.HttpRequest], func.HttpResponse]:
        @functools.wraps(fn)
        def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            noted: list[str] = []
            token = _DEPRECATED.set(noted)
            try:
                route_id(req)
                response = fn(req)
            except BridgeError as exc:
                return problem(exc.status_code, exc.code.replace("_", " "), exc.message, errors=exc.details or None)
            except ModelError as exc:
                errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
                return problem(400, "validation", f"{exc.error_count()} invalid field(s) in {exc.title}", errors=errors)
            finally:
                _DEPRECATED.reset(token)
            if noted:
                response.headers["Deprecation"] = DEPRECATED_SINCE
                response.headers["X-Deprecated-Fields"] = ", ".join(dict.fromkeys(noted))
            return response

        wrapper.operations = operations  # type: ignore[attr-defined] - what the tests check responses against
        return wrapper

    return decorate
