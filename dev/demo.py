"""`make demo`: start Azurite, create datasets, land a realistic sample, run the ingestion function on each
file, build unified profiles, and show what happened. It drives the same code the Functions host runs."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import time_machine
from azure.functions.timer import TimerRequest
from rich.console import Console
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dev.azurite import ROOT, start_azurite
from dev.host import deliver_queue_messages, fire_blob_trigger
from dev.receiver import Receiver
from dev.sample import write_sample
from shared.activation import Activation, Destination, GovernancePolicy
from shared.campaign.deliveries import DeliveryRequest
from shared.campaign.loads import is_manifest
from shared.campaign.service import Campaign
from shared.engine import connect
from shared.errors import BridgeError
from shared.identity import ProfileStore
from shared.ingestion import BatchIngestion, Dataset, DatasetStore, batch_id_for
from shared.jobs import Job, JobStore, JobType
from shared.monitoring.alerts import AlertRules
from shared.monitoring.webhooks import SubscriptionRequest, Webhooks
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.runner import SegmentJobRunner
from shared.settings import get_settings
from shared.storage import BlobStore, StorageAccount

DATA_DIR = ROOT / ".azurite"

SEGMENTS = {
    "ca-women": ("California women", 'homeAddress.stateProvince = "CA" and person.gender = "female"'),
    "gold-platinum": ("Gold and platinum members", 'loyalty.tier in ["gold", "platinum"]'),
    "jo-names": ("First name starts with Jo", 'person.name.firstName.startsWith("jo", false)'),
    "eighties": ("Born in the eighties", "person.birthDate occurs between date(1980, 1, 1) and date(1989, 12, 31)"),
    "email-opt-in": ("Email opt-in", 'consents.marketing.email.val = "y" and personalEmail.address.isNotNull()'),
    "repeat-buyers": (
        "Two purchases in 30 days",
        'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 30 days before now].count() >= 2',
    ),
    "big-spenders": (
        "Spent over $300 in 7 days",
        'xEvent[(timestamp occurs < 7 days before now) and eventType = "commerce.purchases"]'
        ".sum(commerce.order.priceTotal) > 300",
    ),
    "openers": ("Opened an email", 'exists E from xEvent where (E.eventType = "message.open")'),
    "view-then-buy": (
        "Viewed then bought within a week",
        'CHAIN(xEvent, timestamp, [C0: WHAT(eventType.equals("commerce.productViews", false)) WHEN(<= 7 days before now), '
        'C1: WHAT(eventType.equals("commerce.purchases", false)) WHEN(<= 7 days before now)])',
    ),
    "vip-ca": (
        "Gold+ Californians who buy",
        'inSegment("gold-platinum") and homeAddress.stateProvince = "CA" and inSegment("repeat-buyers")',
    ),
}

DESTINATION = {
    "id": "campaign-email",
    "name": "Campaign_Email",
    "description": "Audience sync to Campaign: hashed emails, incremental, daily",
    "syncType": "audience",
    "marketingAction": "Email Targeting",
    "exportMode": "incremental",
    "schedule": {"frequency": "hours", "everyHours": 24, "start": "2026-01-01T00:00:00Z"},
    "segments": ["gold-platinum", "email-opt-in", "repeat-buyers", "vip-ca"],
    "identity": {"source": "identityMap.Email", "target": "email_lc_sha256"},
    "mapping": [
        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
        {"source": "person.name.firstName", "target": "firstName"},
        {"source": "person.name.lastName", "target": "lastName"},
        {"source": "loyalty.tier", "target": "loyaltyTier"},
    ],
    "mandatory": ["firstName"],
    "dedupKey": ["email_lc_sha256"],
}
PROFILE_DESTINATION = {
    "id": "campaign-profiles",
    "name": "Campaign_Profiles",
    "description": "Profile sync (update only): names and city of email opt-ins, daily",
    "syncType": "profile",
    "marketingAction": "Email Targeting",
    "exportMode": "incremental",
    "schedule": {"frequency": "hours", "everyHours": 24, "start": "2026-01-01T00:00:00Z"},
    "segments": ["email-opt-in"],
    "identity": {"source": "identityMap.Email", "target": "email_lc_sha256"},
    "mapping": [
        {"source": "segmentMembershipStatus", "target": "segmentMembershipStatus"},
        {"source": "person.name.firstName", "target": "firstName"},
        {"source": "person.name.lastName", "target": "lastName"},
        {"source": "homeAddress.city", "target": "city"},
    ],
}
POLICY = GovernancePolicy(
    id="no-third-party-c2",
    name="No third-party export of contract data",
    marketing_action="Export to Third Party",
    denied_labels=["C2"],
)

DATASETS = [
    Dataset(
        id="crm",
        name="CRM profiles",
        schema_id="xdm-profile",
        labels=["C2"],
        field_labels={"personalEmail.address": ["I1"], "person.birthDate": ["I2"]},
    ),
    Dataset(id="loyalty", name="Loyalty members", schema_id="xdm-profile", field_labels={"mobilePhone.number": ["I1"]}),
    Dataset(id="web", name="Web and commerce events", schema_id="xdm-experienceevent", labels=["C8"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--people", type=int, default=20000, help="people in the sample (default 20000)")
    parser.add_argument("--events-per-person", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where Azurite keeps its data (.azurite/)")
    args = parser.parse_args()
    console = Console()
    # Day 1 is yesterday and day 2 is today, so what a user does afterwards sorts after the demo. The functions
    # read the clock (the blob trigger stamps batches with it), so day 1 runs with the clock moved back a day.
    today = dt.datetime.now(dt.UTC).replace(microsecond=0)
    now = (today - dt.timedelta(days=1)).replace(minute=0, second=0)
    yesterday = time_machine.travel(now, tick=True)
    yesterday.start()

    shutil.rmtree(args.data_dir, ignore_errors=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as progress:
        step = progress.add_task("Starting Azurite (data in .azurite/)")
        azurite = start_azurite(location=args.data_dir)
        os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 (the Functions name)
        os.environ["WEBHOOK_ALLOW_PRIVATE"] = "true"  # the demo's webhook receiver listens on loopback
        get_settings.cache_clear()
        settings = get_settings()
        account = StorageAccount.from_settings(settings)
        receiver = Receiver()
        try:
            progress.update(step, description="Creating datasets and a webhook subscription to a local receiver")
            datasets = DatasetStore.from_settings(settings, account)
            for d in DATASETS:
                datasets.save(d, now=now)
            webhooks = Webhooks.from_settings(settings, account)
            subscription = webhooks.create(
                SubscriptionRequest(url=receiver.url, description="the demo's local receiver"), now=now
            )
            receiver.secret = subscription.secret

            progress.update(step, description=f"Generating a sample of {args.people:,} people")
            sample = write_sample(
                Path(tempfile.mkdtemp(prefix="sample-")),
                people=args.people,
                events_per_person=args.events_per_person,
                now=now,
            )
            landing = BlobStore(account.container(settings.landing_container))
            from functions.ingestion import ingest_landing_file

            jobs: list[tuple[str, Job, float]] = []
            files = [("crm", sample.profiles), ("loyalty", sample.loyalty), *(("web", f) for f in sample.event_files)]
            for dataset, file in files:
                path = f"{dataset}/{file.name}"
                progress.update(step, description=f"Landing {path} and running ingest_landing_file")
                etag = landing.put(path, file.read_bytes())
                started = time.monotonic()
                fire_blob_trigger(ingest_landing_file, landing, path)
                job = BatchIngestion.from_settings(settings, account).jobs.get(
                    JobType.INGESTION, batch_id_for(path, etag)
                )
                jobs.append((path, job, time.monotonic() - started))

            progress.update(step, description="Reading the profile store that ingestion kept up to date")
            with tempfile.TemporaryDirectory() as work:
                con = connect(settings, spill_dir=work)
                result = ProfileStore.from_settings(settings, account).open(
                    con, now=dt.datetime.now(dt.UTC), workdir=Path(work)
                )
                sample_profile = con.sql(
                    """SELECT profileId, len(identities) AS ids, person.name.firstName AS first,
                              homeAddress.city AS city, loyalty.tier AS tier
                       FROM unified_profiles WHERE loyalty.tier IS NOT NULL AND len(identities) >= 4
                       ORDER BY profileId LIMIT 3"""
                ).fetchall()
                by_state = con.sql(
                    """SELECT homeAddress.stateProvince, count(*) FROM unified_profiles
                       WHERE homeAddress.stateProvince IS NOT NULL GROUP BY ALL ORDER BY 2 DESC"""
                ).fetchall()
                con.close()
            progress.update(step, description="Saving segment definitions and running the segment job")
            store = SegmentStore.from_settings(settings, account)
            for sid, (name, pql) in SEGMENTS.items():
                store.save(SegmentDefinition(id=sid, name=name, expression={"value": pql}), now=now)
            segment_job = SegmentJobRunner.from_settings(settings, account).run(now=dt.datetime.now(dt.UTC))

            progress.update(step, description="Saving destinations (guardrails, governance) and running export_runs")
            activation = Activation.from_settings(settings, account)
            activation.policies.put(POLICY)
            activation.destinations.save(Destination.model_validate(DESTINATION), now=now)
            activation.destinations.save(Destination.model_validate(PROFILE_DESTINATION), now=now)
            refused = []
            for overrides in (
                {"id": "third-party", "name": "Third_Party", "marketingAction": "Export to Third Party"},
                {"id": "too-often", "name": "Too_Often", "schedule": {"everyHours": 1}},
            ):
                try:
                    activation.destinations.save(Destination.model_validate({**DESTINATION, **overrides}), now=now)
                except BridgeError as exc:
                    refused.append((overrides["id"], exc.code, exc.message))
            from functions.activation import export_runs

            export_runs.build().get_user_function()(TimerRequest(past_due=False))
            export_job = next(j for j in activation.jobs.list(JobType.EXPORT) if j.subject == DESTINATION["id"])
            dataflow = activation.destinations.runs(DESTINATION["id"])

            progress.update(step, description="Campaign: importing recipients, then campaign_audience_load on dlz/")
            campaign = Campaign.from_settings(settings, account)
            seeded = campaign.admin.seed_recipients(sample.recipients, now=now)
            dlz = BlobStore(account.container(settings.dlz_container))
            from functions.campaign import campaign_audience_load

            names = sorted(dlz.names(), key=is_manifest)  # data files first, their manifest last, as committed
            for name in names:
                fire_blob_trigger(campaign_audience_load, dlz, name)
            loads = campaign.tables.jobs.list(JobType.AUDIENCE_LOAD)
            lists = campaign.tables.lists.list()
            progress.update(step, description="Campaign: a delivery, then the 4-hour log export and its ingestion")
            delivery = campaign.deliveries.deliver(
                DeliveryRequest(list_id="gold-platinum", label="Gold offer"), now=now
            )
            feedback = campaign.feedback.export_logs(now=now + dt.timedelta(hours=4))
            logs_batch = None
            if feedback.source:
                fire_blob_trigger(ingest_landing_file, landing, feedback.source)
                logs_batch = BatchIngestion.from_settings(settings, account).jobs.get(
                    JobType.INGESTION, batch_id_for(feedback.source, landing.etag(feedback.source))
                )
            progress.update(step, description="Day 2: the segment job a day later, incremental exports, loads")
            yesterday.stop()  # day 2: the real clock
            day2 = today
            segment_job2 = SegmentJobRunner.from_settings(settings, account).run(now=day2)
            day2_exports = activation.exports.run_due(now=day2)
            for name in sorted(dlz.names(), key=is_manifest):
                fire_blob_trigger(campaign_audience_load, dlz, name)  # day 1's files again: no-ops
            loads2 = [j for j in campaign.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.id not in {x.id for x in loads}]
            lists = campaign.tables.lists.list()

            progress.update(step, description="Delivering alerts to the webhook receiver (alert_delivery)")
            from functions.monitoring import alert_delivery

            queue = account.queue(settings.alert_deliveries_queue)
            while deliver_queue_messages(alert_delivery, queue):
                pass
            jobs_by_status = Counter(
                (j.type.value, j.status.value)
                for t in JobType
                for j in JobStore.from_settings(settings, account).list(t)
            )
            raised = AlertRules.from_settings(settings, account).store.list(limit=10_000)
            dlz_files = list(dlz.listing())
            progress.update(step, description="Done")
        finally:
            if time_machine.escape_hatch.is_travelling():
                yesterday.stop()
            receiver.stop()
            azurite.stop()

    batches = Table(title="Ingestion batches (landing → lake)")
    for col in ("file", "status", "read", "accepted", "rejected", "seconds"):
        batches.add_column(
            col, justify="left" if col in ("file", "status") else "right", no_wrap=col != "file", overflow="fold"
        )
    for path, job, seconds in jobs:
        m = job.metrics
        batches.add_row(
            path,
            job.status.value,
            f"{m.get('rowsRead', 0):,}",
            f"{m.get('rowsAccepted', 0):,}",
            f"{m.get('rowsRejected', 0):,}",
            f"{seconds:.2f}",
        )
    console.print(batches)
    for path, job, _ in jobs:
        for e in job.errors[:2]:
            console.print(f"  [yellow]{path}[/]: {e.message}")
        if "errors" in job.links:
            console.print(f"  rejected rows of {path}: {job.links['errors']}")

    s = result.stats
    profiles = Table(title=f"Profile store {s['version']} (merge policy: {result.policy.name})")
    profiles.add_column("measure")
    profiles.add_column("value", justify="right")
    for label, key in [
        ("batches applied as they were ingested", "batches"),
        ("profile records (fragments)", "fragments"),
        ("experience events", "events"),
        ("identities in the graph", "identities"),
        ("people (unified profiles)", "profiles"),
        ("people merged when a batch linked them", "merges"),
        ("graph identities dropped over the limit", "identitiesDropped"),
        ("shards", "shards"),
    ]:
        profiles.add_row(label, f"{s[key]:,}")
    console.print(profiles)
    console.print("People by state: " + ", ".join(f"{st} {n:,}" for st, n in by_state))
    for pid, ids, first, city, tier in sample_profile:
        console.print(f"  {pid}: {first} from {city}, {tier} tier, {ids} identities stitched from CRM, loyalty and web")
    sizes = Table(
        title=f"Segment job {segment_job.id}: {segment_job.status.value} in {segment_job.metrics.get('durationSeconds', 0):.2f} s"
    )
    for col in ("segment", "PQL", "members", "realized"):
        sizes.add_column(col, justify="right" if col in ("members", "realized") else "left", overflow="fold")
    counts = segment_job.metrics.get("segmentedProfileByStatusCounter", {})
    for sid, (_name, pql) in SEGMENTS.items():
        c = counts.get(sid, {})
        sizes.add_row(
            sid,
            pql if len(pql) < 70 else pql[:67] + "…",
            f"{c.get('realized', 0) + c.get('existing', 0):,}",
            f"{c.get('realized', 0):,}",
        )
    console.print(sizes)
    for e in segment_job.errors:
        console.print(f"  [red]{e.message}[/]")
    m = export_job.metrics
    exports = Table(
        title=f"Export run {export_job.id}: {export_job.status.value}, {m.get('files', 0)} files, "
        f"{m.get('bytes', 0):,} bytes in dlz/ (manifest: {export_job.source})"
    )
    for col in ("segment", "received", "activated", "excluded (reason)", "file"):
        exports.add_column(col, justify="left" if col in ("segment", "file", "excluded (reason)") else "right")
    for run in dataflow:
        exports.add_row(
            run.segment_id,
            f"{run.profiles_received:,}",
            f"{run.identities_activated:,}",
            ", ".join(f"{k} {v:,}" for k, v in run.excluded.items()) or "-",
            ", ".join(run.files),
        )
    console.print(exports)
    for dest_id, code, message in refused:
        console.print(f"  [yellow]refused destination {dest_id} ({code})[/]: {message}")
    campaign_table = Table(
        title=f"Campaign: {seeded['recipients']:,} recipients imported; audience load jobs (Administration > Audit)"
    )
    for col in ("file", "status", "read", "added", "removed", "rejected (reason)", "list size"):
        campaign_table.add_column(col, justify="left" if col in ("file", "status", "rejected (reason)") else "right")
    for load in loads:
        m = load.metrics
        campaign_table.add_row(
            load.source,
            load.status.value,
            f"{m.get('rowsRead', 0):,}",
            f"{m.get('added', 0):,}",
            f"{m.get('removed', 0):,}",
            ", ".join(f"{k} {v:,}" for k, v in m.get("rejected", {}).items()) or "-",
            f"{m.get('listSize', 0):,}",
        )
    console.print(campaign_table)
    console.print("Lists: " + "; ".join(f"{lst.name} ({lst.count:,})" for lst in lists))
    console.print(
        f"Delivery {delivery.id} to {delivery.list_id}: {delivery.sent:,} sent, failed {delivery.failed}, "
        f"excluded {delivery.excluded}, {delivery.opens:,} opens, {delivery.clicks:,} clicks, "
        f"{delivery.quarantined:,} quarantined"
    )
    console.print(
        f"Log export {feedback.id}: {feedback.metrics.get('events', {})} → landing/{feedback.source or '(nothing)'}"
    )
    if logs_batch is not None:
        console.print(
            f"  ingested by ingest_landing_file: {logs_batch.status.value}, "
            f"{logs_batch.metrics.get('rowsAccepted', 0):,} events in the lake"
        )
    day2_table = Table(
        title=f"Day 2: segment job {segment_job2.id} ({segment_job2.status.value}), as of {day2:%Y-%m-%d %H:%M}"
    )
    for col in ("segment", "realized", "existing", "exited"):
        day2_table.add_column(col, justify="left" if col == "segment" else "right")
    counts2 = segment_job2.metrics.get("segmentedProfileByStatusCounter", {})
    for sid in SEGMENTS:
        c = counts2.get(sid, {})
        day2_table.add_row(sid, f"{c.get('realized', 0):,}", f"{c.get('existing', 0):,}", f"{c.get('exited', 0):,}")
    console.print(day2_table)
    for job in day2_exports:
        m = job.metrics
        console.print(
            f"Incremental export {job.id}: {job.status.value}, {m.get('identitiesActivated', 0):,} rows "
            f"(entered or exited since day 1) in {m.get('files', 0)} files"
        )
    for load in loads2:
        m = load.metrics
        console.print(
            f"  audience load {load.source}: {load.status.value}, +{m.get('added', 0):,} "
            f"-{m.get('removed', 0):,} updated {m.get('updated', 0):,}, rejected {m.get('rejectedTotal', 0):,}"
        )
    console.print(
        f"DLZ: {len(dlz_files)} files, {sum(b.size for b in dlz_files):,} bytes. Lists: "
        + "; ".join(f"{lst.name} ({lst.count:,}, v{lst.version})" for lst in lists)
    )
    status_table = Table(title="Jobs by type and status")
    for col in ("type", "status", "jobs"):
        status_table.add_column(col, justify="right" if col == "jobs" else "left")
    for (job_type, status), n in sorted(jobs_by_status.items()):
        status_table.add_row(job_type, status, f"{n:,}")
    console.print(status_table)
    by_type = Counter(a.type for a in raised)
    console.print(f"Alerts raised: {len(raised):,} (" + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) + ")")
    for a in [a for a in raised if not a.type.endswith(("Start", "Success"))][:5]:
        console.print(f"  [yellow]{a.type}[/]: {a.message[:150]}")
    console.print(
        f"Webhooks: {len(receiver.received):,} delivered to {receiver.url}, {len(receiver.verified):,} signatures "
        f"verified with standardwebhooks, {receiver.forged} forged"
    )
    console.print(
        Panel(
            "Azurite's data is kept in .azurite/ — browse it with Azure Storage Explorer.\n"
            "`make serve`, then open http://127.0.0.1:7071/api/dashboard (jobs, dataflow runs, segment sizes,\n"
            "lists, alerts) or curl http://127.0.0.1:7071/api/jobs — the API is in /api/openapi.json.\n"
            "Next: `make test`, `make bench`.",
            title="Where to look next",
        )
    )


if __name__ == "__main__":
    main()
