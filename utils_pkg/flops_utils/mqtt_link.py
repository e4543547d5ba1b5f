"""A small, typed MQTT client every FLOps service uses to talk to the broker.

Publishes catalogue messages with QoS 1. While the broker is away paho keeps QoS 1
messages queued and the link reconnects by itself, so a broker restart loses nothing
that was published after the first successful connect.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from flops_utils.mqtt_catalogue import RETAINED_KINDS, FlopsMessage, MalformedMessage, parse_message, topic
from flops_utils.service_config import MqttSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, FlopsMessage], None]


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """A verifying client context for the broker's CA (file or PEM text), or None for plain TCP."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=settings.ca_file or None, cadata=settings.ca_pem or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def configure_tls(client: mqtt.Client, settings: MqttSettings) -> None:
    """Make ``client`` speak TLS and verify the broker when the settings carry a CA."""
    context = tls_context(settings)
    if context is not None:
        client.tls_set_context(context)


class BrokerUnavailable(ConnectionError):
    """The broker refused us or could not be reached in time."""


class MqttLink:
    def __init__(self, settings: MqttSettings, client_id: str | None = None, persistent_session: bool = False) -> None:
        """``persistent_session``: the broker keeps this client id's subscriptions and queues QoS 1
        messages for it while it is disconnected (also after a crash); the next connect under the same
        id receives them. Needs a fixed ``client_id``."""
        if persistent_session and not client_id:
            raise ValueError("a persistent MQTT session needs a fixed client id")
        self.settings = settings
        self.client_id = client_id or f"flops-{uuid.uuid4().hex[:12]}"
        self.persistent_session = persistent_session
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._refused: str | None = None
        self._subscriptions: dict[str, MessageHandler] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> MqttLink:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=not self.persistent_session
        )
        if self.settings.username:
            client.username_pw_set(self.settings.username, self.settings.password)
        configure_tls(client, self.settings)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        try:
            client.connect_async(self.settings.host, self.settings.port, keepalive=30)
            client.loop_start()
        except (OSError, ValueError) as error:
            raise BrokerUnavailable(self._where(f"cannot reach the MQTT broker ({error})")) from None
        if not self._connected.wait(timeout):
            reason = self._refused or "no answer"
            self.close()
            raise BrokerUnavailable(self._where(f"MQTT broker unavailable: {reason}"))
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _where(self, text: str) -> str:
        return f"{text} at {self.settings.host}:{self.settings.port}"

    # -- publish / subscribe ---------------------------------------------------
    def publish(self, message: FlopsMessage) -> None:
        """Publish with QoS 1; result messages are retained (see ``RETAINED_KINDS``)."""
        if self._client is None:
            raise BrokerUnavailable("MQTT link is not connected")
        retain = message.kind in RETAINED_KINDS
        self._client.publish(message.topic(), message.to_payload(), qos=1, retain=retain)

    def clear_retained(self, project_id: str) -> None:
        """Drop the broker's retained messages of a finished project (an empty retained payload)."""
        if self._client is None:
            raise BrokerUnavailable("MQTT link is not connected")
        for kind in RETAINED_KINDS:
            self._client.publish(topic(project_id, kind), b"", qos=1, retain=True)

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        with self._lock:
            self._subscriptions[topic_filter] = handler
        if self._client is not None and self.connected:
            self._client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
        if self._client is not None:
            self._client.unsubscribe(topic_filter)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued QoS 1 message is acknowledged by the broker."""
        import time

        deadline = time.monotonic() + timeout
        while self._client is not None and time.monotonic() < deadline:
            if not self._client._out_messages:  # noqa: SLF001 - paho has no public "pending" API
                return True
            time.sleep(0.05)
        return False

    # -- paho callbacks --------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = str(reason)
            client.disconnect()
            return
        with self._lock:
            filters = list(self._subscriptions)
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=1)
        self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            handlers = [h for f, h in self._subscriptions.items() if mqtt.topic_matches_sub(f, msg.topic)]
        if not handlers or not msg.payload:  # empty: a retained message being cleared
            return
        try:
            message = parse_message(bytes(msg.payload))
        except MalformedMessage as error:
            log.warning("ignored a payload on %s: %s", msg.topic, error)
            return
        for handler in handlers:
            try:
                handler(msg.topic, message)
            except Exception:  # a bad handler must not kill paho's network thread
                log.exception("MQTT handler failed for %s", msg.topic)
