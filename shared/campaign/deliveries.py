"""Deliveries to an audience list, simulated: who is targeted (never opted-out, blocklisted or quarantined
recipients), what was sent or failed, opens and clicks, all deterministic from a seed; and the log export
that sends them back to the platform as experience events."""

from __future__ import annotations

import datetime as dt

from pydantic import ConfigDict, Field

from shared.models import ApiModel
from shared.sql import quote_literal

# Events of a delivery happen within this long after it is sent (opens up to 2 days, then clicks).
EVENT_HORIZON = dt.timedelta(days=3)
CLICK_URL = "https://www.example.com/offer"


class DeliveryRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"listId": "gold-ca", "label": "Gold offer", "seed": 7}]})

    list_id: str = Field(description="The audience list to send to.")
    label: str = ""
    seed: int = Field(0, description="Makes the simulated outcome (bounces, opens, clicks) reproducible.")
    hard_bounce_rate: float = Field(0.02, ge=0, le=1)
    soft_bounce_rate: float = Field(0.01, ge=0, le=1)
    open_rate: float = Field(0.3, ge=0, le=1)
    click_rate: float = Field(0.3, ge=0, le=1, description="Of the recipients who opened.")


class Delivery(DeliveryRequest):
    model_config = ConfigDict(json_schema_extra=None)  # the request's examples are not this answer's

    id: str
    sent_at: dt.datetime
    members: int = 0
    targeted: int = 0
    excluded: dict[str, int] = Field(default_factory=dict)
    sent: int = 0
    failed: dict[str, int] = Field(default_factory=dict)
    opens: int = 0
    clicks: int = 0
    quarantined: int = 0
    logs: dict[str, str] = Field(default_factory=dict)


def delivery_id(list_id: str, now: dt.datetime) -> str:
    return f"dlv-{list_id}-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


def simulate_sql(req: DeliveryRequest, did: str, now: dt.datetime, list_source: str, recipients: str) -> list[str]:
    """Statements that fill `targets`, `broadlog`, `trackinglog` and `nondeliverable` for one delivery."""
    seed = f"{int(req.seed)}, {quote_literal(did)}, l.recipientId"
    ts = f"{quote_literal(now.isoformat())}::TIMESTAMPTZ"
    u = "(hash({seed}, '{what}') % 1000000) / 1000000.0"
    return [
        f"""CREATE OR REPLACE TEMP TABLE targets AS
        SELECT l.recipientId, r.email, CASE
            WHEN r.id IS NULL THEN 'unknownRecipient'
            WHEN r.optOut THEN 'optedOut'
            WHEN r.blocklisted THEN 'blocklisted'
            WHEN r.quarantined THEN 'quarantined'
            WHEN r.email IS NULL OR trim(r.email) = '' THEN 'noAddress' END AS excluded,
            {u.format(seed=seed, what="send")} AS u_send, {u.format(seed=seed, what="open")} AS u_open,
            {u.format(seed=seed, what="click")} AS u_click,
            to_seconds(CAST(hash({seed}, 'delay') % (2 * 86400) AS BIGINT)) AS open_after,
            to_seconds(CAST(hash({seed}, 'think') % 3600 AS BIGINT)) AS click_after
        FROM {list_source} l LEFT JOIN {recipients} r ON r.id = l.recipientId""",
        f"""CREATE OR REPLACE TEMP TABLE broadlog AS
        SELECT {quote_literal(did)} AS deliveryId, recipientId, email AS address,
            CASE WHEN u_send < {req.hard_bounce_rate + req.soft_bounce_rate} THEN 'failed' ELSE 'sent' END AS status,
            CASE WHEN u_send < {req.hard_bounce_rate} THEN 'hardBounce'
                 WHEN u_send < {req.hard_bounce_rate + req.soft_bounce_rate} THEN 'softBounce' END AS failureReason,
            {ts} AS eventAt
        FROM targets WHERE excluded IS NULL ORDER BY recipientId""",
        f"""CREATE OR REPLACE TEMP TABLE trackinglog AS
        SELECT {quote_literal(did)} AS deliveryId, recipientId, 'open' AS type, NULL::VARCHAR AS url,
               {ts} + open_after AS eventAt
        FROM targets JOIN broadlog USING (recipientId) WHERE status = 'sent' AND u_open < {req.open_rate}
        UNION ALL
        SELECT {quote_literal(did)}, recipientId, 'click', {quote_literal(CLICK_URL)}, {ts} + open_after + click_after
        FROM targets JOIN broadlog USING (recipientId)
        WHERE status = 'sent' AND u_open < {req.open_rate} AND u_click < {req.click_rate}
        ORDER BY recipientId, type DESC""",
        """CREATE OR REPLACE TEMP TABLE nondeliverable AS
        SELECT deliveryId, recipientId, address, failureReason AS reason, eventAt FROM broadlog
        WHERE failureReason = 'hardBounce'""",
    ]


def events_sql(logs: dict[str, str], recipients: str, since: dt.datetime, until: dt.datetime) -> str:
    """Experience events of the log rows that happened in (since, until], with the recipient's identities."""
    window = (
        f"eventAt > {quote_literal(since.isoformat())}::TIMESTAMPTZ "
        f"AND eventAt <= {quote_literal(until.isoformat())}::TIMESTAMPTZ"
    )
    return f"""
        WITH e AS (
            SELECT deliveryId, recipientId, CASE status WHEN 'sent' THEN 'message.sent' ELSE 'message.bounce' END
                AS eventType, eventAt FROM read_parquet({logs["broadlog"]}) WHERE {window}
            UNION ALL
            SELECT deliveryId, recipientId, 'message.' || type, eventAt
            FROM read_parquet({logs["trackinglog"]}) WHERE {window}
        )
        SELECT 'cmp-' || e.deliveryId || '-' || e.recipientId || '-' || e.eventType AS _id,
               strftime(e.eventAt, '%Y-%m-%dT%H:%M:%SZ') AS timestamp, e.eventType,
               {{'Email': CASE WHEN r.email IS NOT NULL THEN [{{'id': r.email, 'primary': false}}] END,
                 'CRMID': CASE WHEN r.external_id IS NOT NULL THEN [{{'id': r.external_id, 'primary': true}}] END}}
                   AS identityMap
        FROM e JOIN {recipients} r ON r.id = e.recipientId
        ORDER BY e.eventAt, _id"""
