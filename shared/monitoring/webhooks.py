"""Webhook subscriptions and their deliveries, signed as Standard Webhooks (HMAC-SHA256), so subscribers
verify them with stock libraries. Each alert goes to each matching subscription through a queue; a failed
delivery comes back on the queue later (exponential backoff with jitter, Retry-After on 429) until
WEBHOOK_RETRY_HOURS have passed, then the subscription is disabled and an alert says so. 410 disables at
once; redirects are not followed; private, loopback, link-local and metadata addresses are refused at
creation and again at every send (unless WEBHOOK_ALLOW_PRIVATE). Secrets appear only in the answer to
the creation."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import time
import urllib.parse
import uuid
from typing import Annotated, Any

from pydantic import ConfigDict, Field
from standardwebhooks import Webhook

from shared.errors import NotFound, ValidationError
from shared.models import ApiModel
from shared.monitoring.alerts import ALERT_TYPES, Alert, AlertRules
from shared.settings import Settings
from shared.storage import EntityTable, ModelTable, StorageAccount
from shared.storage.messages import QueueMessage

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 10
MAX_BACKOFF_SECONDS = 3600
TEST_TYPE = "test"


class SubscriptionRequest(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/audience-bridge",
                    "eventTypes": ["segment.jobFailed", "job.delayed"],
                    "description": "on-call",
                }
            ]
        }
    )

    url: str = Field(max_length=2048, description="Where alerts are POSTed: https, a public address.")
    event_types: list[Annotated[str, Field(max_length=100)]] = Field(
        ["*"], min_length=1, max_length=100, description="Alert types to receive, or `*` for all."
    )
    description: str = Field("", max_length=1000)


class DeliveryMessage(QueueMessage):
    """One delivery of one alert to one subscription on `ALERT_DELIVERIES_QUEUE`, and its attempt number."""

    subscription_id: str
    event: dict[str, Any]
    attempt: int = 1
    first_attempt: dt.datetime | None = None


class Subscription(SubscriptionRequest):
    model_config = ConfigDict(json_schema_extra=None)  # the request's examples are not this answer's

    id: str
    enabled: bool = True
    created: dt.datetime
    disabled_reason: str | None = None
    secret: str = Field("", exclude=True, description="Only in the answer to the creation.")


class SubscriptionCreated(Subscription):
    """The answer to a subscription's creation: the only one that shows its signing secret."""

    secret: str = Field(description="The `whsec_` signing secret; verify deliveries with it (Standard Webhooks).")


class Attempt(ApiModel):
    """One delivery attempt, as logged."""

    subscription_id: str
    message_id: str
    alert_type: str
    attempt: int
    at: dt.datetime
    status: int | None = None
    latency_ms: float = 0
    outcome: str = Field(description="delivered | retry | gone | failed | refused")
    error: str | None = None


# Never a webhook's target, whatever WEBHOOK_ALLOW_PRIVATE says: cloud instance-metadata services (AWS, Azure
# and GCP answer on 169.254.169.254, inside the link-local range; AWS's IPv6 one, Alibaba's), link-local,
# unspecified, multicast and reserved addresses.
METADATA = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fd00:ec2::254/128", "100.100.100.200/32")]
resolver = socket.getaddrinfo  # the name resolution webhooks use (a test answers with addresses of its own)


def check_url(url: str, *, allow_private: bool) -> tuple[urllib.parse.SplitResult, str]:
    """Refuse a URL that is not https (http too with `allow_private`), or whose host resolves to any address
    a webhook must not reach; return its parts and the address to connect to, so the address checked is
    the address used (a second lookup could answer otherwise: DNS rebinding)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in (("https", "http") if allow_private else ("https",)) or not parts.hostname:
        raise ValidationError(f"webhook url {url!r} must be an https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = resolver(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, ValueError) as exc:
        raise ValidationError(f"webhook url {url!r}: host {parts.hostname!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        never = (
            any(address in network for network in METADATA)
            or address.is_link_local
            or address.is_unspecified
            or address.is_multicast
            or (address.is_reserved and not address.is_private)
        )
        if never or (not allow_private and (address.is_private or address.is_loopback or address.is_reserved)):
            kind = "a link-local, cloud-metadata, unspecified or reserved" if never else "a private or loopback"
            raise ValidationError(
                f"webhook url {url!r}: {parts.hostname} resolves to {address}, {kind} address; "
                + ("webhooks never go there" if never else "webhooks go to public addresses only")
            )
    if not addresses:
        raise ValidationError(f"webhook url {url!r}: host {parts.hostname!r} does not resolve")
    return parts, str(addresses[0])


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate and SNI of the URL's host name."""

    def __init__(self, host: str, address: str, port: int, *, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP (local receivers only) to a checked address, with the URL's host in the Host header."""

    def __init__(self, host: str, address: str, port: int, *, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class Webhooks:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.account = account
        self.subscriptions = ModelTable(
            EntityTable(account.table(settings.table_name("subscriptions"))), Subscription, partition="subscription"
        )
        self.secrets = EntityTable(account.table(settings.table_name("subscriptionsecrets")))
        self.attempts = EntityTable(account.table(settings.table_name("deliveries")))
        self.queue = account.queue(settings.alert_deliveries_queue)

    @classmethod
    def from_settings(cls, settings: Settings, account: StorageAccount | None = None) -> Webhooks:
        return cls(settings=settings, account=account or StorageAccount.from_settings(settings))

    # Subscriptions -------------------------------------------------------------------------------

    def create(self, request: SubscriptionRequest, *, now: dt.datetime) -> SubscriptionCreated:
        """A new subscription with its signing secret, which this answer is the only one to show."""
        unknown = [t for t in request.event_types if t != "*" and t not in ALERT_TYPES]
        if unknown:
            raise ValidationError(f"eventTypes {unknown} are not alert types; use `*` or some of {sorted(ALERT_TYPES)}")
        check_url(request.url, allow_private=self.settings.webhook_allow_private)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        sub = Subscription(**request.model_dump(), id=f"sub-{uuid.uuid4().hex[:12]}", created=now)
        self.subscriptions.put(sub.id, sub)
        try:  # the secret is stored only with its subscription: one without the other is taken back
            self.secrets.insert({"PartitionKey": "secret", "RowKey": sub.id, "secret": secret})
        except Exception:
            self.subscriptions.delete(sub.id)
            raise
        return SubscriptionCreated(**sub.model_dump(), secret=secret)

    def get(self, subscription_id: str) -> Subscription:
        sub = self.subscriptions.find(subscription_id)
        if sub is None:
            raise NotFound(f"no subscription {subscription_id!r}; GET /api/subscriptions lists them")
        return sub

    def list(self) -> list[Subscription]:
        return sorted(self.subscriptions.all(), key=lambda s: s.created, reverse=True)

    def delete(self, subscription_id: str) -> None:
        self.get(subscription_id)
        self.subscriptions.delete(subscription_id)
        self.secrets.delete("secret", subscription_id)

    def disable(self, sub: Subscription, reason: str, *, now: dt.datetime) -> None:
        self.subscriptions.put(sub.id, sub.model_copy(update={"enabled": False, "disabled_reason": reason}))
        if reason.startswith("410"):
            return
        AlertRules.from_settings(self.settings, self.account).raise_alert(
            "subscription.disabled", sub.id, sub.id, f"webhook subscription {sub.id} was disabled: {reason}", now
        )

    def history(self, subscription_id: str) -> list[Attempt]:
        rows = self.attempts.all("PartitionKey eq @pk", parameters={"pk": subscription_id})
        return sorted(
            (Attempt.model_validate_json(e["definition"]) for e in rows),
            key=lambda a: (a.at, a.message_id, a.attempt),
            reverse=True,
        )

    # Deliveries ----------------------------------------------------------------------------------

    def fan_out(self, alert: Alert) -> int:
        """Queue the alert for every enabled subscription that wants its type."""
        count = 0
        for sub in self.subscriptions.all():
            if sub.enabled and ("*" in sub.event_types or alert.type in sub.event_types):
                self._enqueue(
                    sub.id, _event(alert.id, alert.type, alert.created, alert.model_dump(mode="json", by_alias=True))
                )
                count += 1
        return count

    def send_test(self, subscription_id: str, *, now: dt.datetime) -> dict[str, Any]:
        self.get(subscription_id)
        event = _event(
            f"test-{uuid.uuid4().hex[:12]}", TEST_TYPE, now, {"message": "a test event from Audience Bridge"}
        )
        self._enqueue(subscription_id, event)
        return event

    def _enqueue(
        self,
        subscription_id: str,
        event: dict[str, Any],
        *,
        attempt: int = 1,
        first: dt.datetime | None = None,
        delay: float = 0,
    ) -> None:
        message = DeliveryMessage(subscription_id=subscription_id, event=event, attempt=attempt, first_attempt=first)
        message.send(self.queue, delay=delay)

    def deliver(self, message: DeliveryMessage | dict[str, Any], *, now: dt.datetime) -> Attempt | None:
        """One attempt of one queued delivery (the queue trigger's work)."""
        message = DeliveryMessage.of(message)
        sub = self.subscriptions.find(message.subscription_id)
        if sub is None or not sub.enabled:
            return None
        event, n = message.event, message.attempt
        first = message.first_attempt or now
        attempt = Attempt(
            subscription_id=sub.id,
            message_id=event["id"],
            alert_type=event["type"],
            attempt=n,
            at=now,
            outcome="failed",
        )
        retry_after: float | None = None
        try:
            status, retry_after, latency = self._post(sub, event, now)
            attempt = attempt.model_copy(update={"status": status, "latency_ms": latency})
        except ValidationError as exc:
            attempt = attempt.model_copy(update={"outcome": "refused", "error": exc.message})
            self._log(attempt)
            self.disable(sub, f"its url is refused: {exc.message}", now=now)
            return attempt
        except (OSError, http.client.HTTPException) as exc:
            attempt = attempt.model_copy(update={"error": f"{type(exc).__name__}: {exc}"})
            status = None
        if status is not None and 200 <= status < 300:
            attempt = attempt.model_copy(update={"outcome": "delivered"})
        elif status == 410:
            attempt = attempt.model_copy(update={"outcome": "gone"})
            self._log(attempt)
            self.disable(sub, "410 Gone: the receiver asked to stop", now=now)
            return attempt
        else:
            if attempt.error is None:
                attempt = attempt.model_copy(update={"error": f"HTTP {status}"})
            backoff = self.settings.webhook_retry_seconds * 2 ** (n - 1) * random.uniform(0.5, 1.0)  # noqa: S311
            delay = min(retry_after if retry_after is not None else backoff, MAX_BACKOFF_SECONDS)
            if now + dt.timedelta(seconds=delay) - first > dt.timedelta(hours=self.settings.webhook_retry_hours):
                self._log(attempt)
                self.disable(
                    sub,
                    f"deliveries kept failing for {self.settings.webhook_retry_hours:g} h (last: {attempt.error})",
                    now=now,
                )
                return attempt
            attempt = attempt.model_copy(update={"outcome": "retry"})
            self._enqueue(sub.id, event, attempt=n + 1, first=first, delay=delay)
        self._log(attempt)
        return attempt

    def _post(self, sub: Subscription, event: dict[str, Any], now: dt.datetime) -> tuple[int, float | None, float]:
        secret = self.secrets.get("secret", sub.id)["secret"]
        payload = json.dumps(event, separators=(",", ":"))
        signature = Webhook(secret).sign(event["id"], now, payload)
        headers = {
            "content-type": "application/json",
            "user-agent": "AudienceBridge-Webhooks/1",
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        parts, address = check_url(sub.url, allow_private=self.settings.webhook_allow_private)
        secure = parts.scheme == "https"
        connection = (_PinnedHTTPS if secure else _PinnedHTTP)(
            parts.hostname, address, parts.port or (443 if secure else 80), timeout=TIMEOUT_SECONDS
        )
        started = time.monotonic()
        try:  # http.client follows no redirect: a 3xx is answered as it is
            connection.request(
                "POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), payload.encode(), headers
            )
            response = connection.getresponse()
            status = response.status
            retry = _retry_after(response.getheader("Retry-After")) if status >= 300 else None
        finally:
            connection.close()
        return status, retry, round((time.monotonic() - started) * 1000, 1)

    def _log(self, attempt: Attempt) -> None:
        key = f"{attempt.message_id}-{attempt.attempt:03d}"
        self.attempts.upsert(
            {
                "PartitionKey": attempt.subscription_id,
                "RowKey": key,
                "definition": attempt.model_dump_json(by_alias=True),
            }
        )
        log.info(
            "webhook %s to %s: %s %s", attempt.message_id, attempt.subscription_id, attempt.outcome, attempt.status
        )


def _event(event_id: str, event_type: str, at: dt.datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "timestamp": at.isoformat(), "data": data}


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


__all__ = ["Attempt", "Subscription", "SubscriptionRequest", "Webhooks", "check_url"]
