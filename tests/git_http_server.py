"""A private git repository over HTTP with Basic authentication, for credential tests.

Git's "dumb" HTTP protocol needs only static files (after ``git update-server-info``),
so Python's file server behind a Basic-auth check is a real git host: git asks its
credential helper when the server answers 401, exactly as with a hosted repository.
"""

from __future__ import annotations

import base64
import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.example_repos import git


@dataclass
class PrivateGitHost:
    url: str  # of the repository, without credentials
    username: str
    password: str
    commit: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization header or "")

    def url_with_credentials(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{self.username}:{self.password}@{rest}"


def _bare_copy(work_repository: Path, destination: Path) -> str:
    """A bare clone of ``work_repository`` that dumb HTTP can serve; returns its HEAD commit."""
    git(destination.parent, "clone", "-q", "--bare", str(work_repository), str(destination))
    git(destination, "update-server-info")
    return git(destination, "rev-parse", "HEAD")


class _AuthenticatedFiles(SimpleHTTPRequestHandler):
    expected = ""
    seen: list[tuple[str, str]]

    def do_GET(self) -> None:
        given = self.headers.get("Authorization", "")
        self.seen.append((self.path, given))
        if given != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="flops-tests"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def private_git_host(work_repository: Path, root: Path, username: str, password: str) -> Iterator[PrivateGitHost]:
    """Serve a bare copy of ``work_repository`` (made under ``root``) at ``http://127.0.0.1:<port>/model.git``."""
    root.mkdir(parents=True, exist_ok=True)
    commit = _bare_copy(work_repository, root / "model.git")
    seen: list[tuple[str, str]] = []
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    handler = type("Handler", (_AuthenticatedFiles,), {"expected": f"Basic {token}", "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PrivateGitHost(f"http://127.0.0.1:{server.server_port}/model.git", username, password, commit, seen)
    finally:
        server.shutdown()
        server.server_close()
