"""The serving endpoint's guard around MLflow's real scoring server and a real saved sklearn model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from flops_utils.token_access import serving_guard_environment, token_digest
from services.serving.guard import ServingGuard, model_width
from services.serving.image_entry import GuardSettingMissing, serving_from_environment

TOKEN = "alice-token-123"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.pyfunc import scoring_server

    digits = load_digits()
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=200).fit(digits.data / 16.0, digits.target), str(path))
    model = mlflow.pyfunc.load_model(str(Path(path)))
    assert model_width(model) == 64  # no signature: the raw model's n_features_in_
    return TestClient(ServingGuard(scoring_server.init(model), [token_digest(TOKEN)], model_width(model)))


def test_invocations_need_the_token(client: TestClient) -> None:
    rows = {"inputs": (load_digits().data[:3] / 16.0).tolist()}
    refused = client.post("/invocations", json=rows)
    assert refused.status_code == 401 and "needs the project customer's token" in refused.json()["message"]
    wrong = client.post("/invocations", json=rows, headers={"Authorization": "Bearer bob-token-4567"})
    assert wrong.status_code == 401
    answer = client.post("/invocations", json=rows, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    assert np.asarray(answer.json()["predictions"]).tolist() == load_digits().target[:3].tolist()
    assert client.get("/ping").status_code == 200  # the manager's health poll needs no token


def test_a_wrong_input_width_answers_400_naming_the_shape(client: TestClient) -> None:
    answer = client.post(
        "/invocations", json={"inputs": [[0.0] * 30, [0.0] * 30]}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 400
    assert answer.json()["message"] == "the model expects inputs of shape (n, 64); got rows of 30 values"


def test_an_inference_image_refuses_to_serve_without_a_guard_setting() -> None:
    with pytest.raises(GuardSettingMissing, match="refusing to serve the model to anyone: set FLOPS_SERVING_TOKEN"):
        serving_from_environment({})
    with pytest.raises(GuardSettingMissing, match="not a SHA-256 hex digest"):
        serving_from_environment({"FLOPS_SERVING_TOKEN_SHA256": TOKEN})  # the token itself, not its digest
    with pytest.raises(GuardSettingMissing, match="UVICORN_PORT is 'http'"):
        serving_from_environment({"FLOPS_SERVING_OPEN": "1", "UVICORN_PORT": "http"})


def test_the_manager_s_guard_environment_is_what_the_image_reads() -> None:
    digests = [token_digest(TOKEN), token_digest("admin-token-999")]
    guarded = serving_from_environment({**serving_guard_environment(digests), "UVICORN_PORT": "9100"})
    assert guarded.digests == sorted(digests) and guarded.port == 9100 and guarded.model_dir == "/opt/model"
    opened = serving_from_environment(serving_guard_environment([]))  # access control off: open, said explicitly
    assert opened.digests == [] and opened.host == "0.0.0.0"
