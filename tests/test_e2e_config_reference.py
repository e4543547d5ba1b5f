"""A whole project whose services fetch their configuration from the manager (as on Oakestra).

The stack turns ``configs_by_reference`` on for the local orchestrator, so every project
service (builder, aggregator, learners, observer, serving) and the customer's MLflow server
start with only a URL and a token. Training, logging and serving must work as usual, the
adapter's records hold no configuration, and a project's references stop working when the
project (or its serving endpoint) ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import requests

from manager.suite import SuiteEndpoints
from tests.fixtures_stack import FlopsStack, running_stack, sla, stop_local_services
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def reference_stack(suite: SuiteEndpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlopsStack]:
    root = tmp_path_factory.mktemp("by-reference")
    try:
        with running_stack(suite, root, configs_by_reference=["local"]) as stack:
            yield stack
    finally:
        stop_local_services(root / "state")


def _project_specs(stack: FlopsStack, project_id: str) -> dict[str, dict[str, Any]]:
    """Service name -> spec as the local adapter keeps it, for the project's app and its observer."""
    state = json.loads((stack.state_dir / "local-adapter" / "state.json").read_text())
    specs: dict[str, dict[str, Any]] = {}
    for app in state["apps"].values():
        for name, service in app["services"].items():
            if app.get("project_id") == project_id or name == f"observer-{project_id[:8]}":
                specs[name] = service["spec"]
    return specs


def _tracking_spec(stack: FlopsStack) -> dict[str, Any]:
    """The customer's MLflow server, in its observatory app."""
    state = json.loads((stack.state_dir / "local-adapter" / "state.json").read_text())
    found = [
        app["services"]["tracking"]["spec"]
        for app in state["apps"].values()
        if app["kind"] == "observatory" and "tracking" in app["services"]
    ]
    assert len(found) == 1, found
    return dict(found[0])


def _fetch(reference: dict[str, str], token: str | None = None) -> requests.Response:
    token = reference["FLOPS_CONFIG_TOKEN"] if token is None else token
    return requests.get(reference["FLOPS_CONFIG_URL"], headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_services_fetch_their_configuration_and_lose_it_when_the_project_ends(reference_stack: FlopsStack) -> None:
    stack = reference_stack
    stack.push_mocks("digits-ref", 2)
    request = sla(
        "examples/sklearn_digits",
        ["digits-ref"],
        training_rounds=2,
        min_available_clients=2,
        min_fit_clients=2,
        min_evaluate_clients=2,
    )
    request["post_training_steps"] = ["deploy_trained_model_image"]
    project_id = stack.submit(request)

    def deployed() -> dict[str, dict[str, Any]] | None:
        specs = _project_specs(stack, project_id)
        ready = "aggregator" in specs and sum(name.startswith("learner-") for name in specs) == 2
        return specs if ready else None

    specs = wait_until(deployed, 600, interval=1.0)
    assert specs, (stack.project(project_id)["phase"], stack.events(project_id)[-10:])
    assert f"observer-{project_id[:8]}" in specs, sorted(specs)
    for name, spec in specs.items():
        assert spec["config"] == {}, f"{name} carries its configuration"
        assert spec["environment"]["FLOPS_CONFIG_URL"].startswith(f"{stack.url}/service-config/"), name
    aggregator = specs["aggregator"]["environment"]
    fetched = _fetch(aggregator)
    assert fetched.status_code == 200 and fetched.json()["project_id"] == project_id
    password = fetched.json()["mqtt"]["password"]
    assert password, "the aggregator's broker account"
    refused = _fetch(aggregator, token="wrong-token")
    assert refused.status_code == 401 and "wrong token" in refused.json()["error"]
    # The manager keeps them sealed: neither the broker password nor the token is in the database.
    config = json.loads(Path(stack.config_path).read_text())
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        config["mongo_uri"], serverSelectionTimeoutMS=10_000
    )
    with client:
        documents = list(client[config["database"]]["service_configs"].find({"owner": project_id}))
    assert len(documents) >= len(specs), (len(documents), sorted(specs))
    for document in documents:
        assert set(document) == {"_id", "config_id", "owner", "token_sha256", "sealed"}, document
        assert str(document["sealed"]).startswith("fernet:")
        assert password not in str(document) and aggregator["FLOPS_CONFIG_TOKEN"] not in str(document)

    project = stack.wait(project_id)
    assert project["status"] == "COMPLETED", (project["error"], stack.events(project_id)[-10:])
    assert project["progress"]["round"] == 2 and project["serving_url"]
    inputs = [[float(value) for value in range(64)]]
    prediction = stack.api("POST", f"/api/flops/projects/{project_id}/predict", json={"inputs": inputs})
    assert prediction.status_code == 200, prediction.text

    tracking = _tracking_spec(stack)
    assert tracking["config"] == {} and _fetch(tracking["environment"]).json()["tls"], "the MLflow server's key"
    ended = _fetch(aggregator)
    assert ended.status_code == 404 and "project may have ended" in ended.json()["error"]
    serving = _project_specs(stack, project_id)["serving"]["environment"]
    assert _fetch(serving).status_code == 200  # the endpoint may be restarted while it serves
    assert stack.api("DELETE", f"/api/flops/projects/{project_id}").status_code == 200
    assert _fetch(serving).status_code == 404
    assert _fetch(tracking["environment"]).status_code == 200  # the observatory outlives its projects
