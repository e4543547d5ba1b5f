"""Request bodies the API refuses before parsing: too large (413) or nested too deeply (422).

A server that answers 413 without reading the body closes a connection the client is
still writing to, and the client (over TLS in particular) sees a broken connection
instead of the answer; so a moderately oversized body is read and dropped first.

Python's JSON parser recurses per nesting level, so a body of 20,000 ``[`` ends in a
RecursionError; no FLOps document nests more than a few levels, so the API refuses
deep bodies with one line before anything parses them.
"""

from __future__ import annotations

import re
from typing import Any

MAX_JSON_DEPTH = 32
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024  # read (and drop) an oversized body up to this, so the client reads the 413
_CHUNK = 64 * 1024

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` (JSON text, valid or not) opens more than ``limit`` arrays/objects inside each other."""
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth = max(depth - 1, 0)
    return False


def drain(environ: dict[str, Any], length: int) -> None:
    """Read and drop up to ``length`` bytes (at most DRAIN_LIMIT_BYTES) of the raw request body."""
    stream = environ.get("wsgi.input")
    left = min(length, DRAIN_LIMIT_BYTES)
    while stream is not None and left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            break
        left -= len(chunk)
