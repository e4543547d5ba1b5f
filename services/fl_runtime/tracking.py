"""MLflow logging for aggregators: one run per aggregator, metrics per round, the final model.

Everything is a no-op without a tracking URI. Metrics that cannot be sent (MLflow
briefly away) are kept and sent with the next batch, so a short outage loses nothing.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flops_utils.message_text import one_line
from flops_utils.token_access import tracking_verify, use_tracking_access
from services.fl_runtime.checkpoint import CHECKPOINT_DIR, CHECKPOINT_FILE, Checkpoint, CheckpointError

log = logging.getLogger(__name__)
REGISTER_ATTEMPTS = 6

# Bound MLflow's own HTTP retries so a dead tracking server fails a call in seconds, not minutes.
_MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
MODEL_ARTIFACT = "model"
REACHABLE_TIMEOUT_S = 180.0  # the final model waits this long for a tracking server that went away


DONE_TAG = "flops.done"  # set when the run's work is over; a run without it can be resumed


class TrackingError(RuntimeError):
    """MLflow refused or could not be reached; the message is one line."""


@dataclass
class LoggedModel:
    model_uri: str
    registered_model: str | None
    registered_version: str | None


def _clean(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else float(value)


def _flavor_module(flavor: str) -> Any:
    import importlib

    name = {
        "sklearn": "mlflow.sklearn",
        "pytorch": "mlflow.pytorch",
        "keras": "mlflow.keras",
        "tensorflow": "mlflow.tensorflow",
    }[flavor]
    return importlib.import_module(name)


def _needs_user_code(model: Any, flavor: str) -> bool:
    """Pickled flavors need the user's classes unless the model class is the library's own."""
    library = {"sklearn": "sklearn", "pytorch": "torch", "keras": "keras", "tensorflow": "tensorflow"}[flavor]
    return not type(model).__module__.startswith(library)


# skops refuses to load types outside its small default list even from these libraries (MLPClassifier's
# AdamOptimizer, for one); a model made only of their types is trusted, anything else is pickled.
SKOPS_TRUSTED_LIBRARIES = ("sklearn", "numpy", "scipy")


def sklearn_serialization(model: Any) -> dict[str, Any]:
    """``log_model`` arguments for a scikit-learn model: MLflow's default skops format, trusting the library
    types it names as untrusted, or cloudpickle when the model holds other types (the user's own classes)."""
    try:
        import skops.io

        untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    except Exception:  # skops cannot represent it (a custom function, a local class)
        return {"serialization_format": "cloudpickle"}
    if all(name.split(".")[0] in SKOPS_TRUSTED_LIBRARIES for name in untrusted):
        return {"serialization_format": "skops", "skops_trusted_types": untrusted} if untrusted else {}
    return {"serialization_format": "cloudpickle"}


class Tracker:
    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str,
        tags: dict[str, str] | None = None,
        token: str | None = None,
        ca_pem: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.token = token
        self.ca_pem = ca_pem  # the CA of an HTTPS tracking server
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self._pending: list[tuple[str, float, int]] = []
        self._mlflow: Any = None
        self.experiment_id: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri)

    def _connect(self) -> None:
        if self._mlflow is not None:
            return
        for key, value in _MLFLOW_ENV.items():
            os.environ.setdefault(key, value)
        use_tracking_access(self.token, self.ca_pem)
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(str(self.tracking_uri))
        # Explicitly: an inherited MLFLOW_REGISTRY_URI would register models on another server.
        mlflow.set_registry_uri(str(self.tracking_uri))
        self._set_experiment()

    def start(
        self, params: dict[str, object], parent_run_id: str | None = None, resume_run_id: str | None = None
    ) -> str | None:
        """Open the run (nested under ``parent_run_id`` if given) and log ``params``.

        ``resume_run_id``: continue that run (a redeployed aggregator); params are already there.
        """
        if not self.enabled:
            return None
        self._connect()
        tags = dict(self.tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        try:
            if resume_run_id:
                run = self._mlflow.start_run(run_id=resume_run_id)
            else:
                run = self._mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name, tags=tags)
                self._mlflow.log_params({key: str(value)[:6000] for key, value in params.items()})
            self.run_id = run.info.run_id
        except Exception as error:
            raise TrackingError(f"MLflow at {self.tracking_uri} refused the run: {_short(error)}") from None
        return self.run_id

    def find_unfinished_run(self) -> str | None:
        """The newest run with this tracker's tags that did not finish its work: left by an aggregator that died.

        Not the MLflow status: a process stopped by a signal may have its run ended by MLflow's
        exit hook (FINISHED) although training was not over; only :meth:`finish` marks it done.
        """
        if not self.enabled:
            return None
        self._connect()
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in sorted(self.tags.items()))
        try:
            runs = self._mlflow.MlflowClient().search_runs(
                [self.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=20
            )
        except Exception as error:
            raise TrackingError(f"MLflow at {self.tracking_uri} cannot search runs: {_short(error)}") from None
        return next((str(run.info.run_id) for run in runs if run.data.tags.get(DONE_TAG) != "true"), None)

    def save_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Upload the checkpoint to the run's artifacts; False (and a warning) when MLflow is away."""
        if self.run_id is None:
            return False
        try:
            with tempfile.TemporaryDirectory(prefix="flops-checkpoint-") as folder:
                path = Path(folder) / CHECKPOINT_FILE
                path.write_bytes(checkpoint.to_bytes())
                self._mlflow.MlflowClient().log_artifact(self.run_id, str(path), CHECKPOINT_DIR)
        except Exception as error:
            log.warning("checkpoint of round %d not saved: %s", checkpoint.round, _short(error))
            return False
        return True

    def load_checkpoint(self, run_id: str) -> Checkpoint | None:
        """The run's last checkpoint, or None when it has none."""
        self._connect()
        client = self._mlflow.MlflowClient()
        try:
            names = [item.path for item in client.list_artifacts(run_id, CHECKPOINT_DIR)]
            if f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}" not in names:
                return None
            with tempfile.TemporaryDirectory(prefix="flops-checkpoint-") as folder:
                local = client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}", folder)
                return Checkpoint.from_bytes(Path(local).read_bytes())
        except CheckpointError:
            raise
        except Exception as error:
            raise TrackingError(f"MLflow cannot give back the checkpoint of run {run_id}: {_short(error)}") from None

    def logged_steps(self, key: str) -> set[int]:
        """Steps at which ``key`` was logged in this run."""
        if self.run_id is None:
            return set()
        history = self._mlflow.MlflowClient().get_metric_history(self.run_id, key)
        return {int(metric.step) for metric in history}

    def _set_experiment(self) -> None:  # called once, from _connect
        """Find or create the experiment and remember its id; every run is created in it explicitly.

        Root and cluster aggregators may create the experiment at the same moment; MLflow's
        ``set_experiment`` can then leave no active experiment behind, and a run started
        without an id lands in the Default experiment, where nobody looks for it.
        """
        for attempt in range(5):
            try:
                experiment = self._mlflow.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    try:
                        self.experiment_id = str(self._mlflow.create_experiment(self.experiment_name))
                    except Exception:  # created by a sibling meanwhile: read it on the next attempt
                        if attempt == 4:
                            raise
                        time.sleep(0.2 + attempt)
                        continue
                else:
                    self.experiment_id = str(experiment.experiment_id)
                self._mlflow.set_experiment(experiment_id=self.experiment_id)
                return
            except Exception as error:
                if attempt == 4:
                    raise TrackingError(
                        f"MLflow at {self.tracking_uri} refused experiment {self.experiment_name!r}: {_short(error)}"
                    ) from None
                time.sleep(1.0 + attempt)

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        if self.run_id is None:
            return
        self._pending.extend((key, value, step) for key, raw in metrics.items() if (value := _clean(raw)) is not None)
        self.flush()

    def wait_until_reachable(self, timeout_s: float) -> None:
        """Wait for the tracking server (restarted after a crash, say) and send the metrics kept meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not (_answers(f"{str(self.tracking_uri).rstrip('/')}/health") and self.flush()):
            if time.monotonic() >= deadline:
                raise TrackingError(f"MLflow at {self.tracking_uri} has not answered for {timeout_s:g} s")
            time.sleep(2.0)

    def flush(self) -> bool:
        if self.run_id is None or not self._pending:
            return True
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value, step in self._pending]
        try:
            self._mlflow.MlflowClient().log_batch(self.run_id, metrics=batch)
        except Exception as error:  # kept for the next flush
            log.warning("MLflow metrics not sent yet (%d kept): %s", len(self._pending), _short(error))
            return False
        self._pending.clear()
        return True

    def log_model(self, model: Any, flavor: str, registered_model_name: str | None, code_dir: Path) -> LoggedModel:
        """Log the final model with the SLA's flavor and register it (after MLflow is back, if it was away)."""
        if self.run_id is None:
            raise TrackingError("no MLflow run")
        self.wait_until_reachable(REACHABLE_TIMEOUT_S)
        module = _flavor_module(flavor)
        kwargs: dict[str, Any] = {"name": MODEL_ARTIFACT}
        if hasattr(module, "get_default_pip_requirements"):
            kwargs["pip_requirements"] = module.get_default_pip_requirements()  # skips slow inference
        if _needs_user_code(model, flavor):
            kwargs["code_paths"] = sorted(str(path) for path in code_dir.glob("*.py"))
        if flavor == "pytorch":
            kwargs["serialization_format"] = "pickle"  # MLflow 3's default 'pt2' needs an input example
        if flavor == "sklearn":
            kwargs.update(sklearn_serialization(model))
        first = {"sklearn": "sk_model", "pytorch": "pytorch_model"}.get(flavor, "model")
        try:
            info = module.log_model(**{first: model}, **kwargs)
        except Exception as error:
            raise TrackingError(f"MLflow could not log the {flavor} model: {_short(error)}") from None
        version = self._register(str(info.model_uri), registered_model_name) if registered_model_name else None
        return LoggedModel(
            model_uri=str(info.model_uri),
            registered_model=registered_model_name if version is not None else None,
            registered_version=version,
        )

    def _register(self, model_uri: str, name: str, attempts: int = REGISTER_ATTEMPTS) -> str:
        """Register with retries: a busy SQLite backend answers 500 ('database is locked') under load."""
        for attempt in range(1, attempts + 1):
            try:
                return str(self._mlflow.register_model(model_uri, name).version)
            except Exception as error:
                if attempt == attempts:
                    raise TrackingError(f"MLflow could not register the model as {name}: {_short(error)}") from None
                log.warning("model registration attempt %d failed, retrying: %s", attempt, _short(error))
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    def set_tags(self, tags: dict[str, str], model: tuple[str, str] | None = None) -> None:
        """Tag the run and, given ``(name, version)``, that registered model version (best effort)."""
        if self.run_id is None:
            return
        try:
            client = self._mlflow.MlflowClient()
            for key, value in tags.items():
                client.set_tag(self.run_id, key, value)
                if model is not None:
                    client.set_model_version_tag(model[0], model[1], key, value)
        except Exception as error:
            log.warning("MLflow tags %s not set: %s", sorted(tags), _short(error))

    def finish(self, ok: bool) -> None:
        if self.run_id is None:
            return
        self.flush()
        try:
            if ok:
                self._mlflow.MlflowClient().set_tag(self.run_id, DONE_TAG, "true")
            self._mlflow.end_run(status="FINISHED" if ok else "FAILED")
        except Exception as error:
            log.warning("MLflow run %s not closed: %s", self.run_id, _short(error))


def _answers(url: str) -> bool:
    if not url.startswith(("http://", "https://")):
        return True  # a local store (tests)
    verify = tracking_verify()
    context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:  # noqa: S310 - our tracking URL
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _short(error: BaseException) -> str:
    return one_line(f"{type(error).__name__}: {error}")
