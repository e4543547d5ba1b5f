"""Production deployment files: compose.yml, deploy/*.Containerfile, deploy/kubernetes/, the secrets generator.

No container engine or cluster runs here: compose.yml is checked structurally (and with
``docker compose config`` where that works), manifests against the official Kubernetes
schemas, and generated credentials against the real Mosquitto and htpasswd.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import requests
import yaml
from kubernetes_validate.utils import all_versions

from flops_utils.process_groups import free_port
from manager.api_server import TlsServer
from manager.broker_access import ResolvingAccess
from manager.settings import DEFAULT_PORT, ManagerSettings, load_settings
from manager.suite.mosquitto import broker_accepts, dynsec_plugin
from manager.suite.processes import ProcessRecord, launch, stop, wait_ready
from services.builder.oci import RegistryClient
from services.builder.oci.registry import RegistryError

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SECRETS_DIR = "deploy/secrets/"
KUBERNETES_VERSION = "1.30.0"
GENERATOR = REPO / "scripts" / "deploy_secrets.py"

EXPECTED_SERVICES = {
    "manager": None,
    "mosquitto": "eclipse-mosquitto:2",
    "mongo": "mongo:",
    "registry": "registry:2",
    "postgres": "postgres:",
    "mlflow": None,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Secrets made by scripts/deploy_secrets.py in a temporary directory."""
    out = tmp_path_factory.mktemp("deploy") / "secrets"
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def manifests(generated: Path) -> list[dict[str, Any]]:
    """Every object in deploy/kubernetes/ plus the generated Secrets."""
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml")) + [generated / "kubernetes-secrets.yaml"]
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose_file_references(compose: dict[str, Any]) -> Iterator[str]:
    """Every host path compose.yml names (bind mounts, env files, secret files, build files)."""
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                yield source
        yield from service.get("env_file", [])
        build = service.get("build")
        if build is not None:
            yield str(Path(build["context"]) / build["dockerfile"])
    for secret in compose.get("secrets", {}).values():
        yield secret["file"]


def test_compose_has_the_suite_services_with_images_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == set(EXPECTED_SERVICES)
    for name, image_prefix in EXPECTED_SERVICES.items():
        service = services[name]
        if image_prefix is None:
            assert "build" in service, f"{name} is built from a Containerfile"
        else:
            assert service["image"].startswith(image_prefix), name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert services["manager"]["build"]["dockerfile"] == "deploy/manager.Containerfile"
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}
    # The manager waits for everything it talks to.
    assert set(services["manager"]["depends_on"]) == {"mosquitto", "mongo", "registry", "mlflow"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}


def test_compose_volumes_secrets_and_interpolation_are_declared(compose: dict[str, Any]) -> None:
    named_volumes = set(compose["volumes"])
    secrets = set(compose["secrets"])
    used_volumes: set[str] = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used_volumes.add(source)
        for secret in service.get("secrets", []):
            assert secret in secrets
    assert used_volumes == named_volumes
    assert {"mlflow-artifacts", "postgres-data", "mongo-data", "registry-data"} <= named_volumes
    # A literal '$' must be written '$$'; the only variable compose fills in has a default.
    text = (REPO / "compose.yml").read_text().replace("$$", "")
    variables = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(:?-?)", text)
    assert variables and all(name == "FLOPS_PUBLIC_HOST" and default == ":-" for name, default in variables)


def test_every_file_compose_names_exists_or_is_generated(compose: dict[str, Any], generated: Path) -> None:
    references = list(_compose_file_references(compose))
    assert references
    for reference in references:
        relative = reference.removeprefix("./")
        if relative.startswith(SECRETS_DIR):
            assert (generated / relative.removeprefix(SECRETS_DIR)).is_file(), f"not generated: {reference}"
        else:
            assert (REPO / relative).is_file(), f"missing: {reference}"
    ignore_rules = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignore_rules[-2:] == ["*", "!.gitignore"], "generated secrets must stay out of git"


def test_docker_compose_accepts_the_file_where_the_cli_works(tmp_path: Path, generated: Path) -> None:
    """Checks with the real compose CLI when it is installed and works; structure is checked above."""
    docker = shutil.which("docker")
    works = (
        docker is not None
        and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False).returncode == 0
    )
    if not works:
        # No compose plugin on this machine: the structural tests above are the whole check.
        assert yaml.safe_load((REPO / "compose.yml").read_text())["name"] == "flops"
        return
    assert docker is not None
    project = tmp_path / "project"
    shutil.copytree(DEPLOY, project / "deploy", ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(generated, project / "deploy" / "secrets")
    shutil.copy(REPO / "compose.yml", project / "compose.yml")
    done = subprocess.run(
        [docker, "compose", "-f", "compose.yml", "config", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_containerfiles_copy_existing_paths_and_run_declared_entry_points() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for containerfile in (DEPLOY / "manager.Containerfile", DEPLOY / "mlflow.Containerfile"):
        lines = containerfile.read_text().splitlines()
        assert any(line.startswith("FROM ") for line in lines)
        assert any(line.startswith("HEALTHCHECK ") for line in lines)
        for line in lines:
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), f"{containerfile.name}: COPY {source} does not exist"
    manager = (DEPLOY / "manager.Containerfile").read_text()
    assert f"EXPOSE {DEFAULT_PORT}" in manager
    entrypoint = re.search(r"^ENTRYPOINT \[(.*)\]$", manager, re.MULTILINE)
    assert entrypoint is not None and '"flops-manager"' in entrypoint.group(1)
    assert "flops-manager" in scripts


def test_generated_secrets_are_private_complete_and_not_overwritten(generated: Path) -> None:
    assert stat.S_IMODE(generated.stat().st_mode) == 0o700
    for name in ("mqtt_password", "mongo_password", "postgres_password", "registry_password", "admin_token"):
        assert len((generated / name).read_text()) >= 32
    settings = load_settings(generated / "manager.json", environ={})
    assert settings.mqtt.password == (generated / "mqtt_password").read_text()
    assert settings.registry is not None and settings.registry.password == (generated / "registry_password").read_text()
    assert (generated / "mongo_password").read_text() in settings.mongo_uri
    # TLS: the broker's CA travels in the config; the API's files are where compose and the manifests mount them.
    assert settings.mqtt.ca_pem == (generated / "ca.pem").read_text()
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file) == (
        Path("/run/secrets/manager_tls_cert"),
        Path("/run/secrets/manager_tls_key"),
        Path("/run/secrets/flops_ca"),
    )
    assert settings.public_url.startswith("https://")
    again = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(generated)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode != 0 and "--force" in again.stderr
    assert load_settings(generated / "manager.json", environ={}).admin_token == settings.admin_token


def test_generated_registry_htpasswd_holds_the_registry_password(generated: Path) -> None:
    password = (generated / "registry_password").read_text()
    check = ["htpasswd", "-vb", str(generated / "registry_htpasswd"), "flops"]
    assert subprocess.run([*check, password], capture_output=True, timeout=30, check=False).returncode == 0
    assert subprocess.run([*check, password + "x"], capture_output=True, timeout=30, check=False).returncode != 0
    assert (generated / "registry_htpasswd").read_text().startswith("flops:$2y$")  # the registry needs bcrypt


def test_generated_broker_files_work_with_the_real_broker_over_tls(generated: Path, tmp_path: Path) -> None:
    """The production config's listener and dynamic-security plugin, with the generated seed, CA and certificate, on a
    local port: the manager's account is the admin, and makes per-project accounts confined to their project."""
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    production = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in production and "persistence true" in production
    assert "listener 1883\ncafile /mosquitto/config/tls/ca.pem" in production  # TLS only
    assert "password_file" not in production  # accounts live in the plugin only
    plugin = dynsec_plugin()
    assert plugin is not None, "Debian's mosquitto package ships the dynamic-security plugin"
    state = tmp_path / "dynamic-security.json"  # the data volume's copy (the plugin writes to it)
    shutil.copyfile(generated / "dynamic-security.json", state)
    mounted = {
        "/usr/lib/mosquitto_dynamic_security.so": str(plugin),
        "/mosquitto/data/dynamic-security.json": str(state),
        "/mosquitto/config/tls/ca.pem": str(generated / "ca.pem"),
        "/mosquitto/config/tls/server.pem": str(generated / "mosquitto_tls_cert"),
        "/mosquitto/config/tls/server.key": str(generated / "mosquitto_tls_key"),
    }
    lines = [
        line
        for line in production.splitlines()
        if line.split()[:1]
        in (
            ["cafile"],
            ["certfile"],
            ["keyfile"],
            ["tls_version"],
            ["allow_anonymous"],
            ["plugin"],
            ["plugin_opt_config_file"],
        )
    ]
    for inside, outside in mounted.items():  # as compose.yml mounts them
        lines = [line.replace(inside, outside) for line in lines]
    config.write_text(
        # As root, Mosquitto would switch to the 'mosquitto' user, who cannot enter the 0700 secrets dir.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\nlistener {port} 127.0.0.1\n"
        + "\n".join(lines)
        + "\nlog_dest stdout\n"
    )
    log_file = tmp_path / "mosquitto.log"
    broker: ProcessRecord = launch(["mosquitto", "-c", str(config)], log_file=log_file, cwd=tmp_path, name="mosquitto")
    manager = load_settings(generated / "manager.json", environ={})
    settings = manager.mqtt.model_copy(update={"host": "localhost", "port": port})  # with the generated CA
    try:
        wait_ready(broker, lambda: broker_accepts(settings), name="mosquitto", log_file=log_file, timeout=30)
        assert not broker_accepts(settings.model_copy(update={"password": str(settings.password) + "x"}))
        assert not broker_accepts(settings.model_copy(update={"username": None, "password": None}))
        assert not broker_accepts(settings.model_copy(update={"ca_pem": None}))  # plain TCP is refused
        access = ResolvingAccess(settings, "auto")
        project = access.grant("p1")
        assert access.per_project and project.username != settings.username  # not the shared account
        assert broker_accepts(project)
        assert "p-p1-" in state.read_text()  # the plugin saved the new account on the "volume"
        access.revoke("p1")
        assert not broker_accepts(project)
    finally:
        stop(broker, name="mosquitto")


def test_generated_registry_files_serve_tls_and_auth_with_the_real_registry(
    compose: dict[str, Any], generated: Path, tmp_path: Path
) -> None:
    """compose.yml's registry environment and mounts, on the real docker-registry; the builder's client verifies it."""
    service = compose["services"]["registry"]
    mounts = {}
    for volume in service["volumes"]:
        source, inside = volume.split(":")[:2]
        source = source.removeprefix("./")
        if source.startswith(SECRETS_DIR):
            mounts[inside] = str(generated / source.removeprefix(SECRETS_DIR))
    environment = {key: mounts.get(str(value), str(value)) for key, value in service["environment"].items()}
    assert {"REGISTRY_HTTP_TLS_CERTIFICATE", "REGISTRY_HTTP_TLS_KEY", "REGISTRY_AUTH_HTPASSWD_PATH"} <= set(environment)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "http": {"addr": f"127.0.0.1:{port}"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "data")}},
            }
        )
    )
    log_file = tmp_path / "registry.log"
    registry_binary = shutil.which("docker-registry")
    assert registry_binary is not None, "install the Debian package 'docker-registry' (make system-packages)"
    process = launch(
        [registry_binary, "serve", str(config)],
        log_file=log_file,
        cwd=tmp_path,
        name="registry",
        env={**os.environ, **environment},
    )
    manager = load_settings(generated / "manager.json", environ={})
    assert manager.registry is not None and manager.registry.ca_pem == (generated / "ca.pem").read_text()
    settings = manager.registry.model_copy(update={"address": f"localhost:{port}"})  # the cert names localhost too
    url = f"https://localhost:{port}/v2/"
    try:
        wait_ready(process, lambda: _answers(url, generated / "ca.pem"), name="registry", log_file=log_file, timeout=30)
        RegistryClient(settings, containers_root=tmp_path / "containers").ping()  # TLS verified, login accepted
        with pytest.raises(RegistryError, match="refused the credentials"):
            RegistryClient(settings.model_copy(update={"password": "wrong"}), containers_root=tmp_path / "c2").ping()
        assert requests.get(url, verify=str(generated / "ca.pem"), timeout=10).status_code == 401  # anonymous
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, timeout=10)  # the system's CAs do not know it
        plain = requests.get(f"http://localhost:{port}/v2/", timeout=10)
        assert plain.status_code == 400 and "HTTPS" in plain.text
    finally:
        stop(process, name="registry")


def _answers(url: str, ca_file: Path) -> bool:
    try:
        return requests.get(url, verify=str(ca_file), timeout=5).status_code == 401
    except requests.RequestException:
        return False


def test_generated_api_certificate_serves_https_for_the_manager_names(generated: Path, tmp_path: Path) -> None:
    """The real API server (cheroot) with the generated files; clients verify it with the generated CA."""
    settings = ManagerSettings(
        admin_token="x" * 12,
        port=free_port(),
        tls_cert_file=generated / "manager_tls_cert",
        tls_key_file=generated / "manager_tls_key",
    )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = TlsServer(app, settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for name in ("localhost", "127.0.0.1"):
            url = f"https://{name}:{server.port}/health"
            assert requests.get(url, verify=str(generated / "ca.pem"), timeout=10).text == "ok"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://localhost:{server.port}/health", timeout=10)  # the system's CAs do not know it
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://localhost:{server.port}/health", timeout=10)  # no plain HTTP
    finally:
        server.close()
        thread.join(timeout=10)


def test_kubernetes_manifests_validate_against_the_official_schemas(manifests: list[dict[str, Any]]) -> None:
    assert KUBERNETES_VERSION in all_versions()
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    kinds = {(manifest["kind"], manifest["metadata"]["name"]) for manifest in manifests}
    for expected in [
        ("Namespace", "flops"),
        ("Deployment", "flops-manager"),
        ("StatefulSet", "mosquitto"),
        ("StatefulSet", "mongo"),
        ("StatefulSet", "postgres"),
        ("Deployment", "registry"),
        ("Deployment", "mlflow"),
        ("PersistentVolumeClaim", "mlflow-artifacts"),
        ("PersistentVolumeClaim", "registry-data"),
        ("Secret", "flops-manager"),
    ]:
        assert expected in kinds
    for service in ("flops-manager", "mosquitto", "mongo", "postgres", "registry", "mlflow"):
        assert ("Service", service) in kinds
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    assert all(m["metadata"].get("namespace") == "flops" for m in manifests if m["kind"] not in cluster_scoped)


def _pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet"):
            yield manifest, manifest["spec"]["template"]["spec"]


def test_kubernetes_references_resolve(manifests: list[dict[str, Any]]) -> None:
    """Secrets, keys, config maps, claims and service selectors named anywhere exist."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], {})[manifest["metadata"]["name"]] = manifest
    secret_keys = {name: set(secret["stringData"]) for name, secret in by_kind["Secret"].items()}
    config_keys = {name: set(config["data"]) for name, config in by_kind["ConfigMap"].items()}

    for workload, pod in _pod_specs(manifests):
        claim_templates = {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in pod["containers"]:
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference is not None:
                    assert reference["key"] in secret_keys[reference["name"]], variable["name"]
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claim_templates, mount["name"]
        for volume in volumes.values():
            if "secret" in volume:
                keys = secret_keys[volume["secret"]["secretName"]]
                assert {item["key"] for item in volume["secret"].get("items", [])} <= keys
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_keys
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
        account = pod.get("serviceAccountName")
        if account is not None:
            assert account in by_kind["ServiceAccount"]

    pod_labels = [workload["spec"]["template"]["metadata"]["labels"] for workload, _pod in _pod_specs(manifests)]
    for name, service in by_kind["Service"].items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), f"service {name} selects no pod"

    broker_config = by_kind["ConfigMap"]["flops-mosquitto-config"]["data"]["mosquitto.conf"]
    assert broker_config == (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
