"""Export runs into the Data Landing Zone, scheduled (once per slot), right after segment evaluation, or on
demand, with a record per run and segment. A run goes in named steps (plan, build and stage the files, publish
them with the manifest last, record), so its files become visible together or not at all."""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from shared.activation.destinations import Destination, DestinationStore, ExportMode, Frequency
from shared.activation.export import Members, SegmentCounts, build_rows, install_transforms
from shared.activation.governance import PolicyStore, check_governance
from shared.activation.manifest import ExportManifest, ManifestFile, ManifestSegment
from shared.activation.retention import EXPORTED
from shared.engine import connect
from shared.errors import Conflict, ValidationError
from shared.identity.store import ProfileStore
from shared.jobs import Job, JobStatus, JobStore, JobType
from shared.models import ApiModel, Metrics
from shared.segmentation.definitions import SegmentStore
from shared.segmentation.memberships import MembershipPointer, MembershipStore, SnapshotFiles
from shared.settings import Settings
from shared.storage import BlobStore, EntityTable, ModelTable, StorageAccount
from shared.storage.blobs import Staged
from shared.storage.messages import QueueMessage
from shared.timing import Laps

log = logging.getLogger(__name__)


class DataflowRun(ApiModel):
    """One segment of one export run: what was received, activated and excluded, and the files."""

    id: str
    run_id: str
    destination_id: str
    segment_id: str
    status: str  # SUCCEEDED | FAILED | SKIPPED
    export_mode: ExportMode
    backfill: bool = False
    profiles_received: int = 0
    identities_activated: int = 0
    excluded: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    files: list[str] = Field(default_factory=list)
    bytes: int = 0
    started: dt.datetime
    duration_seconds: float = 0
    errors: list[str] = Field(default_factory=list)


class ExportState(SnapshotFiles):
    """What a destination last exported of a segment: the snapshot incremental runs compare with."""

    segment_id: str
    job_id: str
    run_id: str
    exported_at: dt.datetime


@dataclass
class ExportPlan:
    """What one export run exports: the memberships' profiles, each segment's pointer, what it skips and why."""

    profiles: MembershipPointer
    pointers: dict[str, MembershipPointer]
    skipped: dict[str, str]
    states: ModelTable[ExportState]
    incremental: bool


@dataclass
class Built:
    """What one export run built: each segment's members, the staged files, and the counts per segment."""

    members: list[Members]
    staged: list[tuple[Any, Staged]]
    counts: dict[str, SegmentCounts]


class ExportMetrics(Metrics):
    """What an export run reports in its job's metrics (the alert rules read the exclusions)."""

    destination: str = ""
    export_mode: ExportMode | None = None
    segments: int = 0
    skipped_segments: dict[str, str] = Field(default_factory=dict, description="Segments not exported, and why.")
    profiles_received: int = 0
    identities_activated: int = 0
    excluded: dict[str, int] = Field(default_factory=dict, description="Profiles left out, by reason.")
    excluded_rate: float = 0.0
    files: int = 0
    bytes: int = 0
    profiles_job: str | None = Field(None, description="The segment job whose memberships were exported.")
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    duration_seconds: float | None = None


class ExportRunMessage(QueueMessage):
    """An on-demand export run on `EXPORT_RUNS_QUEUE`."""

    job_id: str
    destination: str
    now: dt.datetime


def run_id_for(
    destination: Destination, now: dt.datetime, *, after_job: str | None = None, on_demand: bool = False
) -> str:
    """Scheduled runs are named by their slot (or the segment job they follow), so a timer firing twice
    runs once; on-demand runs by the second they were asked for."""
    if after_job:
        return f"exp-{destination.id}-after-{after_job}"
    at = now if on_demand else destination.schedule.slot(now)
    assert at is not None
    return f"exp-{destination.id}-{at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}" + ("-now" if on_demand else "")


class ExportRuns:
    def __init__(self, *, settings: Settings, account: StorageAccount) -> None:
        self.settings = settings
        self.destinations = DestinationStore.from_settings(settings, account)
        self.policies = PolicyStore.from_settings(settings, account)
        self.segments = SegmentStore.from_settings(settings, account)
        self.memberships = MembershipStore.from_settings(settings, account)
        self.profiles = ProfileStore.from_settings(settings, account)
        self.jobs = JobStore.from_settings(settings, account)
        self.runs_table = EntityTable(account.table(settings.table_name("dataflowruns")))
        self.state_table = EntityTable(account.table(settings.table_name("exportstate")))
        self.dlz = BlobStore(account.container(settings.dlz_container))
        self.queue = account.queue(settings.export_runs_queue)

    def run_due(self, *, now: dt.datetime, frequency: Frequency | None = None) -> list[Job]:
        """Run every enabled destination whose slot is due (each slot once); with `frequency`, only those."""
        profiles = self.memberships.current_profiles()
        done = []
        for d in self.destinations.list():
            if not d.enabled or (frequency and d.schedule.frequency is not frequency):
                continue
            if d.schedule.frequency is Frequency.AFTER_SEGMENT_EVALUATION:
                if profiles is None:
                    continue
                run_id = run_id_for(d, now, after_job=profiles.job_id)
            elif d.schedule.slot(now) is None:
                continue
            else:
                run_id = run_id_for(d, now)
            job = self._claim(d, run_id, now)
            if job is not None:
                done.append(self._run(job, d, now))
        return done

    def run(self, destination_id: str, *, now: dt.datetime) -> Job:
        """Run a destination now, whatever its schedule (Adobe's "Export file now")."""
        d = self.destinations.get(destination_id)
        run_id = run_id_for(d, now, on_demand=True)
        job = self._claim(d, run_id, now)
        return self._run(job, d, now) if job else self.jobs.get(JobType.EXPORT, run_id)

    def enqueue(self, destination_id: str, *, now: dt.datetime) -> Job:
        """Record an on-demand run as QUEUED and put it on the queue; `run_queued` runs it."""
        d = self.destinations.get(destination_id)
        job = Job(
            id=run_id_for(d, now, on_demand=True),
            type=JobType.EXPORT,
            status=JobStatus.QUEUED,
            subject=d.id,
            created=now,
        )
        try:
            job = self.jobs.create(job)
        except Conflict:
            return self.jobs.get(JobType.EXPORT, job.id)
        ExportRunMessage(job_id=job.id, destination=d.id, now=now).send(self.queue)
        return job

    def run_queued(self, message: ExportRunMessage | dict[str, Any]) -> Job:
        """Run a queued export once: a redelivered message finds it claimed or done and does nothing, unless
        the worker that claimed it died (its lease ended): then this one runs it again from the start."""
        message = ExportRunMessage.of(message)
        queued = self.jobs.get(JobType.EXPORT, message.job_id)
        now = message.now
        claim = self.jobs.claim(queued.model_copy(update={"started": now}))
        if not claim.ours:
            return claim.job
        return self._run(claim.job, self.destinations.get(message.destination), now)

    def _claim(self, d: Destination, run_id: str, now: dt.datetime) -> Job | None:
        """The run's job, claimed by this worker; None when it ran or another worker is running it."""
        claim = self.jobs.claim(Job(id=run_id, type=JobType.EXPORT, subject=d.id, created=now, started=now))
        if not claim.ours:
            log.info("export run %s is already %s", run_id, claim.job.status.value)
            return None
        return claim.job

    def _run(self, job: Job, d: Destination, now: dt.datetime) -> Job:
        started = time.monotonic()
        return self.jobs.run(
            job,
            now,
            lambda: self._export(job, d, now, started),
            on_failure=lambda message: self._record_failure(job, d, now, started, message),
        )

    def _export(
        self, job: Job, d: Destination, now: dt.datetime, started: float
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One export run, in named steps: plan what to export, build and stage its files, publish them
        with their manifest, then record the runs."""
        phases = Laps()
        plan = self._plan(d)
        with tempfile.TemporaryDirectory(prefix="export-") as tmp:
            built = self._build(d, plan, Path(tmp), now, phases)
        self._publish(
            [s for _, s in built.staged],
            d.manifest_name(now),
            self._manifest(job, d, now, built, plan),
            run_id=job.id,
            now=now,
        )
        phases.lap("publish")
        return self._record(job, d, plan, built, now, round(time.monotonic() - started, 3), phases)

    def _plan(self, d: Destination) -> ExportPlan:
        """What a run exports: the destination's evaluated segments (the rest skipped, with the reason), checked
        against the governance policies as they are now, and the store version the memberships came from."""
        if not d.enabled:
            raise ValidationError(f"destination {d.id!r} is disabled; enable it to export")
        definitions = self.segments.trees()
        # Policies or labels may have changed since the destination was saved: check again.
        check_governance(d, self.policies.list(), definitions, self.segments.datasets.with_schemas())
        profiles = self.memberships.current_profiles()
        if profiles is None:
            raise ValidationError("no segment job has published memberships yet; run one first")
        if profiles.store_version is None:
            raise ValidationError("the memberships were published before the profile store; run a segment job first")
        skipped = {sid: "the segment is not defined" for sid in d.segments if sid not in definitions}
        current = self.memberships.current_pointers()
        for sid in d.segments:
            if sid not in skipped and sid not in current:
                skipped[sid] = "the segment has not been evaluated yet"
        pointers = {sid: current[sid] for sid in d.segments if sid not in skipped}
        states = ModelTable(self.state_table, ExportState, partition=d.id)
        return ExportPlan(profiles, pointers, skipped, states, d.export_mode is ExportMode.INCREMENTAL)

    def _build(self, d: Destination, plan: ExportPlan, work: Path, now: dt.datetime, phases: Laps) -> Built:
        """Download the memberships (and, for incremental runs, the snapshots last exported), build each
        segment's rows and write its files; each file is staged (uncommitted blocks) while the next is written."""
        # The snapshot last exported is `<segment>.previous`, which no segment id can be (they have no dots).
        wanted = {sid: p.files() for sid, p in plan.pointers.items()}
        for sid in plan.pointers if plan.incremental else []:
            state = plan.states.find(sid)
            # (A snapshot's files are written and kept together: the first stands for them all.)
            if state is not None and self.memberships.blobs.exists(state.files()[0].path):
                wanted[f"{sid}.previous"] = state.files()
        local = self.memberships.download(wanted, work / "members")
        profiles = self.profiles.profiles_by_shard(self.profiles.by_id(plan.profiles.store_version), work / "profiles")
        members = [Members(sid, local[sid], local.get(f"{sid}.previous"), plan.incremental) for sid in plan.pointers]
        phases.lap("download")
        if not members:
            return Built(members, [], {})
        con = connect(self.settings, spill_dir=str(work))
        with ThreadPoolExecutor(max_workers=4) as pool:
            uploads: list[tuple[Any, Future[Staged]]] = []

            def upload(w: Any) -> None:
                uploads.append((w, pool.submit(self.dlz.stage_file, d.file_name(w.segment_id, now, w.part), w.path)))

            try:
                install_transforms(con, country_code=self.settings.export_phone_country_code)
                rows = build_rows(con, d, members, profiles, split_rows=self.settings.export_split_rows)
                counts = rows.counts
                phases.lap("rows")
                rows.write(work / "files", on_file=upload)
                phases.lap("write")
            finally:
                con.close()
            staged = [(w, f.result()) for w, f in uploads]
        phases.lap("upload")
        return Built(members, staged, counts)

    def _record(
        self, job: Job, d: Destination, plan: ExportPlan, built: Built, now: dt.datetime, seconds: float, phases: Laps
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The dataflow run of each segment, what each segment exported (the next incremental run's base), and
        the job's metrics."""
        self._save_runs(d.id, [self._dataflow_run(job, d, plan, built, sid, now, seconds) for sid in d.segments])
        plan.states.put_many(
            {
                sid: ExportState(
                    segment_id=sid,
                    job_id=pointer.job_id,
                    snapshot=pointer.snapshot,
                    etag=pointer.etag,
                    parts=pointer.parts,
                    shards=pointer.shards,
                    run_id=job.id,
                    exported_at=now,
                )
                for sid, pointer in plan.pointers.items()
            }
        )
        counts = built.counts.values()
        received = sum(c.received for c in counts)
        reasons = dict(sum((Counter(c.excluded) for c in counts), Counter()))
        metrics = ExportMetrics(
            destination=d.id,
            export_mode=d.export_mode,
            segments=len(d.segments),
            skipped_segments=plan.skipped,
            profiles_received=received,
            identities_activated=sum(c.activated for c in counts),
            excluded=reasons,
            excluded_rate=round(sum(reasons.values()) / received, 6) if received else 0.0,
            files=len(built.staged),
            bytes=sum(s.size for _, s in built.staged),
            profiles_job=plan.profiles.job_id,
            phase_seconds=dict(phases),
        ).model_dump(mode="json", exclude_none=True)
        links = {"manifest": f"{self.settings.dlz_container}/{d.manifest_name(now)}"}
        return metrics, {"links": links, "source": d.manifest_name(now)}

    @staticmethod
    def _dataflow_run(
        job: Job, d: Destination, plan: ExportPlan, built: Built, sid: str, now: dt.datetime, seconds: float
    ) -> DataflowRun:
        files = [s for w, s in built.staged if w.segment_id == sid]
        c = built.counts.get(sid, SegmentCounts())
        return DataflowRun(
            id=f"{job.id}_{sid}",
            run_id=job.id,
            destination_id=d.id,
            segment_id=sid,
            status="SKIPPED" if sid in plan.skipped else "SUCCEEDED",
            export_mode=d.export_mode,
            backfill=plan.incremental and not any(m.previous for m in built.members if m.segment_id == sid),
            profiles_received=c.received,
            identities_activated=c.activated,
            excluded=c.excluded,
            files=[f.name for f in files],
            bytes=sum(f.size for f in files),
            started=now,
            duration_seconds=seconds,
            errors=[plan.skipped[sid]] if sid in plan.skipped else [],
        )

    def _manifest(self, job: Job, d: Destination, now: dt.datetime, built: Built, plan: ExportPlan) -> ExportManifest:
        staged, counts = built.staged, built.counts
        names = {s.id: s.name for s in self.segments.list()}
        return ExportManifest(
            run_id=job.id,
            destination_id=d.id,
            destination_name=d.name,
            campaign_instance=d.campaign_instance,
            target_mapping=d.target_mapping,
            sync_type=d.sync_type,
            export_mode=d.export_mode,
            format=d.format,
            csv=d.csv if d.format.value == "csv" else None,
            identity=d.identity.target,
            status_column=d.status_column,
            columns=d.columns(),
            created_at=now,
            files=[
                ManifestFile(
                    name=s.name, segment_id=w.segment_id, part=w.part, rows=w.rows, bytes=s.size, sha256=s.sha256
                )
                for w, s in staged
            ],
            segments={
                sid: ManifestSegment(
                    name=names.get(sid, sid),
                    parts=sum(1 for w, _ in staged if w.segment_id == sid),
                    activated=c.activated,
                    received=c.received,
                    excluded=c.excluded,
                )
                for sid, c in counts.items()
            },
            skipped=plan.skipped,
            rows=sum(w.rows for w, _ in staged),
            bytes=sum(s.size for _, s in staged),
        )

    def _publish(
        self, files: list[Staged], manifest_name: str, manifest: ExportManifest, *, run_id: str, now: dt.datetime
    ) -> None:
        """Commit every file, then the manifest. If anything fails, the files committed so far are deleted:
        a reader never finds files without their manifest, and staged blocks are never seen. Each file's
        metadata names its manifest, so a reader triggered by the file finds the run it belongs to."""
        committed: list[str] = []
        exported = {EXPORTED: now.isoformat()}  # retention counts from the run's time, not the storage clock

        def commit(f: Staged) -> None:
            self.dlz.commit(f, metadata={"manifest": manifest_name, "runId": run_id, **exported})
            committed.append(f.name)

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:  # a round trip each: commit them side by side
                for done in [pool.submit(commit, f) for f in files]:
                    done.result()
            self.dlz.put(manifest_name, manifest.to_bytes(), metadata=exported)
        except Exception:
            for name in committed:
                try:
                    self.dlz.delete(name)
                except Exception:  # noqa: BLE001 - best effort; the original error matters more
                    log.exception("could not delete %s after a failed export", name)
            raise

    def _save_runs(self, destination_id: str, records: list[DataflowRun]) -> None:
        ModelTable(self.runs_table, DataflowRun, partition=destination_id).put_many({r.id: r for r in records})

    def _record_failure(self, job: Job, d: Destination, now: dt.datetime, started: float, message: str) -> None:
        seconds = round(time.monotonic() - started, 3)
        self._save_runs(
            d.id,
            [
                DataflowRun(
                    id=f"{job.id}_{sid}",
                    run_id=job.id,
                    destination_id=d.id,
                    segment_id=sid,
                    status="FAILED",
                    export_mode=d.export_mode,
                    started=now,
                    duration_seconds=seconds,
                    errors=[message],
                )
                for sid in d.segments
            ],
        )
