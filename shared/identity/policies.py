"""Merge policies: how fragments of one person become one profile. Timestamp ordered (the latest
ingested non-null value of each attribute wins) or dataset precedence (an ordered list of datasets)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from shared.models import ApiModel
from shared.storage import EntityTable, RecordStore


class MergeMethod(StrEnum):
    TIMESTAMP_ORDERED = "timestampOrdered"
    DATASET_PRECEDENCE = "dataSetPrecedence"


class MergePolicy(ApiModel):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str
    method: MergeMethod = MergeMethod.TIMESTAMP_ORDERED
    dataset_order: list[str] = Field(
        default_factory=list, description="For dataset precedence: datasets, most trusted first."
    )
    identity_stitching: bool = Field(
        True, description="Join fragments that share any identity; off: only fragments with the same primary identity."
    )

    @model_validator(mode="after")
    def _order(self) -> MergePolicy:
        if self.method is MergeMethod.DATASET_PRECEDENCE and not self.dataset_order:
            raise ValueError(f"merge policy {self.id!r}: dataset precedence needs datasetOrder")
        if len(set(self.dataset_order)) != len(self.dataset_order):
            raise ValueError(f"merge policy {self.id!r}: datasetOrder names a dataset twice")
        return self


DEFAULT_POLICY = MergePolicy(id="default", name="Default (timestamp ordered, stitched)")


class MergePolicyStore(RecordStore[MergePolicy]):
    """Policies in the `mergepolicies` table, and which one is the default (one record, updated with ETags)."""

    DEFAULT = ("default", "pointer")

    model, table_name, partition, noun = MergePolicy, "mergepolicies", "policy", "merge policy"
    builtins = (DEFAULT_POLICY,)

    def __init__(self, table: EntityTable) -> None:
        super().__init__(table)
        self.entities = table

    def save(self, policy: MergePolicy, *, make_default: bool = False) -> MergePolicy:
        self.records.put(policy.id, policy)
        if make_default:
            pointer = self.entities.find(*self.DEFAULT)
            entity = {"PartitionKey": self.DEFAULT[0], "RowKey": self.DEFAULT[1], "policyId": policy.id}
            if pointer is None:
                self.entities.insert(entity)
            else:
                self.entities.update(entity, etag=pointer["etag"])
        return policy

    def default(self) -> MergePolicy:
        pointer = self.entities.find(*self.DEFAULT)
        return self.get(pointer["policyId"]) if pointer else DEFAULT_POLICY

    def list(self) -> list[MergePolicy]:
        return sorted(super().list(), key=lambda p: p.id)


class MergePolicyRequest(MergePolicy):
    """A merge policy to save, and whether it becomes the default."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "crm-first",
                    "name": "CRM first",
                    "method": "dataSetPrecedence",
                    "datasetOrder": ["crm", "loyalty"],
                    "default": True,
                }
            ]
        }
    )

    default: bool = False


class MergePolicies(ApiModel):
    default: str = Field(description="The id of the default policy.")
    policies: list[MergePolicy]
