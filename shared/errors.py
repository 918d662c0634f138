"""The one exception hierarchy of Audience Bridge; the HTTP layer maps it to status codes in one place."""

from __future__ import annotations


def listed(items: list, *, most: int = 10) -> str:
    """A list in a message, cut after `most` items with a count of the rest: `['a', 'b'] and 9,990 more`."""
    shown = f"{items[:most]!r}"
    return shown if len(items) <= most else f"{shown} and {len(items) - most:,} more"


def clipped(text: str, *, most: int = 2000) -> str:
    """A message cut to `most` characters, saying how long it was."""
    return text if len(text) <= most else f"{text[:most]}… ({len(text):,} characters in all)"


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
