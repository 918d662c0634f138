"""Command line.
- `python -m shared.cli segments evaluate --pql "<expr>" --profiles P.ndjson --events E.ndjson
  --as-of 2026-11-22T12:00:00Z` prints one JSON object per member person. It runs the product's own
  validation, stitching, merge (default policy) and segment compiler on local files, without storage.
- `python -m shared.cli landing put FILE --dataset D` drops a file into the landing container of the storage
  account that `AzureWebJobsStorage` names (Azurite's default when unset), where the ingestion blob trigger
  picks it up.
- `python -m shared.cli profiles rebuild` rebuilds the profile store from the lake (after a merge-policy or
  schema change, or to recover) and prints what it holds."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

from shared.engine import connect
from shared.errors import BridgeError
from shared.identity.policies import DEFAULT_POLICY
from shared.identity.store import ProfileStore, StoreFiles, StoreVersion, replay
from shared.ingestion.batch import AcceptedBatch
from shared.ingestion.schemas import EVENT_SCHEMA, PROFILE_SCHEMA, Schema
from shared.ingestion.validation import check_file
from shared.segmentation.evaluation import RESULTS, evaluate, fields_of
from shared.segmentation.pql import parse
from shared.settings import Settings, get_settings
from shared.storage import BlobStore, StorageAccount


def _as_of(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2026-11-22T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _load(files: list[Path], schema: Schema, dataset_id: str, now: dt.datetime, work: Path, con) -> list[AcceptedBatch]:
    batches = []
    for n, file in enumerate(files):
        batch_id = f"{dataset_id}-{n:04d}"
        parts = work / batch_id
        parts.mkdir()
        checked = check_file(
            con, file, file_name=file.name, schema=schema, work=parts, batch_id=batch_id, ingested_at=now
        )
        for row, field, reason in checked.first_errors(20):
            print(f"{file}: row {row}{', field ' + field if field else ''}: {reason} (row skipped)", file=sys.stderr)
        out = work / f"{dataset_id}-{n}.parquet"
        checked.write_accepted(out)
        batches.append(AcceptedBatch(dataset_id, schema, out, batch_id, now))
    return batches


def _schemas(files: list[Path]) -> tuple[Schema, Schema]:
    """The profile and event schemas records are read with: the built-in ones, extended by the fields of
    each `--schema` file of that class (a custom field's own declaration wins)."""
    given = [Schema.model_validate_json(f.read_text()) for f in files]
    merged = []
    for base in (PROFILE_SCHEMA, EVENT_SCHEMA):
        fields = {f.path: f for f in base.fields}
        for schema in given:
            if schema.schema_class is base.schema_class:
                fields.update({f.path: f for f in schema.fields})
        merged.append(base.model_copy(update={"fields": list(fields.values())}))
    return merged[0], merged[1]


def evaluate_command(args: argparse.Namespace) -> int:
    now = args.as_of
    profile_schema, event_schema = _schemas(args.schema)
    expr = parse(args.pql)  # an invalid expression stops here, before anything is printed
    definitions = {k: parse(v) for k, v in json.loads(Path(args.segments).read_text()).items()} if args.segments else {}
    with tempfile.TemporaryDirectory(prefix="pql-") as tmp:
        work = Path(tmp)
        con = connect(Settings(), spill_dir=tmp)
        batches = _load(args.profiles, profile_schema, "profiles", now, work, con) + _load(
            args.events, event_schema, "events", now, work, con
        )
        # A small profile store in the temporary folder, built the way ingestion builds the real one.
        store = ProfileStore(settings=Settings(), files=StoreFiles(folder=work / "store"))
        empty = StoreVersion.empty(
            shards=1, policy=DEFAULT_POLICY, graph_limit=Settings().identity_graph_limit, now=now
        )
        version = replay(Settings(), batches, empty, store.files, work / "out", now=now)
        profiles = store.open(con, now=now, workdir=work / "cache", version=version)
        fields = fields_of(profiles, [event_schema])
        compiled = evaluate(con, profiles, {"cli": expr}, fields=fields, definitions=definitions)
        rows = con.execute(
            f"""SELECT p.profileId, p.identities FROM {profiles.profiles} p JOIN {RESULTS} r USING (profileId)
                WHERE r.{compiled.columns["cli"]} ORDER BY p.profileId"""
        ).fetchall()
    for profile_id, identities in rows:
        grouped: dict[str, list[str]] = {}
        for identity in identities:
            grouped.setdefault(identity["namespace"], []).append(identity["id"])
        print(json.dumps({"profileId": profile_id, "identities": grouped}, sort_keys=True))
    return 0


def landing_put(args: argparse.Namespace) -> int:
    """Upload FILE as `landing/<dataset>/<file name>` (all at once: the trigger never sees half of it)."""
    if not args.file.is_file():
        raise OSError(f"{args.file}: no such file")
    if args.file.suffix not in (".csv", ".ndjson", ".json", ".parquet"):
        raise ValueError(f"{args.file.name}: landing takes .csv, .ndjson, .json or .parquet files")
    settings = get_settings()
    landing = BlobStore(StorageAccount.from_settings(settings).container(settings.landing_container))
    name = f"{args.dataset}/{args.name or args.file.name}"
    etag = landing.put_file(name, args.file)
    print(
        json.dumps(
            {"container": settings.landing_container, "blob": name, "etag": etag, "bytes": args.file.stat().st_size}
        )
    )
    return 0


def profiles_rebuild(args: argparse.Namespace) -> int:
    """Rebuild the profile store of the configured storage account from its lake, as of now."""
    now = args.as_of or dt.datetime.now(dt.UTC)
    version = ProfileStore.from_settings(get_settings()).rebuild(now=now)
    print(json.dumps(version.summary(), default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.cli", description="Audience Bridge from the command line")
    areas = parser.add_subparsers(dest="area", required=True)
    segments = areas.add_parser("segments").add_subparsers(dest="command", required=True)
    ev = segments.add_parser("evaluate", help="evaluate a PQL expression over local NDJSON files")
    ev.add_argument("--pql", required=True, help="the PQL expression")
    ev.add_argument("--profiles", type=Path, action="append", default=[], help="XDM-lite profile NDJSON (repeatable)")
    ev.add_argument("--events", type=Path, action="append", default=[], help="XDM-lite event NDJSON (repeatable)")
    ev.add_argument("--as-of", required=True, type=_as_of, help="evaluation time, ISO 8601 (2026-11-22T12:00:00Z)")
    ev.add_argument("--segments", help='JSON file {"<segment id>": "<PQL>"} for inSegment')
    ev.add_argument(
        "--schema",
        type=Path,
        action="append",
        default=[],
        help="a schema JSON file (as PUT /api/schemas takes) whose fields extend the built-in profile or event "
        "schema of its class (repeatable)",
    )
    ev.set_defaults(run=evaluate_command)
    landing = areas.add_parser("landing").add_subparsers(dest="command", required=True)
    put = landing.add_parser("put", help="drop a file into the landing container for ingestion")
    put.add_argument("file", type=Path)
    put.add_argument("--dataset", required=True, help="the dataset it belongs to (created beforehand)")
    put.add_argument("--name", help="the blob's name under the dataset folder (default: the file's name)")
    put.set_defaults(run=landing_put)
    profiles = areas.add_parser("profiles").add_subparsers(dest="command", required=True)
    rebuild = profiles.add_parser("rebuild", help="rebuild the profile store from the lake")
    rebuild.add_argument("--as-of", type=_as_of, help="the rebuild's time, ISO 8601 (default: now)")
    rebuild.set_defaults(run=profiles_rebuild)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BridgeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
