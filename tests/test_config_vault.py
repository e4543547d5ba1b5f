"""Service configurations by reference: the vault against SecantusDB, the fetch over the real API and TLS."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

from flops_utils.config_fetch import ConfigFetchError, fetch_config_json, reference_environment
from flops_utils.process_groups import free_port
from flops_utils.service_config import LearnerConfig, MqttSettings, load_config
from manager.security.config_vault import CONFIG_PATH, ConfigRefused, ConfigVault, config_owner
from manager.security.secret_box import SecretBox
from manager.storage import MongoProjectStore
from manager.suite.tls import ensure_server_tls
from orchestrator_adapters.base import ServiceKind, ServiceSpec
from orchestrator_adapters.oakestra_sla import microservice
from tests.api_harness import RunningApi, running_api

SECRET = f"broker-password-{uuid.uuid4().hex}"


def _learner_config() -> dict[str, Any]:
    return LearnerConfig.model_validate(
        {
            "project_id": "p-ref",
            "instance_name": "learner-a",
            "node": "node-a1",
            "data_server_address": "127.0.0.1:1",
            "aggregator_address": "127.0.0.1:2",
            "app_dir": "/app",
            "work_dir": "/tmp/learner",
            "mqtt": {"host": "broker", "port": 8883, "username": "p-ref-learner", "password": SECRET},
        }
    ).model_dump(mode="json")


@pytest.fixture()
def store(mongo_uri: str, mongo_db_name: str) -> Iterator[MongoProjectStore]:
    project_store = MongoProjectStore(mongo_uri, mongo_db_name, timeout_s=10)
    project_store.connect()
    yield project_store
    project_store.close()


def test_the_vault_keeps_configs_sealed_and_hands_them_only_to_their_token(
    store: MongoProjectStore, tmp_path: Path, mongo_uri: str, mongo_db_name: str
) -> None:
    vault = ConfigVault(store, SecretBox(tmp_path / "secrets.key"))
    config = _learner_config()
    reference = vault.deposit("p-ref", config)
    serving = vault.deposit(config_owner("p-ref", "serving"), {"port": 1})

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    with client:
        documents = [str(document) for document in client[mongo_db_name]["service_configs"].find()]
    assert len(documents) == 2 and not [document for document in documents if SECRET in document]
    assert not [document for document in documents if reference.token in document]  # only its SHA-256

    assert json.loads(vault.withdraw(reference.config_id, reference.token)) == config
    with pytest.raises(ConfigRefused) as wrong:
        vault.withdraw(reference.config_id, serving.token)
    assert wrong.value.status == 401 and "wrong token" in str(wrong.value)
    assert vault.revoke("p-ref") == 1  # the serving endpoint's configuration outlives the project's
    with pytest.raises(ConfigRefused) as gone:
        vault.withdraw(reference.config_id, reference.token)
    assert gone.value.status == 404 and "project may have ended" in str(gone.value)
    assert json.loads(vault.withdraw(serving.config_id, serving.token)) == {"port": 1}
    assert vault.revoke("p-ref", config_owner("p-ref", "serving"), "p-other") == 1  # several owners in one call
    assert vault.revoke() == 0


@pytest.fixture(scope="module")
def api(mongo_uri: str, mqtt_settings: MqttSettings) -> Iterator[RunningApi]:
    database = f"t_vault_{uuid.uuid4().hex[:8]}"
    with running_api(mongo_uri, database, mqtt_settings) as running:
        yield running
    pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000).drop_database(database)


def test_a_service_loads_its_config_from_the_manager_api(api: RunningApi) -> None:
    reference = api.control.vault.deposit("p-api", _learner_config())
    url = f"{api.url}{CONFIG_PATH}/{reference.config_id}"
    loaded = load_config(LearnerConfig, reference_environment(url, reference.token, None))
    assert loaded.mqtt.password == SECRET and loaded.node == "node-a1"

    started = time.monotonic()
    with pytest.raises(ConfigFetchError) as wrong:
        load_config(LearnerConfig, reference_environment(url, "not-the-token", None))
    assert "answered 401: wrong token" in str(wrong.value)
    assert time.monotonic() - started < 10  # a refusal is final: no retries
    api.control.vault.revoke("p-api")
    with pytest.raises(ConfigFetchError) as revoked:
        load_config(LearnerConfig, reference_environment(url, reference.token, None))
    assert "answered 404" in str(revoked.value)


def test_a_manager_that_stays_away_ends_the_fetch_after_its_patience() -> None:
    url = f"http://127.0.0.1:{free_port()}{CONFIG_PATH}/abc"
    started = time.monotonic()
    with pytest.raises(ConfigFetchError) as away:
        fetch_config_json(url, "token", patience_s=3)
    assert "within 3 s" in str(away.value) and "ConnectionRefusedError" in str(away.value)
    assert 3 <= time.monotonic() - started < 15


@pytest.fixture()
def https_config_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An HTTPS server answering every GET with a config document; yields its URL and its CA (PEM)."""
    tls = ensure_server_tls(tmp_path / "tls", ["127.0.0.1", "localhost"])
    body = json.dumps({"answer": 42}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.headers.get("Authorization") == "Bearer right" else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if self.headers.get("Authorization") == "Bearer right" else b'{"error": "no"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}{CONFIG_PATH}/abc", tls.ca_pem
    finally:
        server.shutdown()
        server.server_close()


def test_the_fetch_verifies_the_manager_with_the_ca_it_was_given(
    https_config_server: tuple[str, str], tmp_path: Path
) -> None:
    url, ca_pem = https_config_server
    assert json.loads(fetch_config_json(url, "right", ca_pem)) == {"answer": 42}
    other_ca = ensure_server_tls(tmp_path / "other", ["127.0.0.1"]).ca_pem
    started = time.monotonic()
    with pytest.raises(ConfigFetchError) as untrusted:
        fetch_config_json(url, "right", other_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)
    assert time.monotonic() - started < 10  # a certificate that does not verify is final too


def test_an_oakestra_service_by_reference_carries_no_secret() -> None:
    environment = reference_environment("https://manager:5072/service-config/abc", "tok", "CA-PEM")
    spec = ServiceSpec(
        name="learner-a", kind=ServiceKind.LEARNER, config={}, image="registry/flops/learner:1", environment=environment
    )
    descriptor = microservice(
        spec, virtualization="container", rr_ip=None, expose_ports=False, node_clusters={}, clusters=set()
    )
    variables = dict(item.split("=", 1) for item in descriptor["environment"])
    assert variables["FLOPS_CONFIG_URL"] == "https://manager:5072/service-config/abc"
    assert variables["FLOPS_CONFIG_TOKEN"] == "tok" and variables["FLOPS_CONFIG_CA_PEM"] == "CA-PEM"
    assert "FLOPS_CONFIG" not in variables  # the document stays with the manager: not even an empty copy
