"""Names and places of a customer's observatory: its app name, its store's directory, its vault owner."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path


def safe_name(text: str) -> str:
    """A DNS-label-safe version of a customer or project name (lowercased: not unique on its own)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:40] or "x"


def customer_key(customer: str) -> str:
    """A readable, DNS-label-safe key unique per customer: slug plus a digest of the exact name.

    ``acme`` and ``Acme`` share a slug, never a key (``acme-1ba6b9e0`` vs ``acme-3e2c4d8f``).
    """
    digest = hashlib.sha256(customer.encode()).hexdigest()[:8]
    return f"{safe_name(customer)[:30].strip('-') or 'x'}-{digest}"


def observatory_name(customer: str) -> str:
    return f"observatory-{customer_key(customer)}"


def legacy_observatory_name(customer: str) -> str:
    """The name observatories had before :func:`customer_key` (shared by names differing only by case)."""
    return f"observatory-{safe_name(customer)}"


def observatory_root(state_dir: Path, customer: str) -> Path:
    """Where the customer's MLflow store (database, artifacts) lives; it outlives the tracking server."""
    return state_dir / "observatories" / customer_key(customer)


def observatory_owner(customer: str) -> str:
    """Owner of the tracking server's configuration in the vault (no project id has a colon)."""
    return f"observatory:{customer}"
