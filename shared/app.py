"""The service graph, wired in one place: the alert rules watch every job that starts or ends, and the
webhook subscriptions receive every new alert, and the profile store applies every batch ingestion accepts. The areas below know nothing of monitoring; this module,
which sits above them all, connects them. The Functions app, `make serve`, the demo and the tests import it."""

from __future__ import annotations

from shared.identity.store import ProfileStore
from shared.ingestion.batch import AcceptedBatch, BatchIngestion
from shared.jobs import Job, JobStore
from shared.monitoring.alerts import Alert, AlertRules
from shared.monitoring.webhooks import Webhooks
from shared.settings import Settings
from shared.storage import StorageAccount


def _alert_rules(settings: Settings, account: StorageAccount):
    rules = AlertRules.from_settings(settings, account)

    def on_job(job: Job) -> None:
        rules.on_job(job)

    return on_job


def _webhooks(settings: Settings, account: StorageAccount, alert: Alert) -> None:
    Webhooks.from_settings(settings, account).fan_out(alert)


JobStore.watch(_alert_rules)
AlertRules.listen(_webhooks)


def _profile_store(settings: Settings, account: StorageAccount):
    store = ProfileStore.from_settings(settings, account)

    def on_batch(batch: AcceptedBatch, now) -> dict:
        return {"profileStore": store.apply(batch, now=now)}

    return on_batch


BatchIngestion.on_accepted(_profile_store)
