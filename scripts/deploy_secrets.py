#!/usr/bin/env python3
"""Generate the secrets a production FLOps suite needs (compose.yml and deploy/kubernetes/).

    python scripts/deploy_secrets.py [--out deploy/secrets] [--force]

Writes random passwords and everything derived from them into one directory (git
ignores it): the Mosquitto password file, the registry htpasswd, the manager's
config, and Kubernetes Secret manifests. The directory is made owner-only (0700);
the files in it are 0644 because the containers that mount them run as their own
non-root users.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
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
GENERATED_FILES = (
    *PLAIN_SECRETS,
    "mosquitto_passwd",
    "mosquitto.env",
    "registry_htpasswd",
    "manager.json",
    "kubernetes-secrets.yaml",
)


def mosquitto_password_line(username: str, password: str) -> str:
    """A Mosquitto 2 password-file line: PBKDF2-SHA512, 101 rounds, 12-byte salt (as mosquitto_passwd)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{username}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd line (the registry accepts only bcrypt), made by apache2-utils' htpasswd."""
    tool = shutil.which("htpasswd")
    if tool is None:
        raise SystemExit("htpasswd not found: install the Debian package 'apache2-utils'")
    done = subprocess.run([tool, "-Bbn", username, password], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def manager_config(values: dict[str, str]) -> dict[str, Any]:
    """The manager's settings document inside the compose network / cluster namespace."""
    return {
        "host": "0.0.0.0",
        "port": MANAGER_PORT,
        "admin_token": values["admin_token"],
        "mqtt": {"host": "mosquitto", "port": 1883, "username": USERNAME, "password": values["mqtt_password"]},
        "mongo_uri": f"mongodb://{USERNAME}:{values['mongo_password']}@mongo:27017/?authSource=admin",
        "registry": {
            "address": "registry:5000",
            "username": USERNAME,
            "password": values["registry_password"],
            "tls_verify": False,
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
        secret("flops-mosquitto", {"passwd": files["mosquitto_passwd"], "username": USERNAME,
                                    "password": files["mqtt_password"]}),
        secret("flops-mongo", {"username": USERNAME, "password": files["mongo_password"]}),
        secret("flops-postgres", {"username": "mlflow", "password": files["postgres_password"]}),
        secret("flops-registry", {"htpasswd": files["registry_htpasswd"]}),
        secret("flops-manager", {"manager.json": files["manager.json"]}),
    ]


def generate(out_dir: Path, *, force: bool = False) -> list[Path]:
    if out_dir.exists() and any((out_dir / name).exists() for name in GENERATED_FILES) and not force:
        raise SystemExit(f"{out_dir} already holds secrets; pass --force to replace them")
    values = {name: secrets.token_hex(24) for name in PLAIN_SECRETS}
    files: dict[str, str] = dict(values)
    files["mosquitto_passwd"] = mosquitto_password_line(USERNAME, values["mqtt_password"]) + "\n"
    files["mosquitto.env"] = f"MQTT_USERNAME={USERNAME}\nMQTT_PASSWORD={values['mqtt_password']}\n"
    files["registry_htpasswd"] = htpasswd_line(USERNAME, values["registry_password"]) + "\n"
    config = manager_config(values)
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
    args = parser.parse_args(argv)
    for path in generate(args.out, force=args.force):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
