"""The HTTP server under the REST API: waitress for plain HTTP, cheroot when the API speaks TLS.

waitress has no TLS of its own (its documentation sends users to a proxy). With
``tls_cert_file``/``tls_key_file`` set, the same WSGI app is served by cheroot, the
CherryPy project's production WSGI server, with Python's ``ssl`` module (TLS 1.2 or
later). Both servers answer ``run()`` until SIGTERM/SIGINT and ``close()``.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any, Protocol

from waitress import create_server

from manager.settings import ManagerSettings


class ApiServer(Protocol):
    port: int
    scheme: str

    def run(self) -> None: ...

    def close(self) -> None: ...


class WaitressServer:
    scheme = "http"

    def __init__(self, app: Any, settings: ManagerSettings) -> None:
        # waitress' default connection_limit (100) locks out every client past the 100th while the others
        # keep their connections alive: their requests wait unanswered for as long as those stay open.
        self._server = create_server(
            app,
            host=settings.host,
            port=settings.port,
            threads=settings.threads,
            connection_limit=settings.max_connections,
            backlog=max(1024, settings.max_connections),
            ident="flops-manager",
        )
        self.port = int(self._server.effective_port)  # type: ignore[union-attr]

    def run(self) -> None:
        self._server.run()  # a SystemExit raised by the signal handler ends it in order

    def close(self) -> None:
        self._server.close()


class TlsServer:
    scheme = "https"

    def __init__(self, app: Any, settings: ManagerSettings) -> None:
        from cheroot.ssl.builtin import BuiltinSSLAdapter
        from cheroot.wsgi import Server

        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        _readable(settings.tls_cert_file, "tls_cert_file")
        _readable(settings.tls_key_file, "tls_key_file")
        self._server = Server(
            (settings.host, settings.port), app, numthreads=settings.threads, server_name="flops-manager"
        )
        # No limit of cheroot's own: it would answer 413 in plain text. Flask refuses bodies over
        # max_request_bytes (MAX_CONTENT_LENGTH, also for chunked ones) with the API's JSON error.
        self._server.max_request_body_size = 0
        adapter = BuiltinSSLAdapter(str(settings.tls_cert_file), str(settings.tls_key_file))
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server.ssl_adapter = adapter
        self._server.prepare()  # binds now, so a busy port fails at start like waitress does
        self.port = int(self._server.bind_addr[1])

    def run(self) -> None:
        with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SIGTERM/SIGINT: close() follows
            self._server.serve()

    def close(self) -> None:
        self._server.stop()


def _readable(path: Path, field: str) -> None:
    try:
        path.read_bytes()
    except OSError as error:
        raise OSError(error.errno, f"{field} {path}: {error.strerror}") from None


def make_server(app: Any, settings: ManagerSettings) -> ApiServer:
    """Bind the API's port (raises OSError when it is taken or a TLS file is unreadable)."""
    if settings.tls_cert_file is not None:
        return TlsServer(app, settings)
    return WaitressServer(app, settings)
