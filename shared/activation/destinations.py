"""Destinations (dataflows) to Campaign: what is exported, how, when and where, and the guardrails of
Adobe's Campaign connection, checked when a destination is saved. Every refusal names the rule and the
value, and all of a configuration's problems are reported at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from enum import StrEnum

from pydantic import ConfigDict, Field

from shared.errors import GuardrailError
from shared.ingestion.schemas import Namespace
from shared.models import ApiModel
from shared.segmentation.pql.compiler import Fields
from shared.storage import RecordStore

MAX_SEGMENTS = 50
MAX_MAPPED_FIELDS = 20
MAX_FILE_NAME = 255
ALLOWED_EVERY_HOURS = (3, 6, 8, 12, 24)
MIN_EVERY_HOURS = 3
MAX_DEDUP_ATTRIBUTES = 2
MEMBERSHIP_STATUS = "segmentMembershipStatus"
# Target identities of the Campaign connection, and the namespace each is read from.
TARGET_IDENTITIES: dict[str, Namespace] = {
    "external_id": Namespace.CRMID,
    "ECID": Namespace.ECID,
    "email_lc_sha256": Namespace.EMAIL,
    "phone_sha256": Namespace.PHONE,
    "GAID": Namespace.GAID,
    "IDFA": Namespace.IDFA,
}
MARKETING_ACTIONS = (
    "Email Targeting",
    "Export to Third Party",
    "Onsite Advertising",
    "Onsite Personalization",
    "Cross-Site Targeting",
    "Combine with PII",
    "Data Science",
    "Segment Match",
    "Analytics",
)


class SyncType(StrEnum):
    AUDIENCE = "audience"
    PROFILE = "profile"  # update only: Campaign never creates a profile from an export


class ExportMode(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


class FileFormat(StrEnum):
    CSV = "csv"
    JSON = "json"  # JSON lines
    PARQUET = "parquet"


class CsvOptions(ApiModel):
    delimiter: str = Field(",", min_length=1, max_length=1)
    quote: str = Field('"', min_length=1, max_length=1)
    escape: str = Field('"', min_length=1, max_length=1)
    null_value: str = ""
    gzip: bool = False


class Frequency(StrEnum):
    HOURS = "hours"
    AFTER_SEGMENT_EVALUATION = "afterSegmentEvaluation"


class Schedule(ApiModel):
    frequency: Frequency = Frequency.HOURS
    every_hours: int = Field(24, description="With frequency `hours`: 3, 6, 8, 12 or 24.")
    start: dt.datetime = Field(
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), description="The first slot; later slots follow every `everyHours`."
    )

    def slot(self, now: dt.datetime) -> dt.datetime | None:
        """The schedule slot `now` falls in, or None before the start."""
        if now < self.start:
            return None
        period = dt.timedelta(hours=self.every_hours)
        return self.start + period * ((now - self.start) // period)


class FieldMapping(ApiModel):
    source: str = Field(description="A profile attribute path, or `segmentMembershipStatus`.")
    target: str = Field(description="A column of the Campaign target mapping.")


class IdentityMapping(ApiModel):
    source: str = Field(description="`identityMap.<namespace>` or a profile attribute holding the identity.")
    target: str = Field(description="external_id, ECID, email_lc_sha256, phone_sha256, GAID or IDFA.")
    apply_transformation: bool = Field(
        True, description="Hash plain values: emails trimmed, lowercased, SHA-256; phones to E.164, then SHA-256."
    )

    @property
    def namespace(self) -> str | None:
        head, _, ns = self.source.partition(".")
        return ns if head == "identityMap" and ns else None


class Destination(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "campaign-email",
                    "name": "Campaign_Email",
                    "syncType": "audience",
                    "marketingAction": "Email Targeting",
                    "exportMode": "incremental",
                    "schedule": {"frequency": "hours", "everyHours": 24, "start": "2026-01-01T00:00:00Z"},
                    "segments": ["gold-ca"],
                    "identity": {"source": "identityMap.Email", "target": "email_lc_sha256"},
                    "mapping": [
                        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
                        {"source": "person.name.firstName", "target": "firstName"},
                    ],
                }
            ]
        }
    )

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Also starts file names.")
    description: str = ""
    campaign_instance: str = "campaign"
    target_mapping: str = "mapRecipient"
    sync_type: SyncType = SyncType.AUDIENCE
    marketing_action: str = "Email Targeting"
    format: FileFormat = FileFormat.CSV
    csv: CsvOptions = Field(default_factory=CsvOptions)
    export_mode: ExportMode = ExportMode.FULL
    schedule: Schedule = Field(default_factory=Schedule)
    segments: list[str] = Field(min_length=1)
    identity: IdentityMapping
    mapping: list[FieldMapping] = Field(
        default_factory=lambda: [FieldMapping(source=MEMBERSHIP_STATUS, target=MEMBERSHIP_STATUS)]
    )
    mandatory: list[str] = Field(default_factory=list, description="Target columns a row must have.")
    dedup_key: list[str] = Field(default_factory=list, description="One identity, or one or two attribute columns.")
    enabled: bool = True
    updated: dt.datetime | None = None

    @property
    def extension(self) -> str:
        ext = {FileFormat.CSV: "csv", FileFormat.JSON: "json", FileFormat.PARQUET: "parquet"}[self.format]
        return ext + (".gz" if self.format is FileFormat.CSV and self.csv.gzip else "")

    def file_name(self, segment_id: str, at: dt.datetime, part: int = 1) -> str:
        """`<destinationName>_segment<segmentID>_<yyyymmddhhmmss>[_<part>].<ext>`"""
        suffix = f"_{part}" if part > 1 else ""
        return f"{self.name}_segment{segment_id}_{at.astimezone(dt.UTC):%Y%m%d%H%M%S}{suffix}.{self.extension}"

    def manifest_name(self, at: dt.datetime) -> str:
        return f"{self.name}_manifest_{at.astimezone(dt.UTC):%Y%m%d%H%M%S}.json"

    @property
    def status_column(self) -> str | None:
        """The column that carries segmentMembershipStatus (a guardrail makes sure there is one)."""
        return next((m.target for m in self.mapping if m.source == MEMBERSHIP_STATUS), None)

    def columns(self) -> list[str]:
        """The exported columns, in file order: the identity, then the mapping's targets."""
        return [self.identity.target] + [m.target for m in self.mapping]


def check_guardrails(
    destination: Destination, *, fields: Fields, columns: set[str], segments: set[str], max_parts: int = 99
) -> None:
    """Refuse a configuration the Campaign connection would refuse. `fields` are the catalog's profile and
    event fields, `columns` the target mapping's, `segments` the defined segment ids."""
    d = destination
    problems = [
        *_segment_problems(d, segments),
        *_mapping_problems(d, fields, columns),
        *_identity_problems(d, fields),
        *_key_problems(d, columns),
        *_schedule_problems(d, max_parts),
    ]
    if problems:
        detail = "; ".join(f"{f}: {m}" for f, m in problems)
        raise GuardrailError(
            f"destination {d.id!r} breaks {len(problems)} guardrail(s): {detail}",
            details=[{"field": f, "message": m} for f, m in problems],
        )


def _segment_problems(d: Destination, segments: set[str]) -> Iterator[tuple[str, str]]:
    """How many segments, and whether each is defined, once."""
    if len(d.segments) > MAX_SEGMENTS:
        yield ("segments", f"a destination activates at most {MAX_SEGMENTS} segments; this one has {len(d.segments)}")
    unknown = sorted(set(d.segments) - segments)
    if unknown:
        yield ("segments", f"segments {unknown} are not defined")
    if len(d.segments) != len(set(d.segments)):
        yield ("segments", "a segment is listed more than once")


def _mapping_problems(d: Destination, fields: Fields, columns: set[str]) -> Iterator[tuple[str, str]]:
    """The mapped fields: how many, exportable sources, the target mapping's columns, each target once."""
    mapped = len(d.mapping) + 1  # the identity is a mapped field too
    if mapped > MAX_MAPPED_FIELDS:
        yield ("mapping", f"at most {MAX_MAPPED_FIELDS} mapped fields (identity included); this mapping has {mapped}")
    if not any(m.source == MEMBERSHIP_STATUS for m in d.mapping):
        yield ("mapping", f"{MEMBERSHIP_STATUS} is always exported and cannot be removed from the mapping")
    for i, m in enumerate(d.mapping):
        if m.source != MEMBERSHIP_STATUS:
            reason = _not_exportable(m.source, fields)
            if reason:
                yield (f"mapping[{i}].source", reason)
        if m.target not in columns and m.target != MEMBERSHIP_STATUS:
            yield (f"mapping[{i}].target", f"{m.target!r} is not a column of target mapping {d.target_mapping!r}")
    targets = d.columns()
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        yield ("mapping", f"target columns {dupes} are mapped more than once")


def _identity_problems(d: Destination, fields: Fields) -> Iterator[tuple[str, str]]:
    """The exported identity: a namespace Campaign takes, read from its own identityMap namespace."""
    ident = d.identity
    if ident.target not in TARGET_IDENTITIES:
        yield (
            "identity.target",
            f"target identity {ident.target!r} is not one of {', '.join(TARGET_IDENTITIES)}",
        )
    elif ident.namespace is not None:
        expected = TARGET_IDENTITIES[ident.target].value
        if ident.namespace != expected:
            yield (
                "identity.source",
                f"{ident.source} cannot be mapped to {ident.target}; it is read from identityMap.{expected}",
            )
    else:
        reason = _not_exportable(ident.source, fields)
        if reason:
            yield ("identity.source", reason)


def _key_problems(d: Destination, columns: set[str]) -> Iterator[tuple[str, str]]:
    """Mandatory attributes and the deduplication key: mapped columns, one namespace or a few attributes."""
    targets = d.columns()
    for i, col in enumerate(d.mandatory):
        if col not in targets:
            yield (f"mandatory[{i}]", f"mandatory attribute {col!r} is not a mapped target column")
    if d.dedup_key:
        identities = [k for k in d.dedup_key if k in TARGET_IDENTITIES]
        attributes = [k for k in d.dedup_key if k not in TARGET_IDENTITIES]
        if identities and attributes:
            yield ("dedupKey", f"a deduplication key is one identity namespace or attributes, not both: {d.dedup_key}")
        elif len(identities) > 1:
            yield ("dedupKey", f"a deduplication key holds one identity namespace, not {identities}")
        elif len(attributes) > MAX_DEDUP_ATTRIBUTES:
            yield (
                "dedupKey",
                f"a deduplication key holds at most {MAX_DEDUP_ATTRIBUTES} attributes; this one has {len(attributes)}",
            )
        for k in d.dedup_key:
            if k not in targets or (k not in columns and k not in TARGET_IDENTITIES):
                yield (
                    "dedupKey",
                    f"deduplication key {k!r} is not a mapped column of target mapping {d.target_mapping!r}",
                )


def _schedule_problems(d: Destination, max_parts: int) -> Iterator[tuple[str, str]]:
    """The schedule's frequency and zone, and file names within Campaign's length limit."""
    s = d.schedule
    if s.frequency is Frequency.HOURS:
        if s.every_hours < MIN_EVERY_HOURS:
            yield ("schedule.everyHours", f"every {s.every_hours} hours is under the {MIN_EVERY_HOURS}-hour minimum")
        elif s.every_hours not in ALLOWED_EVERY_HOURS:
            allowed = ", ".join(map(str, ALLOWED_EVERY_HOURS))
            yield ("schedule.everyHours", f"every {s.every_hours} hours is not one of {allowed}")
    if s.start.tzinfo is None:
        yield ("schedule.start", "the start time needs a time zone (for example 2026-01-01T00:00:00Z)")

    longest = max(d.segments, key=len, default="")
    name = d.file_name(longest, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), part=max_parts)
    if len(name) > MAX_FILE_NAME:
        yield ("name", f"file names such as {name[:40]}… would be {len(name)} characters; the limit is {MAX_FILE_NAME}")


def _not_exportable(path: str, fields: Fields) -> str | None:
    """Why a path cannot be exported, or None: only scalar profile attributes can."""
    if path == "identityMap" or path.startswith("identityMap."):
        return f"{path!r} is the identity map; map one namespace as the identity instead"
    if path in fields.profile:
        if fields.profile[path].endswith("]"):
            return f"{path!r} is an array; only single-valued profile attributes can be exported"
        if fields.profile[path].startswith("MAP"):
            return f"{path!r} is a map; only single-valued profile attributes can be exported"
        return None
    if path in fields.event or any(path.startswith(p + ".") for p in fields.event):
        return f"{path!r} is an experience event field; only profile attributes can be exported"
    if any(p.startswith(path + ".") for p in fields.profile):
        return f"{path!r} is an object; map its fields one by one"
    return f"{path!r} is not a profile attribute of any dataset's schema"


class DestinationStore(RecordStore[Destination]):
    model, table_name, partition, noun = Destination, "destinations", "destination", "destination"
