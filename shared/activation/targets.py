"""Campaign target mappings: the recipient columns an export may fill. They live with activation, which
validates each destination against one (its mapped targets, mandatory attributes and deduplication key must
be columns of it); Campaign reads them too."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from shared.models import ApiModel
from shared.storage import RecordStore


class TargetMapping(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "mapLoyalty",
                    "name": "Loyalty members",
                    "key": "external_id",
                    "columns": ["external_id", "loyaltyTier"],
                }
            ]
        }
    )

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


class TargetMappingStore(RecordStore[TargetMapping]):
    """Target mappings: the built-in `mapRecipient` and any defined over HTTP."""

    model, table_name, partition, noun = TargetMapping, "targetmappings", "targetmapping", "target mapping"
    hint = "; define it first (PUT /api/target-mappings/{id})"
    builtins = (RECIPIENTS,)
