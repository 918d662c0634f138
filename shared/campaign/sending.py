"""Deliveries to a list, simulated: broadLog, trackingLog and non-deliverables written to the campaign
container, hard bounces quarantined."""

from __future__ import annotations

import datetime as dt

import duckdb

from shared.campaign import recipients as rcp
from shared.campaign.deliveries import Delivery, DeliveryRequest, delivery_id, simulate_sql
from shared.campaign.tables import CampaignTables
from shared.errors import NotFound
from shared.sql import quote_literal


class Deliveries:
    def __init__(self, tables: CampaignTables) -> None:
        self.tables = tables

    def get(self, delivery_id: str) -> Delivery:
        found = self.tables.delivery_records.find(delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        return found

    def list(self) -> list[Delivery]:
        """Every delivery, newest first."""
        return sorted(self.tables.delivery_records.all(), key=lambda d: d.sent_at, reverse=True)

    def deliver(self, req: DeliveryRequest, *, now: dt.datetime) -> Delivery:
        """Send to a list, simulated: broadLog, trackingLog and non-deliverables written to the campaign
        container, hard bounces quarantined. Once per list and second: asking again returns the delivery."""
        did = delivery_id(req.list_id, now)
        found = self.tables.delivery_records.find(did)
        if found is not None:
            return found
        record = self.tables.lists.get(req.list_id)

        def attempt() -> Delivery:
            current = self.tables.recipients.find(rcp.RECIPIENTS_ID)
            with self.tables.session("delivery-") as (con, tmp):
                source = self.tables.recipients_source(current)
                for statement in simulate_sql(req, did, now, self.tables.list_source(record), source):
                    con.execute(statement)
                delivery = self._delivery(con, req, did, now, record.count)
                for log_name, path in delivery.logs.items():
                    out = tmp / f"{log_name}.parquet"
                    con.execute(f"COPY {log_name} TO {quote_literal(str(out))} (FORMAT parquet)")
                    self.tables.blobs.put_file(path, out)
                if delivery.quarantined:
                    con.execute(
                        f"""CREATE OR REPLACE TEMP TABLE recipients_next AS
                        SELECT r.* REPLACE (r.quarantined OR n.recipientId IS NOT NULL AS quarantined,
                            coalesce(r.quarantineReason, n.reason) AS quarantineReason)
                        FROM {source} r LEFT JOIN nondeliverable n ON n.recipientId = r.id ORDER BY r.id"""
                    )
                    self.tables.publish_recipients(con, "recipients_next", tmp, current, now)
                return delivery

        delivery = self.tables.retrying(attempt, "the recipients kept changing during the delivery; try again")
        return self.tables.delivery_records.put(did, delivery)

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
