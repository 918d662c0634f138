"""Every setting the app reads, in one place: Functions app settings arrive as environment variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

AZURITE_CONNECTION_STRING = "UseDevelopmentStorage=true"


class Settings(BaseSettings):
    # A field reads the environment variable of its name in capitals (`landing_container`: LANDING_CONTAINER);
    # only the host's storage connection settings have names of their own.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_by_name=True)

    storage_connection: str = Field(
        AZURITE_CONNECTION_STRING,
        validation_alias="AzureWebJobsStorage",
        description="Connection string of the storage account that holds every container, table and queue.",
    )
    storage_account_name: str = Field(
        "",
        validation_alias="AzureWebJobsStorage__accountName",
        description="In Azure, the storage account reached with the app's managed identity (no keys); "
        "when set, AzureWebJobsStorage is not read.",
    )
    storage_client_id: str = Field(
        "",
        validation_alias="AzureWebJobsStorage__clientId",
        description="The client id of the user-assigned managed identity that reaches the storage account.",
    )
    blob_trigger_source: str = Field(
        "LogsAndContainerScan",
        pattern="^(LogsAndContainerScan|EventGrid)$",
        description="How the host learns of new blobs: EventGrid on the Flex Consumption plan (which has no "
        "container scan), LogsAndContainerScan elsewhere.",
    )
    landing_container: str = "landing"
    lake_container: str = "lake"
    segments_container: str = "segments"
    dlz_container: str = "dlz"
    campaign_container: str = "campaign"
    table_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z][A-Za-z0-9]{0,40}$|^$",
        description="Prepended to every table name, so several deployments can share one account.",
    )
    ingestion_max_file_bytes: int = Field(
        2 * 1024**3,
        gt=0,
        description="A larger landed file (or a .gz inflating to more) fails. NDJSON, CSV and Parquet are read a "
        "chunk at a time, so memory follows INGESTION_CHUNK_BYTES, not this.",
    )
    ingestion_max_whole_file_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="A JSON array (one document, not one record per line) is read whole (about 5x its size in "
        "memory): its limit.",
    )
    ingestion_chunk_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="NDJSON is validated this many bytes of whole rows at a time, CSV a quarter of it (its rows "
        "become JSON objects, several times their size), Parquet about as many decoded bytes. A CSV row must fit "
        "in its chunk.",
    )
    ingestion_max_rejected_ratio: float = Field(
        0.005,
        ge=0,
        le=1,
        description="A batch fails when more than this share of its rows is rejected (Adobe's alert: 0.5%).",
    )
    identity_graph_limit: int = Field(
        50,
        gt=1,
    )
    profiles_container: str = Field(
        "profiles",
        description="Blob container of the profile store: its versions, identity graph and person-keyed shards.",
    )
    profile_shards: int = Field(
        8,
        gt=0,
        le=1024,
        description="Shards of the profile store (by a hash of the person key); a change takes effect at the next rebuild.",
    )
    worker_cache_mb: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto",
        description="Local disk (MB) a worker may fill with files that never change once written (profile store files, "
        "published membership snapshots) that it read or wrote, so that its next job or batch downloads only what "
        "changed. auto: half of what the cache and the free space of the temp disk come to; 0: no cache.",
    )
    preview_sample_profiles: int = Field(
        250_000,
        gt=0,
        description="A preview over a store with more people reads only enough shards for this many (each shard is "
        "a random sample, by the person key's hash) and says so, with a 95% confidence interval.",
    )
    profile_jobs_queue: str = Field(
        "profile-jobs",
        description="Queue of profile store rebuilds (POST /api/profiles/rebuild answers at once; a queue trigger runs it).",
    )
    profile_version_retention_hours: int = Field(
        168,
        gt=0,
        description="How long replaced store versions stay listed, so a job re-run as of an earlier time reads the store as it was.",
    )
    profile_retention_schedule: str = Field(
        "0 45 3 * * *",
        description="NCRONTAB schedule of the timer that deletes profile store files no kept version names.",
    )
    segment_schedule: str = Field(
        "0 0 2 * * *",
        description="NCRONTAB schedule of the daily batch segment job (the timer reads it as %SEGMENT_SCHEDULE%).",
    )
    streaming_schedule: str = Field(
        "0 */5 * * * *",
        description="NCRONTAB schedule of streaming segment evaluation (people touched since the last run).",
    )
    segment_jobs_queue: str = Field(
        "segment-jobs",
        description="Queue of on-demand segment jobs (HTTP answers at once; a queue trigger runs the job).",
    )
    segment_shards_queue: str = Field(
        "segment-shards",
        description="Queue of the shard tasks of queued segment jobs: one per profile store shard, spread over instances.",
    )
    segment_shard_timeout_seconds: int = Field(
        1800,
        gt=0,
        description="How long a fanned-out segment job waits for its shards before the monitor fails it as stuck.",
    )
    segment_exited_retention_days: int = Field(
        30,
        gt=0,
    )
    export_schedule: str = Field(
        "0 5 * * * *",
        description="NCRONTAB schedule of the timer that runs the destinations whose schedule slot is due.",
    )
    export_runs_queue: str = Field(
        "export-runs",
        description="Queue of on-demand export runs (POST /api/destinations/{id}/run).",
    )
    export_split_rows: int = Field(
        5_000_000,
        gt=0,
        description="An export file holds at most this many rows; the rest go to `_2`, `_3`, … files.",
    )
    export_phone_country_code: str = Field(
        "1",
        pattern=r"^[1-9][0-9]{0,2}$",
        description="Calling code of phone numbers written without an international prefix (for E.164).",
    )
    dlz_retention_days: int = Field(
        7,
        gt=0,
    )
    dlz_retention_schedule: str = Field(
        "0 30 3 * * *",
        description="NCRONTAB schedule of the timer that deletes DLZ files older than DLZ_RETENTION_DAYS.",
    )
    job_lease_seconds: int = Field(
        300,
        ge=10,
        description="A job's claim lasts this long unless its worker renews it; then another may take it over.",
    )
    recipients_delta_ratio: float = Field(
        0.25,
        ge=0,
        description=(
            "A profile sync writes only the recipients it updates (a delta read over the table) until the deltas "
            "would hold more rows than this share of the table; then it rewrites the table, deltas merged in. "
            "0 rewrites every time."
        ),
    )
    snapshot_retention_hours: int = Field(
        72,
        gt=0,
        description="How long replaced versions of Campaign's recipients and lists are kept (and restorable).",
    )
    snapshot_retention_schedule: str = Field(
        "0 15 * * * *",
        description="NCRONTAB schedule of the timer that deletes snapshot versions past SNAPSHOT_RETENTION_HOURS.",
    )
    campaign_log_schedule: str = Field(
        "0 0 */4 * * *",
        description="NCRONTAB schedule of the timer that sends Campaign's delivery logs back to `landing`.",
    )
    campaign_feedback_dataset: str = Field(
        "campaign-logs",
        description="The event dataset (and landing folder) Campaign's delivery logs are ingested into.",
    )
    monitor_schedule: str = Field(
        "0 */15 * * * *",
        description="NCRONTAB schedule of the monitor timer that looks for delayed jobs and dataflows.",
    )
    alert_rejected_rate: float = Field(
        0.005,
        ge=0,
        description="An ingestion batch rejecting more than this share of its rows raises an alert.",
    )
    alert_excluded_rate: float = Field(
        0.01,
        ge=0,
        description="An export run excluding more than this share of the profiles it received raises an alert.",
    )
    alert_delay_minutes: int = Field(
        150,
        gt=0,
        description="A job PROCESSING longer than this, or a dataflow slot this late, raises a delay alert.",
    )
    alert_size_change: float = Field(
        0.5,
        ge=0,
        description="A segment whose size changes by more than this share between two jobs raises an alert.",
    )
    alert_deliveries_queue: str = Field(
        "alert-deliveries",
        description="Queue of webhook deliveries (one message per alert and subscription, retried).",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow http:// and private, loopback or link-local webhook addresses (local testing only).",
    )
    webhook_retry_seconds: float = Field(
        30,
        ge=0,
        description="First retry delay of a failed webhook delivery; it doubles each attempt, with jitter.",
    )
    webhook_retry_hours: float = Field(
        24,
        gt=0,
        description="How long a delivery is retried; then the subscription is disabled and an alert says so.",
    )
    duckdb_memory_limit: str = Field(
        "600MB",
        description="DuckDB's memory limit; it spills past it. At 10M people a batch's process peaks at about "
        "1 GB with the default, within the Consumption plan's 1.5 GB.",
    )
    duckdb_threads: int = Field(
        2,
        gt=0,
    )

    def table_name(self, base: str) -> str:
        return f"{self.table_prefix}{base}"


def env_name(field_name: str) -> str:
    """The app setting (environment variable) a field of Settings reads."""
    alias = Settings.model_fields[field_name].validation_alias
    return alias if isinstance(alias, str) else field_name.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The app's settings, read once per process from the environment."""
    return Settings()
