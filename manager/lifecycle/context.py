"""Settings and collaborators a project run needs, gathered in one plain object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flops_utils.service_config import MqttSettings, RegistrySettings
from manager.broker_access import ProjectCredentialsMode
from manager.lifecycle.data_access import DataAccess
from manager.lifecycle.tracking_access import TrackingAccess
from manager.quotas import QuotaSettings
from manager.repo_policy import RepoAccessRules
from manager.security.secret_box import KEY_FILE_NAME, SecretBox
from manager.security.tracking_pki import TrackingPki
from manager.tracking_store import TrackingStore


@dataclass(frozen=True)
class LifecycleSettings:
    mqtt: MqttSettings
    state_dir: Path
    cache_dir: Path
    mqtt_project_credentials: ProjectCredentialsMode = "auto"  # see ManagerSettings.mqtt_project_credentials
    tracking_access: TrackingAccess = field(default_factory=TrackingAccess)  # who may use each MLflow server
    flower_tls: bool = True  # see ManagerSettings.flower_tls
    tracking_pki: TrackingPki | None = None  # MLflow servers speak HTTPS with its certificates; None: plain HTTP
    # Data servers speak TLS and check tokens the manager signs; None: open data servers (development only).
    data_access: DataAccess | None = None
    start_adapter_at_start: bool = False  # start the default adapter (the local one's data servers) at start()
    orchestrator: str = "local"
    adapter_settings: dict[str, dict[str, object]] = field(default_factory=dict)
    registry: RegistrySettings | None = None
    repo_base_dir: Path = Path.cwd()
    repo_access: RepoAccessRules = field(default_factory=RepoAccessRules)  # what each owner's repo URL may reach
    images: dict[str, str] = field(default_factory=dict)  # service kind -> image, for container orchestrators
    tracking_store: TrackingStore | None = None  # customers' MLflow stores; None: under state_dir
    # Orchestrators whose services fetch their configuration from the manager instead of carrying it
    # (see manager.security.config_vault); needs config_url, the manager's /service-config URL as services reach it.
    # None: those whose adapter cannot deliver configs privately (AdapterCapabilities.private_configs).
    configs_by_reference: frozenset[str] | None = None
    config_url: str | None = None
    config_ca_file: Path | None = None  # the CA that signed the manager's certificate (config_url is https)
    # The manager's MQTT client id. Set: a persistent broker session under that id, so reports sent while
    # the manager is down wait on the broker for the next manager process. None: a fresh session per process.
    mqtt_client_id: str | None = None
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    tracking_timeout_s: float = 240.0
    build_timeout_s: float = 1800.0
    training_timeout_s: float = 3600.0
    serving_timeout_s: float = 180.0
    db_outage_limit_s: float = 120.0  # a project rides out a database outage this long (writes are buffered)
    poll_interval_s: float = 0.5
    cache_max_age_s: float = 30 * 86400.0  # build-cache entries unused this long go (0: never automatically)
    cache_prune_interval_s: float = 6 * 3600.0  # how often the manager prunes the build cache
    # The OCI builders' container storage (whose images the upkeep prunes); None: $FLOPS_CONTAINERS_DIR or
    # ~/.cache/flops/containers, what builders started by the manager use (flops_utils.container_storage).
    containers_dir: Path | None = None

    @property
    def secret_box(self) -> SecretBox:
        """Seals the secrets kept with projects; its key sits next to the MLflow CA."""
        return SecretBox(self.state_dir / "pki" / KEY_FILE_NAME)
