"""Activation to the Campaign destination: destinations, governance, and export runs into the DLZ."""

from shared.activation.destinations import Destination, DestinationStore, check_guardrails
from shared.activation.governance import GovernancePolicy, PolicyStore, check_governance
from shared.activation.runs import DataflowRun
from shared.activation.service import Activation

__all__ = [
    "Activation",
    "DataflowRun",
    "Destination",
    "DestinationStore",
    "GovernancePolicy",
    "PolicyStore",
    "check_governance",
    "check_guardrails",
]
