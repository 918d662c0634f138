"""Data governance: policies deny a marketing action on data that carries given labels. Before a
destination is saved, and again at every run, the labels of every dataset and field its segments use or
its mapping exports are checked against the policies of its marketing action."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ConfigDict, Field, field_validator

from shared.activation.destinations import MARKETING_ACTIONS, MEMBERSHIP_STATUS, Destination
from shared.errors import GovernanceError
from shared.ingestion.datasets import Dataset, Label
from shared.ingestion.schemas import Schema, SchemaClass
from shared.models import ApiModel
from shared.segmentation.pql import ast
from shared.storage import RecordStore


class GovernancePolicy(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "no-c2-email",
                    "name": "No email on contract data",
                    "marketingAction": "Email Targeting",
                    "deniedLabels": ["C2"],
                }
            ]
        }
    )

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str
    marketing_action: str
    denied_labels: list[Label] = Field(min_length=1, description="The action is denied on data with any of these.")
    enabled: bool = True

    @field_validator("marketing_action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in MARKETING_ACTIONS:
            raise ValueError(f"{value!r} is not a marketing action; use one of {', '.join(MARKETING_ACTIONS)}")
        return value


@dataclass(frozen=True)
class Use:
    """One labelled piece of data an activation touches, and why."""

    label: str
    dataset: str
    field: str | None  # None: the label is on the whole dataset
    by: str  # "segment s1" or "mapping to email"

    def describe(self) -> str:
        where = f"field {self.field!r} of dataset {self.dataset!r}" if self.field else f"dataset {self.dataset!r}"
        return f"{self.label} on {where} (used by {self.by})"


class PolicyStore(RecordStore[GovernancePolicy]):
    model, table_name, partition, noun = GovernancePolicy, "policies", "policy", "governance policy"


def labelled_uses(
    destination: Destination, definitions: Mapping[str, ast.Expr], datasets: list[tuple[Dataset, Schema]]
) -> list[Use]:
    """Every label on the data the destination's segments read (inSegment followed) and its mapping exports."""
    uses: list[Use] = []
    seen: set[str] = set()
    pending = list(destination.segments)
    while pending:
        sid = pending.pop()
        if sid in seen or sid not in definitions:
            continue
        seen.add(sid)
        tree = definitions[sid]
        pending.extend(ast.segment_references(tree))
        paths = {n.dotted for n in ast.walk(tree) if isinstance(n, ast.Path)}
        reads_events = bool(ast.event_conditions(tree))
        for dataset, schema in datasets:
            is_events = schema.schema_class is SchemaClass.EXPERIENCE_EVENT
            read = [f.path for f in schema.fields if any(_names(p, f.path) for p in paths)]
            if read or (is_events and reads_events):
                uses.extend(Use(label, dataset.id, None, f"segment {sid}") for label in dataset.labels)
            for path in read:
                uses.extend(
                    Use(label, dataset.id, path, f"segment {sid}") for label in dataset.field_labels.get(path, [])
                )
    exported = [(m.source, m.target) for m in destination.mapping if m.source != MEMBERSHIP_STATUS]
    exported.append((destination.identity.source, destination.identity.target))
    for source, target in exported:
        for dataset, schema in datasets:
            if schema.schema_class is not SchemaClass.PROFILE:
                continue
            fields = _exported_fields(source, schema)
            if not fields:
                continue
            uses.extend(Use(label, dataset.id, None, f"mapping to {target}") for label in dataset.labels)
            for path in fields:
                uses.extend(
                    Use(label, dataset.id, path, f"mapping to {target}") for label in dataset.field_labels.get(path, [])
                )
    return uses


def _names(path: str, field: str) -> bool:
    """Whether a PQL path (maybe behind an event alias) names this schema field or an object holding it."""
    return path == field or path.endswith("." + field) or field.startswith(path + ".")


def _exported_fields(source: str, schema: Schema) -> list[str]:
    head, _, ns = source.partition(".")
    if head == "identityMap" and ns:
        # An identity namespace comes from the identity map and from any field that holds that identity.
        return ["identityMap"] + [f.path for f in schema.fields if f.identity and f.identity.value == ns]
    return [f.path for f in schema.fields if f.path == source]


def check_governance(
    destination: Destination,
    policies: list[GovernancePolicy],
    definitions: Mapping[str, ast.Expr],
    datasets: list[tuple[Dataset, Schema]],
) -> None:
    """Raise GovernanceError naming every enforced policy the activation violates, its labels and fields."""
    enforced = [p for p in policies if p.enabled and p.marketing_action == destination.marketing_action]
    if not enforced:
        return
    uses = labelled_uses(destination, definitions, datasets)
    violations = []
    for policy in enforced:
        hits = [u for u in uses if u.label in policy.denied_labels]
        if hits:
            denied = ", ".join(policy.denied_labels)
            grouped: dict[tuple, list[str]] = {}
            for u in hits:
                users = grouped.setdefault((u.label, u.dataset, u.field), [])
                if u.by not in users:
                    users.append(u.by)
            described = [
                Use(label, dataset, field, ", ".join(sorted(by))).describe()
                for (label, dataset, field), by in sorted(grouped.items(), key=lambda kv: str(kv[0]))
            ]
            violations.append(
                {
                    "policy": policy.id,
                    "message": f"policy {policy.name!r} ({policy.marketing_action} denied on {denied}) is violated by "
                    + "; ".join(described),
                    "labels": sorted({u.label for u in hits}),
                    "fields": sorted({f"{u.dataset}.{u.field}" if u.field else u.dataset for u in hits}),
                }
            )
    if violations:
        raise GovernanceError(
            f"activation of destination {destination.id!r} for {destination.marketing_action} is blocked: "
            + " | ".join(v["message"] for v in violations),
            details=violations,
        )


__all__ = ["GovernancePolicy", "PolicyStore", "Use", "check_governance", "labelled_uses"]
