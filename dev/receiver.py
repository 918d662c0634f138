"""A local webhook receiver (for the demo and the tests): answers with scripted statuses (204 when the
script is empty), records every request, and verifies signatures with the standardwebhooks library when it
knows the subscription's secret."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


class Receiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.script: list[tuple[int, dict[str, str]]] = []
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.verified: list[dict] = []
        self.forged = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((self.path, headers, data))
                if receiver.secret:
                    try:
                        receiver.verified.append(Webhook(receiver.secret).verify(data, headers))
                    except Exception:  # noqa: BLE001 - any verification failure counts as forged
                        receiver.forged += 1
                status, extra = receiver.script.pop(0) if receiver.script else (204, {})
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
