"""The export manifest: what a run wrote to the Data Landing Zone, written last, and what a reader (our
simulated Campaign) checks each file against. One model for the writer and the reader, versioned: a reader
refuses a version it does not know rather than guess."""

from __future__ import annotations

import datetime as dt

from pydantic import Field
from pydantic import ValidationError as ModelError

from shared.activation.destinations import CsvOptions, ExportMode, FileFormat, SyncType
from shared.errors import ValidationError
from shared.models import ApiModel

MANIFEST_VERSION = 1


class ManifestFile(ApiModel):
    """One export file: a segment's part, its rows, and the bytes and SHA-256 a reader checks."""

    name: str
    segment_id: str
    part: int
    rows: int
    bytes: int
    sha256: str


class ManifestSegment(ApiModel):
    name: str
    parts: int = Field(
        description="How many files the segment has in this run (a full run replaces the list once all are loaded)."
    )
    activated: int = 0
    received: int = 0
    excluded: dict[str, int] = Field(default_factory=dict)


class ExportManifest(ApiModel):
    version: int = Field(MANIFEST_VERSION, description="The manifest format; readers refuse one they do not know.")
    run_id: str
    destination_id: str
    destination_name: str
    campaign_instance: str
    target_mapping: str
    sync_type: SyncType
    export_mode: ExportMode
    format: FileFormat
    csv: CsvOptions | None = None
    identity: str = Field(description="The column holding each row's identity in the target mapping.")
    status_column: str | None = None
    columns: list[str]
    created_at: dt.datetime
    files: list[ManifestFile]
    segments: dict[str, ManifestSegment] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    rows: int = Field(0, description="Rows in all the files.")
    bytes: int = Field(0, description="Bytes in all the files.")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode()

    @classmethod
    def read(cls, data: bytes, *, name: str) -> ExportManifest:
        """A manifest from the DLZ, or a ValidationError naming the file and what is wrong."""
        try:
            manifest = cls.model_validate_json(data)
        except ModelError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ValidationError(f"{name}: not an export manifest ({problems})") from exc
        if manifest.version != MANIFEST_VERSION:
            raise ValidationError(
                f"{name}: manifest version {manifest.version} is not one this reader knows (it reads {MANIFEST_VERSION})"
            )
        return manifest

    def file(self, name: str) -> ManifestFile | None:
        return next((f for f in self.files if f.name == name), None)
