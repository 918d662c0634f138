"""Activation, by use case: `destinations` (saved through guardrails and governance, with their runs),
`exports` (export runs into the Data Landing Zone) and `retention` (of the DLZ's files); the governance
policies and target mappings they read are plain record stores."""

from __future__ import annotations

from shared.activation.dataflows import Destinations
from shared.activation.retention import DlzRetention
from shared.activation.runs import ExportRuns
from shared.settings import Settings
from shared.storage import StorageAccount


class Activation:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.destinations = Destinations(settings=settings, account=account)
        self.exports = ExportRuns(settings=settings, account=account)
        self.retention = DlzRetention(settings=settings, account=account)
        self.policies = self.destinations.policies  # the stores the services already hold, not built again
        self.targets = self.destinations.targets
        self.jobs = self.exports.jobs

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> Activation:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))
