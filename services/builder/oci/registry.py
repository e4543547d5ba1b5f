"""The OCI distribution API of the internal registry: is this tag there, what is its digest and size.

Checking the registry before building is what makes a rebuild of an unchanged
project free: a ``HEAD``/``GET`` of ``/v2/<name>/manifests/<tag>`` costs milliseconds.
Handles htpasswd (basic) auth and bearer-token auth. A registry with ``ca_pem`` is
verified with that CA; one with neither ``ca_pem`` nor ``tls_verify`` is reached over
plain HTTP (development only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from flops_utils.message_text import one_line
from flops_utils.service_config import RegistrySettings
from services.builder.errors import BuildError
from services.builder.oci.engine import default_root, install_registry_ca

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
_TIMEOUT_S = 30.0
_BEARER = re.compile(r'(\w+)="([^"]*)"')
_SSL_REASON = re.compile(r"\[SSL: ([A-Z_]+)\]\s*([^()'\"]*)")


class RegistryError(BuildError):
    """The registry cannot be reached or refused our credentials."""


@dataclass(frozen=True)
class ManifestInfo:
    digest: str  # sha256:... of the manifest (or manifest list)
    media_type: str
    compressed_bytes: int  # layers + config as stored (for a list: the sum over its platforms' manifests)
    platforms: tuple[str, ...] = ()  # os/arch of each entry of a manifest list
    config_digest: str = ""  # the image ID: independent of layer compression (empty for a list)
    layers: tuple[str, ...] = ()  # layer blob digests, base first (empty for a list)
    children: tuple[str, ...] = ()  # a list's per-platform manifest digests (empty for an image)

    @property
    def is_list(self) -> bool:
        return self.media_type in INDEX_TYPES


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _tls_reason(error: requests.exceptions.SSLError) -> str:
    """The part of an SSL error a user can act on (requests buries it in retry wrappers)."""
    text = str(error)
    found = _SSL_REASON.search(text)
    if found is None:
        return one_line(text, 160)
    reason = found.group(2).strip()
    if found.group(1) == "CERTIFICATE_VERIFY_FAILED":
        return f"CERTIFICATE_VERIFY_FAILED ({reason}): is ca_pem the CA that signed the registry's certificate?"
    return f"{found.group(1)} ({reason})"


class RegistryClient:
    """Reads the registry's HTTP API; no I/O until a method is called."""

    def __init__(self, settings: RegistrySettings, containers_root: Path | None = None) -> None:
        self.settings = settings
        self.containers_root = containers_root  # where the registry's CA file goes; default_root() when None
        self._session: requests.Session | None = None
        self._scheme = "https" if settings.verifies_tls else "http"
        self._tokens: dict[str, str] = {}
        self._verify: bool | str | None = None

    @property
    def address(self) -> str:
        return self.settings.address

    def _http(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.trust_env = not _is_loopback(self.address)  # a proxy must not see loopback traffic
            self._session = session
        return self._session

    def _verification(self) -> bool | str:
        """requests' ``verify``: the CA file of a registry with its own CA, else whether to verify at all."""
        if self._verify is None:
            cert_dir = install_registry_ca(self.containers_root or default_root(), self.settings)
            self._verify = str(cert_dir / "ca.crt") if cert_dir is not None else self.settings.tls_verify
        return self._verify

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _request(self, method: str, path: str, scope: str, headers: dict[str, str] | None = None) -> requests.Response:
        headers = dict(headers or {})
        try:
            response = self._send(method, path, scope, headers)
        except requests.exceptions.SSLError as error:
            raise RegistryError(f"registry {self.address}: TLS error: {_tls_reason(error)}") from None
        except requests.RequestException as error:
            raise RegistryError(f"registry {self.address} unreachable: {one_line(str(error), 160)}") from None
        if response.status_code == 401:
            raise RegistryError(f"registry {self.address} refused the credentials (401)")
        return response

    def _send(self, method: str, path: str, scope: str, headers: dict[str, str]) -> requests.Response:
        session = self._http()
        verify = self._verification()
        auth = (self.settings.username, self.settings.password or "") if self.settings.username else None
        token = self._tokens.get(scope)
        if token:
            headers["Authorization"] = f"Bearer {token}"
            auth = None
        url = f"{self._scheme}://{self.address}{path}"
        response = session.request(method, url, headers=headers, auth=auth, verify=verify, timeout=_TIMEOUT_S)
        if self._scheme == "http" and response.status_code == 400 and "HTTPS" in response.text:
            self._scheme = "https"  # a TLS registry we may not verify (tls_verify off)
            return self._send(method, path, scope, headers)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and challenge.lower().startswith("bearer") and scope not in self._tokens:
            self._tokens[scope] = self._fetch_token(challenge, scope)
            return self._send(method, path, scope, headers)
        return response

    def _fetch_token(self, challenge: str, scope: str) -> str:
        fields = dict(_BEARER.findall(challenge))
        realm = fields.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.address}: bearer challenge without a realm")
        params = {"service": fields.get("service", "")}
        if scope:
            params["scope"] = scope
        auth = (self.settings.username, self.settings.password or "") if self.settings.username else None
        response = self._http().get(realm, params=params, auth=auth, verify=self._verification(), timeout=_TIMEOUT_S)
        if response.status_code != 200:
            raise RegistryError(f"registry {self.address}: token request refused ({response.status_code})")
        body: dict[str, Any] = response.json()
        return str(body.get("token") or body.get("access_token") or "")

    # -- queries ---------------------------------------------------------------------
    def ping(self) -> None:
        """Raise :class:`RegistryError` unless ``/v2/`` accepts us."""
        response = self._request("GET", "/v2/", "")
        if response.status_code != 200:
            raise RegistryError(f"registry {self.address} answered /v2/ with {response.status_code}")

    def manifest(self, repository: str, reference: str) -> ManifestInfo | None:
        """The manifest (or manifest list) at ``repository:reference``, or None when there is none."""
        scope = f"repository:{repository}:pull"
        response = self._request(
            "GET", f"/v2/{repository}/manifests/{reference}", scope, {"Accept": ", ".join(MANIFEST_TYPES)}
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(
                f"registry {self.address}: manifest {repository}:{reference} answered {response.status_code}"
            )
        body: dict[str, Any] = response.json()
        media_type = str(body.get("mediaType") or response.headers.get("Content-Type", "")).split(";")[0]
        digest = response.headers.get("Docker-Content-Digest", "")
        if media_type in INDEX_TYPES:
            entries = body.get("manifests", [])
            platforms = tuple(
                f"{entry.get('platform', {}).get('os', '?')}/{entry.get('platform', {}).get('architecture', '?')}"
                for entry in entries
            )
            total = 0
            for entry in entries:
                child = self.manifest(repository, str(entry.get("digest")))
                total += child.compressed_bytes if child else 0
            children = tuple(str(entry.get("digest")) for entry in entries)
            return ManifestInfo(digest, media_type, total, platforms, children=children)
        layers = body.get("layers", [])
        size = sum(int(layer.get("size", 0)) for layer in layers) + int(body.get("config", {}).get("size", 0))
        return ManifestInfo(
            digest,
            media_type,
            size,
            config_digest=str(body.get("config", {}).get("digest", "")),
            layers=tuple(str(layer.get("digest", "")) for layer in layers),
        )

    def catalog(self) -> list[str]:
        """Every repository, page after page (the registry's ``Link: <...>; rel="next"``)."""
        names: list[str] = []
        path: str | None = "/v2/_catalog?n=1000"
        while path:
            response = self._request("GET", path, "registry:catalog:*")
            if response.status_code != 200:
                raise RegistryError(f"registry {self.address}: catalog answered {response.status_code}")
            names += [str(name) for name in response.json().get("repositories") or []]
            following = response.links.get("next", {}).get("url", "")
            path = following if following.startswith("/v2/_catalog?") and following != path else None
        return names

    def tags(self, repository: str) -> list[str]:
        response = self._request("GET", f"/v2/{repository}/tags/list", f"repository:{repository}:pull")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise RegistryError(f"registry {self.address}: tags of {repository} answered {response.status_code}")
        return [str(tag) for tag in response.json().get("tags") or []]

    def manifest_digest(self, repository: str, reference: str) -> tuple[str, str] | None:
        """``(digest, media type)`` of ``repository:reference`` from a ``HEAD`` (None when there is none).

        The Accept header names image indexes and manifest lists too, so a multi-platform tag
        answers with the list's own digest (what a delete must name), not a platform's.
        """
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            f"repository:{repository}:pull",
            {"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest", "")
        if response.status_code != 200 or not digest:
            raise RegistryError(
                f"registry {self.address}: manifest {repository}:{reference} answered {response.status_code}"
            )
        return digest, response.headers.get("Content-Type", "").split(";")[0]

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest and every tag on it; False when it was gone already.

        Frees no disk space by itself: the blobs go at the registry's next ``garbage-collect``.
        """
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", f"repository:{repository}:delete")
        if response.status_code in (200, 202):
            return True
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise RegistryError(
                f"registry {self.address} refuses deletes (405): set storage.delete.enabled: true in its config"
            )
        raise RegistryError(f"registry {self.address}: deleting {repository}@{digest} answered {response.status_code}")
