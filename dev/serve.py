"""`make serve`: the app's HTTP functions on http://127.0.0.1:7071/api/… against Azurite (data in .azurite/,
kept, so what `make demo` left is there), without Core Tools. Queue-trigger functions are fed from their
queues every couple of seconds, as the host would, so on-demand runs and webhook deliveries happen too.
For trying the API with curl and for browser tests; not for production (use `func start` or Azure)."""

from __future__ import annotations

import argparse
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

from dev.azurite import ROOT, start_azurite
from dev.host import deliver_queue_messages
from shared.settings import get_settings
from shared.storage import StorageAccount

log = logging.getLogger("serve")


def _pattern(route: str) -> re.Pattern[str]:
    """`jobs/{id?}` → a regex matching `jobs` and `jobs/<id>`; `{x}` is one path segment."""
    out = re.escape(route)
    out = re.sub(r"/\\\{(\w+)\\\?\\\}", r"(?:/(?P<\1>[^/]+))?", out)
    out = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", out)
    return re.compile(f"^{out}$")


def _setting(value: str) -> str:
    """A binding value with its %SETTING% placeholders resolved, as the host does."""
    return re.sub(r"%(\w+)%", lambda m: os.environ.get(m.group(1)) or _default(m.group(1)), value)


def _default(name: str) -> str:
    settings = get_settings()
    for field_name, f in type(settings).model_fields.items():
        if f.validation_alias and name in f.validation_alias.choices:
            return str(getattr(settings, field_name))
    raise KeyError(f"setting {name} is not defined")


def build_routes(app: func.FunctionApp):
    http, queues = [], []
    for fn in app.get_functions():
        trigger = fn.get_trigger().get_dict_repr()
        user = fn.get_user_function()
        if trigger["type"] == "httpTrigger":
            methods = {str(getattr(m, "value", m)) for m in trigger.get("methods") or ["GET", "POST", "PUT", "DELETE"]}
            http.append((_pattern(trigger["route"]), methods, user))
        elif trigger["type"] == "queueTrigger":
            queues.append((_setting(trigger["queueName"]), user))
    return http, queues


def handler_for(http_routes):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
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
                    self.send_response(response.status_code)
                    for key, value in response.headers.items():
                        self.send_header(key, value)
                    if "content-type" not in {k.lower() for k in response.headers}:
                        self.send_header("content-type", response.mimetype or "application/json")
                    data = response.get_body() or b""
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
            self.send_response(404)
            self.send_header("content-type", "application/problem+json")
            data = b'{"title": "not found", "status": 404, "detail": "no function serves this route and method"}'
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 - the stdlib's names

        def log_message(self, fmt: str, *args) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def poll_queues(queues, stop: threading.Event, *, every: float = 2.0) -> None:
    account = StorageAccount.from_settings(get_settings())

    class Adapter:  # deliver_queue_messages calls `function.build().get_user_function()`
        def __init__(self, user) -> None:
            self.user = user

        def build(self):
            return self

        def get_user_function(self):
            return self.user

    while not stop.is_set():
        for name, user in queues:
            try:
                deliver_queue_messages(Adapter(user), account.queue(name))
            except Exception:  # noqa: BLE001 - a failed message becomes visible again, as with the host
                log.exception("queue %s", name)
        stop.wait(every)


def _interrupt(signum, frame) -> None:  # noqa: ANN001 - signal's signature
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".azurite")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly (and stop Azurite) when terminated
    azurite = start_azurite(location=args.data_dir)
    os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 (the Functions name)
    os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")  # local receivers are the point of serving locally
    get_settings.cache_clear()
    from function_app import app

    http_routes, queues = build_routes(app)
    stop = threading.Event()
    threading.Thread(target=poll_queues, args=(queues, stop), daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(http_routes))
    print(f"Serving {len(http_routes)} HTTP functions on http://127.0.0.1:{args.port}/api/ (data in {args.data_dir})")
    print(f"Try: curl http://127.0.0.1:{args.port}/api/health   ·   the API: /api/openapi.json   ·   Ctrl-C stops")
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
