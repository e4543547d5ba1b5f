"""Per-project MQTT credentials: each project's services may use only their own project's topics.

With Mosquitto's dynamic-security plugin (the suite enables it) the manager, as the
broker's admin, creates one role per project that may publish and subscribe under
``flops/projects/<id>/#`` only, and one client per grant with that role. Commands go
over MQTT (``$CONTROL/dynamic-security/v1``), so this works with any broker that runs
the plugin, local or remote. A broker without the plugin gets the shared credentials
and a warning: every service then uses the manager's own account.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from flops_utils.mqtt_catalogue import project_filter
from flops_utils.mqtt_link import configure_tls
from flops_utils.service_config import MqttSettings

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ProjectCredentialsMode = Literal["auto", "dynamic-security", "shared"]


class BrokerAccessError(RuntimeError):
    """The broker refused or did not answer a credentials command (one line)."""


class BrokerUnreachable(BrokerAccessError):
    """The broker could not be reached or refused the admin account: nothing is known about its plugins."""


class BrokerAccess(Protocol):
    @property
    def per_project(self) -> bool:
        """True when each project gets its own account."""
        ...

    def grant(self, project_id: str) -> MqttSettings:
        """Settings for one project's services: they may only use that project's topics."""
        ...

    def revoke(self, project_id: str) -> None:
        """Remove every credential granted for the project (idempotent)."""
        ...


@dataclass
class SharedAccess:
    """No per-project accounts: services use the manager's settings."""

    settings: MqttSettings
    per_project: bool = False

    def grant(self, project_id: str) -> MqttSettings:
        return self.settings

    def revoke(self, project_id: str) -> None:
        return None


def role_name(project_id: str) -> str:
    return f"flops-project-{project_id}"


def client_prefix(project_id: str) -> str:
    return f"p-{project_id}-"


def project_acls(project_id: str) -> list[dict[str, Any]]:
    topics = project_filter(project_id).removesuffix("+") + "#"
    return [
        {"acltype": "publishClientSend", "topic": topics, "allow": True},
        {"acltype": "subscribePattern", "topic": topics, "allow": True},
    ]


class DynamicSecurityAccess:
    """Creates and removes per-project roles and clients through the dynamic-security plugin."""

    per_project = True

    def __init__(self, admin: MqttSettings, timeout_s: float = 10.0) -> None:
        self.admin = admin
        self.timeout_s = timeout_s

    def grant(self, project_id: str) -> MqttSettings:
        username = f"{client_prefix(project_id)}{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(24)
        role = role_name(project_id)
        answers = self.execute([{"command": "createRole", "rolename": role, "acls": project_acls(project_id)}])
        if answers[0].get("error") and "exists" not in str(answers[0]["error"]).lower():
            raise BrokerAccessError(f"cannot create the MQTT role {role}: {answers[0]['error']}")
        self._check(
            self.execute(
                [{"command": "createClient", "username": username, "password": password, "roles": [{"rolename": role}]}]
            ),
            f"cannot create the MQTT client {username}",
        )
        return self.admin.model_copy(update={"username": username, "password": password})

    def revoke(self, project_id: str) -> None:
        listed = self.execute([{"command": "listClients", "verbose": False}])[0]
        self._check([listed], "cannot list MQTT clients")
        names = [
            name
            for name in listed.get("data", {}).get("clients", [])
            if str(name).startswith(client_prefix(project_id))
        ]
        commands: list[dict[str, Any]] = [{"command": "deleteClient", "username": name} for name in names]
        commands.append({"command": "deleteRole", "rolename": role_name(project_id)})
        self.execute(commands)  # a role or client already gone is fine

    def available(self) -> bool:
        """True when the broker answers dynamic-security commands for the admin account.

        Raises :class:`BrokerUnreachable` when the broker cannot tell (down, or refusing the admin).
        """
        try:
            answer = self.execute([{"command": "listRoles", "verbose": False}])[0]
        except BrokerUnreachable:
            raise
        except BrokerAccessError:
            return False
        return not answer.get("error")

    @staticmethod
    def _check(answers: list[dict[str, Any]], what: str) -> None:
        errors = [str(answer["error"]) for answer in answers if answer.get("error")]
        if errors:
            raise BrokerAccessError(f"{what}: {'; '.join(errors)}")

    def execute(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one batch of commands on a short-lived admin connection; return the plugin's responses."""
        answered, ready = threading.Event(), threading.Event()
        problems: list[str] = []
        responses: list[dict[str, Any]] = []

        def on_connect(client: mqtt.Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
            if reason.is_failure:
                problems.append(f"refused the admin account ({reason})")
                ready.set()
            else:
                client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(client: mqtt.Client, _userdata: object, _mid: int, reasons: Any, _props: object) -> None:
            if not reasons or reasons[0].is_failure:
                problems.append("the broker has no dynamic-security control topic for the admin account")
            ready.set()

        # Responses carry the command's correlationData back: a batch reads only its own answers.
        batch = uuid.uuid4().hex
        tagged = [{**command, "correlationData": f"{batch}-{index}"} for index, command in enumerate(commands)]
        by_tag: dict[str, dict[str, Any]] = {}

        def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
            try:
                answers = json.loads(message.payload).get("responses", [])
            except (ValueError, AttributeError):
                return
            for answer in answers:
                if isinstance(answer, dict) and str(answer.get("correlationData", "")).startswith(batch):
                    by_tag[str(answer["correlationData"])] = answer
            if len(by_tag) == len(tagged):
                responses.extend(by_tag[command["correlationData"]] for command in tagged)
                answered.set()

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"flops-dynsec-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        client.username_pw_set(self.admin.username, self.admin.password)
        configure_tls(client, self.admin)
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        try:
            client.connect(self.admin.host, self.admin.port, keepalive=15)
        except (OSError, ValueError) as error:
            raise BrokerUnreachable(f"cannot reach the MQTT broker for credentials: {error}") from None
        client.loop_start()
        try:
            if not ready.wait(self.timeout_s):
                raise BrokerUnreachable("the MQTT broker did not accept the admin connection in time")
            if problems and problems[0].startswith("refused"):
                raise BrokerUnreachable(f"the MQTT broker {problems[0]}")
            if problems:
                raise BrokerAccessError(problems[0])
            client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if not answered.wait(self.timeout_s):
                raise BrokerAccessError("the MQTT broker did not answer a dynamic-security command")
        finally:
            client.disconnect()
            client.loop_stop()
        return responses


class ResolvingAccess:
    """Decides on first use (when the broker is up) between per-project accounts and shared ones.

    ``auto`` probes the broker once; while it cannot be reached, grants fail with a clear
    reason and the next grant asks again.
    """

    def __init__(self, settings: MqttSettings, mode: ProjectCredentialsMode, probe_timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.mode = mode
        self.probe_timeout_s = probe_timeout_s
        self._chosen: BrokerAccess | None = None
        self._lock = threading.Lock()

    @property
    def per_project(self) -> bool:
        return self.mode == "dynamic-security" or (self._chosen is not None and self._chosen.per_project)

    def chosen(self) -> BrokerAccess:
        with self._lock:
            if self._chosen is None:
                self._chosen = self._choose()
            return self._chosen

    def _choose(self) -> BrokerAccess:
        if self.mode == "shared":
            return SharedAccess(self.settings)
        dynamic = DynamicSecurityAccess(self.settings)
        if self.mode == "dynamic-security" or DynamicSecurityAccess(self.settings, self.probe_timeout_s).available():
            return dynamic
        log.warning(
            "the MQTT broker does not run the dynamic-security plugin: all project services share "
            "the manager's MQTT account (set mqtt_project_credentials to 'shared' to silence this)"
        )
        return SharedAccess(self.settings)

    def grant(self, project_id: str) -> MqttSettings:
        return self.chosen().grant(project_id)

    def revoke(self, project_id: str) -> None:
        self.chosen().revoke(project_id)
