#!/usr/bin/env python3
"""Generate the secrets a production FLOps suite needs (compose.yml and deploy/kubernetes/).

    python scripts/deploy_secrets.py [--out deploy/secrets] [--force]

Writes random passwords and everything derived from them into one directory (git
ignores it): the broker's accounts (a dynamic-security seed with the manager as
admin), the registry htpasswd, the manager's config, and Kubernetes Secret
manifests. The directory is made owner-only (0700); the files in it are 0644
because the containers that mount them run as their own non-root users.

It also makes a small CA (its key is not kept: regenerate with --force to add names)
and TLS certificates for the broker, the registry and the manager's API, for their
names in the compose network and in the cluster namespace, localhost, and any
``--host``. The broker and the registry listen only with TLS; services trust them
through ``mqtt.ca_pem`` and ``registry.ca_pem``; the API speaks HTTPS, verified with
``ca.pem``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "deploy" / "secrets"
USERNAME = "flops"
NAMESPACE = "flops"
MANAGER_PORT = 5072

# Plain secrets, one value per file (compose `secrets:` and `*_FILE` variables read these).
PLAIN_SECRETS = ("mqtt_password", "mongo_password", "postgres_password", "registry_password", "admin_token")
TLS_SERVICES = ("mosquitto", "registry", "manager")
TLS_FILES = ("ca.pem", *(f"{service}_tls_{part}" for service in TLS_SERVICES for part in ("cert", "key")))
SECRETS_MOUNT = "/run/secrets"  # compose mounts its secrets here; the Kubernetes manifests mount the same paths
CA_DAYS, SERVER_DAYS = 5 * 365, 2 * 365
GENERATED_FILES = (
    *PLAIN_SECRETS,
    *TLS_FILES,
    "dynamic-security.json",
    "mosquitto.env",
    "registry_htpasswd",
    "manager.json",
    "kubernetes-secrets.yaml",
)


def dynsec_seed(password: str) -> str:
    """The dynamic-security plugin's first state: the manager's account as its admin, anything else denied."""
    from manager.suite.mosquitto import dynsec_document
    from manager.suite.processes import SuiteError
    from manager.suite.state import Credentials

    try:
        document = dynsec_document(Credentials(username=USERNAME, password=password))
    except SuiteError as error:  # mosquitto_ctrl missing or failing
        raise SystemExit(str(error)) from None
    return json.dumps(document, indent=1) + "\n"


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd line (the registry accepts only bcrypt), made by apache2-utils' htpasswd."""
    tool = shutil.which("htpasswd")
    if tool is None:
        raise SystemExit("htpasswd not found: install the Debian package 'apache2-utils'")
    done = subprocess.run([tool, "-Bbn", username, password], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def service_names(service: str) -> list[str]:
    """How a suite service is reached: compose network, cluster namespace, and locally."""
    return [
        service,
        f"{service}.{NAMESPACE}",
        f"{service}.{NAMESPACE}.svc",
        f"{service}.{NAMESPACE}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ]


def tls_files(extra_hosts: list[str]) -> dict[str, str]:
    """A CA, and certificates for the broker, the registry and the manager's API (PEM texts; the CA key is dropped)."""
    from manager.security.pki import cert_pem, issue_server_cert, key_pem, name, new_ca

    organization = "FLOps deployment"
    ca, ca_key = new_ca(name(organization, "FLOps deployment CA"), CA_DAYS)
    files = {"ca.pem": cert_pem(ca).decode()}
    for service in TLS_SERVICES:
        hosts = service_names(service) + (extra_hosts if service in ("registry", "manager") else [])
        cert, key = issue_server_cert(ca, ca_key, name(organization, f"FLOps {service}"), hosts, SERVER_DAYS)
        files[f"{service}_tls_cert"] = cert_pem(cert).decode()
        files[f"{service}_tls_key"] = key_pem(key).decode()
    return files


def manager_config(values: dict[str, str], ca_pem: str) -> dict[str, Any]:
    """The manager's settings document inside the compose network / cluster namespace."""
    return {
        "host": "0.0.0.0",
        "port": MANAGER_PORT,
        "admin_token": values["admin_token"],
        "tls_cert_file": f"{SECRETS_MOUNT}/manager_tls_cert",
        "tls_key_file": f"{SECRETS_MOUNT}/manager_tls_key",
        "tls_ca_file": f"{SECRETS_MOUNT}/flops_ca",
        "mqtt": {
            "host": "mosquitto",
            "port": 1883,
            "username": USERNAME,
            "password": values["mqtt_password"],
            "ca_pem": ca_pem,
        },
        "mongo_uri": f"mongodb://{USERNAME}:{values['mongo_password']}@mongo:27017/?authSource=admin",
        "registry": {
            "address": "registry:5000",
            "username": USERNAME,
            "password": values["registry_password"],
            "ca_pem": ca_pem,
        },
        "state_dir": "/var/lib/flops/state",
        "cache_dir": "/var/lib/flops/cache",
    }


def kubernetes_secrets(files: dict[str, str]) -> list[dict[str, Any]]:
    """Secret objects the manifests in deploy/kubernetes/ mount or read."""

    def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "flops"}},
            "type": "Opaque",
            "stringData": data,
        }

    return [
        secret(
            "flops-mosquitto",
            {
                "dynamic-security.json": files["dynamic-security.json"],
                "username": USERNAME,
                "password": files["mqtt_password"],
                "ca.pem": files["ca.pem"],
                "server.pem": files["mosquitto_tls_cert"],
                "server.key": files["mosquitto_tls_key"],
            },
        ),
        secret("flops-mongo", {"username": USERNAME, "password": files["mongo_password"]}),
        secret("flops-postgres", {"username": "mlflow", "password": files["postgres_password"]}),
        secret(
            "flops-registry",
            {
                "htpasswd": files["registry_htpasswd"],
                "server.pem": files["registry_tls_cert"],
                "server.key": files["registry_tls_key"],
            },
        ),
        secret(
            "flops-manager",
            {
                "manager.json": files["manager.json"],
                "flops_ca": files["ca.pem"],
                "manager_tls_cert": files["manager_tls_cert"],
                "manager_tls_key": files["manager_tls_key"],
            },
        ),
    ]


def generate(out_dir: Path, *, force: bool = False, hosts: list[str] | None = None) -> list[Path]:
    if out_dir.exists() and any((out_dir / name).exists() for name in GENERATED_FILES) and not force:
        raise SystemExit(f"{out_dir} already holds secrets; pass --force to replace them")
    values = {name: secrets.token_hex(24) for name in PLAIN_SECRETS}
    files: dict[str, str] = dict(values)
    files["dynamic-security.json"] = dynsec_seed(values["mqtt_password"])
    files["mosquitto.env"] = f"MQTT_USERNAME={USERNAME}\nMQTT_PASSWORD={values['mqtt_password']}\n"
    files["registry_htpasswd"] = htpasswd_line(USERNAME, values["registry_password"]) + "\n"
    files.update(tls_files(hosts or []))
    config = manager_config(values, files["ca.pem"])
    # Service names are the same in the compose network and the cluster namespace: one config serves both.
    files["manager.json"] = json.dumps(config, indent=2) + "\n"
    files["kubernetes-secrets.yaml"] = yaml.safe_dump_all(kubernetes_secrets(files), sort_keys=False)

    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    written = []
    for name, content in files.items():
        path = out_dir / name
        path.write_text(content)
        os.chmod(path, 0o644)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--force", action="store_true", help="replace existing secrets")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="another name the manager's API and the registry are reached by (their TLS certificates); repeatable",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out, force=args.force, hosts=args.host):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
