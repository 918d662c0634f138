"""`make serve`: the app as the Functions host runs it, without Core Tools, against Azurite (data in
.azurite/, kept, so what `make demo` left is there; Azurite on its default ports 10000-10002, the
connection string printed at start). HTTP functions on http://127.0.0.1:7071/api/…, the host's admin call
`POST /admin/functions/{name}`, and `dev.host.LocalHost` polling every couple of seconds for due timers,
new blobs and queue messages, with the host's receipts, retries and poison queues. For trying the product
locally; in Azure, the Functions host does all this."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from dev.azurite import DEFAULT_PORTS, ROOT, start_azurite
from dev.host import LocalHost
from shared.settings import get_settings
from shared.storage import StorageAccount
from shared.timing import pause

log = logging.getLogger("serve")


def _pattern(route: str) -> re.Pattern[str]:
    """`jobs/{id?}` → a regex matching `jobs` and `jobs/<id>`; `{x}` is one path segment."""
    out = re.escape(route)
    out = re.sub(r"/\\\{(\w+)\\\?\\\}", r"(?:/(?P<\1>[^/]+))?", out)
    out = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", out)
    return re.compile(f"^{out}$")


def build_routes(functions: list):
    http = []
    for fn in functions:
        trigger = fn.get_trigger().get_dict_repr()
        if trigger["type"] == "httpTrigger":
            methods = {str(getattr(m, "value", m)) for m in trigger.get("methods") or ["GET", "POST", "PUT", "DELETE"]}
            http.append((_pattern(trigger["route"]), methods, fn.get_user_function()))
    return http


ADMIN = re.compile(r"^/admin/functions/(?P<name>\w+)$")


def handler_for(http_routes, host: LocalHost):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _admin(self, name: str) -> None:
            """The host's admin call: run a non-HTTP function now (202), in the background as the host does."""
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                data = str((json.loads(raw) if raw else {}).get("input") or "")
            except (ValueError, AttributeError):
                data = None
            if name not in host.triggers or data is None:
                detail = "no such non-HTTP function" if data is not None else 'the body is {"input": "..."}'
                problem = {"title": "not found" if data is not None else "validation", "detail": detail}
                self._answer(404 if data is not None else 400, json.dumps(problem).encode(), PROBLEM)
                return
            threading.Thread(target=_run_logged, args=(host, name, data), daemon=True).start()
            self._answer(202, b"", {})

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            if self.command == "POST" and (admin := ADMIN.match(parts.path)):
                self._admin(admin["name"])
                return
            path = parts.path.removeprefix("/api/").strip("/") if parts.path.startswith("/api/") else None
            for pattern, methods, user in http_routes if path is not None else []:
                match = pattern.match(path)
                if match and self.command in methods:
                    body = self.rfile.read(int(self.headers.get("content-length") or 0))
                    request = func.HttpRequest(
                        method=self.command,
                        url=f"http://{self.headers.get('host', 'localhost')}{self.path}",
                        headers=dict(self.headers),
                        params=dict(parse_qsl(parts.query)),
                        route_params={k: v for k, v in match.groupdict().items() if v is not None},
                        body=body,
                    )
                    response = user(request)
                    headers = dict(response.headers.items())  # iterating the headers gives (name, value) pairs
                    if "content-type" not in {k.lower() for k in headers}:
                        headers["content-type"] = response.mimetype or "application/json"
                    self._answer(response.status_code, response.get_body() or b"", headers)
                    return
            data = b'{"title": "not found", "status": 404, "detail": "no function serves this route and method"}'
            self._answer(404, data, PROBLEM)

        do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 - the stdlib's names

        def log_message(self, fmt: str, *args) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


PROBLEM = {"content-type": "application/problem+json"}


def _run_logged(host: LocalHost, name: str, data: str) -> None:
    try:
        host.invoke(name, data)
        log.info("admin: %s ran", name)
    except Exception:  # noqa: BLE001 - as the host, log the failure of a function run by the admin call
        log.exception("admin: %s failed", name)


def run_host(host: LocalHost, stop: threading.Event, *, every: float) -> None:
    """Poll for due timers, new blobs and queue messages until stopped (the host reads the clock)."""
    while not stop.is_set():
        host.poll(dt.datetime.now(dt.UTC))
        pause(stop, every)


def _interrupt(signum, frame) -> None:  # noqa: ANN001 - signal's signature
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".azurite")
    parser.add_argument(
        "--azurite-ports", choices=["default", "free"], default="default", help="10000-10002 (default) or free ones"
    )
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="how often timers, blobs and queues are polled")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (and stop Azurite) when terminated
    azurite = start_azurite(location=args.data_dir, ports=DEFAULT_PORTS if args.azurite_ports == "default" else None)
    os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 (the Functions name)
    # Local receivers (loopback) are the point of serving locally; link-local and metadata addresses stay refused.
    os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    from function_app import app

    functions = app.get_functions()
    http_routes = build_routes(functions)
    host = LocalHost(functions, StorageAccount.from_settings(get_settings()))
    stop = threading.Event()
    threading.Thread(target=run_host, args=(host, stop), kwargs={"every": args.poll_seconds}, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(http_routes, host))
    kinds = {k: len(host.of_kind(k)) for k in ("timerTrigger", "blobTrigger", "queueTrigger")}
    print(f"AzureWebJobsStorage={azurite.connection_string}", flush=True)
    print(
        f"Serving {len(http_routes)} HTTP functions on http://127.0.0.1:{args.port}/api/ and running "
        f"{kinds['timerTrigger']} timers, {kinds['blobTrigger']} blob and {kinds['queueTrigger']} queue triggers "
        f"(data in {args.data_dir})",
        flush=True,
    )
    print(
        f"Try: curl http://127.0.0.1:{args.port}/api/health   ·   the API: /api/openapi.json   ·   "
        f"run a timer now: curl -X POST -d '{{}}' http://127.0.0.1:{args.port}/admin/functions/segment_job_daily   ·   "
        "Ctrl-C stops",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
        azurite.stop()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
