"""The one exception hierarchy of Audience Bridge; the HTTP layer maps it to status codes in one place."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the product raises on purpose."""

    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class ValidationError(BridgeError):
    """Input that does not match what was declared (a schema, a model, a file format)."""

    status_code = 400
    code = "validation"


class GuardrailError(ValidationError):
    """A limit the platform enforces (Table storage limits, segment counts, …) was exceeded."""

    code = "guardrail"


class GovernanceError(BridgeError):
    """A data-usage policy forbids the action."""

    status_code = 422
    code = "governance"


class NotFound(BridgeError):
    status_code = 404
    code = "not_found"


class Conflict(BridgeError):
    """An optimistic-concurrency check failed: someone else changed the record first."""

    status_code = 409
    code = "conflict"
