"""The project observer: one per project, in the customer's observatory app.

It subscribes to every topic of its project and keeps a human-readable event log
(appended to a file, so it survives restarts) that it serves over HTTPS when its
config carries a certificate (the manager issues one from its CA, as for MLflow;
plain HTTP otherwise): ``GET /events?after=N`` (JSON lines with sequence numbers)
and ``GET /health``.
``/events`` needs one of the customer's tokens (see :mod:`flops_utils.token_access`)
when the config names their digests.
"""

from __future__ import annotations

import json
import logging
import signal
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from flops_utils.message_text import describe
from flops_utils.mqtt_catalogue import FlopsMessage, project_filter
from flops_utils.mqtt_link import MqttLink
from flops_utils.service_config import ObserverConfig, load_config, log_level
from flops_utils.token_access import TokenCheck
from services.observer.tracking_server import write_certificate_files

log = logging.getLogger("flops.observer")


class EventLog:
    """Append-only, thread-safe log of lines, persisted one per line in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lines: list[str] = []

    def load(self) -> None:
        if self.path.exists():
            self._lines = self.path.read_text().splitlines()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(line + "\n")

    def since(self, after: int) -> list[dict[str, object]]:
        with self._lock:
            return [{"seq": i + 1, "line": line} for i, line in enumerate(self._lines) if i + 1 > after]


def format_line(message: FlopsMessage) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.sent_at))
    return f"{stamp} {describe(message)}"


def make_handler(events: EventLog, check: TokenCheck | None = None) -> type[BaseHTTPRequestHandler]:
    access = check or TokenCheck([])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            url = urlparse(self.path)
            if url.path == "/health":
                self._send(200, {"status": "ok"})
            elif not access.allows(self.headers.get("Authorization")):
                self._send(
                    401,
                    {"error": "send one of this project's customer tokens (Bearer, or as the Basic password)"},
                    {"WWW-Authenticate": 'Basic realm="FLOps observer"'},
                )
            elif url.path == "/events":
                after = parse_qs(url.query).get("after", ["0"])[0]
                self._send(200, {"events": events.since(int(after) if after.isdigit() else 0)})
            else:
                self._send(404, {"error": f"no such path {url.path}"})

        def _send(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            log.debug(format, *args)

    return Handler


def serve_tls(server: ThreadingHTTPServer, cert_file: Path, key_file: Path) -> None:
    """Make ``server`` speak TLS 1.2+ only; the handshake runs in each request's thread, not in accept()."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)


def main() -> None:
    logging.basicConfig(level=log_level(), format="%(asctime)s observer %(message)s")
    config = load_config(ObserverConfig)
    events = EventLog(Path(config.log_file))
    events.load()
    link = MqttLink(config.mqtt, client_id=f"observer-{config.project_id}")
    link.subscribe(project_filter(config.project_id), lambda _topic, message: events.append(format_line(message)))
    link.connect(timeout=30)
    check = TokenCheck(config.access_token_sha256)
    if check.open:
        log.warning("no access tokens configured: anyone who reaches port %s reads this project's events", config.port)
    server = ThreadingHTTPServer((config.bind_host, config.port), make_handler(events, check))
    if config.tls is not None:
        serve_tls(server, *write_certificate_files(config.tls, config.tls_dir))
    else:
        log.warning("no certificate configured: /events and its bearer tokens cross the network in clear")
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("observing project %s on port %s", config.project_id, config.port)
    try:
        server.serve_forever()
    finally:
        link.close()


if __name__ == "__main__":
    main()
