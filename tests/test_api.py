"""The REST API over real HTTP (waitress) with a real MongoProjectStore: identity, isolation, errors."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from flops_utils.service_config import MqttSettings
from manager.api import TokenAuth, create_api
from manager.records import ProjectStatus
from manager.settings import ManagerSettings, SettingsError, load_settings
from manager.storage import MongoProjectStore
from tests.api_harness import ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, TOKENS, RecordingControl, RunningApi, running_api
from tests.helpers import free_port, wait_until

PROJECTS = "/api/flops/projects"
SLA: dict[str, Any] = {"ml_repo_url": "https://example.org/ml/mnist.git", "ml_model_flavor": "sklearn"}


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_api_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(database)
    client.close()


def call(api: RunningApi, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, api.url + path, headers=headers, timeout=30, **kwargs)


def start(api: RunningApi, token: str, **changes: Any) -> dict[str, Any]:
    response = call(api, "POST", PROJECTS, token, json={**SLA, **changes})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: requests.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text
    for word in words:
        assert word in body["error"] or any(word in str(detail) for detail in body["details"]), body
    return body


def test_health_needs_no_token_and_reports_database_and_broker(api: RunningApi) -> None:
    response = call(api, "GET", "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": True, "broker": True}


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer not-a-token"}, "invalid bearer token"),
        ({"Authorization": f"Basic {ALICE_TOKEN}"}, "malformed"),
        ({"Authorization": "Bearer"}, "malformed"),
    ],
)
def test_a_bad_or_missing_token_gets_401_with_one_line(api: RunningApi, headers: dict[str, str], words: str) -> None:
    for method, path in (("GET", PROJECTS), ("POST", PROJECTS), ("DELETE", "/api/flops/database")):
        response = call(api, method, path, headers=headers, json=SLA)
        assert_error(response, 401, words)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert ("reset", None) not in api.control.calls


def test_post_answers_201_at_once_and_owner_defaults_to_the_caller(api: RunningApi) -> None:
    before = time.monotonic()
    response = call(api, "POST", PROJECTS, ALICE_TOKEN, json=SLA)
    assert response.status_code == 201, response.text
    assert time.monotonic() - before < 10
    body = response.json()
    assert body["status"] == "PENDING" and body["customer"] == "alice"
    assert body["sla"]["customerID"] == "alice"
    assert response.headers["Location"] == f"{PROJECTS}/{body['project_id']}"
    sla, customer = next(arg for name, arg in api.control.calls if name == "start_project" and arg[1] == "alice")
    assert customer == "alice" and sla.customer_id == "alice"
    stored = api.store.get_project(body["project_id"])
    assert stored is not None and stored.customer == "alice"


def test_customer_id_must_match_the_caller_unless_admin(api: RunningApi) -> None:
    assert_error(call(api, "POST", PROJECTS, ALICE_TOKEN, json={**SLA, "customerID": "bob"}), 403, "bob", "alice")
    assert start(api, ALICE_TOKEN, customerID="alice")["customer"] == "alice"
    on_behalf = start(api, ADMIN_TOKEN, customerID="bob")
    assert on_behalf["customer"] == "bob"
    assert start(api, ADMIN_TOKEN)["customer"] == "Admin"
    bobs_projects = call(api, "GET", PROJECTS, BOB_TOKEN).json()["projects"]
    assert on_behalf["project_id"] in [p["project_id"] for p in bobs_projects]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SLA, "training_configuration": {"min_fit_clients": 3}}, "training_configuration.min_fit_clients"),
        ({**SLA, "ml_model_flavor": "xgboost"}, "ml_model_flavor"),
        ({**SLA, "colour": "blue"}, "colour"),
        ({**SLA, "training_configuration": {"rounds": 3}}, "training_configuration.rounds"),
        ({**SLA, "ml_repo_url": "--upload-pack=touch /tmp/x"}, "ml_repo_url"),
        ({**SLA, "use_devel_base_images": True, "supported_platforms": ["linux/arm64"]}, "supported_platforms"),
        ({"ml_model_flavor": "sklearn"}, "ml_repo_url"),
        ([SLA], "body"),
    ],
)
def test_a_bad_sla_gets_422_naming_the_field_and_creates_nothing(api: RunningApi, body: Any, field: str) -> None:
    count = len(api.store.list_projects())
    error = assert_error(call(api, "POST", PROJECTS, ALICE_TOKEN, json=body), 422, field)
    assert field in [detail["field"] for detail in error["details"]]
    assert all(detail["message"] for detail in error["details"])
    assert len(api.store.list_projects()) == count


def test_a_body_that_is_not_json_gets_422(api: RunningApi) -> None:
    response = call(api, "POST", PROJECTS, ALICE_TOKEN, data="{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 422)


def test_customers_see_only_their_projects_and_others_are_404(api: RunningApi) -> None:
    alices = start(api, ALICE_TOKEN)["project_id"]
    bobs = start(api, BOB_TOKEN)["project_id"]
    listed_by_alice = [p["project_id"] for p in call(api, "GET", PROJECTS, ALICE_TOKEN).json()["projects"]]
    assert alices in listed_by_alice and bobs not in listed_by_alice
    assert {p["customer"] for p in call(api, "GET", PROJECTS, ALICE_TOKEN).json()["projects"]} == {"alice"}
    listed_by_admin = [p["project_id"] for p in call(api, "GET", PROJECTS, ADMIN_TOKEN).json()["projects"]]
    assert {alices, bobs} <= set(listed_by_admin)

    assert call(api, "GET", f"{PROJECTS}/{alices}", ALICE_TOKEN).json()["project_id"] == alices
    assert call(api, "GET", f"{PROJECTS}/{alices}", ADMIN_TOKEN).status_code == 200
    unknown = assert_error(call(api, "GET", f"{PROJECTS}/no-such-project", ALICE_TOKEN), 404)
    foreign = assert_error(call(api, "GET", f"{PROJECTS}/{bobs}", ALICE_TOKEN), 404)
    assert foreign["error"] == unknown["error"].replace("no-such-project", bobs)  # indistinguishable
    assert_error(call(api, "GET", f"{PROJECTS}/{bobs}/events", ALICE_TOKEN), 404)
    assert_error(call(api, "DELETE", f"{PROJECTS}/{bobs}", ALICE_TOKEN), 404)
    assert_error(call(api, "POST", f"{PROJECTS}/{bobs}/predict", ALICE_TOKEN, json={"inputs": [[1.0]]}), 404)
    assert ("stop_project", bobs) not in api.control.calls
    bob_view = api.store.get_project(bobs)
    assert bob_view is not None and bob_view.status is ProjectStatus.PENDING


def test_events_after_a_sequence_number(api: RunningApi) -> None:
    project_id = start(api, ALICE_TOKEN)["project_id"]
    call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN)
    assert wait_until(lambda: call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()["status"] == "STOPPED",
                      10, interval=0.05)
    answer = call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN).json()
    assert [event["text"] for event in answer["events"]] == ["project accepted", "stopped by request"]
    assert [event["seq"] for event in answer["events"]] == [1, 2]
    assert answer["status"] == "STOPPED" and answer["finished"] is True
    later = call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": 1}).json()
    assert [event["text"] for event in later["events"]] == ["stopped by request"]
    assert_error(call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": -1}), 422, "after")
    assert_error(call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": "x"}), 422, "after")


def test_stop_answers_the_stopped_project_and_control_errors_keep_their_status(api: RunningApi) -> None:
    project_id = start(api, ALICE_TOKEN)["project_id"]
    stopping = call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN)
    assert stopping.status_code == 202 and stopping.json()["status"] == "STOPPING"  # it stops in the background
    again = call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN)
    assert again.status_code == 202 and again.json()["status"] == "STOPPING"
    assert wait_until(lambda: call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()["status"] == "STOPPED",
                      10, interval=0.05)
    assert_error(call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN), 409, "already STOPPED")


def test_database_reset_is_admin_only(mongo_uri: str, mqtt_settings: MqttSettings) -> None:
    database = f"t_api_reset_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as api:
        project_id = start(api, ALICE_TOKEN)["project_id"]
        assert_error(call(api, "DELETE", "/api/flops/database", ALICE_TOKEN), 403, "admin")
        assert api.store.get_project(project_id) is not None
        response = call(api, "DELETE", "/api/flops/database", ADMIN_TOKEN)
        assert response.status_code == 200 and response.json() == {"status": "reset"}
        assert api.store.list_projects() == []
        api.store.reset()
    pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000).drop_database(database)


def test_cache_prune_is_admin_only_and_validated(api: RunningApi) -> None:
    assert_error(call(api, "POST", "/api/flops/cache/prune", ALICE_TOKEN, json={}), 403, "admin")
    assert_error(call(api, "POST", "/api/flops/cache/prune", ADMIN_TOKEN, json={"older_than_days": -1}), 422,
                 "older_than_days")  # fmt: skip
    answer = call(api, "POST", "/api/flops/cache/prune", ADMIN_TOKEN, json={"older_than_days": 2.5, "dry_run": True})
    assert answer.status_code == 200 and answer.json()["dry_run"] is True, answer.text
    requests_seen = [argument for name, argument in api.control.calls if name == "prune_cache"]
    assert [(r.older_than_days, r.dry_run) for r in requests_seen] == [(2.5, True)]


def test_tracking_url_is_the_callers(api: RunningApi) -> None:
    answer = call(api, "GET", "/api/flops/tracking", BOB_TOKEN).json()
    assert answer == {"customer": "bob", "tracking_url": "http://127.0.0.1:5999/bob", "ca_pem": None}
    assert ("tracking_url", "bob") in api.control.calls


def test_mock_data_requests(api: RunningApi) -> None:
    request = {"mock_data_configuration": {"data_tag": "digits", "number_of_partitions": 2}}
    answer = call(api, "POST", "/api/flops/mocks", ALICE_TOKEN, json=request)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"data_tag": "digits", "partitions": {"node-0": 100, "node-1": 101}}
    pushed = [arg for name, arg in api.control.calls if name == "push_mock_data"][-1]
    assert pushed.customer_id == "alice"
    assert_error(call(api, "POST", "/api/flops/mocks", ALICE_TOKEN, json={**request, "customerID": "bob"}), 403)
    bad = {"mock_data_configuration": {"data_tag": "../x", "number_of_partitions": 0}}
    error = assert_error(call(api, "POST", "/api/flops/mocks", ALICE_TOKEN, json=bad), 422)
    assert {d["field"] for d in error["details"]} == {
        "mock_data_configuration.data_tag", "mock_data_configuration.number_of_partitions",
    }  # fmt: skip


@pytest.fixture(scope="module")
def mlflow_scoring_url() -> Iterator[str]:
    """A real MLflow scoring server (mlflow.pyfunc.scoring_server under uvicorn) for a tiny model."""
    import mlflow.pyfunc
    import uvicorn
    from mlflow.pyfunc import scoring_server

    class RowSum(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow
            import numpy  # "inputs" arrive as a tensor (ndarray), columns as a DataFrame

            return [float(sum(row)) for row in numpy.asarray(model_input).tolist()]

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        mlflow.pyfunc.save_model(str(model_dir), python_model=RowSum(), pip_requirements=["mlflow"])
        app = scoring_server.init(mlflow.pyfunc.load_model(str(model_dir)))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the MLflow scoring server did not start"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(15)


def test_predict_forwards_to_the_serving_endpoint(api: RunningApi, mlflow_scoring_url: str) -> None:
    project_id = start(api, ALICE_TOKEN)["project_id"]
    path = f"{PROJECTS}/{project_id}/predict"
    assert_error(call(api, "POST", path, ALICE_TOKEN, json={"inputs": [[1.0, 2.0]]}), 409, "no serving endpoint")
    api.store.update_project(project_id, serving_url=mlflow_scoring_url)
    answer = call(api, "POST", path, ALICE_TOKEN, json={"inputs": [[1.0, 2.0], [3.0, 4.5]]})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"project_id": project_id, "predictions": [3.0, 7.5]}
    assert_error(call(api, "POST", path, ALICE_TOKEN, json={"inputs": "1,2"}), 422, "inputs")
    assert_error(call(api, "POST", path, ALICE_TOKEN, json={"inputs": []}), 422, "inputs")
    api.store.update_project(project_id, serving_url=f"http://127.0.0.1:{free_port()}")
    assert_error(call(api, "POST", path, ALICE_TOKEN, json={"inputs": [[1.0]]}), 502, "did not answer")


def test_openapi_document_and_swagger_ui_describe_every_endpoint(api: RunningApi) -> None:
    spec = requests.get(api.url + "/openapi/openapi.json", timeout=30).json()
    operations = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert operations >= {
        ("/health", "get"),
        ("/api/flops/projects", "post"),
        ("/api/flops/projects", "get"),
        ("/api/flops/projects/{project_id}", "get"),
        ("/api/flops/projects/{project_id}", "delete"),
        ("/api/flops/projects/{project_id}/events", "get"),
        ("/api/flops/projects/{project_id}/predict", "post"),
        ("/api/flops/tracking", "get"),
        ("/api/flops/mocks", "post"),
        ("/api/flops/database", "delete"),
        ("/api/flops/cache/prune", "post"),
    }
    post = spec["paths"]["/api/flops/projects"]["post"]
    assert set(post["responses"]) >= {"201", "401", "403", "422"}
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert post["security"] == [{"bearerAuth": []}]
    assert "customerID" in spec["components"]["schemas"]["ProjectSLA"]["properties"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    ui = requests.get(api.url + "/openapi/swagger", timeout=30)
    assert ui.status_code == 200 and "swagger" in ui.text.lower()


def test_http_errors_are_json_one_liners(api: RunningApi) -> None:
    assert_error(call(api, "GET", "/no/such/route"), 404)
    assert_error(call(api, "PUT", "/api/flops/database", ADMIN_TOKEN), 405)
    huge = {**SLA, "training_configuration": {"data_tags": ["x" * 60] * 30_000}}
    assert_error(call(api, "POST", PROJECTS, ALICE_TOKEN, json=huge), 413)


def test_an_unexpected_error_is_a_one_line_500(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(customer: str) -> str:
        raise RuntimeError("secret internals\nTraceback (most recent call last)")

    monkeypatch.setattr(api.control, "tracking_url", broken)
    body = assert_error(call(api, "GET", "/api/flops/tracking", ALICE_TOKEN), 500, "RuntimeError")
    assert "secret" not in body["error"]


def test_a_database_that_is_down_gives_503_not_500(mqtt_settings: MqttSettings) -> None:
    settings = ManagerSettings(admin_token=ADMIN_TOKEN, customer_tokens=TOKENS, mqtt=mqtt_settings)
    store = MongoProjectStore(f"mongodb://127.0.0.1:{free_port()}", "down", timeout_s=0.5)  # never connected
    app = create_api(RecordingControl(store), store, TokenAuth(TOKENS, ADMIN_TOKEN), settings)
    client = app.test_client()
    listed = client.get(PROJECTS, headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert listed.status_code == 503 and "database" in listed.get_json()["error"]
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json() == {"status": "degraded", "database": False, "broker": True}


def test_settings_come_from_the_config_file_with_env_overrides(tmp_path: Path) -> None:
    config = tmp_path / "manager.json"
    config.write_text(
        '{"admin_token": "file-admin-token", "port": 6000, "customer_tokens": {"tok-alice-123": "alice"},'
        ' "mqtt": {"host": "10.0.0.5", "port": 1884}, "adapter_settings": {"local": {"nodes_file": "n.json"}}}'
    )
    env = {"FLOPS_MANAGER_CONFIG": str(config), "FLOPS_MANAGER_PORT": "6001", "FLOPS_MQTT_PASSWORD": "12345",
           "FLOPS_MONGO_URI": "mongodb://db:27017"}  # fmt: skip
    settings = load_settings(None, env)
    assert (settings.admin_token, settings.port, settings.mongo_uri) == ("file-admin-token", 6001, "mongodb://db:27017")
    assert settings.customer_tokens == {"tok-alice-123": "alice"}
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.password) == ("10.0.0.5", 1884, "12345")
    assert settings.orchestrator == "local" and settings.adapter_settings == {"local": {"nodes_file": "n.json"}}
    assert settings.public_url == "http://127.0.0.1:6001"
    assert "file-admin-token" not in repr(settings)
    assert load_settings(config, {}).port == 6000  # an explicit path wins over the environment's
    assert load_settings(None, {"FLOPS_ADMIN_TOKEN": "only-from-env"}).admin_token == "only-from-env"


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        (None, {}, "admin_token"),
        ("{", {}, "not valid JSON"),
        ("[]", {}, "must be a JSON object"),
        ('{"admin_token": "long-enough-token", "colour": 1}', {}, "colour"),
        ('{"admin_token": "long-enough-token"}', {"FLOPS_MANAGER_PORT": "eighty"}, "port"),
    ],
)
def test_bad_settings_give_one_clear_line(
    tmp_path: Path, content: str | None, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "manager.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        load_settings(path if content is not None else None, env)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.json", {})
