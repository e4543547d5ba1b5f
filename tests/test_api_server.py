"""The HTTP server under the API: many kept-alive clients, and /health while the database hangs."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from waitress import wasyncore

from flops_utils.service_config import MqttSettings
from manager.api import TokenAuth, create_api
from manager.api_server import make_server
from manager.settings import ManagerSettings
from manager.storage import MongoProjectStore
from tests.api_harness import ADMIN_TOKEN, TOKENS, RecordingControl

ANSWER_TIMEOUT_S = 20.0  # generous: only "answered at all" is asserted, speed is benchmarks/api_load.py's job


class HangingPingStore(MongoProjectStore):
    """A store whose ping does not return until released, as a database that stopped answering."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()

    def ping(self) -> bool:
        self.release.wait(120)
        return False


@contextmanager
def serving(store: MongoProjectStore, mqtt: MqttSettings, **overrides: object) -> Iterator[str]:
    settings = ManagerSettings.model_validate(
        {"port": 0, "admin_token": ADMIN_TOKEN, "customer_tokens": TOKENS, "mqtt": mqtt.model_dump(), **overrides}
    )
    store.connect()
    server = make_server(create_api(RecordingControl(store), store, TokenAuth(TOKENS, ADMIN_TOKEN), settings), settings)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        waitress = server._server  # type: ignore[attr-defined]  # noqa: SLF001 - end run() as the harness does
        waitress.task_dispatcher.shutdown()
        wasyncore.close_all(waitress._map)  # noqa: SLF001
        thread.join(10)
        store.close()


def test_health_answers_degraded_while_the_database_hangs(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings
) -> None:
    store = HangingPingStore(mongo_uri, mongo_db_name)
    try:
        with serving(store, mqtt_settings, threads=2) as url:
            answers = [requests.get(f"{url}/health", timeout=ANSWER_TIMEOUT_S) for _ in range(5)]
    finally:
        store.release.set()
    assert [answer.status_code for answer in answers] == [503] * 5
    assert answers[-1].json() == {"status": "degraded", "database": False, "broker": True}


def test_health_after_a_quiet_while_checks_again_and_answers_ok(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings
) -> None:
    import time

    with serving(MongoProjectStore(mongo_uri, mongo_db_name), mqtt_settings, db_timeout_s=1.0) as url:
        first = requests.get(f"{url}/health", timeout=ANSWER_TIMEOUT_S)
        time.sleep(3.5)  # longer than the answer counts as fresh (3 s here)
        later = requests.get(f"{url}/health", timeout=ANSWER_TIMEOUT_S)
    assert (first.status_code, later.status_code) == (200, 200), later.text


def test_more_kept_alive_clients_than_threads_and_waitress_default_limit_all_get_answers(
    mongo_uri: str, mongo_db_name: str, mqtt_settings: MqttSettings
) -> None:
    with serving(MongoProjectStore(mongo_uri, mongo_db_name), mqtt_settings, threads=4) as url:
        port = int(url.rsplit(":", 1)[1])
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT_S) for _ in range(150)]
        try:
            statuses = []
            for connection in connections:  # every earlier connection stays open, as sessions keep them
                connection.request("GET", "/api/flops/projects", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                answer = connection.getresponse()
                answer.read()
                statuses.append(answer.status)
        finally:
            for connection in connections:
                connection.close()
    assert statuses == [200] * 150
