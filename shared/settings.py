"""Every setting the app reads, in one place: Functions app settings arrive as environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

AZURITE_CONNECTION_STRING = "UseDevelopmentStorage=true"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", populate_by_name=True)

    storage_connection: str = Field(
        AZURITE_CONNECTION_STRING,
        validation_alias=AliasChoices("AzureWebJobsStorage", "storage_connection"),
        description="Connection string of the storage account that holds every container, table and queue.",
    )
    storage_account_name: str = Field(
        "",
        validation_alias=AliasChoices("AzureWebJobsStorage__accountName", "storage_account_name"),
        description="In Azure, the storage account reached with the app's managed identity (no keys); "
        "when set, AzureWebJobsStorage is not read.",
    )
    storage_client_id: str = Field(
        "",
        validation_alias=AliasChoices("AzureWebJobsStorage__clientId", "storage_client_id"),
        description="The client id of the user-assigned managed identity that reaches the storage account.",
    )
    blob_trigger_source: str = Field(
        "LogsAndContainerScan",
        pattern="^(LogsAndContainerScan|EventGrid)$",
        validation_alias=AliasChoices("BLOB_TRIGGER_SOURCE", "blob_trigger_source"),
        description="How the host learns of new blobs: EventGrid on the Flex Consumption plan (which has no "
        "container scan), LogsAndContainerScan elsewhere.",
    )
    landing_container: str = Field(
        "landing",
        validation_alias=AliasChoices("LANDING_CONTAINER", "landing_container"),
    )
    lake_container: str = Field("lake", validation_alias=AliasChoices("LAKE_CONTAINER", "lake_container"))
    segments_container: str = Field(
        "segments",
        validation_alias=AliasChoices("SEGMENTS_CONTAINER", "segments_container"),
    )
    dlz_container: str = Field("dlz", validation_alias=AliasChoices("DLZ_CONTAINER", "dlz_container"))
    campaign_container: str = Field(
        "campaign",
        validation_alias=AliasChoices("CAMPAIGN_CONTAINER", "campaign_container"),
    )
    table_prefix: str = Field(
        "",
        validation_alias=AliasChoices("TABLE_PREFIX", "table_prefix"),
        pattern=r"^[A-Za-z][A-Za-z0-9]{0,40}$|^$",
        description="Prepended to every table name, so several deployments can share one account.",
    )
    ingestion_max_file_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        validation_alias=AliasChoices("INGESTION_MAX_FILE_BYTES", "ingestion_max_file_bytes"),
    )
    ingestion_max_rejected_ratio: float = Field(
        0.005,
        ge=0,
        le=1,
        validation_alias=AliasChoices("INGESTION_MAX_REJECTED_RATIO", "ingestion_max_rejected_ratio"),
        description="A batch fails when more than this share of its rows is rejected (Adobe's alert: 0.5%).",
    )
    identity_graph_limit: int = Field(
        50,
        gt=1,
        validation_alias=AliasChoices("IDENTITY_GRAPH_LIMIT", "identity_graph_limit"),
    )
    profiles_container: str = Field(
        "profiles",
        validation_alias=AliasChoices("PROFILES_CONTAINER", "profiles_container"),
        description="Blob container of the profile store: its versions, identity graph and person-keyed shards.",
    )
    profile_shards: int = Field(
        8,
        gt=0,
        le=1024,
        validation_alias=AliasChoices("PROFILE_SHARDS", "profile_shards"),
        description="Shards of the profile store (by a hash of the person key); a change takes effect at the next rebuild.",
    )
    profile_jobs_queue: str = Field(
        "profile-jobs",
        validation_alias=AliasChoices("PROFILE_JOBS_QUEUE", "profile_jobs_queue"),
        description="Queue of profile store rebuilds (POST /api/profiles/rebuild answers at once; a queue trigger runs it).",
    )
    profile_version_retention_hours: int = Field(
        168,
        gt=0,
        validation_alias=AliasChoices("PROFILE_VERSION_RETENTION_HOURS", "profile_version_retention_hours"),
        description="How long replaced store versions stay listed, so a job re-run as of an earlier time reads the store as it was.",
    )
    profile_retention_schedule: str = Field(
        "0 45 3 * * *",
        validation_alias=AliasChoices("PROFILE_RETENTION_SCHEDULE", "profile_retention_schedule"),
        description="NCRONTAB schedule of the timer that deletes profile store files no kept version names.",
    )
    segment_schedule: str = Field(
        "0 0 2 * * *",
        validation_alias=AliasChoices("SEGMENT_SCHEDULE", "segment_schedule"),
        description="NCRONTAB schedule of the daily batch segment job (the timer reads it as %SEGMENT_SCHEDULE%).",
    )
    streaming_schedule: str = Field(
        "0 */5 * * * *",
        validation_alias=AliasChoices("STREAMING_SCHEDULE", "streaming_schedule"),
        description="NCRONTAB schedule of streaming segment evaluation (people touched since the last run).",
    )
    segment_jobs_queue: str = Field(
        "segment-jobs",
        validation_alias=AliasChoices("SEGMENT_JOBS_QUEUE", "segment_jobs_queue"),
        description="Queue of on-demand segment jobs (HTTP answers at once; a queue trigger runs the job).",
    )
    segment_shards_queue: str = Field(
        "segment-shards",
        validation_alias=AliasChoices("SEGMENT_SHARDS_QUEUE", "segment_shards_queue"),
        description="Queue of the shard tasks of queued segment jobs: one per profile store shard, spread over instances.",
    )
    segment_shard_timeout_seconds: int = Field(
        1800,
        gt=0,
        validation_alias=AliasChoices("SEGMENT_SHARD_TIMEOUT_SECONDS", "segment_shard_timeout_seconds"),
        description="How long a fanned-out segment job waits for its shards before the monitor fails it as stuck.",
    )
    segment_exited_retention_days: int = Field(
        30, gt=0, validation_alias=AliasChoices("SEGMENT_EXITED_RETENTION_DAYS", "segment_exited_retention_days")
    )
    export_schedule: str = Field(
        "0 5 * * * *",
        validation_alias=AliasChoices("EXPORT_SCHEDULE", "export_schedule"),
        description="NCRONTAB schedule of the timer that runs the destinations whose schedule slot is due.",
    )
    export_runs_queue: str = Field(
        "export-runs",
        validation_alias=AliasChoices("EXPORT_RUNS_QUEUE", "export_runs_queue"),
        description="Queue of on-demand export runs (POST /api/destinations/{id}/run).",
    )
    export_split_rows: int = Field(
        5_000_000,
        gt=0,
        validation_alias=AliasChoices("EXPORT_SPLIT_ROWS", "export_split_rows"),
        description="An export file holds at most this many rows; the rest go to `_2`, `_3`, … files.",
    )
    export_phone_country_code: str = Field(
        "1",
        pattern=r"^[1-9][0-9]{0,2}$",
        validation_alias=AliasChoices("EXPORT_PHONE_COUNTRY_CODE", "export_phone_country_code"),
        description="Calling code of phone numbers written without an international prefix (for E.164).",
    )
    dlz_retention_days: int = Field(7, gt=0, validation_alias=AliasChoices("DLZ_RETENTION_DAYS", "dlz_retention_days"))
    dlz_retention_schedule: str = Field(
        "0 30 3 * * *",
        validation_alias=AliasChoices("DLZ_RETENTION_SCHEDULE", "dlz_retention_schedule"),
        description="NCRONTAB schedule of the timer that deletes DLZ files older than DLZ_RETENTION_DAYS.",
    )
    job_lease_seconds: int = Field(
        300,
        ge=10,
        validation_alias=AliasChoices("JOB_LEASE_SECONDS", "job_lease_seconds"),
        description="A job's claim lasts this long unless its worker renews it; then another may take it over.",
    )
    snapshot_retention_hours: int = Field(
        72,
        gt=0,
        validation_alias=AliasChoices("SNAPSHOT_RETENTION_HOURS", "snapshot_retention_hours"),
        description="How long replaced versions of Campaign's recipients and lists are kept (and restorable).",
    )
    snapshot_retention_schedule: str = Field(
        "0 15 * * * *",
        validation_alias=AliasChoices("SNAPSHOT_RETENTION_SCHEDULE", "snapshot_retention_schedule"),
        description="NCRONTAB schedule of the timer that deletes snapshot versions past SNAPSHOT_RETENTION_HOURS.",
    )
    campaign_log_schedule: str = Field(
        "0 0 */4 * * *",
        validation_alias=AliasChoices("CAMPAIGN_LOG_SCHEDULE", "campaign_log_schedule"),
        description="NCRONTAB schedule of the timer that sends Campaign's delivery logs back to `landing`.",
    )
    campaign_feedback_dataset: str = Field(
        "campaign-logs",
        validation_alias=AliasChoices("CAMPAIGN_FEEDBACK_DATASET", "campaign_feedback_dataset"),
        description="The event dataset (and landing folder) Campaign's delivery logs are ingested into.",
    )
    monitor_schedule: str = Field(
        "0 */15 * * * *",
        validation_alias=AliasChoices("MONITOR_SCHEDULE", "monitor_schedule"),
        description="NCRONTAB schedule of the monitor timer that looks for delayed jobs and dataflows.",
    )
    alert_rejected_rate: float = Field(
        0.005,
        ge=0,
        validation_alias=AliasChoices("ALERT_REJECTED_RATE", "alert_rejected_rate"),
        description="An ingestion batch rejecting more than this share of its rows raises an alert.",
    )
    alert_excluded_rate: float = Field(
        0.01,
        ge=0,
        validation_alias=AliasChoices("ALERT_EXCLUDED_RATE", "alert_excluded_rate"),
        description="An export run excluding more than this share of the profiles it received raises an alert.",
    )
    alert_delay_minutes: int = Field(
        150,
        gt=0,
        validation_alias=AliasChoices("ALERT_DELAY_MINUTES", "alert_delay_minutes"),
        description="A job PROCESSING longer than this, or a dataflow slot this late, raises a delay alert.",
    )
    alert_size_change: float = Field(
        0.5,
        ge=0,
        validation_alias=AliasChoices("ALERT_SIZE_CHANGE", "alert_size_change"),
        description="A segment whose size changes by more than this share between two jobs raises an alert.",
    )
    alert_deliveries_queue: str = Field(
        "alert-deliveries",
        validation_alias=AliasChoices("ALERT_DELIVERIES_QUEUE", "alert_deliveries_queue"),
        description="Queue of webhook deliveries (one message per alert and subscription, retried).",
    )
    webhook_allow_private: bool = Field(
        False,
        validation_alias=AliasChoices("WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private"),
        description="Allow http:// and private, loopback or link-local webhook addresses (local testing only).",
    )
    webhook_retry_seconds: float = Field(
        30,
        ge=0,
        validation_alias=AliasChoices("WEBHOOK_RETRY_SECONDS", "webhook_retry_seconds"),
        description="First retry delay of a failed webhook delivery; it doubles each attempt, with jitter.",
    )
    webhook_retry_hours: float = Field(
        24,
        gt=0,
        validation_alias=AliasChoices("WEBHOOK_RETRY_HOURS", "webhook_retry_hours"),
        description="How long a delivery is retried; then the subscription is disabled and an alert says so.",
    )
    duckdb_memory_limit: str = Field(
        "1GB",
        validation_alias=AliasChoices("DUCKDB_MEMORY_LIMIT", "duckdb_memory_limit"),
        description="DuckDB's memory limit; it spills past it. The default fits the Consumption plan's 1.5 GB.",
    )
    duckdb_threads: int = Field(2, gt=0, validation_alias=AliasChoices("DUCKDB_THREADS", "duckdb_threads"))

    def table_name(self, base: str) -> str:
        return f"{self.table_prefix}{base}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The app's settings, read once per process from the environment."""
    return Settings()
