"""The REST API over real HTTP (waitress) with a real MongoProjectStore: identity, isolation, errors."""

from __future__ import annotations

import csv
import io
import json
import socket
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
from PIL import Image

from flops_utils.process_groups import free_port
from flops_utils.service_config import MqttSettings
from manager.api import TokenAuth, create_api
from manager.api_server import make_server
from manager.lifecycle import lifecycle_settings
from manager.records import ProjectStatus
from manager.settings import ManagerSettings, SettingsError, load_settings
from manager.storage import MongoProjectStore
from manager.suite.tls import ensure_server_tls
from tests.api_harness import (
    ADMIN_TOKEN,
    ALICE_TOKEN,
    BOB_TOKEN,
    PRUNED_MANIFEST,
    SIMULATE_PREFIX,
    SIMULATED_ROUND_S,
    TOKENS,
    RecordingControl,
    RunningApi,
    running_api,
)
from tests.helpers import wait_until

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
        ({**SLA, "use_devel_base_images": True}, "use_devel_base_images"),
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


def test_a_customers_repo_url_reaches_only_what_the_policy_allows_and_the_refusal_is_one_generic_line(
    api: RunningApi, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [
        "/etc",
        "file:///etc",
        "/etc/passwd",
        str(api.settings.state_dir),
        "/no/such/folder",
        "http://127.0.0.1:5072/x.git",
        "https://localhost/x.git",
        "http://2130706433/x.git",
        "git://127.1/x",
        "https://[::1]:8443/x.git",
        "http://169.254.169.254/latest",
        "ssh://git@0.0.0.0/x.git",
        f"https://{api.settings.mqtt.host}:{api.settings.mqtt.port}/x.git",
    ]
    for url in refused:
        body = assert_error(call(api, "POST", PROJECTS, ALICE_TOKEN, json={**SLA, "ml_repo_url": url}), 403)
        assert body == {
            "error": "ml_repo_url: cannot reach the repository",
            "details": [{"field": "ml_repo_url", "message": "cannot reach the repository"}],
        }, url
    assert "the local path /etc/passwd is outside the folders" in caplog.text  # the admin's log has the reason
    assert "the host 169.254.169.254 is denied by the repository access policy (169.254.0.0/16)" in caplog.text
    for url in ("examples/sklearn_digits", "https://git.example.org/ml/r.git", "git@github.com:o/r.git"):
        start(api, ALICE_TOKEN, ml_repo_url=url)
    start(api, ADMIN_TOKEN, ml_repo_url="/etc")  # the operator's own projects: only deny_hosts applies
    on_behalf = call(api, "POST", PROJECTS, ADMIN_TOKEN, json={**SLA, "customerID": "alice", "ml_repo_url": "/etc"})
    assert_error(on_behalf, 403, "cannot reach the repository")  # a customer's project follows the customers' rules


def test_the_admin_widens_the_repo_policy_in_the_settings(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    settings = ManagerSettings(
        admin_token=ADMIN_TOKEN,
        customer_tokens=TOKENS,
        mqtt=mqtt_settings,
        repo_base_dir=tmp_path / "base",
        repo_access={
            "local_roots": [str(tmp_path / "shared")],
            "allow_hosts": ["127.0.0.1"],
            "deny_hosts": ["git.blocked.example", "10.0.0.0/8"],
        },
    )
    store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    store.connect()
    try:
        client = create_api(RecordingControl(store), store, TokenAuth(TOKENS, ADMIN_TOKEN), settings).test_client()
        for token, url, status in [
            (ALICE_TOKEN, "relative/repo", 201),
            (ALICE_TOKEN, str(tmp_path / "shared" / "repo"), 201),
            (ALICE_TOKEN, "http://127.0.0.1:9999/repo.git", 201),
            (ALICE_TOKEN, str(tmp_path / "other"), 403),
            (ALICE_TOKEN, "https://localhost/repo.git", 403),
            (ADMIN_TOKEN, "https://git.blocked.example/r.git", 403),
            (ADMIN_TOKEN, "http://10.1.2.3/r.git", 403),
            (ADMIN_TOKEN, str(tmp_path / "other"), 201),
        ]:
            headers = {"Authorization": f"Bearer {token}"}
            answer = client.post(PROJECTS, json={**SLA, "ml_repo_url": url}, headers=headers)
            assert answer.status_code == status, (url, answer.get_json())
        refused = client.post(
            PROJECTS,
            json={**SLA, "ml_repo_url": "https://git.blocked.example/r.git"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert "denied by the repository access policy (git.blocked.example)" in refused.get_json()["error"]
    finally:
        store.close()


def test_customers_cannot_name_the_managers_own_folders_even_inside_the_base_dir(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    config = base / "suite" / "manager.json"
    config.parent.mkdir(parents=True)
    config.write_text(
        json.dumps(
            {
                "admin_token": ADMIN_TOKEN,
                "customer_tokens": TOKENS,
                "repo_base_dir": str(base),
                "state_dir": str(base / "state"),
                "cache_dir": str(base / "cache"),
                "mqtt": mqtt_settings.model_dump(mode="json"),
            }
        )
    )
    settings = load_settings(config, environ={})
    assert settings.config_file == config
    store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    store.connect()
    try:
        client = create_api(RecordingControl(store), store, TokenAuth(TOKENS, ADMIN_TOKEN), settings).test_client()
        for url, status in [
            ("repos/model", 201),
            ("state", 403),
            ("state/pki", 403),
            ("cache/envs", 403),
            ("suite", 403),
            (".", 403),
            (f"file://{base}", 403),
        ]:
            answer = client.post(
                PROJECTS, json={**SLA, "ml_repo_url": url}, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}
            )
            assert answer.status_code == status, (url, answer.get_json())
    finally:
        store.close()


def test_the_lifecycle_gives_each_owners_builder_the_policy_the_api_checked(tmp_path: Path) -> None:
    settings = ManagerSettings(
        admin_token=ADMIN_TOKEN,
        repo_base_dir=tmp_path,
        mongo_uri="mongodb://db.internal:27017",
        repo_access={"local_roots": ["/srv/repos"], "deny_hosts": ["10.0.0.0/8"]},
    )
    rules = lifecycle_settings(settings).repo_access
    customer, admin = rules.for_owner("alice"), rules.for_owner("Admin")
    assert customer.local_roots == [str(tmp_path), "/srv/repos"]
    assert str(settings.state_dir.absolute()) in customer.local_denied and admin.local_denied == []
    assert not customer.detailed_errors and not customer.follow_redirects
    assert {"127.0.0.0/8", "169.254.0.0/16", "db.internal", socket.gethostname(), "10.0.0.0/8"} <= set(
        customer.deny_hosts
    )
    assert admin.local_roots is None and admin.deny_hosts == ["10.0.0.0/8"] and admin.detailed_errors


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
    assert wait_until(
        lambda: call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()["status"] == "STOPPED",
        10,
        interval=0.05,
    )
    answer = call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN).json()
    assert [event["text"] for event in answer["events"]] == ["project accepted", "stopped by request"]
    assert [event["seq"] for event in answer["events"]] == [1, 2]
    assert answer["status"] == "STOPPED" and answer["finished"] is True
    later = call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": 1}).json()
    assert [event["text"] for event in later["events"]] == ["stopped by request"]
    assert_error(call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": -1}), 422, "after")
    assert_error(call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN, params={"after": "x"}), 422, "after")


def test_a_running_project_gives_eta_elapsed_and_phase_times(api: RunningApi) -> None:
    project_id = start(
        api, ALICE_TOKEN, ml_repo_url=SIMULATE_PREFIX + "/eta.git", training_configuration={"training_rounds": 6}
    )["project_id"]

    def measured() -> dict[str, Any] | None:
        answer: dict[str, Any] = call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()
        return answer if 2 <= answer["progress"]["round"] <= 4 and answer["status"] == "RUNNING" else None

    assert wait_until(lambda: measured() is not None, 30, interval=0.05)
    record = measured() or {}
    done = record["progress"]["round"]
    reported = [r.at for r in api.store.list_rounds(project_id)][:done]
    slowest = max([SIMULATED_ROUND_S, *(b - a for a, b in zip(reported, reported[1:], strict=False))])
    # The ETA is the rounds left at the measured pace (at most the slowest round's), less the time since.
    assert 0 < record["eta_s"] <= (6 - done) * slowest + 0.01, record
    assert record["elapsed_s"] >= 2 * SIMULATED_ROUND_S and set(record["phase_seconds"]) == {"training"}
    events = call(api, "GET", f"{PROJECTS}/{project_id}/events", ALICE_TOKEN).json()
    assert events["elapsed_s"] > 0 and (events["eta_s"] is None or events["eta_s"] >= 0)
    assert wait_until(lambda: api.store.get_project(project_id).status is ProjectStatus.COMPLETED, 30)  # type: ignore[union-attr]
    finished = call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()
    assert finished["eta_s"] == 0.0
    elapsed = finished["elapsed_s"]
    time.sleep(0.3)
    assert call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()["elapsed_s"] == elapsed  # stopped


def test_rounds_history_as_json_csv_and_a_learning_curve(api: RunningApi) -> None:
    project_id = start(
        api, ALICE_TOKEN, ml_repo_url=SIMULATE_PREFIX + "/rounds.git", training_configuration={"training_rounds": 3}
    )["project_id"]
    assert wait_until(lambda: api.store.get_project(project_id).status is ProjectStatus.COMPLETED, 30)  # type: ignore[union-attr]
    answer = call(api, "GET", f"{PROJECTS}/{project_id}/rounds", ALICE_TOKEN)
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert [(r["step"], r["round"], r["cycle"], r["cluster"], r["participants"]) for r in body["rounds"]] == [
        (1, 1, 1, None, 2),
        (2, 2, 1, None, 2),
        (3, 3, 1, None, 2),
    ]
    assert [r["metrics"]["accuracy"] for r in body["rounds"]] == [0.51, 0.52, 0.53]
    assert body["plot_url"] == f"{PROJECTS}/{project_id}/rounds/plot.png"

    as_csv = call(api, "GET", f"{PROJECTS}/{project_id}/rounds", ALICE_TOKEN, headers={"Accept": "text/csv"})
    assert as_csv.status_code == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert list(rows[0])[:9] == [
        "step",
        "cycle",
        "round",
        "cluster",
        "participants",
        "num_examples",
        "duration_s",
        "accuracy",
        "loss",
    ]
    assert [(row["step"], row["cluster"], row["accuracy"]) for row in rows] == [
        ("1", "", "0.51"),
        ("2", "", "0.52"),
        ("3", "", "0.53"),
    ]

    plot = call(api, "GET", body["plot_url"], ALICE_TOKEN)
    assert plot.status_code == 200 and plot.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(plot.content))
    assert image.format == "PNG"
    assert json.loads(image.text["Points"]) == {"accuracy/global": 3, "loss/global": 3}

    for path in (f"{PROJECTS}/{project_id}/rounds", f"{PROJECTS}/{project_id}/rounds/plot.png"):
        assert_error(call(api, "GET", path, BOB_TOKEN), 404, "no project")  # another customer's
    assert call(api, "GET", f"{PROJECTS}/{project_id}/rounds", ADMIN_TOKEN).status_code == 200
    empty = start(api, ALICE_TOKEN)["project_id"]
    assert call(api, "GET", f"{PROJECTS}/{empty}/rounds", ALICE_TOKEN).json()["rounds"] == []
    assert call(api, "GET", f"{PROJECTS}/{empty}/rounds", ALICE_TOKEN, headers={"Accept": "text/csv"}).text == (
        "step,cycle,round,cluster,participants,num_examples,duration_s,at\n"
    )


def test_stop_answers_the_stopped_project_and_control_errors_keep_their_status(api: RunningApi) -> None:
    project_id = start(api, ALICE_TOKEN)["project_id"]
    stopping = call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN)
    assert stopping.status_code == 202 and stopping.json()["status"] == "STOPPING"  # it stops in the background
    again = call(api, "DELETE", f"{PROJECTS}/{project_id}", ALICE_TOKEN)
    assert again.status_code == 202 and again.json()["status"] == "STOPPING"
    assert wait_until(
        lambda: call(api, "GET", f"{PROJECTS}/{project_id}", ALICE_TOKEN).json()["status"] == "STOPPED",
        10,
        interval=0.05,
    )
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
    assert_error(
        call(api, "POST", "/api/flops/cache/prune", ADMIN_TOKEN, json={"older_than_days": -1}), 422, "older_than_days"
    )
    answer = call(api, "POST", "/api/flops/cache/prune", ADMIN_TOKEN, json={"older_than_days": 2.5, "dry_run": True})
    assert answer.status_code == 200 and answer.json()["dry_run"] is True, answer.text
    assert answer.json()["images"]["removed_from_registry"] == [PRUNED_MANIFEST], answer.text
    requests_seen = [argument for name, argument in api.control.calls if name == "prune_cache"]
    assert [(r.older_than_days, r.dry_run) for r in requests_seen] == [(2.5, True)]


@pytest.mark.parametrize(
    ("path", "token", "body", "field"),
    [
        (
            PROJECTS,
            ALICE_TOKEN,
            {**SLA, "training_configuration": {"training_rounds": True}},
            "training_configuration.training_rounds",
        ),
        (
            PROJECTS,
            ALICE_TOKEN,
            {**SLA, "training_configuration": {"training_rounds": "3"}},
            "training_configuration.training_rounds",
        ),
        (PROJECTS, ALICE_TOKEN, {**SLA, "resource_constraints": {"storage": False}}, "resource_constraints.storage"),
        (PROJECTS, ALICE_TOKEN, {**SLA, "verbose": 1}, "verbose"),
        ("/api/flops/cache/prune", ADMIN_TOKEN, {"dry_run": 0}, "dry_run"),
        ("/api/flops/cache/prune", ADMIN_TOKEN, {"older_than_days": "3"}, "older_than_days"),
        ("/api/flops/cache/prune", ADMIN_TOKEN, {"older_than_days": True}, "older_than_days"),
        (
            "/api/flops/mocks",
            ALICE_TOKEN,
            {"mock_data_configuration": {"data_tag": "d", "seed": False}},
            "mock_data_configuration.seed",
        ),
        (
            "/api/flops/mocks",
            ALICE_TOKEN,
            {"mock_data_configuration": {"data_tag": "d", "seed": 1.5}},
            "mock_data_configuration.seed",
        ),
    ],
)
def test_wrong_types_are_refused_not_coerced(
    api: RunningApi, path: str, token: str, body: dict[str, Any], field: str
) -> None:
    before = len(api.control.calls)
    error = assert_error(call(api, "POST", path, token, json=body), 422, field)
    assert [detail["field"] for detail in error["details"]] == [field]
    assert len(api.control.calls) == before  # nothing was started, pushed or pruned
    accepted = call(api, "POST", "/api/flops/cache/prune", ADMIN_TOKEN, json={"older_than_days": 3, "dry_run": True})
    assert accepted.status_code == 200, accepted.text  # an integer is a number of days


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
        "mock_data_configuration.data_tag",
        "mock_data_configuration.number_of_partitions",
    }


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
    assert set(post["responses"]) >= {"201", "400", "401", "403", "413", "422"}
    assert set(spec["paths"]["/api/flops/mocks"]["post"]["responses"]) >= {"200", "400", "403", "413", "422"}
    for path, item in spec["paths"].items():  # every error, 422 included, is the one ErrorResponse object
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                schema = (answer.get("content") or {}).get("application/json", {}).get("schema") or {}
                if status.startswith(("4", "5")) and path != "/health":
                    assert schema.get("$ref", "").endswith("/ErrorResponse"), (method, path, status, schema)
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


def test_inputs_that_used_to_crash_the_server_get_4xx_json(api: RunningApi) -> None:
    project_id = start(api, ALICE_TOKEN)["project_id"]
    events = f"{PROJECTS}/{project_id}/events"
    assert_error(call(api, "GET", events, ALICE_TOKEN, params={"after": 2**63}), 422, "after")  # was OverflowError
    assert call(api, "GET", events, ALICE_TOKEN, params={"after": 2**63 - 1}).json()["events"] == []
    deep = b"[" * 20_000 + b"]" * 20_000  # was RecursionError
    headers = {"Content-Type": "application/json"}
    for path in (PROJECTS, "/api/flops/mocks", f"{PROJECTS}/{project_id}/predict"):
        assert_error(call(api, "POST", path, ALICE_TOKEN, data=deep, headers=headers), 422, "deeper than 32 levels")
    quoted = json.dumps({**SLA, "ml_repo_url": "https://example.org/" + "[" * 1000}).encode()
    assert call(api, "POST", PROJECTS, ALICE_TOKEN, data=quoted, headers=headers).status_code == 201  # in a string


def test_a_body_over_the_limit_is_a_json_413_over_https_too(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    tls = ensure_server_tls(tmp_path / "tls", ["127.0.0.1"])
    settings = ManagerSettings(
        port=0,
        admin_token=ADMIN_TOKEN,
        customer_tokens=TOKENS,
        mqtt=mqtt_settings,
        tls_cert_file=tls.cert_file,
        tls_key_file=tls.key_file,
    )
    store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    store.connect()
    server = make_server(create_api(RecordingControl(store), store, TokenAuth(TOKENS, ADMIN_TOKEN), settings), settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        huge = json.dumps({**SLA, "training_configuration": {"data_tags": ["x" * 60] * 17_000}})  # just over 1 MiB
        answer = requests.post(
            f"https://127.0.0.1:{server.port}{PROJECTS}",
            data=huge,
            timeout=30,
            verify=str(tls.ca_file),
            headers={"Authorization": f"Bearer {ALICE_TOKEN}", "Content-Type": "application/json"},
        )
        assert_error(answer, 413)
    finally:
        server.close()
        thread.join(10)
        store.close()


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
    env = {
        "FLOPS_MANAGER_CONFIG": str(config),
        "FLOPS_MANAGER_PORT": "6001",
        "FLOPS_MQTT_PASSWORD": "12345",
        "FLOPS_MONGO_URI": "mongodb://db:27017",
    }
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
