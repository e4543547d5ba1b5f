"""Deterministic Kubernetes names and the labels FLOps puts on everything it creates."""

from __future__ import annotations

import hashlib
import re

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "flops"
APP_LABEL = "flops.io/app"  # the app's namespace: selects everything one app created
APP_KIND_LABEL = "flops.io/app-kind"
CUSTOMER_LABEL = "flops.io/customer"
PROJECT_LABEL = "flops.io/project"
SERVICE_LABEL = "flops.io/service"
KIND_LABEL = "flops.io/kind"

# Exact (unsanitised) values live in annotations; labels only hold label-safe forms.
NAME_ANNOTATION = "flops.io/app-name"
CUSTOMER_ANNOTATION = "flops.io/customer"
PROJECT_ANNOTATION = "flops.io/project-id"
SERVICE_ANNOTATION = "flops.io/service-name"
DEPLOYED_ANNOTATION = "flops.io/deployed"  # on the config Secret: tells "not deployed yet" from "stopped"

CONFIG_KEY = "FLOPS_CONFIG"
SPEC_KEY = "spec.json"

_DNS_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns_label(text: str, max_length: int = 63) -> str:
    """An RFC 1123 label for ``text``: itself when already valid, else a cleaned form plus a digest.

    The digest keeps distinct inputs distinct (``a_b`` and ``a-b`` differ) and the result stable.
    """
    cleaned = _DNS_INVALID.sub("-", text.lower()).strip("-")
    if cleaned == text and 0 < len(text) <= max_length:
        return text
    room = max_length - 9
    stem = cleaned[:room].strip("-") or "x"
    return f"{stem}-{_digest(text)}"


def label_value(text: str) -> str:
    """A valid label value (at most 63 characters, alphanumeric at both ends)."""
    cleaned = _LABEL_INVALID.sub("-", text).strip("-_.")
    if cleaned == text and len(text) <= 63:
        return text
    stem = cleaned[:54].strip("-_.") or "x"
    return f"{stem}-{_digest(text)}"


def namespace_name(prefix: str, customer: str, app_name: str) -> str:
    return dns_label(f"{prefix}-{customer}-{app_name}")


def object_name(service_name: str) -> str:
    """Name of a service's Job/Deployment/DaemonSet and Service (a DNS label, as Services need)."""
    return dns_label(service_name, max_length=52)  # room for the pod-name suffixes controllers add


def config_secret_name(service_name: str) -> str:
    return f"{object_name(service_name)}-config"


def container_name(kind: str) -> str:
    return dns_label(kind.replace("_", "-"))


def port_name(name: str, index: int) -> str:
    """IANA service name: at most 15 characters, lowercase alphanumerics and dashes, a letter included."""
    cleaned = _DNS_INVALID.sub("-", name.lower()).strip("-")[:15].strip("-")
    if not cleaned or not re.search("[a-z]", cleaned) or "--" in cleaned:
        cleaned = f"port-{index}"
    return cleaned
