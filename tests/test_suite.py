"""The local management suite: real Mosquitto, SecantusDB and OCI registry processes.

Every test that starts, stops or restarts something owns its state dir (tmp_path);
only read-only checks use the shared session suite.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pymongo
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from flops_utils.mqtt_link import configure_tls
from flops_utils.service_config import MqttSettings
from manager.suite import (
    SuiteEndpoints,
    SuiteError,
    load_endpoints,
    restart_broker,
    start_suite,
    stop_suite,
    suite_status,
)
from manager.suite.processes import find_binary
from tests.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent


def _connect_result(settings: MqttSettings, username: str | None, password: str | None) -> str:
    """Reason the broker gives for a CONNECT with these credentials ('Success' when accepted)."""
    answered = threading.Event()
    reasons: list[str] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        reasons.append(str(reason))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    configure_tls(client, settings)
    client.on_connect = on_connect
    client.connect(settings.host, settings.port, keepalive=10)
    client.loop_start()
    try:
        assert answered.wait(15), "the broker did not answer CONNECT"
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def _pid_alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in ("Z", "X")


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    document = json.loads((state_dir / "endpoints.json").read_text())
    return {name: component["pid"] for name, component in document["components"].items()}


def _with_collection(mongo_uri: str, action: Callable[[Any], Any]) -> Any:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10000)
    try:
        return action(client["keep"]["docs"])
    finally:
        client.close()


@pytest.fixture()
def own_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir for one test; whatever the test started there is stopped afterwards."""
    state_dir = tmp_path / "suite"
    try:
        yield state_dir
    finally:
        stop_suite(state_dir)


def test_broker_refuses_anonymous_and_wrong_password_and_accepts_the_suite_login(suite: SuiteEndpoints) -> None:
    settings = suite.mqtt
    assert settings.username and settings.password
    assert _connect_result(settings, settings.username, settings.password) == "Success"
    assert _connect_result(settings, None, None) != "Success"
    assert _connect_result(settings, settings.username, settings.password + "x") != "Success"


def test_database_stores_and_finds_documents(mongo_uri: str, mongo_db_name: str) -> None:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10000)
    try:
        collection = client[mongo_db_name]["things"]
        collection.insert_many([{"name": "a", "n": 1}, {"name": "b", "n": 2}])
        assert collection.find_one({"n": 2}, {"_id": 0}) == {"name": "b", "n": 2}
        assert mongo_db_name in client.list_database_names()
    finally:
        client.close()


def test_suite_started_by_an_exiting_process_survives_is_reused_stops_and_keeps_data(own_state_dir: Path) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "manager.suite", "start", "--state-dir", str(own_state_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    endpoints_file = own_state_dir / "endpoints.json"
    assert stat.S_IMODE(endpoints_file.stat().st_mode) == 0o600
    first = load_endpoints(own_state_dir)
    assert first is not None
    assert first.mqtt.password and first.mqtt.password not in cli.stdout
    pids = _recorded_pids(own_state_dir)
    assert set(pids) == {"mosquitto", "secantusdb"}
    assert all(_pid_alive(pid) for pid in pids.values()), "the suite died with the CLI that started it"
    assert suite_status(own_state_dir) == {"mosquitto": True, "secantusdb": True}

    again = start_suite(own_state_dir)
    assert again == first
    assert _recorded_pids(own_state_dir) == pids, "a second start must reuse the running processes"
    _with_collection(first.mongo_uri, lambda docs: docs.insert_one({"kept": True}))

    stop_suite(own_state_dir)
    assert not any(_pid_alive(pid) for pid in pids.values())
    assert suite_status(own_state_dir) == {"mosquitto": False, "secantusdb": False}

    # A restarted suite keeps its credentials and data.
    restarted = start_suite(own_state_dir)
    assert restarted.mqtt.password == first.mqtt.password
    assert _connect_result(restarted.mqtt, restarted.mqtt.username, restarted.mqtt.password) == "Success"
    kept = _with_collection(restarted.mongo_uri, lambda docs: docs.find_one({}, {"_id": 0}))
    assert kept == {"kept": True}


def test_qos1_message_for_an_offline_subscriber_survives_a_broker_restart(own_state_dir: Path) -> None:
    endpoints = start_suite(own_state_dir)
    settings = endpoints.mqtt
    topic = "flops/test/persist"
    received: list[bytes] = []
    got_it = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(bytes(message.payload))
        got_it.set()

    def durable_subscriber() -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="durable-subscriber", clean_session=False)
        client.username_pw_set(settings.username, settings.password)
        configure_tls(client, settings)
        client.on_message = on_message
        client.connect(settings.host, settings.port, keepalive=10)
        return client

    subscribed = threading.Event()
    subscriber = durable_subscriber()
    subscriber.on_subscribe = lambda *_args: subscribed.set()
    subscriber.loop_start()
    assert wait_until(subscriber.is_connected, 15)
    assert subscriber.subscribe(topic, qos=1)[0] == mqtt.MQTT_ERR_SUCCESS
    assert subscribed.wait(15), "no SUBACK"
    subscriber.disconnect()
    subscriber.loop_stop()

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    publisher.username_pw_set(settings.username, settings.password)
    configure_tls(publisher, settings)
    publisher.connect(settings.host, settings.port, keepalive=10)
    publisher.loop_start()
    publisher.publish(topic, b"kept across restart", qos=1).wait_for_publish(15)
    publisher.disconnect()
    publisher.loop_stop()

    after = restart_broker(own_state_dir)
    assert after.mqtt.port == settings.port

    subscriber = durable_subscriber()
    subscriber.loop_start()
    try:
        assert got_it.wait(20), "the queued QoS 1 message was lost in the restart"
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    assert received == [b"kept across restart"]


def test_registry_speaks_tls_with_the_suite_ca_refuses_anonymous_and_accepts_the_suite_login(
    own_state_dir: Path,
) -> None:
    endpoints = start_suite(own_state_dir, registry=True)
    assert endpoints.registry is not None and endpoints.registry.ca_pem is not None
    assert suite_status(own_state_dir) == {"mosquitto": True, "secantusdb": True, "registry": True}
    ca_file = own_state_dir.parent / "registry-ca.pem"
    ca_file.write_text(endpoints.registry.ca_pem)
    url = f"https://{endpoints.registry.address}/v2/"
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(url, verify=str(ca_file), timeout=10).status_code == 401
        login = (endpoints.registry.username, endpoints.registry.password)
        assert session.get(url, auth=login, verify=str(ca_file), timeout=10).status_code == 200
        wrong = (endpoints.registry.username, "wrong")
        assert session.get(url, auth=wrong, verify=str(ca_file), timeout=10).status_code == 401
        plain = session.get(f"http://{endpoints.registry.address}/v2/", auth=login, timeout=10)
        assert plain.status_code == 400 and "HTTPS" in plain.text  # no credentials ever travel in clear
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            session.get(url, auth=login, verify=True, timeout=10)  # a client that does not trust the suite's CA


def test_registry_without_tls_is_a_development_switch(own_state_dir: Path) -> None:
    endpoints = start_suite(own_state_dir, registry=True, tls=False)
    assert endpoints.registry is not None and endpoints.registry.ca_pem is None and not endpoints.mqtt.tls
    login = (endpoints.registry.username, endpoints.registry.password)
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(f"http://{endpoints.registry.address}/v2/", auth=login, timeout=10).status_code == 200


def test_a_component_that_dies_at_start_gives_a_one_line_error_with_its_log(own_state_dir: Path) -> None:
    with pytest.raises(SuiteError) as failure:
        start_suite(own_state_dir, mqtt_acl_file=own_state_dir.parent / "no-such-acl")
    message = str(failure.value)
    assert "\n" not in message
    assert "mosquitto exited at start" in message and "acl" in message.lower()
    assert suite_status(own_state_dir) == {"mosquitto": False, "secantusdb": False}


def test_a_missing_binary_names_the_package_to_install() -> None:
    with pytest.raises(SuiteError, match="flops-no-such-tool not found: install it"):
        find_binary("flops-no-such-tool", "install it")
