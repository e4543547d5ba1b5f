"""The suite's Mosquitto broker: password-protected, per-project accounts, persistent, in the foreground.

With the dynamic-security plugin (Debian's 'mosquitto' package has it) the manager creates
one account per project that may only use that project's topics; see manager.broker_access.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from flops_utils.mqtt_link import configure_tls
from flops_utils.service_config import MqttSettings
from manager.suite.processes import ProcessRecord, find_binary, launch, run_tool, wait_ready
from manager.suite.state import HOST, MOSQUITTO, ComponentState, Credentials
from manager.suite.tls import suite_server_tls

log = logging.getLogger(__name__)

_INSTALL_HINT = "install the Debian package 'mosquitto' (make system-packages)"
READY_TIMEOUT_S = 30.0


def broker_dir(state_dir: Path) -> Path:
    return state_dir / MOSQUITTO


def log_file(state_dir: Path) -> Path:
    return state_dir / "logs" / f"{MOSQUITTO}.log"


def config_file(state_dir: Path) -> Path:
    return broker_dir(state_dir) / "mosquitto.conf"


DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
# The admin (the manager) also publishes under every project (control commands, tests).
ADMIN_EXTRA_ACLS = ({"acltype": "publishClientSend", "topic": "flops/#", "allow": True},)


def dynsec_plugin() -> Path | None:
    """Mosquitto's dynamic-security plugin (Debian ships it in the 'mosquitto' package)."""
    for pattern in DYNSEC_PLUGIN_GLOBS:
        for match in sorted(Path("/").glob(pattern.lstrip("/"))):
            return match
    return None


def dynsec_file(state_dir: Path) -> Path:
    return broker_dir(state_dir) / "dynamic-security.json"


def dynsec_document(credentials: Credentials, kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plugin's state: ``credentials`` as its admin (made by ``mosquitto_ctrl dynsec init``, which hashes the
    password) plus the other clients, roles and groups of ``kept``. Anything not granted is denied."""
    with tempfile.TemporaryDirectory(prefix="flops-dynsec-") as scratch:
        fresh_path = Path(scratch) / "dynamic-security.json"
        run_tool(
            [
                find_binary("mosquitto_ctrl", _INSTALL_HINT),
                "dynsec",
                "init",
                str(fresh_path),
                credentials.username,
                credentials.password,
            ],
            name="mosquitto_ctrl dynsec init",
        )
        fresh: dict[str, Any] = json.loads(fresh_path.read_text())
    for role in fresh["roles"]:
        if role["rolename"] == "admin":
            role["acls"].extend(ADMIN_EXTRA_ACLS)
    kept = kept or {}
    admin_names = {client["username"] for client in fresh["clients"]}
    fresh["clients"] += [client for client in kept.get("clients", []) if client.get("username") not in admin_names]
    fresh["roles"] += [role for role in kept.get("roles", []) if role.get("rolename") != "admin"]
    fresh["groups"] = kept.get("groups", [])
    fresh["defaultACLAccess"] = {
        "publishClientSend": False,
        "publishClientReceive": True,
        "subscribe": False,
        "unsubscribe": True,
    }
    return fresh


def write_dynsec(state_dir: Path, credentials: Credentials) -> Path:
    """The plugin's state with the suite's admin account, keeping the project accounts of earlier starts."""
    path = dynsec_file(state_dir)
    try:
        kept = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        kept = {}
    path.write_text(json.dumps(dynsec_document(credentials, kept), indent=1))
    os.chmod(path, 0o600)
    return path


def write_config(state_dir: Path, component: ComponentState, acl_file: Path | None, tls: bool = True) -> Path:
    """Write the account store (dynamic security, else a password file), TLS files and the config.

    Returns the config's path. ``tls=False`` (development only) listens in plain TCP.
    """
    if component.credentials is None:
        raise ValueError("the broker needs credentials")
    directory = broker_dir(state_dir)
    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    plugin = dynsec_plugin()
    if plugin is not None:
        accounts = [f"plugin {plugin}", f"plugin_opt_config_file {write_dynsec(state_dir, component.credentials)}"]
    else:
        password_file = directory / "passwd"
        password_file.unlink(missing_ok=True)
        password_file.touch(mode=0o600)
        passwd_tool = find_binary("mosquitto_passwd", _INSTALL_HINT)
        run_tool(
            [passwd_tool, "-b", str(password_file), component.credentials.username, component.credentials.password],
            name="mosquitto_passwd",
        )
        os.chmod(password_file, 0o600)
        accounts = [f"password_file {password_file}"]
    listener = [f"listener {component.port} {HOST}"]
    if tls:
        files = suite_server_tls(state_dir)
        component.ca_pem = files.ca_pem
        listener += [
            f"cafile {files.ca_file}",
            f"certfile {files.cert_file}",
            f"keyfile {files.key_file}",
            "tls_version tlsv1.2",
        ]
    else:
        component.ca_pem = None
        log.warning("the suite's MQTT broker listens without TLS (development only)")
    lines = [
        "# written by manager.suite; rewritten on every start",
        # As root Mosquitto would drop to the 'mosquitto' user, who cannot read our files.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        *listener,
        "allow_anonymous false",
        *accounts,
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 1",
        "max_queued_messages 10000",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if acl_file is not None:
        lines.append(f"acl_file {acl_file.resolve()}")
    path = config_file(state_dir)
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def start(state_dir: Path, component: ComponentState) -> ProcessRecord:
    """Start Mosquitto from the config already written; return once it accepts our login."""
    binary = find_binary("mosquitto", _INSTALL_HINT)
    process = launch(
        [binary, "-c", str(config_file(state_dir))], log_file=log_file(state_dir), cwd=state_dir, name=MOSQUITTO
    )
    settings = settings_for(component)
    wait_ready(
        process,
        lambda: broker_accepts(settings),
        name=MOSQUITTO,
        log_file=log_file(state_dir),
        timeout=READY_TIMEOUT_S,
    )
    return process


def settings_for(component: ComponentState) -> MqttSettings:
    credentials = component.credentials or Credentials(username="", password="")
    return MqttSettings(
        host=HOST,
        port=component.port,
        username=credentials.username,
        password=credentials.password,
        ca_pem=component.ca_pem,
    )


def broker_accepts(settings: MqttSettings, timeout: float = 3.0) -> bool:
    """True when the broker answers a CONNECT with these settings by accepting it."""
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason_code: object, props: object) -> None:
        accepted.append(not getattr(reason_code, "is_failure", True))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flops-suite-probe-{uuid.uuid4().hex[:8]}")
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    configure_tls(client, settings)
    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except (OSError, ValueError):
        return False
    client.loop_start()
    try:
        answered.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return bool(accepted) and accepted[0]
