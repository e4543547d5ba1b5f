"""The manager's configuration: one JSON document (``--config`` / ``FLOPS_MANAGER_CONFIG``) plus env overrides."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from flops_utils.service_config import MqttSettings, RegistrySettings
from manager.broker_access import ProjectCredentialsMode
from manager.quotas import QuotaSettings
from manager.tracking_store import TrackingStore

CONFIG_PATH_ENV = "FLOPS_MANAGER_CONFIG"
DEFAULT_PORT = 5072

# Environment variable -> dotted settings field. Values are parsed as JSON when they parse
# (numbers, booleans, objects), else taken as plain strings.
ENV_OVERRIDES: dict[str, str] = {
    "FLOPS_MANAGER_HOST": "host",
    "FLOPS_MANAGER_PORT": "port",
    "FLOPS_PUBLIC_HOST": "public_host",
    "FLOPS_ADMIN_TOKEN": "admin_token",
    "FLOPS_CUSTOMER_TOKENS": "customer_tokens",
    "FLOPS_MONGO_URI": "mongo_uri",
    "FLOPS_DATABASE": "database",
    "FLOPS_ORCHESTRATOR": "orchestrator",
    "FLOPS_STATE_DIR": "state_dir",
    "FLOPS_CACHE_DIR": "cache_dir",
    "FLOPS_REPO_BASE_DIR": "repo_base_dir",
    "FLOPS_LOG_LEVEL": "log_level",
    "FLOPS_MQTT_HOST": "mqtt.host",
    "FLOPS_MQTT_PORT": "mqtt.port",
    "FLOPS_MQTT_USERNAME": "mqtt.username",
    "FLOPS_MQTT_PASSWORD": "mqtt.password",
    "FLOPS_MQTT_CA_FILE": "mqtt.ca_file",
    "FLOPS_MQTT_PROJECT_CREDENTIALS": "mqtt_project_credentials",
    "FLOPS_TLS_CERT_FILE": "tls_cert_file",
    "FLOPS_TLS_KEY_FILE": "tls_key_file",
    "FLOPS_TLS_CA_FILE": "tls_ca_file",
}
_STRING_FIELDS = {
    "host",
    "public_host",
    "admin_token",
    "mongo_uri",
    "database",
    "orchestrator",
    "state_dir",
    "cache_dir",
    "repo_base_dir",
    "log_level",
    "mqtt.host",
    "mqtt.username",
    "mqtt.password",
    "mqtt.ca_file",
    "mqtt_project_credentials",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
}


class SettingsError(ValueError):
    """The manager configuration is missing, unreadable or invalid (one clear line)."""


def _default_home() -> Path:
    return Path(os.environ.get("FLOPS_HOME", str(Path.home() / ".flops")))


class RepoAccessSettings(BaseModel):
    """What customers' ml_repo_url may reach (see manager.repo_policy); the admin's projects only obey deny_hosts."""

    model_config = ConfigDict(extra="forbid")

    local_roots: list[Path] = Field(
        default_factory=list, description="folders besides repo_base_dir that customers' local paths may name"
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="host names (*.example.org), addresses or networks customers may reach "
        "even where a default denies them (e.g. a git server on this machine)",
    )
    deny_hosts: list[str] = Field(
        default_factory=list,
        description="more host names, addresses or networks nobody's repository may be on "
        "(customers are also denied loopback, link-local and the suite's own addresses)",
    )


class ManagerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="address the REST API binds")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    public_host: str | None = Field(default=None, description="host name in URLs handed to users; default: host")
    admin_token: str = Field(min_length=8, repr=False, description="bearer token of the admin (customer 'Admin')")
    customer_tokens: dict[str, str] = Field(
        default_factory=dict, repr=False, description="bearer token -> customer name"
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    mqtt_project_credentials: ProjectCredentialsMode = Field(
        default="auto",
        description="'dynamic-security': one broker account per project, limited to its topics (needs Mosquitto's "
        "dynamic-security plugin; the suite enables it); 'shared': services use the manager's account; "
        "'auto': per project when the broker supports it, else shared with a warning",
    )
    mlflow_auth: bool = Field(
        default=True,
        description="each customer's MLflow server lets in only that customer's API token (Bearer, or as the "
        "Basic password in a browser), the admin's and its services' token; false: open to anyone who reaches "
        "it (development only; the manager warns)",
    )
    mlflow_tls: bool = Field(
        default=True,
        description="each customer's MLflow server speaks HTTPS with a certificate from the manager's CA "
        "(state_dir/pki/ca.pem, also in GET /tracking); false: plain HTTP (development only; the manager warns)",
    )
    flower_tls: bool = Field(
        default=True,
        description="Flower links (learner -> aggregator, cluster -> root) speak TLS with a CA per project; "
        "false: plain HTTP (development only; the manager warns)",
    )
    data_auth: bool = Field(
        default=True,
        description="data servers speak TLS (the manager's CA) and answer only calls with a data token the manager "
        "signed, each customer in its own namespace; false: open data servers sharing one namespace (development "
        "only; the manager warns)",
    )
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    database: str = Field(default="flops", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    db_timeout_s: float = Field(default=5.0, gt=0, description="how long a database call waits for the server")
    orchestrator: str = Field(default="local", description="default orchestrator adapter")
    adapter_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="adapter name -> that adapter's settings"
    )
    configs_by_reference: list[str] | None = Field(
        default=None,
        description="orchestrators whose services get only a URL and token to fetch their configuration from "
        "the manager (GET /service-config/<id>) instead of carrying it with its passwords and keys; default: "
        "those whose adapter cannot hand configs over privately (oakestra: no secrets object). Services must "
        "reach the manager at public_url",
    )
    registry: RegistrySettings | None = None
    images: dict[str, str] = Field(default_factory=dict, description="service kind -> image (container orchestrators)")
    tracking_store: TrackingStore | None = Field(
        default=None,
        description="where customers' MLflow servers keep runs and artifacts; default: the state "
        "directory, which only the local orchestrator shares (set it for image-based orchestrators)",
    )
    state_dir: Path = Field(default_factory=lambda: _default_home() / "state")
    cache_dir: Path = Field(default_factory=lambda: _default_home() / "cache")
    repo_base_dir: Path | None = Field(
        default=None,
        description="relative ml_repo_url paths resolve here; "
        "customers' local paths must lie under it (or repo_access.local_roots)",
    )
    repo_access: RepoAccessSettings = Field(default_factory=RepoAccessSettings)
    quotas: QuotaSettings = Field(
        default_factory=QuotaSettings, description="per-customer limits and when idle observatories stop"
    )
    lifecycle: dict[str, float] = Field(
        default_factory=dict, description="overrides of lifecycle timeouts by name, e.g. build_timeout_s"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="serve the API over HTTPS with this certificate (PEM, chain first); with tls_key_file"
    )
    tls_key_file: Path | None = Field(default=None, description="the certificate's private key (PEM)")
    tls_ca_file: Path | None = Field(
        default=None,
        description="the CA that signed tls_cert_file; the CLI and the "
        "suite verify the API with it when they read this config",
    )
    threads: int = Field(default=16, ge=1, le=64, description="API worker threads")
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="open client connections the API keeps (keep-alive ones included); more wait to be accepted",
    )
    max_request_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: str = "INFO"

    _config_file: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        """The file these settings were read from (None: environment only, or built in code)."""
        return self._config_file

    @model_validator(mode="after")
    def _tls_pair(self) -> ManagerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def public_url(self) -> str:
        """Base URL of the REST API as users reach it."""
        host = self.public_host or ("127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)
        return f"{'https' if self.tls_cert_file else 'http'}://{host}:{self.port}"


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> ManagerSettings:
    """Read ``path`` (else ``$FLOPS_MANAGER_CONFIG``, else nothing) and apply ``FLOPS_*`` env overrides."""
    env = os.environ if environ is None else environ
    source = path if path is not None else env.get(CONFIG_PATH_ENV)
    data: dict[str, Any] = {}
    if source:
        try:
            loaded = json.loads(Path(source).read_text())
        except OSError as error:
            raise SettingsError(f"cannot read the manager config {source}: {error.strerror or error}") from error
        except json.JSONDecodeError as error:
            raise SettingsError(f"the manager config {source} is not valid JSON: {error}") from error
        if not isinstance(loaded, dict):
            raise SettingsError(f"the manager config {source} must be a JSON object")
        data = loaded
    for variable, dotted in ENV_OVERRIDES.items():
        if variable in env:
            _set_dotted(data, dotted, _parse_env(dotted, env[variable]))
    try:
        settings = ManagerSettings.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "(document)"
        where = f" in {source}" if source else ""
        raise SettingsError(f"manager setting {field}{where}: {first['msg']}") from error
    settings._config_file = Path(source).absolute() if source else None
    return settings


def _parse_env(dotted: str, raw: str) -> Any:
    if dotted in _STRING_FIELDS:
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value
