"""The data routes of the real API: whose namespace a listing or a write token is for, and clear refusals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
import requests

from flops_utils.service_config import DataServerConfig, MqttSettings
from manager.cli.main import main as cli_main
from tests.api_harness import ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, RunningApi, running_api


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_data_api_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    client.drop_database(database)
    client.close()


def call(api: RunningApi, method: str, path: str, token: str | None, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, f"{api.url}/api/flops{path}", headers=headers, timeout=30, **kwargs)


def test_nodes_list_the_callers_namespace(api: RunningApi) -> None:
    answer = call(api, "GET", "/nodes", ALICE_TOKEN)
    assert answer.status_code == 200
    assert answer.json()["customer"] == "alice"
    assert answer.json()["nodes"][0]["tags"] == [{"tag": "alice-tag", "rows": 10, "width": 4}]
    assert call(api, "GET", "/nodes", None).status_code == 401
    refused = call(api, "GET", "/nodes", BOB_TOKEN, params={"customerID": "alice"})
    assert refused.status_code == 403
    assert refused.json()["error"] == "customerID 'alice' does not match your identity 'bob'"
    assert call(api, "GET", "/nodes", ADMIN_TOKEN, params={"customerID": "alice"}).json()["customer"] == "alice"


def test_write_tokens_are_for_the_callers_namespace_and_a_known_node(api: RunningApi) -> None:
    granted = call(api, "POST", "/data-tokens", BOB_TOKEN, json={"node": "node-0"})
    assert granted.status_code == 201 and granted.json()["customer"] == "bob"
    assert (
        call(api, "POST", "/data-tokens", ADMIN_TOKEN, json={"node": "node-0", "customerID": "alice"}).json()[
            "customer"
        ]
        == "alice"
    )
    other = call(api, "POST", "/data-tokens", BOB_TOKEN, json={"node": "node-0", "customerID": "alice"})
    assert other.status_code == 403
    unknown = call(api, "POST", "/data-tokens", BOB_TOKEN, json={"node": "node-9"})
    assert unknown.status_code == 404 and "no learner node with a data server named 'node-9'" in unknown.json()["error"]
    missing = call(api, "POST", "/data-tokens", BOB_TOKEN, json={})
    assert missing.status_code == 422 and missing.json()["details"][0]["field"] == "node"
    extra = call(api, "POST", "/data-tokens", BOB_TOKEN, json={"node": "node-0", "scope": "admin"})
    assert extra.status_code == 422


def test_only_the_admin_gets_the_data_servers_key_material(api: RunningApi) -> None:
    refused = call(api, "GET", "/data-server-security", ALICE_TOKEN)
    assert refused.status_code == 403
    assert refused.json()["error"] == "only the admin may fetch the data servers' key material"
    assert call(api, "GET", "/data-server-security", ADMIN_TOKEN).json()["key_pem"] == "KEY"


def test_cli_lists_your_tags_and_writes_a_data_server_config(
    api: RunningApi, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = ["--url", api.url, "--suite-dir", "/nonexistent"]
    assert cli_main(["data", "list", "--token", ALICE_TOKEN, *connection]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[1].split() == ["node-0", "-", "127.0.0.1:9400", "alice-tag", "10", "4"]
    assert (
        cli_main(["data", "server-config", "--node", "edge-1", "--port", "9555", "--token", ADMIN_TOKEN, *connection])
        == 0
    )
    config = DataServerConfig.model_validate_json(capsys.readouterr().out)
    assert (config.node, config.port, config.token_public_key_pem) == ("edge-1", 9555, "PUB")
    assert config.tls is not None and config.tls.key_pem == "KEY"
    assert cli_main(["data", "server-config", "--node", "edge-1", "--token", ALICE_TOKEN, *connection]) == 1
    assert "only the admin" in capsys.readouterr().err
