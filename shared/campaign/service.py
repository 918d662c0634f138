"""The simulated Campaign's side of the Data Landing Zone: each export file is loaded once (by blob name and
ETag), after its run's manifest, as an audience load job. Audience sync keeps the lists
"AEP audiences / <segment>"; profile sync updates recipients that exist and creates none."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import duckdb

from shared.activation.destinations import ExportMode, SyncType
from shared.activation.export import install_transforms
from shared.activation.manifest import ExportManifest, ManifestFile
from shared.activation.targets import TargetMapping, TargetMappingStore
from shared.campaign import recipients as rcp
from shared.campaign.deliveries import (
    EVENT_HORIZON,
    Delivery,
    DeliveryRequest,
    delivery_id,
    events_sql,
    simulate_sql,
)
from shared.campaign.files import check_checksum, read_export
from shared.campaign.snapshots import SnapshotRecord, Snapshots, SnapshotVersion
from shared.engine import connect, scalar
from shared.errors import Conflict, NotFound, ValidationError
from shared.ingestion.datasets import Dataset, DatasetStore
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.settings import Settings
from shared.sql import parquet, quote_ident, quote_literal
from shared.storage import BlobStore, EntityTable, ModelTable, StorageAccount
from shared.timing import Laps

log = logging.getLogger(__name__)
T = TypeVar("T")
LIST_FOLDER = "AEP audiences"
STATUSES = "('realized', 'existing', 'exited')"
_ATTEMPTS = 8  # concurrent loads into one list or the recipients retry this many times
_EMPTY_LIST = (
    "SELECT NULL::BIGINT AS recipientId, NULL::VARCHAR AS status, NULL::TIMESTAMPTZ AS addedAt, "
    "NULL::TIMESTAMPTZ AS updatedAt, NULL::VARCHAR AS run WHERE false"
)


def is_manifest(name: str) -> bool:
    return "_manifest_" in name and name.endswith(".json")


def load_id(name: str, etag: str) -> str:
    """An audience load is named by its file and the file's ETag: the same file delivered twice is one load."""
    stem = name.split(".", 1)[0][:180]
    return f"load-{stem}-{hashlib.sha256(etag.encode()).hexdigest()[:10]}"


class ListChange(NamedTuple):
    """How one audience file changed its list."""

    added: int
    updated: int
    removed: int
    exits: int
    replaced: int  # members of older runs dropped by a complete full export
    size: int


class Campaign:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.account = account
        self.blobs = BlobStore(account.container(settings.campaign_container))
        self.dlz = BlobStore(account.container(settings.dlz_container))
        self.recipients = Snapshots(
            self.blobs,
            EntityTable(account.table(settings.table_name("campaignprofiles"))),
            partition="recipients",
            prefix="recipients",
            retention=dt.timedelta(hours=settings.snapshot_retention_hours),
        )
        self.lists = Snapshots(
            self.blobs,
            EntityTable(account.table(settings.table_name("audiencelists"))),
            partition="list",
            prefix="lists",
            retention=dt.timedelta(hours=settings.snapshot_retention_hours),
        )
        self.targets = TargetMappingStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.deliveries_table = EntityTable(account.table(settings.table_name("campaigndeliveries")))
        self.deliveries = ModelTable(self.deliveries_table, Delivery, partition="delivery")

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> Campaign:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    @contextmanager
    def _session(self, prefix: str) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
        """A DuckDB connection with the export's identity macros, and a scratch folder; both gone after."""
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            con = connect(self.settings, spill_dir=tmp)
            try:
                install_transforms(con, country_code=self.settings.export_phone_country_code)
                yield con, Path(tmp)
            finally:
                con.close()

    def _retrying(self, attempt: Callable[[], T], failure: str) -> T:
        """Run `attempt` again while another writer publishes the same snapshot first (a `Conflict`)."""
        for _ in range(_ATTEMPTS):
            try:
                return attempt()
            except Conflict:
                log.info("%s: changed by another writer meanwhile; trying again", failure)
        raise Conflict(failure)

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._session("query-") as (con, _):
            cur = con.execute(sql, params or [])
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # Recipients ----------------------------------------------------------------------------------

    def seed_recipients(self, file: Path, *, now: dt.datetime, target_mapping: str = "mapRecipient") -> dict[str, Any]:
        """Campaign's own import of a seed/CRM file: creates and updates recipients, keyed by the target
        mapping's key. Returns the counts."""
        mapping = self.targets.get(target_mapping)

        def attempt() -> dict[str, Any]:
            current = self.recipients.find(rcp.RECIPIENTS_ID)
            with self._session("seed-") as (con, tmp):
                local = self.recipients.local(current) if current else None
                table, counts = rcp.seed(
                    con,
                    file,
                    local,
                    key=mapping.key,
                    allowed=mapping.columns,
                    now=now,
                    last_id=current.last_id if current else 0,
                )
                return {**counts, "recipients": self._publish_recipients(con, table, tmp, current, now)}

        return self._retrying(attempt, "the recipients kept changing while importing; try again")

    def _publish_recipients(
        self, con: duckdb.DuckDBPyConnection, table: str, tmp: Path, current: SnapshotRecord | None, now: dt.datetime
    ) -> int:
        out = tmp / "recipients.parquet"
        con.execute(f"COPY {table} TO {quote_literal(str(out))} (FORMAT parquet, COMPRESSION zstd)")
        count, last_id = con.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {table}").fetchall()[0]
        record = SnapshotRecord(id=rcp.RECIPIENTS_ID, name="Recipients", count=count, updated=now, last_id=last_id)
        self.recipients.publish(record, out, previous=current, now=now)
        return count

    def delete_recipients(self, ids: list[int], *, now: dt.datetime) -> dict[str, int]:
        """Campaign's explicit deletion: the recipients with these ids leave the table (a new version; the
        previous ones stay restorable for the retention period). Their ids are never given again."""
        if not ids:
            raise ValidationError("name the recipients to delete: ?ids=1,2,3")

        def attempt() -> dict[str, int]:
            current = self.recipients.get(rcp.RECIPIENTS_ID)
            with self._session("delete-") as (con, tmp):
                source = rcp.source_of(self.recipients.local(current))
                listed = ", ".join(str(int(i)) for i in ids)
                con.execute(f"CREATE TEMP TABLE kept AS SELECT * FROM {source} WHERE id NOT IN ({listed})")
                deleted = current.count - scalar(con, "SELECT count(*) FROM kept")
                if not deleted:
                    raise NotFound(f"no recipient has any of the ids {sorted(ids)}")
                return {"deleted": deleted, "recipients": self._publish_recipients(con, "kept", tmp, current, now)}

        return self._retrying(attempt, "the recipients kept changing while deleting; try again")

    def versions(self, table: Snapshots, record_id: str) -> list[SnapshotVersion]:
        """The versions a recipients table or list keeps, newest first."""
        return sorted(table.get(record_id).versions, key=lambda v: v.version, reverse=True)

    def restore(self, table: Snapshots, record_id: str, version: int, *, now: dt.datetime) -> SnapshotRecord:
        """Bring a kept version back as the newest one."""
        return self._retrying(
            lambda: table.restore(record_id, version, now=now), "the table kept changing while restoring; try again"
        )

    def expire_snapshots(self, *, now: dt.datetime) -> list[str]:
        """The retention timer: snapshot versions no record keeps, older than SNAPSHOT_RETENTION_HOURS."""
        return self.recipients.expire(now=now) + self.lists.expire(now=now)

    def recipient_rows(self, *, email: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recipients as dicts, by id (for the API, the CLI and tests): all of them, or those with this email."""
        current = self.recipients.find(rcp.RECIPIENTS_ID)
        if current is None:
            return []
        source = rcp.source_of(self.recipients.local(current))
        where, params = ("email = ?", [email]) if email is not None else ("true", [])
        return self._rows(f"SELECT * FROM {source} WHERE {where} ORDER BY id LIMIT {int(limit)}", params)

    def members(self, list_id: str, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of a list's members with their recipient attributes."""
        record = self.lists.get(list_id)
        current = self.recipients.find(rcp.RECIPIENTS_ID)
        items = self._rows(
            f"""SELECT l.recipientId, l.status, l.addedAt, r.* EXCLUDE (id, created, updated)
            FROM {self._list_source(record)} l
            LEFT JOIN {rcp.source_of(self.recipients.local(current) if current else None)} r ON r.id = l.recipientId
            ORDER BY l.recipientId LIMIT {int(limit)} OFFSET {int(offset)}"""
        )
        return {"list": record, "offset": offset, "items": items}

    def _list_source(self, record: SnapshotRecord | None) -> str:
        path = self.lists.local(record) if record else None
        return f"{parquet(path)}" if path else f"({_EMPTY_LIST})"

    # Audience loads ------------------------------------------------------------------------------

    def on_blob(self, name: str, *, now: dt.datetime, etag: str | None = None) -> list[Job]:
        """What the `dlz` blob trigger does. A manifest loads every file of its run; a data file loads
        itself if its manifest is there (files are committed before their manifest, so usually the
        manifest's trigger loads it). Either way each file is loaded once."""
        if is_manifest(name):
            try:
                manifest = ExportManifest.read(self.dlz.get(name), name=name)
            except ValidationError as exc:  # nothing to retry: the load fails, visibly, with the reason
                return [self._refuse(name, etag, exc, now)]
            return [self._load_once(name, manifest, entry, now) for entry in manifest.files]
        props = self.dlz.properties(name)
        manifest_name = (props.metadata or {}).get("manifest")
        if not manifest_name:
            log.info("%s has no manifest in its metadata; not an export file, ignored", name)
            return []
        try:
            manifest = ExportManifest.read(self.dlz.get(manifest_name), name=manifest_name)
        except NotFound:
            log.info("%s waits for its manifest %s", name, manifest_name)
            return []
        entry = manifest.file(name)
        if entry is None:
            log.warning("%s is not listed in its manifest %s; ignored", name, manifest_name)
            return []
        return [self._load_once(manifest_name, manifest, entry, now, etag=etag or props.etag)]

    def _refuse(self, name: str, etag: str | None, exc: ValidationError, now: dt.datetime) -> Job:
        """A manifest this Campaign cannot read: one FAILED audience load naming it and why."""
        job = Job(
            id=load_id(name, etag or self.dlz.etag(name)),
            type=JobType.AUDIENCE_LOAD,
            source=name,
            created=now,
            started=now,
        )
        claim = self.jobs.claim(job)
        if not claim.ours:
            return claim.job

        def refused() -> tuple[dict[str, Any], dict[str, Any]]:
            raise exc

        return self.jobs.run(claim.job, now, refused)

    def _load_once(
        self,
        manifest_name: str,
        manifest: ExportManifest,
        entry: ManifestFile,
        now: dt.datetime,
        etag: str | None = None,
    ) -> Job:
        name = entry.name
        try:
            etag = etag or self.dlz.etag(name)
        except NotFound:
            etag = "missing"
        job = Job(
            id=load_id(name, etag),
            type=JobType.AUDIENCE_LOAD,
            status=JobStatus.PROCESSING,
            subject=f"{manifest.destination_id}/{entry.segment_id}",
            source=name,
            created=now,
            started=now,
            links={"manifest": f"{self.settings.dlz_container}/{manifest_name}", "exportRun": manifest.run_id},
        )
        claim = self.jobs.claim(job)
        if not claim.ours:
            log.info("%s (ETag %s) is already %s", name, etag, claim.job.status.value)
            return claim.job
        job = claim.job
        return self.jobs.run(job, now, lambda: (self._load(job, manifest, entry, now), {}))

    def _load(self, job: Job, manifest: ExportManifest, entry: ManifestFile, now: dt.datetime) -> dict[str, Any]:
        name = entry.name
        mapping = self.targets.get(manifest.target_mapping)
        phases = Laps()
        with self._session("load-") as (con, work), ThreadPoolExecutor(max_workers=1) as pool:
            # The snapshots the load will read are fetched while the file downloads and is checked.
            prefetch = pool.submit(self._prefetch, None if manifest.sync_type is SyncType.PROFILE else entry.segment_id)
            try:
                path = self.dlz.download(name, work / "file")
            except NotFound as exc:
                raise ValidationError(f"{name}: listed in its manifest but not in the DLZ (deleted?)") from exc
            phases.lap("download")
            check_checksum(path, entry)
            phases.lap("checksum")
            allowed = set(mapping.columns) | {manifest.status_column or ""}
            read_export(con, path, manifest, entry, allowed=allowed)
            prefetch.result()
            phases.lap("read")

            def sync() -> dict[str, Any]:
                if manifest.sync_type is SyncType.PROFILE:
                    return self._profile_sync(con, job, manifest, mapping, work, now)
                return self._audience_sync(con, job, manifest, entry, work, now)

            metrics = self._retrying(sync, f"{name}: its list kept changing while loading; it will be retried")
            phases.lap("sync")
            return {**metrics, "phaseSeconds": dict(phases)}

    def _prefetch(self, list_id: str | None) -> None:
        for store, record_id in ((self.recipients, rcp.RECIPIENTS_ID), (self.lists, list_id)):
            record = store.find(record_id) if record_id else None
            if record is not None:
                store.local(record)

    def _match(self, con: duckdb.DuckDBPyConnection, manifest: ExportManifest, current: SnapshotRecord | None) -> None:
        """`matched`: each row of `incoming` with its recipient and, when it is rejected, the reason."""
        source = rcp.source_of(self.recipients.local(current) if current else None)
        ident = manifest.identity
        key = quote_ident(ident) if ident in rcp.columns_of(con, source) else "NULL::VARCHAR"
        status = quote_ident(manifest.status_column) if manifest.status_column else "'realized'"
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE matched AS
            WITH r AS (SELECT {key} AS k, min(id) AS id FROM {source} WHERE {key} IS NOT NULL GROUP BY 1),
            i AS (SELECT _row, {quote_ident(ident)} AS k, {status} AS status,
                         row_number() OVER (PARTITION BY {quote_ident(ident)} ORDER BY _row) AS nth FROM incoming)
            SELECT i._row, i.status, r.id AS recipientId, CASE
                WHEN i.k IS NULL THEN 'missingIdentity'
                WHEN i.status IS NULL OR i.status NOT IN {STATUSES} THEN 'invalidStatus'
                WHEN i.nth > 1 THEN 'duplicateIdentity'
                WHEN r.id IS NULL THEN 'unknownRecipient' END AS reason
            FROM i LEFT JOIN r ON r.k = i.k"""
        )

    def _rejected(self, con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        rows = con.execute("SELECT reason, count(*) FROM matched WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 1")
        return dict(rows.fetchall())

    def _audience_sync(
        self,
        con: duckdb.DuckDBPyConnection,
        job: Job,
        manifest: ExportManifest,
        entry: ManifestFile,
        work: Path,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """Realized and existing members added (or kept), exited ones removed; a full export's run replaces
        the list once all of its parts for the segment are loaded."""
        segment = entry.segment_id
        info = manifest.segments.get(segment)
        current = self.lists.find(segment)
        self._match(con, manifest, self.recipients.find(rcp.RECIPIENTS_ID))
        run = manifest.run_id
        loaded = sorted({*(current.parts_loaded if current and current.run_id == run else []), entry.part})
        parts = info.parts if info else 1
        replace = manifest.export_mode is ExportMode.FULL and set(loaded) >= set(range(1, parts + 1))
        out = work / "list.parquet"
        change = self._next_list(con, current, run, replace=replace, now=now, out=out)
        record = SnapshotRecord(
            id=segment,
            name=f"{LIST_FOLDER} / {info.name if info else segment}",
            count=change.size,
            updated=now,
            segment_id=segment,
            destination_id=manifest.destination_id,
            run_id=run,
            parts_loaded=loaded,
            last_load=job.id,
        )
        self.lists.publish(record, out, previous=current, now=now)
        rejected = self._rejected(con)
        return {
            "syncType": "audience",
            "destination": manifest.destination_id,
            "segment": segment,
            "list": segment,
            "listName": record.name,
            "rowsRead": entry.rows,
            "added": change.added,
            "updated": change.updated,
            "removed": change.removed + change.replaced,
            "ignoredExits": change.exits - change.removed,
            "rejected": rejected,
            "rejectedTotal": sum(rejected.values()),
            "listSize": change.size,
        }

    def _next_list(
        self,
        con: duckdb.DuckDBPyConnection,
        current: SnapshotRecord | None,
        run: str,
        *,
        replace: bool,
        now: dt.datetime,
        out: Path,
    ) -> ListChange:
        """The list after this file's `matched` members (written to `out`): active members added or kept, exits
        removed, and, when a full export's run is complete (`replace`), members from older runs dropped."""
        ts = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
        con.execute(f"CREATE OR REPLACE TEMP TABLE cur AS SELECT * FROM {self._list_source(current)}")
        con.execute(
            """CREATE OR REPLACE TEMP TABLE act AS SELECT recipientId, any_value(status) AS status FROM matched
            WHERE reason IS NULL AND status <> 'exited' GROUP BY 1"""
        )
        con.execute(
            """CREATE OR REPLACE TEMP TABLE ex AS SELECT DISTINCT recipientId FROM matched
            WHERE reason IS NULL AND status = 'exited' AND recipientId NOT IN (SELECT recipientId FROM act)"""
        )
        added, updated, removed, exits = con.execute(
            """SELECT (SELECT count(*) FROM act ANTI JOIN cur USING (recipientId)),
                      (SELECT count(*) FROM act SEMI JOIN cur USING (recipientId)),
                      (SELECT count(*) FROM ex SEMI JOIN cur USING (recipientId)),
                      (SELECT count(*) FROM ex)"""
        ).fetchall()[0]
        con.execute(
            "CREATE OR REPLACE TEMP TABLE kept AS SELECT c.* FROM cur c ANTI JOIN act USING (recipientId) ANTI JOIN ex USING (recipientId)"
        )
        stale = f"run <> {quote_literal(run)}" if replace else "false"
        replaced = con.execute(f"SELECT count(*) FROM kept WHERE {stale}").fetchall()[0][0]
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE next AS
            SELECT * FROM kept WHERE NOT ({stale})
            UNION ALL
            SELECT a.recipientId, a.status, coalesce(c.addedAt, {ts}), {ts}, {quote_literal(run)}
            FROM act a LEFT JOIN cur c USING (recipientId)
            ORDER BY recipientId"""
        )
        count = con.execute("SELECT count(*) FROM next").fetchall()[0][0]
        con.execute(f"COPY next TO {quote_literal(str(out))} (FORMAT parquet, COMPRESSION zstd)")
        return ListChange(added, updated, removed, exits, replaced, count)

    def _profile_sync(
        self,
        con: duckdb.DuckDBPyConnection,
        job: Job,
        manifest: ExportManifest,
        mapping: TargetMapping,
        work: Path,
        now: dt.datetime,
    ) -> dict[str, Any]:
        """The mapped attributes of recipients that exist are updated (a null leaves a value as it is);
        unknown recipients are rejected and counted, never created; flags are only ever set."""
        current = self.recipients.find(rcp.RECIPIENTS_ID)
        self._match(con, manifest, current)
        skip = {manifest.identity, manifest.status_column, mapping.key, *rcp.PROTECTED}
        attrs = [c for c in manifest.columns if c not in skip]
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE upd AS
            SELECT m.recipientId{"".join(f", i.{quote_ident(a)}" for a in attrs)}
            FROM matched m JOIN incoming i USING (_row) WHERE m.reason IS NULL AND m.status <> 'exited'"""
        )
        updated = con.execute("SELECT count(*) FROM upd").fetchall()[0][0]
        ignored = con.execute("SELECT count(*) FROM matched WHERE reason IS NULL AND status = 'exited'").fetchall()[0][
            0
        ]
        rejected = self._rejected(con)
        metrics = {
            "syncType": "profile",
            "destination": manifest.destination_id,
            "rowsRead": len(con.execute("SELECT 1 FROM incoming").fetchall()),
            "updated": updated,
            "ignoredExits": ignored,
            "rejected": rejected,
            "rejectedTotal": sum(rejected.values()),
            "attributes": attrs,
        }
        if current is None or not updated:
            return {**metrics, "recipients": current.count if current else 0}
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE cur AS SELECT * FROM {rcp.source_of(self.recipients.local(current))}"
        )
        have = rcp.columns_of(con, "cur")
        for a in attrs:
            if a not in have:
                con.execute(f"ALTER TABLE cur ADD COLUMN {quote_ident(a)} VARCHAR")
        replace = [f"coalesce(u.{quote_ident(a)}, r.{quote_ident(a)}) AS {quote_ident(a)}" for a in attrs]
        replace.append(
            f"CASE WHEN u.recipientId IS NULL THEN r.updated ELSE {quote_literal(now.isoformat())}::TIMESTAMPTZ END AS updated"
        )
        if "emailOptIn" in attrs:  # an opt-out in the platform opts the recipient out; an opt-in never clears it
            replace.append(f"r.optOut OR coalesce(lower(u.emailOptIn) IN {rcp.OPT_OUT_VALUES}, false) AS optOut")
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE recipients_next AS
            SELECT r.* REPLACE ({", ".join(replace)}) FROM cur r LEFT JOIN upd u ON u.recipientId = r.id ORDER BY r.id"""
        )
        total = self._publish_recipients(con, "recipients_next", work, current, now)
        return {**metrics, "recipients": total}

    # Deliveries and their logs -------------------------------------------------------------------

    def deliver(self, req: DeliveryRequest, *, now: dt.datetime) -> Delivery:
        """Send to a list, simulated: broadLog, trackingLog and non-deliverables written to the campaign
        container, hard bounces quarantined. Once per list and second: asking again returns the delivery."""
        did = delivery_id(req.list_id, now)
        found = self.deliveries.find(did)
        if found is not None:
            return found
        record = self.lists.get(req.list_id)

        def attempt() -> Delivery:
            current = self.recipients.find(rcp.RECIPIENTS_ID)
            with self._session("delivery-") as (con, tmp):
                source = rcp.source_of(self.recipients.local(current) if current else None)
                for statement in simulate_sql(req, did, now, self._list_source(record), source):
                    con.execute(statement)
                delivery = self._delivery(con, req, did, now, record.count)
                for log_name, path in delivery.logs.items():
                    out = tmp / f"{log_name}.parquet"
                    con.execute(f"COPY {log_name} TO {quote_literal(str(out))} (FORMAT parquet)")
                    self.blobs.put_file(path, out)
                if delivery.quarantined:
                    con.execute(
                        f"""CREATE OR REPLACE TEMP TABLE recipients_next AS
                        SELECT r.* REPLACE (r.quarantined OR n.recipientId IS NOT NULL AS quarantined,
                            coalesce(r.quarantineReason, n.reason) AS quarantineReason)
                        FROM {source} r LEFT JOIN nondeliverable n ON n.recipientId = r.id ORDER BY r.id"""
                    )
                    self._publish_recipients(con, "recipients_next", tmp, current, now)
                return delivery

        delivery = self._retrying(attempt, "the recipients kept changing during the delivery; try again")
        return self.deliveries.put(did, delivery)

    def _delivery(
        self, con: duckdb.DuckDBPyConnection, req: DeliveryRequest, did: str, now: dt.datetime, members: int
    ) -> Delivery:
        excluded = dict(
            con.execute("SELECT excluded, count(*) FROM targets WHERE excluded IS NOT NULL GROUP BY 1").fetchall()
        )
        sent = con.execute("SELECT count(*) FROM broadlog WHERE status = 'sent'").fetchall()[0][0]
        failed = dict(
            con.execute("SELECT failureReason, count(*) FROM broadlog WHERE status = 'failed' GROUP BY 1").fetchall()
        )
        tracked = dict(con.execute("SELECT type, count(*) FROM trackinglog GROUP BY 1").fetchall())
        return Delivery(
            **req.model_dump(),
            id=did,
            sent_at=now,
            members=members,
            targeted=sent + sum(failed.values()),
            excluded=excluded,
            sent=sent,
            failed=failed,
            opens=tracked.get("open", 0),
            clicks=tracked.get("click", 0),
            quarantined=failed.get("hardBounce", 0),
            logs={name: f"logs/{name}/{did}.parquet" for name in ("broadlog", "trackinglog", "nondeliverable")},
        )

    def export_logs(self, *, now: dt.datetime) -> Job:
        """Send the log rows since the last export (the watermark) up to `now` to `landing` as experience
        events, one NDJSON file per export, ingested like any other file. Once per `now`."""
        job = Job(
            id=f"feedback-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}",
            type=JobType.FEEDBACK,
            status=JobStatus.PROCESSING,
            subject=self.settings.campaign_feedback_dataset,
            created=now,
            started=now,
        )
        claim = self.jobs.claim(job)
        if not claim.ours:
            return claim.job
        job = claim.job
        return self.jobs.run(job, now, lambda: self._export_logs(job, now))

    def _export_logs(self, job: Job, now: dt.datetime) -> tuple[dict[str, Any], dict[str, Any]]:
        mark = self.deliveries_table.find("watermark", "logs")
        since = dt.datetime.fromisoformat(mark["at"]) if mark else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        recent = [d for d in self.deliveries.all() if since - EVENT_HORIZON < d.sent_at <= now]
        metrics: dict[str, Any] = {"since": since.isoformat(), "until": now.isoformat(), "deliveries": len(recent)}
        events: dict[str, int] = {}
        name = ""
        current = self.recipients.find(rcp.RECIPIENTS_ID)
        if recent and current is not None:
            dataset = self.settings.campaign_feedback_dataset
            with self._session("logs-") as (con, tmp):
                wanted = {
                    f"{d.id}-{log_name}": d.logs[log_name] for d in recent for log_name in ("broadlog", "trackinglog")
                }
                for local, blob in wanted.items():
                    self.blobs.download(blob, tmp / f"{local}.parquet")
                logs = {
                    log_name: "["
                    + ", ".join(quote_literal(str(tmp / f"{d.id}-{log_name}.parquet")) for d in recent)
                    + "]"
                    for log_name in ("broadlog", "trackinglog")
                }
                recipients = rcp.source_of(self.recipients.local(current))
                con.execute("CREATE TEMP TABLE events AS " + events_sql(logs, recipients, since, now))
                events = dict(con.execute("SELECT eventType, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall())
                if events:
                    out = tmp / "events.ndjson"
                    con.execute(f"COPY events TO {quote_literal(str(out))} (FORMAT json)")
                    self._ensure_dataset(dataset, now)
                    name = f"{dataset}/campaign-logs-{since:%Y%m%dT%H%M%SZ}-{now:%Y%m%dT%H%M%SZ}.ndjson"
                    # Written once: a rerun (a takeover before the watermark moved) must not land it twice.
                    landing = BlobStore(self.account.container(self.settings.landing_container))
                    landing.put_file(name, out, overwrite=False)
        self.deliveries_table.upsert(
            {"PartitionKey": "watermark", "RowKey": "logs", "at": now.isoformat(), "job": job.id}
        )
        links = {"file": f"{self.settings.landing_container}/{name}"} if name else {}
        metrics = {**metrics, "events": events, "eventsTotal": sum(events.values()), "file": name}
        return metrics, {"links": links, "source": name}

    def _ensure_dataset(self, dataset_id: str, now: dt.datetime) -> None:
        datasets = DatasetStore.from_settings(self.settings, self.account)
        try:
            datasets.get(dataset_id)
        except NotFound:
            datasets.save(
                Dataset(id=dataset_id, name="Campaign delivery logs", schema_id="xdm-experienceevent"), now=now
            )
