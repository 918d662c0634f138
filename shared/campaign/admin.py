"""Campaign's administration of recipients and lists: imports of seed/CRM files, explicit deletes, the
kept versions and restores, the retention of old versions, and pages of recipients and list members."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from shared.campaign import recipients as rcp
from shared.campaign.snapshots import SnapshotRecord, Snapshots, SnapshotVersion
from shared.campaign.tables import CampaignTables
from shared.engine import scalar
from shared.errors import NotFound, ValidationError


class CampaignAdmin:
    def __init__(self, tables: CampaignTables) -> None:
        self.tables = tables

    def seed_recipients(self, file: Path, *, now: dt.datetime, target_mapping: str = "mapRecipient") -> dict[str, Any]:
        """Campaign's own import of a seed/CRM file: creates and updates recipients, keyed by the target
        mapping's key. Returns the counts."""
        mapping = self.tables.targets.get(target_mapping)

        def attempt() -> dict[str, Any]:
            current = self.tables.recipients.find(rcp.RECIPIENTS_ID)
            with self.tables.session("seed-") as (con, tmp):
                table, counts = rcp.seed(
                    con,
                    file,
                    self.tables.recipients_source(current),
                    key=mapping.key,
                    allowed=mapping.columns,
                    now=now,
                    last_id=current.last_id if current else 0,
                )
                return {**counts, "recipients": self.tables.publish_recipients(con, table, tmp, current, now)}

        return self.tables.retrying(attempt, "the recipients kept changing while importing; try again")

    def delete_recipients(self, ids: list[int], *, now: dt.datetime) -> dict[str, int]:
        """Campaign's explicit deletion: the recipients with these ids leave the table (a new version; the
        previous ones stay restorable for the retention period). Their ids are never given again."""
        if not ids:
            raise ValidationError("name the recipients to delete: ?ids=1,2,3")

        def attempt() -> dict[str, int]:
            current = self.tables.recipients.get(rcp.RECIPIENTS_ID)
            with self.tables.session("delete-") as (con, tmp):
                source = self.tables.recipients_source(current)
                listed = ", ".join(str(int(i)) for i in ids)
                con.execute(f"CREATE TEMP TABLE kept AS SELECT * FROM {source} WHERE id NOT IN ({listed})")
                deleted = current.count - scalar(con, "SELECT count(*) FROM kept")
                if not deleted:
                    raise NotFound(f"no recipient has any of the ids {sorted(ids)}")
                return {
                    "deleted": deleted,
                    "recipients": self.tables.publish_recipients(con, "kept", tmp, current, now),
                }

        return self.tables.retrying(attempt, "the recipients kept changing while deleting; try again")

    def versions(self, table: Snapshots, record_id: str) -> list[SnapshotVersion]:
        """The versions a recipients table or list keeps, newest first."""
        return sorted(table.get(record_id).versions, key=lambda v: v.version, reverse=True)

    def restore(self, table: Snapshots, record_id: str, version: int, *, now: dt.datetime) -> SnapshotRecord:
        """Bring a kept version back as the newest one."""
        return self.tables.retrying(
            lambda: table.restore(record_id, version, now=now), "the table kept changing while restoring; try again"
        )

    def expire_snapshots(self, *, now: dt.datetime) -> list[str]:
        """The retention timer: snapshot versions no record keeps, older than SNAPSHOT_RETENTION_HOURS."""
        return self.tables.recipients.expire(now=now) + self.tables.lists.expire(now=now)

    def recipient_rows(self, *, email: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recipients as dicts, by id (for the API, the CLI and tests): all of them, or those with this email."""
        current = self.tables.recipients.find(rcp.RECIPIENTS_ID)
        if current is None:
            return []
        source = self.tables.recipients_source(current)
        where, params = ("email = ?", [email]) if email is not None else ("true", [])
        return self.tables.rows(f"SELECT * FROM {source} WHERE {where} ORDER BY id LIMIT {int(limit)}", params)

    def members(self, list_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of a list's members with their recipient attributes."""
        record = self.tables.lists.get(list_id)
        current = self.tables.recipients.find(rcp.RECIPIENTS_ID)
        items = self.tables.rows(
            f"""SELECT l.recipientId, l.status, l.addedAt, r.* EXCLUDE (id, created, updated)
            FROM {self.tables.list_source(record)} l
            LEFT JOIN {self.tables.recipients_source(current)} r ON r.id = l.recipientId
            ORDER BY l.recipientId LIMIT {int(limit)} OFFSET {int(offset)}"""
        )
        return {"list": record, "offset": offset, "items": items}
