"""Schemas as data: XDM-lite classes (profile, experience event) declared as field paths with types,
required flags and identity namespaces. Every schema also carries the standard `identityMap`."""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from shared.errors import NotFound, ValidationError
from shared.models import ApiModel
from shared.storage import RecordStore


class Namespace(StrEnum):
    ECID = "ECID"
    EMAIL = "Email"
    PHONE = "Phone"
    CRMID = "CRMID"
    GAID = "GAID"
    IDFA = "IDFA"


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "date-time"
    ARRAY = "array"

    @property
    def duckdb(self) -> str:
        return _DUCKDB_TYPES[self]


_DUCKDB_TYPES = {
    FieldType.STRING: "VARCHAR",
    FieldType.INTEGER: "BIGINT",
    FieldType.NUMBER: "DOUBLE",
    FieldType.BOOLEAN: "BOOLEAN",
    FieldType.DATE: "DATE",
    FieldType.DATETIME: "TIMESTAMPTZ",
}


SCALAR_ITEM_TYPES = (FieldType.STRING, FieldType.INTEGER, FieldType.NUMBER, FieldType.BOOLEAN)


class SchemaClass(StrEnum):
    PROFILE = "profile"
    EXPERIENCE_EVENT = "experienceevent"


class ItemField(ApiModel):
    """A field of the objects in an array field, relative to the item."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: FieldType

    @model_validator(mode="after")
    def _scalar(self) -> ItemField:
        if self.type is FieldType.ARRAY:
            raise ValueError(f"array item field {self.name!r} cannot itself be an array")
        return self


class SchemaField(ApiModel):
    path: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    type: FieldType
    required: bool = False
    identity: Namespace | None = Field(None, description="The field holds an identity of this namespace.")
    enum: list[str] | None = None
    items: list[ItemField] | None = Field(None, description="For arrays of objects: the fields of each item.")
    item_type: FieldType | None = Field(
        None,
        alias="itemType",
        description="For arrays of values (`favoriteColors`): string, integer, number or boolean.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> SchemaField:
        if self.type is FieldType.ARRAY and bool(self.items) == bool(self.item_type):
            raise ValueError(
                f"array field {self.path!r} must declare either its items (objects) or its itemType (values)"
            )
        if self.type is not FieldType.ARRAY and (self.items or self.item_type):
            raise ValueError(f"field {self.path!r} declares items but is a {self.type.value}")
        if self.item_type and self.item_type not in SCALAR_ITEM_TYPES:
            allowed = ", ".join(t.value for t in SCALAR_ITEM_TYPES)
            raise ValueError(f"array field {self.path!r}: itemType is one of {allowed}")
        if self.identity and self.type is not FieldType.STRING:
            raise ValueError(f"identity field {self.path!r} must be a string, not {self.type.value}")
        if self.enum and self.type is not FieldType.STRING:
            raise ValueError(f"enum field {self.path!r} must be a string")
        return self

    @property
    def duckdb_type(self) -> str:
        if self.item_type:
            return f"{self.item_type.duckdb}[]"
        if self.type is FieldType.ARRAY:
            inner = ", ".join(f'"{i.name}" {i.type.duckdb}' for i in self.items or [])
            return f"STRUCT({inner})[]"
        return self.type.duckdb


class Schema(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "loyalty-profile",
                    "title": "Loyalty profile",
                    "class": "profile",
                    "fields": [
                        {"path": "loyalty.tier", "type": "string", "enum": ["silver", "gold"]},
                        {"path": "favoriteColors", "type": "array", "itemType": "string"},
                    ],
                }
            ]
        }
    )

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    title: str
    schema_class: SchemaClass = Field(alias="class")
    fields: list[SchemaField]

    @model_validator(mode="after")
    def _paths(self) -> Schema:
        paths = [f.path for f in self.fields]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"schema {self.id!r} declares fields twice: {dupes}")
        for p in paths:
            if p == "identityMap" or p.startswith("identityMap."):
                raise ValueError(f"schema {self.id!r}: identityMap is standard and cannot be redeclared")
            for q in paths:
                if q.startswith(p + "."):
                    raise ValueError(f"schema {self.id!r}: {p!r} is a leaf but {q!r} is declared inside it")
        if self.schema_class is SchemaClass.EXPERIENCE_EVENT:
            for needed in ("_id", "timestamp", "eventType"):
                if needed not in paths:
                    raise ValueError(f"experience event schema {self.id!r} must declare {needed!r}")
        return self

    def field(self, path: str) -> SchemaField:
        for f in self.fields:
            if f.path == path:
                return f
        raise NotFound(f"field {path!r} is not in schema {self.id!r}")


PROFILE_SCHEMA = Schema(
    id="xdm-profile",
    title="XDM Individual Profile (lite)",
    schema_class=SchemaClass.PROFILE,
    fields=[
        SchemaField(path="person.name.firstName", type=FieldType.STRING),
        SchemaField(path="person.name.lastName", type=FieldType.STRING),
        SchemaField(path="person.birthDate", type=FieldType.DATE),
        SchemaField(
            path="person.gender",
            type=FieldType.STRING,
            enum=["female", "male", "non_specific", "not_specified"],
        ),
        SchemaField(
            path="personalEmail.address",
            type=FieldType.STRING,
            identity=Namespace.EMAIL,
        ),
        SchemaField(path="mobilePhone.number", type=FieldType.STRING, identity=Namespace.PHONE),
        SchemaField(path="homeAddress.city", type=FieldType.STRING),
        SchemaField(path="homeAddress.stateProvince", type=FieldType.STRING),
        SchemaField(path="homeAddress.countryCode", type=FieldType.STRING),
        SchemaField(path="homeAddress.postalCode", type=FieldType.STRING),
        SchemaField(path="loyalty.tier", type=FieldType.STRING),
        SchemaField(path="loyalty.points", type=FieldType.INTEGER),
        SchemaField(
            path="consents.marketing.email.val",
            type=FieldType.STRING,
            enum=["y", "n", "p", "u", "dy", "dn"],
        ),
    ],
)

EVENT_SCHEMA = Schema(
    id="xdm-experienceevent",
    title="XDM ExperienceEvent (lite)",
    schema_class=SchemaClass.EXPERIENCE_EVENT,
    fields=[
        SchemaField(path="_id", type=FieldType.STRING, required=True),
        SchemaField(path="timestamp", type=FieldType.DATETIME, required=True),
        SchemaField(path="eventType", type=FieldType.STRING, required=True),
        SchemaField(path="commerce.order.priceTotal", type=FieldType.NUMBER),
        SchemaField(path="commerce.order.currencyCode", type=FieldType.STRING),
        SchemaField(
            path="productListItems",
            type=FieldType.ARRAY,
            items=[
                ItemField(name="SKU", type=FieldType.STRING),
                ItemField(name="quantity", type=FieldType.INTEGER),
                ItemField(name="priceTotal", type=FieldType.NUMBER),
            ],
        ),
        SchemaField(path="web.webPageDetails.name", type=FieldType.STRING),
    ],
)

BUILTIN_SCHEMAS = (PROFILE_SCHEMA, EVENT_SCHEMA)


class SchemaStore(RecordStore[Schema]):
    """Schemas in the `schemas` table; the built-in XDM-lite ones are always there (and cannot be replaced)."""

    model, table_name, partition, noun = Schema, "schemas", "schema", "schema"
    builtins = BUILTIN_SCHEMAS

    def save(self, schema: Schema) -> Schema:
        if schema.id in {b.id for b in BUILTIN_SCHEMAS}:
            raise ValidationError(f"schema {schema.id!r} is built in and cannot be replaced; use another id")
        return self.put(schema)
