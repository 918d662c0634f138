"""What the simulated Campaign's services share: its storage (recipients and lists as versioned snapshots,
deliveries, audience load jobs, target mappings), DuckDB sessions with the export's identity macros, and
retrying a write that another writer raced."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from shared.activation.export import install_transforms
from shared.activation.targets import TargetMappingStore
from shared.campaign import recipients as rcp
from shared.campaign.deliveries import Delivery
from shared.campaign.snapshots import SnapshotRecord, Snapshots
from shared.engine import connect
from shared.errors import Conflict
from shared.jobs import JobStore
from shared.settings import Settings
from shared.sql import parquet, quote_literal
from shared.storage import BlobStore, EntityTable, ModelTable, StorageAccount

log = logging.getLogger(__name__)
T = TypeVar("T")
_ATTEMPTS = 8  # concurrent loads into one list or the recipients retry this many times
_EMPTY_LIST = (
    "SELECT NULL::BIGINT AS recipientId, NULL::VARCHAR AS status, NULL::TIMESTAMPTZ AS addedAt, "
    "NULL::TIMESTAMPTZ AS updatedAt, NULL::VARCHAR AS run WHERE false"
)


class CampaignTables:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.account = account
        self.blobs = BlobStore(account.container(settings.campaign_container))
        self.dlz = BlobStore(account.container(settings.dlz_container))
        retention = dt.timedelta(hours=settings.snapshot_retention_hours)

        def snapshots(table: str, partition: str, prefix: str) -> Snapshots:
            records = EntityTable(account.table(settings.table_name(table)))
            return Snapshots(self.blobs, records, partition=partition, prefix=prefix, retention=retention)

        self.recipients = snapshots("campaignprofiles", "recipients", "recipients")
        self.lists = snapshots("audiencelists", "list", "lists")
        self.targets = TargetMappingStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.deliveries_table = EntityTable(account.table(settings.table_name("campaigndeliveries")))
        self.delivery_records = ModelTable(self.deliveries_table, Delivery, partition="delivery")

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> CampaignTables:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    @contextmanager
    def session(self, prefix: str) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
        """A DuckDB connection with the export's identity macros, and a scratch folder; both gone after."""
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            con = connect(self.settings, spill_dir=tmp)
            try:
                install_transforms(con, country_code=self.settings.export_phone_country_code)
                yield con, Path(tmp)
            finally:
                con.close()

    def retrying(self, attempt: Callable[[], T], failure: str) -> T:
        """Run `attempt` again while another writer publishes the same snapshot first (a `Conflict`)."""
        for _ in range(_ATTEMPTS):
            try:
                return attempt()
            except Conflict:
                log.info("%s: changed by another writer meanwhile; trying again", failure)
        raise Conflict(failure)

    def rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.session("query-") as (con, _):
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def list_source(self, record: SnapshotRecord | None) -> str:
        path = self.lists.local(record) if record else None
        return f"{parquet(path)}" if path else f"({_EMPTY_LIST})"

    def recipients_source(self, current: SnapshotRecord | None) -> str:
        """The recipients version `current` as a FROM source (an empty table when there is none): its snapshot
        with its deltas read over it (a recipient's row in a delta replaces its row, the newest delta wins)."""
        base = rcp.source_of(self.recipients.local(current) if current else None)
        deltas = self.recipients.local_deltas(current) if current else []
        if not deltas:
            return base
        newest = " UNION ALL BY NAME ".join(f"SELECT *, {n} AS _delta FROM {parquet(p)}" for n, p in enumerate(deltas))
        return f"""(SELECT * FROM {base} WHERE id NOT IN (SELECT id FROM ({newest}))
            UNION ALL BY NAME
            SELECT * EXCLUDE (_delta) FROM ({newest}) QUALIFY row_number() OVER (PARTITION BY id ORDER BY _delta DESC) = 1)"""

    def compacts(self, current: SnapshotRecord | None, rows: int) -> bool:
        """Whether an update of `rows` recipients rewrites the table (compacting its deltas) rather than adding
        a delta: when there is no base yet, or when the deltas would pass RECIPIENTS_DELTA_RATIO of it."""
        if current is None or not current.snapshot:
            return True
        return current.delta_rows + rows > self.settings.recipients_delta_ratio * max(current.count, 1)

    def publish_recipients(
        self, con: duckdb.DuckDBPyConnection, table: str, tmp: Path, current: SnapshotRecord | None, now: dt.datetime
    ) -> int:
        """Publish `table` as the whole recipients table: a new base, without deltas."""
        out = tmp / "recipients.parquet"
        con.execute(f"COPY {table} TO {quote_literal(str(out))} (FORMAT parquet, COMPRESSION zstd)")
        count, last_id = con.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {table}").fetchall()[0]
        record = SnapshotRecord(id=rcp.RECIPIENTS_ID, name="Recipients", count=count, updated=now, last_id=last_id)
        self.recipients.publish(record, out, previous=current, now=now)
        return count

    def publish_recipients_delta(
        self, con: duckdb.DuckDBPyConnection, table: str, tmp: Path, current: SnapshotRecord, now: dt.datetime
    ) -> int:
        """Publish `table`, the changed rows of recipients that exist, as a delta over `current`."""
        out = tmp / "recipients-delta.parquet"
        con.execute(f"COPY {table} TO {quote_literal(str(out))} (FORMAT parquet, COMPRESSION zstd)")
        rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        record = current.model_copy(update={"updated": now})
        self.recipients.publish(record, out, previous=current, now=now, delta_rows=rows)
        return current.count
