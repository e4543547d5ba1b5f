"""The entrypoint of a trained model's inference image: MLflow's scoring server behind the token guard.

The image holds one model (``__pyfunc_model_path__``, ``/opt/model``) and no configuration
document, so the guard is set from the environment:

* ``FLOPS_SERVING_TOKEN_SHA256``: comma-separated SHA-256 digests of the tokens that may call
  ``/invocations`` (``/ping`` stays open); the manager passes its customer's, the admin's and
  the services' digests (digests only: the image's environment holds no secret);
* ``FLOPS_SERVING_OPEN=1``: serve without a token (what the manager does when ``mlflow_auth`` is off).

With neither the image refuses to start and says why: an image pulled and run by hand does not
end up serving the model to anyone who can reach it. ``UVICORN_HOST``/``UVICORN_PORT`` choose the
listener (default ``0.0.0.0:8080``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from flops_utils.token_access import SERVING_OPEN_ENV as OPEN_ENV
from flops_utils.token_access import SERVING_TOKENS_ENV as TOKENS_ENV

MODEL_PATH_ENV = "__pyfunc_model_path__"  # mlflow.pyfunc.scoring_server._SERVER_MODEL_PATH
DEFAULT_MODEL_DIR = "/opt/model"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class GuardSettingMissing(ValueError):
    """The environment says neither which tokens may call the model nor that it is open."""


@dataclass(frozen=True)
class ImageServing:
    model_dir: str
    digests: list[str]  # empty: open
    host: str
    port: int


def serving_from_environment(environ: Mapping[str, str]) -> ImageServing:
    """What to serve and to whom; :class:`GuardSettingMissing` (with the fix in its text) when unsafe or malformed."""
    digests = [item.strip().lower() for item in environ.get(TOKENS_ENV, "").split(",") if item.strip()]
    bad = [item for item in digests if not _DIGEST.fullmatch(item)]
    if bad:
        raise GuardSettingMissing(
            f"{TOKENS_ENV} holds {bad[0][:20]!r}, not a SHA-256 hex digest (sha256sum of a token, 64 hex characters)"
        )
    is_open = environ.get(OPEN_ENV, "").strip().lower() in {"1", "true", "yes"}
    if not digests and not is_open:
        raise GuardSettingMissing(
            f"refusing to serve the model to anyone: set {TOKENS_ENV} to the SHA-256 digests "
            f"of the tokens that may call /invocations (comma-separated), or {OPEN_ENV}=1"
        )
    try:
        port = int(environ.get("UVICORN_PORT", "8080"))
    except ValueError:
        raise GuardSettingMissing(f"UVICORN_PORT is {environ.get('UVICORN_PORT')!r}, not a port number") from None
    return ImageServing(
        model_dir=environ.get(MODEL_PATH_ENV, DEFAULT_MODEL_DIR),
        digests=digests,
        host=environ.get("UVICORN_HOST", "0.0.0.0"),
        port=port,
    )


def main() -> None:
    try:
        serving = serving_from_environment(os.environ)
    except GuardSettingMissing as error:
        sys.exit(f"flops model image: {error}")
    import uvicorn

    from services.serving.guard import guarded_model_app

    app = guarded_model_app(serving.model_dir, serving.digests)
    uvicorn.run(app, host=serving.host, port=serving.port, log_level="warning")


if __name__ == "__main__":
    main()
