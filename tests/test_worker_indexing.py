"""The real Python worker's indexing (`azure-functions-runtime`, installed apart in `.worker/`) accepts the
app exactly as `app.get_functions()` lists it, and refuses the faults `get_functions()` lets through: a
parameter named differently from its binding, a trigger annotated with the wrong type, and an annotation
naming something not imported. Each fault is tried on a mutated copy of the app."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / ".worker"
pytestmark = pytest.mark.skipif(
    not (WORKER / "azure_functions_runtime").exists(), reason="the worker package is missing: run make setup"
)


def worker_index(app_dir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "dev.worker_index", str(app_dir)],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{WORKER}:{ROOT}",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


LISTED = """
import json
from function_app import app
print(json.dumps({f.get_function_name(): [json.loads(b) for b in f.get_raw_bindings()] for f in app.get_functions()}))
"""


def test_the_worker_indexes_every_function_as_the_app_lists_it():
    # In a process of its own: the SDK indexes an app once per process.
    listed = subprocess.run([sys.executable, "-c", LISTED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    expected = json.loads(listed.stdout)
    assert len(expected) >= 41
    indexed = worker_index(ROOT)
    assert "error" not in indexed, indexed["error"]
    # The blob triggers bind a BlobClient: the worker tells the host not to read the blob for them.
    for name in ("ingest_landing_file", "campaign_audience_load"):
        [trigger] = indexed["functions"][name]
        assert trigger.pop("properties") == {"SupportsDeferredBinding": True}, name
    assert indexed["functions"] == expected


def mutated(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the app whose landing blob trigger has `old` replaced by `new`."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "function_app.py", app / "function_app.py")
    for package in ("functions", "shared"):
        shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    source = app / "functions" / "ingestion.py"
    text = source.read_text()
    assert old in text
    source.write_text(text.replace(old, new))
    return app


@pytest.mark.parametrize(
    ("old", "new", "refusal"),
    [
        (
            "def ingest_landing_file(client: blob.BlobClient)",
            "def ingest_landing_file(stream: blob.BlobClient)",
            "parameters are declared in Python but not in the function definition",
        ),
        (
            "def ingest_landing_file(client: blob.BlobClient)",
            "def ingest_landing_file(client: func.HttpRequest)",
            "do not match the corresponding function parameter's Python type annotation HttpRequest",
        ),
        (
            "def ingest_landing_file(client: blob.BlobClient)",
            "def ingest_landing_file(client: NotImported)",
            "name 'NotImported' is not defined",
        ),
    ],
    ids=["parameter-name", "trigger-type", "unknown-annotation"],
)
def test_the_worker_refuses_what_get_functions_lets_through(tmp_path, old, new, refusal):
    app = mutated(tmp_path, old, new)
    accepted = subprocess.run(
        [sys.executable, "-c", "from function_app import app; print(len(app.get_functions()))"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert accepted.returncode == 0, accepted.stderr[-1000:]  # the SDK alone does not notice
    indexed = worker_index(app)
    assert refusal in indexed.get("error", ""), indexed
