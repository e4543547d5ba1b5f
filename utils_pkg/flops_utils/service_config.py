"""One typed configuration document per FLOps service.

The manager builds these documents; orchestrator adapters hand them to services as
JSON, either inline in the ``FLOPS_CONFIG`` environment variable or as a file whose
path is in ``FLOPS_CONFIG_FILE``. Services call :func:`load_config` and never parse
positional command-line strings.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flops_utils.aggregation import ClusteredStrategyChoice, FedAvgStrategy, SecureAggregation, StrategyChoice
from flops_utils.config_fetch import CONFIG_CA_ENV, CONFIG_TOKEN_ENV, CONFIG_URL_ENV, fetch_config_json
from flops_utils.privacy import PrivacySettings
from flops_utils.repo_access import RepoAccessPolicy
from flops_utils.repo_credentials import RepoCredentials, split_repo_credentials

CONFIG_ENV = "FLOPS_CONFIG"
CONFIG_FILE_ENV = "FLOPS_CONFIG_FILE"
LOG_LEVEL_ENV = "FLOPS_LOG_LEVEL"  # "DEBUG" for a project whose SLA says ``verbose``


def log_level() -> int:
    """The level a service logs at: DEBUG when ``FLOPS_LOG_LEVEL`` says so (SLA ``verbose``), else INFO."""
    return logging.DEBUG if os.environ.get(LOG_LEVEL_ENV, "").strip().upper() == "DEBUG" else logging.INFO


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Config):
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    ca_file: str | None = Field(default=None, description="CA bundle file; set to use TLS")
    ca_pem: str | None = Field(
        default=None,
        repr=False,
        description="CA certificate(s) as PEM text; set to use TLS with no file on the service's host",
    )

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.ca_pem)


class FlowerTls(_Config):
    """Mutual TLS on training links: the project's CA; servers (aggregators) get a server certificate,
    clients (learners, cluster aggregators towards the root) a client certificate naming their node."""

    ca_pem: str = Field(description="PEM of the project's link CA")
    cert_pem: str | None = Field(default=None, description="aggregators: this link server's certificate (PEM)")
    key_pem: str | None = Field(default=None, repr=False, description="aggregators: its private key (PEM)")
    client_cert_pem: str | None = Field(
        default=None, description="link clients: a certificate whose common name is the node's identity (PEM)"
    )
    client_key_pem: str | None = Field(default=None, repr=False, description="link clients: its private key (PEM)")


class ServerCertificate(_Config):
    """A TLS server certificate and its key (PEM) for a service that serves HTTPS."""

    cert_pem: str
    key_pem: str = Field(repr=False)


class TrainingSettings(_Config):
    mode: Literal["classic", "hierarchical"] = "classic"
    data_tags: list[str] = Field(default_factory=list)
    training_rounds: int = Field(default=3, ge=1)
    training_cycles: int = Field(default=1, ge=1)
    min_available_clients: int = Field(default=1, ge=1)
    min_fit_clients: int = Field(default=1, ge=1)
    min_evaluate_clients: int = Field(default=1, ge=1)
    round_timeout_s: float = Field(default=300.0, gt=0, description="stragglers past this are dropped")
    # -- aggregation (issue 20): one block, keep together --
    strategy: ClusteredStrategyChoice = Field(default_factory=FedAvgStrategy, description="learner-level aggregation")
    root_strategy: StrategyChoice | None = Field(default=None, description="hierarchical root; None: fedavg")
    secure_aggregation: SecureAggregation | None = Field(default=None, description="SecAgg+ with the learners")
    # -- end aggregation --
    privacy: PrivacySettings | None = Field(default=None, description="differential privacy (None: none)")


class RegistrySettings(_Config):
    address: str = Field(description="host:port of the OCI registry")
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls_verify: bool = Field(
        default=False,
        description="HTTPS verified with the system's CAs; with both this and "
        "ca_pem unset the registry is reached over plain HTTP (development only)",
    )
    ca_pem: str | None = Field(
        default=None,
        description="PEM of the CA that signed the registry's certificate: "
        "HTTPS verified with it (the suite's and the deployment's CA)",
    )

    @property
    def verifies_tls(self) -> bool:
        return self.tls_verify or bool(self.ca_pem)


class _ServiceConfig(_Config):
    project_id: str
    mqtt: MqttSettings
    instance_name: str = Field(default="", description="name used as MQTT sender; defaults to the service kind")


class BuilderConfig(_ServiceConfig):
    repo_url: str = Field(description="the repository's URL, without credentials")
    repo_credentials: RepoCredentials | None = Field(
        default=None, repr=False, description="for a private http(s) repository; git gets them from a credential helper"
    )
    repo_ref: str | None = Field(default=None, description="branch, tag or commit; default branch when None")
    repo_access: RepoAccessPolicy = Field(
        default_factory=RepoAccessPolicy, description="what repo_url may reach (the manager's policy for the owner)"
    )
    flavor: Literal["sklearn", "pytorch", "tensorflow", "keras"]
    cache_dir: str = Field(description="environments, apps and clones are cached here across projects")
    mode: Literal["local", "oci"] = "local"
    registry: RegistrySettings | None = None
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"])
    task: Literal["project", "model_image"] = Field(
        default="project",
        description="'project': learner/aggregator runtime; 'model_image': a trained model's "
        "inference image (post-training step build_image_for_trained_model, OCI mode)",
    )
    model_uri: str | None = Field(default=None, description="model_image: the MLflow model to package")
    tracking_uri: str | None = Field(default=None, description="model_image: the MLflow server holding it")
    tracking_token: str | None = Field(default=None, repr=False, description="bearer token for that MLflow server")
    tracking_ca_pem: str | None = Field(default=None, description="CA of the MLflow server's certificate")
    base_image: str | None = Field(default=None, description="model_image: start from this image (the learner's)")
    image_name: str | None = Field(default=None, description="model_image: repository name under flops/")

    @model_validator(mode="after")
    def _credentials_out_of_the_url(self) -> BuilderConfig:
        """Credentials written into ``repo_url`` move to ``repo_credentials``: the URL is logged and labelled."""
        self.repo_url, embedded = split_repo_credentials(self.repo_url)
        if self.repo_credentials is None:
            self.repo_credentials = embedded
        else:
            self.repo_credentials = self.repo_credentials.with_query_of(embedded)
        return self


class AggregatorConfig(_ServiceConfig):
    role: Literal["classic", "root", "cluster"] = "classic"
    cluster: str | None = None
    training: TrainingSettings
    flavor: Literal["sklearn", "pytorch", "tensorflow", "keras"]
    app_dir: str = Field(description="augmented user repo with the generated Flower app")
    bind_host: str = "127.0.0.1"
    port: int = Field(description="Flower SuperLink port learners (or cluster aggregators) connect to")
    root_address: str | None = Field(default=None, description="cluster role: host:port of the root aggregator")
    expected_clusters: list[str] = Field(default_factory=list, description="root role: clusters to wait for")
    tracking_uri: str | None = None
    tracking_token: str | None = Field(default=None, repr=False, description="bearer token for the MLflow server")
    tracking_ca_pem: str | None = Field(default=None, description="CA of the MLflow server's certificate")
    experiment_name: str = "flops"
    registered_model_name: str | None = None
    params: dict[str, str] = Field(default_factory=dict, description="extra parameters to log (SLA, build)")
    work_dir: str = Field(description="scratch space (Flower home, checkpoints)")
    flower_tls: FlowerTls | None = Field(default=None, description="None: Flower links without TLS (development)")


class LearnerConfig(_ServiceConfig):
    node: str
    cluster: str | None = None
    app_dir: str
    aggregator_address: str = Field(description="host:port of the SuperLink fleet API")
    data_server_address: str = Field(description="host:port of this node's data server")
    data_tags: list[str] = Field(default_factory=list)
    data_token: str | None = Field(
        default=None, repr=False, description="read-only data token for this project, node and the data tags"
    )
    data_ca_pem: str | None = Field(default=None, description="CA of the data server's certificate; None: plain gRPC")
    work_dir: str
    flower_tls: FlowerTls | None = Field(default=None, description="the project's CA; None: no TLS (development)")


class ObserverConfig(_ServiceConfig):
    bind_host: str = "127.0.0.1"
    port: int
    log_file: str = Field(description="human-readable event log, appended across restarts")
    access_token_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 digests of the tokens that may read /events; empty: anyone"
    )
    tls: ServerCertificate | None = Field(default=None, description="serve HTTPS with this; None: plain HTTP")
    tls_dir: str | None = Field(default=None, description="where the certificate files are written (private)")


class DataServerConfig(_Config):
    node: str
    node_from_env: str | None = Field(
        default=None,
        description="take the node name from this environment variable when set (the pods of a "
        "DaemonSet share one configuration; Kubernetes puts each pod's node in FLOPS_NODE_NAME)",
    )
    host: str = "127.0.0.1"
    port: int
    storage_dir: str
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    tls: ServerCertificate | None = Field(default=None, description="serve Flight over TLS with this; None: plain")
    token_public_key_pem: str | None = Field(
        default=None,
        description="the manager's Ed25519 public key that signs data tokens; None: no authentication "
        "and one shared namespace (development only)",
    )


class DataServerSecurity(_Config):
    """What a data server needs to speak TLS and check tokens; the manager hands it to the adapters."""

    ca_pem: str = Field(description="the CA that signed cert_pem; clients verify the server with it")
    cert_pem: str
    key_pem: str = Field(repr=False)
    token_public_key_pem: str


class TrackingConfig(_Config):
    """The customer's MLflow tracking server (observatory)."""

    customer: str
    backend_store_uri: str = Field(
        description="SQL backend store, e.g. sqlite:////path/mlflow.db or postgresql+psycopg2://"
    )
    artifacts_destination: str = Field(description="artifact store served through the tracking server")
    bind_host: str = "127.0.0.1"
    port: int
    workers: int = Field(default=1, ge=1)
    access_token_sha256: list[str] = Field(
        default_factory=list,
        description="SHA-256 digests of the tokens allowed in (the customer's and the services'); "
        "empty: the server is open to anyone who reaches it",
    )
    tls: ServerCertificate | None = Field(default=None, description="serve HTTPS with this; None: plain HTTP")
    tls_dir: str | None = Field(default=None, description="where the certificate files are written (private)")


class ServingConfig(_ServiceConfig):
    model_uri: str
    tracking_uri: str
    tracking_token: str | None = Field(default=None, repr=False, description="bearer token for the MLflow server")
    tracking_ca_pem: str | None = Field(default=None, description="CA of the MLflow server's certificate")
    bind_host: str = "127.0.0.1"
    port: int
    access_token_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 digests of the tokens that may call /invocations; empty: anyone"
    )


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_config(model: type[ConfigT], environ: dict[str, str] | None = None) -> ConfigT:
    """Read this service's configuration document from the environment."""
    env = os.environ if environ is None else environ
    if CONFIG_URL_ENV in env:  # by reference: the manager keeps the document (see flops_utils.config_fetch)
        document = fetch_config_json(env[CONFIG_URL_ENV], env.get(CONFIG_TOKEN_ENV, ""), env.get(CONFIG_CA_ENV))
        return model.model_validate_json(document)
    if CONFIG_ENV in env:
        return model.model_validate_json(env[CONFIG_ENV])
    if CONFIG_FILE_ENV in env:
        return model.model_validate_json(Path(env[CONFIG_FILE_ENV]).read_text())
    raise RuntimeError(f"no configuration: set {CONFIG_ENV} (JSON) or {CONFIG_FILE_ENV} (path)")


def config_environment(config: BaseModel) -> dict[str, str]:
    """The environment that hands ``config`` to a service."""
    return {CONFIG_ENV: json.dumps(config.model_dump(mode="json"))}
