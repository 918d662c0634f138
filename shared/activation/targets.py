"""Campaign target mappings: the recipient columns an export may fill. They live with activation, which
validates each destination against one (its mapped targets, mandatory attributes and deduplication key must
be columns of it); Campaign reads them too."""

from __future__ import annotations

from pydantic import Field

from shared.errors import NotFound
from shared.models import ApiModel
from shared.settings import Settings
from shared.storage import EntityTable, ModelTable, StorageAccount


class TargetMapping(ApiModel):
    id: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
    name: str
    key: str = Field(description="The column that identifies a recipient (reconciliation key).")
    columns: list[str] = Field(min_length=1)


# Campaign's recipient target mapping, as it ships: the identities the connection exports and the usual
# recipient attributes.
RECIPIENTS = TargetMapping(
    id="mapRecipient",
    name="Recipients",
    key="email_lc_sha256",
    columns=[
        "external_id",
        "ECID",
        "email_lc_sha256",
        "phone_sha256",
        "GAID",
        "IDFA",
        "email",
        "firstName",
        "lastName",
        "birthDate",
        "gender",
        "phone",
        "city",
        "stateProvince",
        "countryCode",
        "postalCode",
        "loyaltyTier",
        "loyaltyPoints",
        "emailOptIn",
    ],
)


class TargetMappingStore:
    """Target mappings: the built-in `mapRecipient` and any defined over HTTP."""

    def __init__(self, table: EntityTable) -> None:
        self.records = ModelTable(table, TargetMapping, partition="targetmapping")

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount) -> TargetMappingStore:
        return cls(EntityTable(account.table(settings.table_name("targetmappings"))))

    def get(self, mapping_id: str) -> TargetMapping:
        found = self.records.find(mapping_id) or (RECIPIENTS if mapping_id == RECIPIENTS.id else None)
        if found is None:
            raise NotFound(f"no target mapping {mapping_id!r}; define it first (PUT /api/target-mappings/{mapping_id})")
        return found

    def list(self) -> list[TargetMapping]:
        stored = self.records.all()
        return stored if any(m.id == RECIPIENTS.id for m in stored) else [RECIPIENTS, *stored]

    def put(self, mapping: TargetMapping) -> TargetMapping:
        return self.records.put(mapping.id, mapping)
