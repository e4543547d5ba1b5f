"""Per-project MQTT accounts on the suite's Mosquitto (dynamic-security plugin): a project's services
may use their own project's topics and nothing else; revoked accounts are refused."""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flops_utils.mqtt_catalogue import EventLine, FlopsMessage, project_filter
from flops_utils.mqtt_link import BrokerUnavailable, MqttLink, configure_tls
from flops_utils.service_config import MqttSettings
from manager.broker_access import (
    BrokerUnreachable,
    DynamicSecurityAccess,
    ResolvingAccess,
    SharedAccess,
    project_acls,
)


def _subscribe_outcome(settings: MqttSettings, topic_filter: str) -> bool:
    """True when the broker grants the subscription (read from the SUBACK)."""
    granted: queue.Queue[bool] = queue.Queue()

    def on_connect(client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        client.subscribe(topic_filter, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: object, _mid: int, reasons: Any, _p: object) -> None:
        granted.put(bool(reasons) and not reasons[0].is_failure)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-probe-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(settings.username, settings.password)
    configure_tls(client, settings)
    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.connect(settings.host, settings.port)
    client.loop_start()
    try:
        return granted.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_project_accounts_reach_only_their_own_topics(mqtt_settings: MqttSettings) -> None:
    access = ResolvingAccess(mqtt_settings, "auto")
    project, other = f"acl-{uuid.uuid4().hex[:8]}", f"acl-{uuid.uuid4().hex[:8]}"
    account = access.grant(project)
    assert access.per_project and account.username != mqtt_settings.username
    assert account.username and account.username.startswith(f"p-{project}-")

    received: queue.Queue[FlopsMessage] = queue.Queue()
    admin = MqttLink(mqtt_settings)
    admin.subscribe("flops/projects/+/+", lambda _t, message: received.put(message))
    admin.connect()
    service = MqttLink(account).connect()
    try:
        service.publish(EventLine(project_id=other, sender="intruder", text="should be dropped"))
        service.publish(EventLine(project_id=project, sender="learner", text="own topic"))
        assert service.flush(10)
        first = received.get(timeout=10)
        assert isinstance(first, EventLine) and (first.project_id, first.text) == (project, "own topic")
        with pytest.raises(queue.Empty):
            received.get(timeout=1.5)
    finally:
        service.close()
        admin.close()

    assert _subscribe_outcome(account, project_filter(project))
    assert not _subscribe_outcome(account, project_filter(other))
    assert not _subscribe_outcome(account, "#")

    access.revoke(project)
    with pytest.raises(BrokerUnavailable, match="Not authorized"):
        MqttLink(account).connect(timeout=5)
    access.revoke(project)  # idempotent


def test_each_grant_is_a_new_account_with_the_projects_rights(mqtt_settings: MqttSettings) -> None:
    access = DynamicSecurityAccess(mqtt_settings)
    project = f"acl-{uuid.uuid4().hex[:8]}"
    first, second = access.grant(project), access.grant(project)
    try:
        assert first.username != second.username and first.password != second.password
        assert _subscribe_outcome(first, project_filter(project))
        assert _subscribe_outcome(second, project_filter(project))
        role = access.execute([{"command": "getRole", "rolename": f"flops-project-{project}"}])[0]
        assert {(acl["acltype"], acl["topic"]) for acl in role["data"]["role"]["acls"]} == {
            (acl["acltype"], acl["topic"]) for acl in project_acls(project)
        }
    finally:
        access.revoke(project)
    with pytest.raises(BrokerUnavailable):
        MqttLink(second).connect(timeout=5)


def test_shared_mode_and_an_unreachable_broker(mqtt_settings: MqttSettings) -> None:
    shared = ResolvingAccess(mqtt_settings, "shared")
    assert shared.grant("any") == mqtt_settings and not shared.per_project
    assert SharedAccess(mqtt_settings).grant("x") is mqtt_settings

    nowhere = mqtt_settings.model_copy(update={"port": 1})
    unreachable = ResolvingAccess(nowhere, "auto", probe_timeout_s=2)
    with pytest.raises(BrokerUnreachable, match="cannot reach the MQTT broker"):
        unreachable.grant("p")
    wrong_admin = mqtt_settings.model_copy(update={"password": "not-the-password"})
    with pytest.raises(BrokerUnreachable, match="refused the admin account"):
        DynamicSecurityAccess(wrong_admin, timeout_s=5).available()


def test_concurrent_grants_for_many_projects(mqtt_settings: MqttSettings) -> None:
    access = DynamicSecurityAccess(mqtt_settings)
    projects = [f"acl-many-{index}-{uuid.uuid4().hex[:6]}" for index in range(6)]
    accounts: dict[str, MqttSettings] = {}

    def grant(project: str) -> None:
        accounts[project] = access.grant(project)

    threads = [threading.Thread(target=grant, args=(project,)) for project in projects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert set(accounts) == set(projects)
        for project, account in accounts.items():
            assert _subscribe_outcome(account, project_filter(project))
    finally:
        for project in projects:
            access.revoke(project)
