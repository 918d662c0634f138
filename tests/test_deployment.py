"""The Azure deployment agrees with the code: every setting the app reads is set by infra/main.bicep (to
the code's default, except where Azure needs otherwise), every blob trigger has its Event Grid
subscription on the container its path names, and azd knows the app. (No Bicep compiler can be installed
here, so the template is read as text.)"""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings, env_name
from tests.test_function_app import _functions

ROOT = Path(__file__).resolve().parent.parent
MAIN = (ROOT / "infra" / "main.bicep").read_text()
EVENTGRID = (ROOT / "infra" / "eventgrid.bicep").read_text()
# What Azure sets otherwise than the local defaults, and why.
IN_AZURE = {
    "BLOB_TRIGGER_SOURCE": "EventGrid",  # Flex Consumption has no container scan
    "AzureWebJobsStorage__accountName": "storage.name",  # the identity-based connection
    "AzureWebJobsStorage__clientId": "identity.properties.clientId",
    "DUCKDB_MEMORY_LIMIT": "${instanceMemoryMB * 4 / 10}MB",  # sized to the instance
}


def bicep_variable(name: str) -> dict[str, str]:
    block = re.search(rf"var {name} = \{{(.*?)\n\}}", MAIN, re.S)
    assert block, f"main.bicep has no var {name}"
    return dict(re.findall(r"(\w+): '([^']*)'", block.group(1)))


def app_settings() -> dict[str, str]:
    """main.bicep's app settings: name -> value, variable references resolved."""
    names = {**{f"containers.{k}": v for k, v in bicep_variable("containers").items()}}
    names |= {f"queues.{k}": v for k, v in bicep_variable("queues").items()}
    out = {}
    for name, value in re.findall(r"^\s*\{ name: '([^']+)', value: (.+) \}$", MAIN, re.M):
        value = value.strip()
        out[name] = value.strip("'") if value.startswith("'") else names.get(value, value)
    return out


def test_every_setting_the_app_reads_is_set_in_azure_to_the_codes_default_or_on_purpose():
    settings, defaults = app_settings(), Settings()
    for field_name in Settings.model_fields:
        name = env_name(field_name)
        if name == "AzureWebJobsStorage":  # a connection string: Azure uses the identity instead
            assert "AzureWebJobsStorage__credential" in settings and name not in settings
            continue
        assert name in settings, f"{name} is not set in infra/main.bicep"
        if name in IN_AZURE:
            assert settings[name] == IN_AZURE[name], name
            continue
        default = getattr(defaults, field_name)
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        found = settings[name]
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert float(found) == float(default), f"{name}: {found} in main.bicep, {default} in the code"
        else:
            assert found == expected, f"{name}: {found!r} in main.bicep, {expected!r} in the code"


def test_every_blob_trigger_has_its_event_grid_subscription_on_the_container_its_path_names():
    settings = app_settings()
    subscribed = {
        f: (setting, container)
        for f, setting, container in re.findall(
            r"\{ function: '(\w+)', setting: '(\w+)', container: '([^']+)' \}", EVENTGRID
        )
    }
    blob_triggers = {name: f for name, f in _functions().items() if f["type"] == "blobTrigger"}
    assert set(subscribed) == set(blob_triggers)
    for name, trigger in blob_triggers.items():
        setting = re.match(r"%(\w+)%/", trigger["path"]).group(1)
        assert subscribed[name] == (setting, settings[setting]), name
    assert "Host.Functions.${t.function}" in EVENTGRID and "Microsoft.Storage.BlobCreated" in EVENTGRID


def test_every_queue_and_container_the_app_uses_is_created():
    created = set(bicep_variable("containers").values()) | set(bicep_variable("queues").values())
    settings = app_settings()
    for name in ("LANDING", "LAKE", "SEGMENTS", "DLZ", "CAMPAIGN"):
        assert settings[f"{name}_CONTAINER"] in created
    for name in ("SEGMENT_JOBS_QUEUE", "EXPORT_RUNS_QUEUE", "ALERT_DELIVERIES_QUEUE"):
        assert settings[name] in created


def test_azd_deploys_the_function_app_and_then_wires_the_blob_triggers():
    azure = (ROOT / "azure.yaml").read_text()
    assert "host: function" in azure and "language: python" in azure and "infra/eventgrid.bicep" in azure
    assert "'azd-service-name': 'api'" in MAIN and "runtime: { name: 'python', version: '3.11' }" in MAIN
    for output in ("AZURE_FUNCTION_APP_NAME", "AZURE_STORAGE_ACCOUNT_NAME"):
        assert f"output {output} " in MAIN and f"${output}" in azure
