"""The MQTT catalogue and link against the real, password-protected Mosquitto."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path

import pytest

from flops_utils.message_text import describe
from flops_utils.mqtt_catalogue import (
    MalformedMessage,
    ModelImageBuilt,
    ReportedState,
    ServiceStatus,
    TopicKind,
    TrainingProgress,
    TrainingResult,
    parse_message,
    project_filter,
    split_topic,
    topic,
)
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink
from flops_utils.service_config import MqttSettings
from manager.suite.tls import ensure_server_tls


def test_topics_round_trip() -> None:
    name = topic("p1", TopicKind.PROGRESS)
    assert name == "flops/projects/p1/progress"
    assert split_topic(name) == ("p1", TopicKind.PROGRESS)
    assert split_topic("flops/projects/p1/nope") is None
    assert split_topic("other/topic") is None
    assert project_filter("p1") == "flops/projects/p1/+"


def test_messages_parse_by_type_and_reject_garbage() -> None:
    message = TrainingProgress(project_id="p", sender="aggregator", round=2, total_rounds=3, loss=0.5)
    parsed = parse_message(message.to_payload())
    assert parsed == message
    assert parsed.topic() == "flops/projects/p/progress"
    with pytest.raises(MalformedMessage, match="round"):
        parse_message(b'{"type": "training_progress", "project_id": "p", "sender": "a", "total_rounds": 1}')
    with pytest.raises(MalformedMessage):
        parse_message(b"\xff not json")


def test_model_image_report_round_trips_and_reads_as_one_line() -> None:
    message = ModelImageBuilt(
        project_id="p",
        sender="model-builder",
        image="r:5000/flops/x-model:abc",
        pinned="r:5000/flops/x-model@sha256:1",
        digest="sha256:1",
        model_uri="models:/m/1",
        run_id="run1",
        run_tagged=True,
        cached=True,
    )
    parsed = parse_message(message.to_payload())
    assert parsed == message and parsed.topic() == "flops/projects/p/build"
    assert describe(parsed) == "inference image r:5000/flops/x-model@sha256:1 found in the registry for models:/m/1"


def test_publish_subscribe_through_the_broker(mqtt_settings: MqttSettings) -> None:
    received: queue.Queue[object] = queue.Queue()
    listener = MqttLink(mqtt_settings)
    listener.subscribe(project_filter("p-link"), lambda _t, m: received.put(m))
    listener.connect()
    sender = MqttLink(mqtt_settings).connect()
    try:
        # garbage on a catalogue topic is logged and ignored; the link keeps working
        assert sender._client is not None
        sender._client.publish("flops/projects/p-link/status", b"garbage", qos=1)
        status = ServiceStatus(project_id="p-link", sender="learner-a", service="learner", state=ReportedState.STARTED)
        sender.publish(status)
        assert sender.flush(10)
        assert received.get(timeout=10) == status
        assert received.empty()
    finally:
        sender.close()
        listener.close()


def test_wrong_password_and_dead_broker_are_clear_errors(mqtt_settings: MqttSettings) -> None:
    wrong = mqtt_settings.model_copy(update={"password": "wrong"})
    with pytest.raises(BrokerUnavailable, match="MQTT broker unavailable"):
        MqttLink(wrong).connect(timeout=5)
    anonymous = mqtt_settings.model_copy(update={"username": None, "password": None})
    with pytest.raises(BrokerUnavailable):
        MqttLink(anonymous).connect(timeout=5)
    nowhere = MqttSettings(host="127.0.0.1", port=1, username="u", password="p")
    with pytest.raises(BrokerUnavailable, match="127.0.0.1:1"):
        MqttLink(nowhere).connect(timeout=3)


def test_the_suite_broker_speaks_only_verified_tls(mqtt_settings: MqttSettings, tmp_path: Path) -> None:
    assert mqtt_settings.tls and mqtt_settings.ca_pem and "BEGIN CERTIFICATE" in mqtt_settings.ca_pem
    MqttLink(mqtt_settings).connect(timeout=10).close()
    plain = mqtt_settings.model_copy(update={"ca_pem": None, "ca_file": None})
    with pytest.raises(BrokerUnavailable):
        MqttLink(plain).connect(timeout=4)
    stranger_ca = ensure_server_tls(tmp_path / "other-ca", ["127.0.0.1"]).ca_pem
    with pytest.raises(BrokerUnavailable):
        MqttLink(mqtt_settings.model_copy(update={"ca_pem": stranger_ca})).connect(timeout=4)


def test_results_are_retained_until_the_project_is_cleared(mqtt_settings: MqttSettings) -> None:
    project = f"p-retain-{uuid.uuid4().hex[:8]}"
    result = TrainingResult(project_id=project, sender="aggregator", rounds_completed=3, accuracy=0.9)

    def late_subscriber_sees() -> list[object]:
        seen: queue.Queue[object] = queue.Queue()
        late = MqttLink(mqtt_settings)
        late.subscribe(project_filter(project), lambda _t, message: seen.put(message))
        late.connect()
        try:
            return [seen.get(timeout=3)]
        except queue.Empty:
            return []
        finally:
            late.close()

    publisher = MqttLink(mqtt_settings).connect()
    try:
        publisher.publish(result)
        assert publisher.flush(10)
        assert late_subscriber_sees() == [result]
        publisher.clear_retained(project)
        assert publisher.flush(10)
        assert late_subscriber_sees() == []
    finally:
        publisher.close()


_SUBSCRIBER = """
import sys, time
from flops_utils.mqtt_catalogue import ALL_PROJECTS_FILTER
from flops_utils.mqtt_link import MqttLink
from flops_utils.service_config import MqttSettings
link = MqttLink(MqttSettings.model_validate_json(sys.argv[1]), client_id=sys.argv[2], persistent_session=True)
link.subscribe(ALL_PROJECTS_FILTER, lambda topic, message: None)
link.connect(timeout=10)
print("subscribed", flush=True)
time.sleep(300)
"""


def test_a_persistent_session_gets_what_was_published_while_its_client_was_killed(mqtt_settings: MqttSettings) -> None:
    """As a manager killed with SIGKILL mid-training: the next process under its client id hears every round."""
    import subprocess
    import sys

    client_id, project = f"flops-mgr-{uuid.uuid4().hex[:12]}", f"p-{uuid.uuid4().hex[:8]}"
    first = subprocess.Popen(
        [sys.executable, "-c", _SUBSCRIBER, mqtt_settings.model_dump_json(), client_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "subscribed"
    finally:
        first.kill()  # no DISCONNECT: the broker notices the dropped connection
        first.wait()
    publisher = MqttLink(mqtt_settings).connect()
    try:
        for number in range(1, 6):
            publisher.publish(TrainingProgress(project_id=project, sender="aggregator", round=number, total_rounds=5))
        assert publisher.flush()
    finally:
        publisher.close()

    heard: queue.Queue[int] = queue.Queue()
    again = MqttLink(mqtt_settings, client_id=client_id, persistent_session=True)
    again.subscribe(project_filter(project), lambda _topic, message: heard.put(message.round))  # type: ignore[attr-defined]
    again.connect(timeout=10)
    try:
        rounds = [heard.get(timeout=10) for _ in range(5)]
    finally:
        again.close()
    assert rounds == [1, 2, 3, 4, 5]
    MqttLink(mqtt_settings, client_id=client_id).connect().close()  # a clean session ends the kept one
    # A link without a fixed id cannot ask for a persistent session.
    with pytest.raises(ValueError, match="fixed client id"):
        MqttLink(mqtt_settings, persistent_session=True)
