"""Audience Bridge: all the logic of the pipeline, independent of the Functions host."""

from shared.errors import BridgeError, Conflict, GovernanceError, GuardrailError, NotFound, ValidationError
from shared.settings import Settings, get_settings

__all__ = [
    "BridgeError",
    "Conflict",
    "GovernanceError",
    "GuardrailError",
    "NotFound",
    "Settings",
    "ValidationError",
    "get_settings",
]
