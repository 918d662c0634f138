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
from shared.activation.runs import ExportMetrics
from shared.campaign.deliveries import DeliveryRequest
from shared.campaign.loads import is_manifest
from shared.campaign.service import Campaign
from shared.engine import connect
from shared.errors import BridgeError
from shared.identity import ProfileStore
from shared.ingestion import BatchIngestion, Dataset, DatasetStore, batch_id_for
from shared.ingestion.batch import IngestionMetrics
from shared.jobs import Job, JobStore, JobType
from shared.monitoring.alerts import AlertRules
from shared.monitoring.webhooks import SubscriptionRequest, Webhooks
from shared.segmentation.definitions import SegmentDefinition, SegmentStore
from shared.segmentation.runner import SegmentJobRunner
from shared.segmentation.shards import SegmentJobMetrics
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


class Demo:
    """The demo's steps, each a method, against one Azurite; what each step did is kept for the report."""

    def __init__(self, progress: Progress, *, now: dt.datetime, today: dt.datetime, data_dir: Path) -> None:
        self.progress, self.now, self.today = progress, now, today
        self.step = progress.add_task("Starting Azurite (data in .azurite/)")
        self.azurite = start_azurite(location=data_dir)
        os.environ["AzureWebJobsStorage"] = self.azurite.connection_string  # noqa: SIM112 (the Functions name)
        os.environ["WEBHOOK_ALLOW_PRIVATE"] = "true"  # the demo's webhook receiver listens on loopback
        get_settings.cache_clear()
        self.settings = get_settings()
        self.account = StorageAccount.from_settings(self.settings)
        self.receiver = Receiver()
        self.landing = BlobStore(self.account.container(self.settings.landing_container))
        self.dlz = BlobStore(self.account.container(self.settings.dlz_container))
        self.activation = Activation.from_settings(self.settings, self.account)
        self.campaign = Campaign.from_settings(self.settings, self.account)

    def say(self, what: str) -> None:
        self.progress.update(self.step, description=what)

    def stop(self) -> None:
        self.receiver.stop()
        self.azurite.stop()

    def configure(self) -> None:
        self.say("Creating datasets and a webhook subscription to a local receiver")
        datasets = DatasetStore.from_settings(self.settings, self.account)
        for d in DATASETS:
            datasets.save(d, now=self.now)
        webhooks = Webhooks.from_settings(self.settings, self.account)
        request = SubscriptionRequest(url=self.receiver.url, description="the demo's local receiver")
        self.receiver.secret = webhooks.create(request, now=self.now).secret

    def ingest(self, *, people: int, events_per_person: int) -> None:
        from functions.ingestion import ingest_landing_file

        self.say(f"Generating a sample of {people:,} people")
        where = Path(tempfile.mkdtemp(prefix="sample-"))
        self.sample = write_sample(where, people=people, events_per_person=events_per_person, now=self.now)
        self.batches: list[tuple[str, Job, float]] = []
        sample = self.sample
        files = [("crm", sample.profiles), ("loyalty", sample.loyalty), *(("web", f) for f in sample.event_files)]
        for dataset, file in files:
            path = f"{dataset}/{file.name}"
            self.say(f"Landing {path} and running ingest_landing_file")
            etag = self.landing.put(path, file.read_bytes())
            started = time.monotonic()
            fire_blob_trigger(ingest_landing_file, self.landing, path)
            job = self._batch(path, etag)
            self.batches.append((path, job, time.monotonic() - started))

    def _batch(self, path: str, etag: str) -> Job:
        jobs = BatchIngestion.from_settings(self.settings, self.account).jobs
        return jobs.get(JobType.INGESTION, batch_id_for(path, etag))

    def read_store(self) -> None:
        self.say("Reading the profile store that ingestion kept up to date")
        with tempfile.TemporaryDirectory() as work:
            con = connect(self.settings, spill_dir=work)
            store = ProfileStore.from_settings(self.settings, self.account)
            self.store = store.open(con, now=dt.datetime.now(dt.UTC), workdir=Path(work))
            self.sample_profiles = con.sql(
                """SELECT profileId, len(identities) AS ids, person.name.firstName AS first,
                          homeAddress.city AS city, loyalty.tier AS tier
                   FROM unified_profiles WHERE loyalty.tier IS NOT NULL AND len(identities) >= 4
                   ORDER BY profileId LIMIT 3"""
            ).fetchall()
            self.by_state = con.sql(
                """SELECT homeAddress.stateProvince, count(*) FROM unified_profiles
                   WHERE homeAddress.stateProvince IS NOT NULL GROUP BY ALL ORDER BY 2 DESC"""
            ).fetchall()
            con.close()

    def segment(self) -> None:
        self.say("Saving segment definitions and running the segment job")
        store = SegmentStore.from_settings(self.settings, self.account)
        for sid, (name, pql) in SEGMENTS.items():
            store.save(SegmentDefinition(id=sid, name=name, expression={"value": pql}), now=self.now)
        self.segment_job = SegmentJobRunner.from_settings(self.settings, self.account).run(now=dt.datetime.now(dt.UTC))

    def export(self) -> None:
        from functions.activation import export_runs

        self.say("Saving destinations (guardrails, governance) and running export_runs")
        activation = self.activation
        activation.policies.put(POLICY)
        activation.destinations.save(Destination.model_validate(DESTINATION), now=self.now)
        activation.destinations.save(Destination.model_validate(PROFILE_DESTINATION), now=self.now)
        self.refused = []
        for overrides in (
            {"id": "third-party", "name": "Third_Party", "marketingAction": "Export to Third Party"},
            {"id": "too-often", "name": "Too_Often", "schedule": {"everyHours": 1}},
        ):
            try:
                activation.destinations.save(Destination.model_validate({**DESTINATION, **overrides}), now=self.now)
            except BridgeError as exc:
                self.refused.append((overrides["id"], exc.code, exc.message))
        export_runs.build().get_user_function()(TimerRequest(past_due=False))
        self.export_job = next(j for j in activation.jobs.list(JobType.EXPORT) if j.subject == DESTINATION["id"])
        self.dataflow = activation.destinations.runs(DESTINATION["id"])

    def load_into_campaign(self) -> None:
        from functions.campaign import campaign_audience_load

        self.say("Campaign: importing recipients, then campaign_audience_load on dlz/")
        self.seeded = self.campaign.admin.seed_recipients(self.sample.recipients, now=self.now)
        for name in sorted(self.dlz.names(), key=is_manifest):  # data files first, their manifest last, as committed
            fire_blob_trigger(campaign_audience_load, self.dlz, name)
        self.loads = self.campaign.tables.jobs.list(JobType.AUDIENCE_LOAD)
        self.lists = self.campaign.tables.lists.list()

    def deliver_and_feed_back(self) -> None:
        from functions.ingestion import ingest_landing_file

        self.say("Campaign: a delivery, then the 4-hour log export and its ingestion")
        request = DeliveryRequest(list_id="gold-platinum", label="Gold offer")
        self.delivery = self.campaign.deliveries.deliver(request, now=self.now)
        self.feedback = self.campaign.feedback.export_logs(now=self.now + dt.timedelta(hours=4))
        self.logs_batch = None
        if self.feedback.source:
            fire_blob_trigger(ingest_landing_file, self.landing, self.feedback.source)
            self.logs_batch = self._batch(self.feedback.source, self.landing.etag(self.feedback.source))

    def day2(self, yesterday: time_machine.travel) -> None:
        from functions.campaign import campaign_audience_load

        self.say("Day 2: the segment job a day later, incremental exports, loads")
        yesterday.stop()  # day 2: the real clock
        self.segment_job2 = SegmentJobRunner.from_settings(self.settings, self.account).run(now=self.today)
        self.day2_exports = self.activation.exports.run_due(now=self.today)
        for name in sorted(self.dlz.names(), key=is_manifest):
            fire_blob_trigger(campaign_audience_load, self.dlz, name)  # day 1's files again: no-ops
        day1 = {x.id for x in self.loads}
        self.loads2 = [j for j in self.campaign.tables.jobs.list(JobType.AUDIENCE_LOAD) if j.id not in day1]
        self.lists = self.campaign.tables.lists.list()

    def alerts(self) -> None:
        from functions.monitoring import alert_delivery

        self.say("Delivering alerts to the webhook receiver (alert_delivery)")
        queue = self.account.queue(self.settings.alert_deliveries_queue)
        while deliver_queue_messages(alert_delivery, queue):
            pass
        jobs = JobStore.from_settings(self.settings, self.account)
        self.jobs_by_status = Counter((j.type.value, j.status.value) for t in JobType for j in jobs.list(t))
        self.raised = AlertRules.from_settings(self.settings, self.account).store.list(limit=10_000)
        self.dlz_files = list(self.dlz.listing())
        self.say("Done")


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
        demo = Demo(progress, now=now, today=today, data_dir=args.data_dir)
        try:
            demo.configure()
            demo.ingest(people=args.people, events_per_person=args.events_per_person)
            demo.read_store()
            demo.segment()
            demo.export()
            demo.load_into_campaign()
            demo.deliver_and_feed_back()
            demo.day2(yesterday)
            demo.alerts()
        finally:
            if time_machine.escape_hatch.is_travelling():
                yesterday.stop()
            demo.stop()
    for report in (report_batches, report_store, report_segments, report_exports, report_campaign, report_day2):
        report(console, demo)
    report_monitoring(console, demo)


def _table(title: str, columns: tuple[str, ...], *, left: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right", overflow="fold")
    return table


def report_batches(console: Console, demo: Demo) -> None:
    batches = _table(
        "Ingestion batches (landing → lake)",
        ("file", "status", "read", "accepted", "rejected", "seconds"),
        left=("file", "status"),
    )
    for path, job, seconds in demo.batches:
        m = IngestionMetrics.model_validate(job.metrics)
        row = (m.rows_read, m.rows_accepted, m.rows_rejected)
        batches.add_row(path, job.status.value, *(f"{n:,}" for n in row), f"{seconds:.2f}")
    console.print(batches)
    for path, job, _ in demo.batches:
        for e in job.errors[:2]:
            console.print(f"  [yellow]{path}[/]: {e.message}")
        if "errors" in job.links:
            console.print(f"  rejected rows of {path}: {job.links['errors']}")


def report_store(console: Console, demo: Demo) -> None:
    s = demo.store.stats
    profiles = _table(
        f"Profile store {s['version']} (merge policy: {demo.store.policy.name})",
        ("measure", "value"),
        left=("measure",),
    )
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
    console.print("People by state: " + ", ".join(f"{st} {n:,}" for st, n in demo.by_state))
    for pid, ids, first, city, tier in demo.sample_profiles:
        console.print(f"  {pid}: {first} from {city}, {tier} tier, {ids} identities stitched from CRM, loyalty and web")


def report_segments(console: Console, demo: Demo) -> None:
    job = demo.segment_job
    m = SegmentJobMetrics.model_validate(job.metrics)
    sizes = _table(
        f"Segment job {job.id}: {job.status.value} in {m.duration_seconds or 0:.2f} s",
        ("segment", "PQL", "members", "realized"),
        left=("segment", "PQL"),
    )
    for sid, (_name, pql) in SEGMENTS.items():
        c = m.segmented_profile_by_status_counter.get(sid, {})
        shown = pql if len(pql) < 70 else pql[:67] + "…"
        sizes.add_row(sid, shown, f"{c.get('realized', 0) + c.get('existing', 0):,}", f"{c.get('realized', 0):,}")
    console.print(sizes)
    for e in job.errors:
        console.print(f"  [red]{e.message}[/]")


def report_exports(console: Console, demo: Demo) -> None:
    job = demo.export_job
    m = ExportMetrics.model_validate(job.metrics)
    exports = _table(
        f"Export run {job.id}: {job.status.value}, {m.files} files, {m.bytes:,} bytes in dlz/ (manifest: {job.source})",
        ("segment", "received", "activated", "excluded (reason)", "file"),
        left=("segment", "file", "excluded (reason)"),
    )
    for run in demo.dataflow:
        excluded = ", ".join(f"{k} {v:,}" for k, v in run.excluded.items()) or "-"
        received, activated = f"{run.profiles_received:,}", f"{run.identities_activated:,}"
        exports.add_row(run.segment_id, received, activated, excluded, ", ".join(run.files))
    console.print(exports)
    for dest_id, code, message in demo.refused:
        console.print(f"  [yellow]refused destination {dest_id} ({code})[/]: {message}")


def report_campaign(console: Console, demo: Demo) -> None:
    loads = _table(
        f"Campaign: {demo.seeded['recipients']:,} recipients imported; audience load jobs (Administration > Audit)",
        ("file", "status", "read", "added", "removed", "rejected (reason)", "list size"),
        left=("file", "status", "rejected (reason)"),
    )
    for load in demo.loads:
        m = load.metrics
        rejected = ", ".join(f"{k} {v:,}" for k, v in m.get("rejected", {}).items()) or "-"
        counts = (m.get("rowsRead", 0), m.get("added", 0), m.get("removed", 0))
        loads.add_row(
            load.source, load.status.value, *(f"{n:,}" for n in counts), rejected, f"{m.get('listSize', 0):,}"
        )
    console.print(loads)
    console.print("Lists: " + "; ".join(f"{lst.name} ({lst.count:,})" for lst in demo.lists))
    d = demo.delivery
    console.print(
        f"Delivery {d.id} to {d.list_id}: {d.sent:,} sent, failed {d.failed}, excluded {d.excluded}, "
        f"{d.opens:,} opens, {d.clicks:,} clicks, {d.quarantined:,} quarantined"
    )
    feedback = demo.feedback
    console.print(
        f"Log export {feedback.id}: {feedback.metrics.get('events', {})} → landing/{feedback.source or '(nothing)'}"
    )
    if demo.logs_batch is not None:
        accepted = IngestionMetrics.model_validate(demo.logs_batch.metrics).rows_accepted
        console.print(
            f"  ingested by ingest_landing_file: {demo.logs_batch.status.value}, {accepted:,} events in the lake"
        )


def report_day2(console: Console, demo: Demo) -> None:
    job = demo.segment_job2
    day2 = _table(
        f"Day 2: segment job {job.id} ({job.status.value}), as of {demo.today:%Y-%m-%d %H:%M}",
        ("segment", "realized", "existing", "exited"),
        left=("segment",),
    )
    counts = SegmentJobMetrics.model_validate(job.metrics).segmented_profile_by_status_counter
    for sid in SEGMENTS:
        c = counts.get(sid, {})
        day2.add_row(sid, *(f"{c.get(k, 0):,}" for k in ("realized", "existing", "exited")))
    console.print(day2)
    for export in demo.day2_exports:
        m = ExportMetrics.model_validate(export.metrics)
        console.print(
            f"Incremental export {export.id}: {export.status.value}, {m.identities_activated:,} rows "
            f"(entered or exited since day 1) in {m.files} files"
        )
    for load in demo.loads2:
        m = load.metrics
        console.print(
            f"  audience load {load.source}: {load.status.value}, +{m.get('added', 0):,} "
            f"-{m.get('removed', 0):,} updated {m.get('updated', 0):,}, rejected {m.get('rejectedTotal', 0):,}"
        )
    console.print(
        f"DLZ: {len(demo.dlz_files)} files, {sum(b.size for b in demo.dlz_files):,} bytes. Lists: "
        + "; ".join(f"{lst.name} ({lst.count:,}, v{lst.version})" for lst in demo.lists)
    )


def report_monitoring(console: Console, demo: Demo) -> None:
    status_table = _table("Jobs by type and status", ("type", "status", "jobs"), left=("type", "status"))
    for (job_type, status), n in sorted(demo.jobs_by_status.items()):
        status_table.add_row(job_type, status, f"{n:,}")
    console.print(status_table)
    by_type = Counter(a.type for a in demo.raised)
    console.print(
        f"Alerts raised: {len(demo.raised):,} (" + ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) + ")"
    )
    for a in [a for a in demo.raised if not a.type.endswith(("Start", "Success"))][:5]:
        console.print(f"  [yellow]{a.type}[/]: {a.message[:150]}")
    receiver = demo.receiver
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
