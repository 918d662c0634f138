"""What the Functions host would index, and the settings it needs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import function_app
from shared.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _functions() -> dict[str, dict]:
    """What the host indexes; built once, as the host does (the SDK refuses a second indexing)."""
    out = {}
    for fn in function_app.app.get_functions():
        trigger = fn.get_trigger().get_dict_repr()
        out[fn.get_function_name()] = {k: (v.value if hasattr(v, "value") else v) for k, v in trigger.items()}
        if "methods" in trigger:
            out[fn.get_function_name()]["methods"] = [
                str(m.value if hasattr(m, "value") else m) for m in trigger["methods"]
            ]
    return out


def test_the_host_indexes_every_function_with_its_trigger_path_and_connection():
    functions = _functions()
    assert functions["ingest_landing_file"]["type"] == "blobTrigger"
    assert functions["ingest_landing_file"]["path"] == "%LANDING_CONTAINER%/{dataset}/{name}"
    assert functions["ingest_landing_file"]["connection"] == "AzureWebJobsStorage"
    assert functions["segment_job_daily"]["type"] == "timerTrigger"
    assert functions["segment_job_daily"]["schedule"] == "%SEGMENT_SCHEDULE%"
    assert functions["segment_job_daily"]["runOnStartup"] is False
    assert functions["segment_job_queued"]["type"] == "queueTrigger"
    assert functions["segment_job_queued"]["queueName"] == "%SEGMENT_JOBS_QUEUE%"
    assert functions["segment_job_queued"]["connection"] == "AzureWebJobsStorage"
    assert functions["segment_job_streaming"]["type"] == "timerTrigger"
    assert functions["segment_job_streaming"]["schedule"] == "%STREAMING_SCHEDULE%"
    for name, setting in (
        ("export_runs", "EXPORT_SCHEDULE"),
        ("dlz_retention", "DLZ_RETENTION_SCHEDULE"),
        ("snapshot_retention", "SNAPSHOT_RETENTION_SCHEDULE"),
        ("profile_store_retention", "PROFILE_RETENTION_SCHEDULE"),
    ):
        assert functions[name]["type"] == "timerTrigger" and functions[name]["schedule"] == f"%{setting}%"
    assert functions["segment_shard_queued"]["type"] == "queueTrigger"
    assert functions["segment_shard_queued"]["queueName"] == "%SEGMENT_SHARDS_QUEUE%"
    assert functions["profile_rebuild_queued"]["type"] == "queueTrigger"
    assert functions["profile_rebuild_queued"]["queueName"] == "%PROFILE_JOBS_QUEUE%"
    assert functions["export_run_queued"]["type"] == "queueTrigger"
    assert functions["export_run_queued"]["queueName"] == "%EXPORT_RUNS_QUEUE%"
    assert functions["export_run_queued"]["connection"] == "AzureWebJobsStorage"
    assert functions["campaign_audience_load"]["type"] == "blobTrigger"
    assert functions["campaign_audience_load"]["path"] == "%DLZ_CONTAINER%/{name}"
    assert functions["campaign_audience_load"]["connection"] == "AzureWebJobsStorage"
    assert functions["campaign_log_export"]["type"] == "timerTrigger"
    assert functions["campaign_log_export"]["schedule"] == "%CAMPAIGN_LOG_SCHEDULE%"
    assert functions["alert_delivery"]["type"] == "queueTrigger"
    assert functions["alert_delivery"]["queueName"] == "%ALERT_DELIVERIES_QUEUE%"
    assert functions["monitor"]["type"] == "timerTrigger" and functions["monitor"]["schedule"] == "%MONITOR_SCHEDULE%"
    routes = {name: f["route"] for name, f in functions.items() if f["type"] == "httpTrigger"}
    assert routes == {
        "schemas": "schemas/{id?}",
        "datasets": "datasets/{id?}",
        "merge_policies": "merge-policies/{id?}",
        "batches": "batches/{id}",
        "profiles": "profiles",
        "profiles_rebuild": "profiles/rebuild",
        "segments": "segments/{id?}",
        "segment_jobs": "segment-jobs/{id?}",
        "segment_preview": "segments-preview",
        "segment_explain": "segments/{id}/explain",
        "destinations": "destinations/{id?}",
        "destination_run": "destinations/{id}/run",
        "dataflow_runs": "dataflows/{id}/runs",
        "governance_policies": "policies/{id?}",
        "target_mappings": "target-mappings/{id?}",
        "audience_loads": "audience-loads",
        "campaign_lists": "campaign/lists/{id?}",
        "campaign_recipients": "campaign/recipients",
        "campaign_recipient_versions": "campaign/recipients/versions",
        "campaign_recipient_restore": "campaign/recipients/restore",
        "campaign_list_versions": "campaign/lists/{id}/versions",
        "campaign_list_restore": "campaign/lists/{id}/restore",
        "campaign_deliveries": "campaign/deliveries/{id?}",
        "health": "health",
        "jobs": "jobs/{id?}",
        "alerts": "alerts",
        "subscriptions": "subscriptions/{id?}",
        "subscription_test": "subscriptions/{id}/test",
        "subscription_deliveries": "subscriptions/{id}/deliveries",
        "openapi": "openapi.json",
        "dashboard": "dashboard",
    }
    assert all(functions[n]["authLevel"] == "function" for n in routes)


def test_every_setting_in_a_binding_is_in_the_example_settings():
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    for f in _functions().values():
        for key in ("path", "schedule", "connection", "queueName"):
            text = str(f.get(key, ""))
            for part in text.split("%")[1::2]:
                assert part in values, f"binding setting %{part}% missing from local.settings.example.json"
            if key == "connection" and text:
                assert text in values


def test_the_example_settings_document_every_setting_the_app_reads():
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    readme = (ROOT / "README.md").read_text()
    for field_name in Settings.model_fields:
        name = env_name(field_name)
        assert name in values, f"{name} missing from local.settings.example.json"
        assert f"`{name}`" in readme, f"{name} is not documented in README.md"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_host_json_uses_the_v4_extension_bundle():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"]["version"] == "[4.*, 5.0.0)"


def test_the_openapi_document_is_valid_and_describes_exactly_the_indexed_http_functions():
    from openapi_spec_validator import validate

    from functions.openapi import openapi
    from tests.test_http import body, call

    response = call(openapi, "GET", "openapi.json")
    document = body(response)
    validate(document)
    assert document["openapi"] == "3.1.0"
    documented = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    indexed = set()
    for f in _functions().values():
        if f["type"] != "httpTrigger":
            continue
        route = "/api/" + f["route"]
        variants = [route.replace("/{id?}", ""), route.replace("{id?}", "{id}")] if "{id?}" in route else [route]
        for method in f["methods"]:
            matching = [v for v in variants if (v, method) in documented]
            assert matching, f"{method} {route} is not in /api/openapi.json"
            indexed.update((v, method) for v in matching)
    assert documented == indexed, f"documented but not served: {sorted(documented - indexed)}"
    assert "Job" in document["components"]["schemas"] and "Problem" in document["components"]["schemas"]


def test_every_body_in_the_openapi_document_is_camel_case():
    """Request and response models name their fields in camelCase on the wire (`class` is XDM's own)."""
    from functions.openapi import document
    from tests.api_contract import SNAKE

    for name, schema in document()["components"]["schemas"].items():
        snake = [p for p in schema.get("properties", {}) if SNAKE.fullmatch(p)]
        assert not snake, f"{name} has snake_case properties {snake}"


def test_snake_case_request_fields_still_work_for_one_release_with_a_deprecation_header(settings):
    from functions.catalog import datasets
    from tests.test_http import body, call

    old = call(datasets, "PUT", "datasets/crm", {"id": "crm"}, {"name": "CRM", "schema_id": "xdm-profile"})
    assert old.status_code == 200 and body(old)["schemaId"] == "xdm-profile"
    assert old.headers["Deprecation"].startswith("@")
    assert old.headers["X-Deprecated-Fields"] == "schema_id (now schemaId)"
    new = call(datasets, "PUT", "datasets/crm", {"id": "crm"}, {"name": "CRM", "schemaId": "xdm-profile"})
    assert new.status_code == 200 and "Deprecation" not in new.headers


def test_every_example_in_the_openapi_document_validates_against_its_schema():
    """The request models carry examples (shown in /api/openapi.json); each must be a body the route takes."""
    from jsonschema import Draft202012Validator

    from functions.openapi import document

    doc = document()
    checked = 0
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            validator = Draft202012Validator({"components": doc["components"], "$ref": f"#/components/schemas/{name}"})
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, f"example of {name}: {errors}"
            checked += 1
    assert checked >= 12
    from functions.http import OPERATIONS

    for op in OPERATIONS:  # and through the model itself, by the camelCase names only
        if isinstance(op.request, type):
            for example in (op.request.model_config.get("json_schema_extra") or {}).get("examples", []):
                op.request.model_validate(example, by_alias=True, by_name=False)
