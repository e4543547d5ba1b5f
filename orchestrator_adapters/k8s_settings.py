"""Settings of the Kubernetes adapter (the ``kubernetes`` block of the manager's configuration)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from flops_utils.service_config import DataServerSecurity, RegistrySettings


class KubernetesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kubeconfig: str | None = Field(
        default=None, description="path of a kubeconfig file; default: $KUBECONFIG or ~/.kube/config"
    )
    context: str | None = Field(default=None, description="kubeconfig context; default: the current context")
    in_cluster: bool = Field(
        default=False, description="use the pod's service account (the manager runs in the cluster)"
    )
    namespace_prefix: str = Field(default="flops", pattern=r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$")
    learner_node_label: str = Field(default="flops.io/learner", description="nodes labelled <label>=true run learners")
    cluster_label: str = Field(default="topology.kubernetes.io/zone", description="node label naming its cluster")
    data_tags_annotation: str = Field(default="flops.io/data-tags", description="node annotation: comma-separated tags")
    data_server_annotation: str = Field(
        default="flops.io/data-server", description="node annotation: host:port of a data server run outside FLOps"
    )
    image_pull_secret: str | None = Field(
        default=None, description="pull secret the pods use; created in each namespace when `registry` has credentials"
    )
    registry: RegistrySettings | None = Field(default=None, description="registry the built images are pulled from")
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    job_ttl_seconds: int = Field(default=86400, ge=0, description="finished Jobs are garbage-collected after this")
    data_host_path: str = Field(default="/var/lib/flops/data", description="node directory data servers store data in")
    service_domain: str = Field(default="svc.cluster.local", description="cluster DNS suffix of Services")
    data_server_image: str | None = Field(
        default=None, description="when set, start() runs a data server on every learner node (a DaemonSet)"
    )
    data_server_command: list[str] = Field(default_factory=lambda: ["flops-data-server"])
    data_server_port: int = Field(default=9400, ge=1, le=65535, description="host port of the data servers")
    data_security: DataServerSecurity | None = Field(
        default=None,
        description="TLS certificate and token key of the DaemonSet's data servers (the manager sets "
        "it); None: open data servers (development only)",
    )
    request_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def pull_secret_name(self) -> str | None:
        """The pull secret pods reference: the configured one, or ours when the registry has credentials."""
        if self.image_pull_secret:
            return self.image_pull_secret
        if self.registry is not None and self.registry.username:
            return "flops-registry"
        return None
