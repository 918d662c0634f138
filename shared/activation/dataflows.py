"""Destinations (Adobe's dataflows to Campaign): saved only when they pass the connection's guardrails and the
governance policies, their segments recorded as used, and their runs per segment."""

from __future__ import annotations

import datetime as dt

from shared.activation.destinations import Destination, DestinationStore, check_guardrails
from shared.activation.governance import PolicyStore, check_governance
from shared.activation.runs import DataflowRun
from shared.activation.targets import TargetMappingStore
from shared.segmentation.definitions import SegmentStore, catalog_fields
from shared.settings import Settings
from shared.storage import EntityTable, ModelTable, StorageAccount


class Destinations:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.store = DestinationStore.from_settings(settings, account)
        self.targets = TargetMappingStore.from_settings(settings, account)
        self.policies = PolicyStore.from_settings(settings, account)
        self.segments = SegmentStore.from_settings(settings, account)
        self.runs_table = EntityTable(account.table(settings.table_name("dataflowruns")))

    def get(self, destination_id: str) -> Destination:
        return self.store.get(destination_id)

    def list(self) -> list[Destination]:
        return self.store.list()

    def save(self, destination: Destination, *, now: dt.datetime) -> Destination:
        """Refuse a destination that breaks a guardrail or a governance policy; store it otherwise."""
        definitions = self.segments.trees()
        target = self.targets.get(destination.target_mapping)
        check_guardrails(
            destination,
            fields=catalog_fields(self.segments.datasets),
            columns=set(target.columns),
            segments=set(definitions),
        )
        check_governance(destination, self.policies.list(), definitions, self.segments.datasets.with_schemas())
        # Its segments are recorded as used in the same guarded write that checks they exist, so none of them
        # can be deleted from under it; the old ones stay recorded until the new destination is stored.
        old = self.store.records.find(destination.id)
        self.segments.use(destination.id, set(destination.segments), keep=set(old.segments) if old else set())
        stored = self.store.put(destination.model_copy(update={"updated": now}))
        self.segments.use(destination.id, set(destination.segments))
        return stored

    def delete(self, destination_id: str) -> None:
        """Delete a destination, then release its segments."""
        self.store.delete(destination_id)
        self.segments.use(destination_id, set())

    def runs(self, destination_id: str) -> list[DataflowRun]:
        """A destination's dataflow runs, newest first."""
        self.store.get(destination_id)
        rows = ModelTable(self.runs_table, DataflowRun, partition=destination_id).all()
        return sorted(rows, key=lambda r: (r.started, r.segment_id), reverse=True)
