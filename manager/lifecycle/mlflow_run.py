"""What the manager does in a project's MLflow experiment: names it, links the run, logs the learning curve,
and leaves no empty experiment of a project that did not complete.

It calls the customer's tracking server through MLflow's own REST helper with explicit
credentials (the services' token and the tracking CA): MLflow's fluent client takes them
from process-wide environment variables, which projects of different customers would share.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from flops_utils.message_text import one_line
from flops_utils.token_access import ca_file

TIMEOUT_S = 30
STATUS_TAG = "flops.status"


class TrackingCallFailed(RuntimeError):
    """The tracking server refused or did not answer; the message is one line."""


def repository_name(repo_url: str) -> str:
    """``https://git.example.org/ml/mnist.git`` -> ``mnist``."""
    tail = re.split(r"[/:]", without_credentials(repo_url).rstrip("/"))[-1]
    return tail.removesuffix(".git") or "repository"


def without_credentials(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: what may be shown in MLflow."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)


def experiment_name(customer: str, repo_url: str, project_id: str) -> str:
    """What the MLflow GUI lists: ``alice/mnist/3f2a...`` (customer, repository, project id)."""
    return f"{customer}/{repository_name(repo_url)}/{project_id}"


def run_url(tracking_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow GUI page of one run."""
    return f"{tracking_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@dataclass(frozen=True)
class ProjectTracking:
    """One customer's tracking server, reached with the services' token (None: an open server)."""

    tracking_url: str
    token: str | None = None
    ca_pem: str | None = None

    def _creds(self) -> MlflowHostCreds:
        cert = str(ca_file(self.ca_pem)) if self.ca_pem else None
        return MlflowHostCreds(self.tracking_url.rstrip("/"), token=self.token, server_cert_path=cert)

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        try:
            response = http_request(
                self._creds(),
                endpoint,
                method,
                max_retries=2,
                backoff_factor=1,
                timeout=TIMEOUT_S,
                raise_on_status=False,
                **kwargs,
            )
        except Exception as error:  # connection refused, TLS, retries exhausted
            raise TrackingCallFailed(f"MLflow at {self.tracking_url}: {_short(error)}") from error
        if response.status_code >= 400:
            raise TrackingCallFailed(
                f"MLflow at {self.tracking_url} answered {response.status_code} to {endpoint}: {_short(response.text)}"
            )
        return response.json() if response.content else {}

    def run(self, run_id: str) -> dict[str, Any]:
        """``info`` of a run: ``experiment_id``, ``artifact_uri``, ``status`` ..."""
        answer = self._call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        return dict(answer["run"]["info"])

    def log_artifact(self, run_id: str, name: str, data: bytes) -> None:
        """Upload ``data`` as ``name`` into the run's artifacts (the server proxies the artifact store)."""
        artifact_uri = str(self.run(run_id)["artifact_uri"])
        prefix = "mlflow-artifacts:"
        if not artifact_uri.startswith(prefix):
            raise TrackingCallFailed(f"run {run_id} keeps its artifacts at {artifact_uri}, not on the tracking server")
        path = artifact_uri.removeprefix(prefix).strip("/")
        self._call("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{quote(path)}/{quote(name)}", data=data)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call("POST", "/api/2.0/mlflow/runs/set-tag", json={"run_id": run_id, "key": key, "value": value})

    def experiment_id(self, name: str) -> str | None:
        try:
            answer = self._call("GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        except TrackingCallFailed as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error) or " 404 " in str(error):
                return None
            raise
        return str(answer["experiment"]["experiment_id"])

    def run_count(self, experiment_id: str) -> int:
        answer = self._call(
            "POST", "/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id], "max_results": 1}
        )
        return len(answer.get("runs") or [])

    def settle_experiment(self, name: str, status: str, tags: dict[str, str]) -> str:
        """At a project's end: tag its experiment with the outcome; delete it if it holds no run and the
        project did not complete. Returns what was done, for the project's events."""
        experiment = self.experiment_id(name)
        if experiment is None:
            return "no MLflow experiment was created"
        if status != "COMPLETED" and self.run_count(experiment) == 0:
            self._call("POST", "/api/2.0/mlflow/experiments/delete", json={"experiment_id": experiment})
            return f"deleted the empty MLflow experiment {name!r}"
        for key, value in {**tags, STATUS_TAG: status}.items():
            self._call(
                "POST",
                "/api/2.0/mlflow/experiments/set-experiment-tag",
                json={"experiment_id": experiment, "key": key, "value": value},
            )
        return f"MLflow experiment {name!r} tagged {STATUS_TAG}={status}"


def image_tags(
    learner_image: str | None, aggregator_image: str | None, platform_digests: dict[str, dict[str, str]]
) -> dict[str, str]:
    """Run tags naming the images that trained the model: ``flops.image.learner`` and one digest per platform
    (``flops.image.learner.linux/arm64`` = ``sha256:...``)."""
    tags = {
        f"flops.image.{kind}": image
        for kind, image in (("learner", learner_image), ("aggregator", aggregator_image))
        if image
    }
    for kind, digests in platform_digests.items():
        for platform, digest in digests.items():
            tags[f"flops.image.{kind}.{platform}"] = digest
    return tags


def _short(text: object) -> str:
    line = one_line(text)
    try:  # MLflow's JSON error: keep its code and message
        document = json.loads(str(text))
        line = f"{document.get('error_code', '')} {document.get('message', '')}".strip() or line
    except (ValueError, AttributeError):
        pass
    return one_line(line)
