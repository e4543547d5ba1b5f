"""The project observer keeps a readable, persistent event log of its project's reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from flops_utils.mqtt_catalogue import ReportedState, ServiceStatus, TrainingProgress
from flops_utils.mqtt_link import MqttLink
from flops_utils.process_groups import free_port
from flops_utils.service_config import CONFIG_ENV, LOG_LEVEL_ENV, MqttSettings, ObserverConfig
from flops_utils.token_access import token_digest
from tests.helpers import wait_until


def start_observer(config: ObserverConfig, log_path: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{CONFIG_ENV: config.model_dump_json()}, **extra_env)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.observer.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


CUSTOMER_TOKEN = "customer-token-of-p-obs"


def events(url: str, after: int = 0) -> list[dict[str, object]]:
    try:
        answer = requests.get(
            f"{url}/events", params={"after": after}, timeout=2, headers={"Authorization": f"Bearer {CUSTOMER_TOKEN}"}
        )
        return list(answer.json()["events"])
    except (requests.RequestException, KeyError, ValueError):
        return []


def test_observer_logs_reports_and_survives_a_restart(mqtt_settings: MqttSettings, tmp_path: Path) -> None:
    port = free_port()
    config = ObserverConfig(
        project_id="p-obs",
        mqtt=mqtt_settings,
        port=port,
        log_file=str(tmp_path / "events.log"),
        access_token_sha256=[token_digest(CUSTOMER_TOKEN)],
    )
    url = f"http://127.0.0.1:{port}"
    observer = start_observer(config, tmp_path / "observer.out")
    link = MqttLink(mqtt_settings).connect()
    try:
        assert wait_until(lambda: healthy(url), 60)
        time.sleep(1.0)  # the observer subscribes right after it connects
        started = ReportedState.STARTED
        link.publish(ServiceStatus(project_id="p-obs", sender="builder", service="builder", state=started))
        link.publish(
            TrainingProgress(
                project_id="p-obs",
                sender="aggregator",
                round=1,
                total_rounds=3,
                loss=0.25,
                accuracy=0.875,
                participants=2,
            )
        )
        link.publish(ServiceStatus(project_id="other", sender="x", service="learner", state=ReportedState.FAILED))
        assert wait_until(lambda: len(events(url)) >= 2, 30)
        lines = [str(event["line"]) for event in events(url)]
        assert "builder started" in lines[0]
        assert "round 1/3" in lines[1] and "accuracy=0.8750" in lines[1] and "2 learners" in lines[1]
        assert [event["seq"] for event in events(url, after=1)] == [2]
        # The events are the customer's: no token, or another customer's, gets 401.
        assert requests.get(f"{url}/events", timeout=5).status_code == 401
        other = requests.get(f"{url}/events", headers={"Authorization": "Bearer another-customer"}, timeout=5)
        assert other.status_code == 401 and other.headers["WWW-Authenticate"].startswith("Basic")

        observer.send_signal(signal.SIGTERM)
        assert observer.wait(timeout=20) == 0
        observer = start_observer(config, tmp_path / "observer.out")
        assert wait_until(lambda: len(events(url)) == 2, 60), "the log did not survive a restart"
    finally:
        link.close()
        observer.kill()
        observer.wait()


@pytest.mark.parametrize(("level", "logged"), [("DEBUG", True), ("", False)])
def test_a_verbose_projects_observer_logs_at_debug(
    mqtt_settings: MqttSettings, tmp_path: Path, level: str, logged: bool
) -> None:
    """SLA ``verbose`` sets FLOPS_LOG_LEVEL=DEBUG for the project's services: the observer then logs each request."""
    port = free_port()
    config = ObserverConfig(project_id="p-verbose", mqtt=mqtt_settings, port=port, log_file=str(tmp_path / "ev.log"))
    output = tmp_path / "observer.out"
    observer = start_observer(config, output, **{LOG_LEVEL_ENV: level})
    try:
        assert wait_until(lambda: healthy(f"http://127.0.0.1:{port}"), 60), output.read_text()[-2000:]
        assert wait_until(lambda: "observing project p-verbose" in output.read_text(), 10)
    finally:
        observer.send_signal(signal.SIGTERM)
        observer.wait(timeout=20)
    assert ('"GET /health HTTP/1.1" 200' in output.read_text()) is logged


def test_observer_serves_events_over_tls_only(mqtt_settings: MqttSettings, tmp_path: Path) -> None:
    """The manager gives the observer a certificate from its CA (as for MLflow): tokens never cross in clear."""
    from manager.security.pki import cert_pem, ensure_ca, name
    from manager.security.tracking_pki import TrackingPki

    pki = TrackingPki(tmp_path / "pki")
    port = free_port()
    config = ObserverConfig(
        project_id="p-obs-tls",
        mqtt=mqtt_settings,
        port=port,
        log_file=str(tmp_path / "events.log"),
        access_token_sha256=[token_digest(CUSTOMER_TOKEN)],
        tls=pki.issue("127.0.0.1", "observer"),
        tls_dir=str(tmp_path / "tls"),
    )
    observer = start_observer(config, tmp_path / "observer.out")
    url = f"https://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {CUSTOMER_TOKEN}"}
    try:
        assert wait_until(lambda: _answers(url, pki.ca_file), 60), (tmp_path / "observer.out").read_text()[-2000:]
        answer = requests.get(f"{url}/events", headers=headers, timeout=5, verify=str(pki.ca_file))
        assert answer.status_code == 200 and answer.json() == {"events": []}
        with pytest.raises(requests.ConnectionError):  # plain HTTP gets no answer
            requests.get(f"http://127.0.0.1:{port}/events", headers=headers, timeout=5)
        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(cert_pem(ensure_ca(tmp_path / "other", name("Other", "Other CA"), 30)[0]))
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            requests.get(f"{url}/events", headers=headers, timeout=5, verify=str(other_ca))
        assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
    finally:
        observer.kill()
        observer.wait()


def _answers(url: str, ca_file: Path) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2, verify=str(ca_file)).ok
    except requests.RequestException:
        return False
