"""`make demo`: the main job end to end on this machine.

Brings up the management suite (Mosquitto, SecantusDB) and a manager with the local
orchestrator, pushes mock digits data into two learner nodes' data servers, POSTs
examples/slas/classic_sklearn.json, shows live progress on stderr, and prints one
JSON summary line on stdout. Everything is stopped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from manager.cli.client import CliError, FlopsClient
from manager.cli.defaults import manager_ca_file, manager_url, read_suite_manager_config
from manager.cli.suite_commands import suite_down, suite_up
from manager.cli.watch import watch_project

REPO_ROOT = Path(__file__).resolve().parent.parent


def summary(project: dict[str, Any]) -> dict[str, Any]:
    progress = project.get("progress") or {}
    return {
        "project_id": project["project_id"],
        "status": project["status"],
        "rounds": progress.get("round"),
        "accuracy": progress.get("accuracy"),
        "loss": progress.get("loss"),
        "mlflow_run_id": project.get("mlflow_run_id"),
        "tracking_url": project.get("tracking_url"),
    }


def run_demo(state_dir: Path, sla_path: Path, tag: str, partitions: int) -> dict[str, Any]:
    suite_up(state_dir, registry=False, with_manager=True, out=sys.stderr)
    config = read_suite_manager_config(state_dir)
    assert config is not None, "the suite did not write its manager config"
    client = FlopsClient(
        manager_url(config), str(config["admin_token"]), timeout_s=300, ca_file=manager_ca_file(config)
    )
    pushed = client.post(
        "/api/flops/mocks",
        {"mock_data_configuration": {"dataset_name": "digits", "number_of_partitions": partitions, "data_tag": tag}},
    )
    print(f"mock data {tag!r} pushed: {pushed['partitions']}", file=sys.stderr)
    sla = json.loads(sla_path.read_text())
    project = client.post("/api/flops/projects", sla)
    print(f"project {project['project_id']} started", file=sys.stderr)
    watch_project(client, project["project_id"], sys.stderr)
    return summary(client.get(f"/api/flops/projects/{project['project_id']}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=str(REPO_ROOT / ".flops" / "demo"), help="suite and manager state")
    parser.add_argument("--sla", default=str(REPO_ROOT / "examples" / "slas" / "classic_sklearn.json"))
    parser.add_argument("--tag", default="digits", help="data tag for the mock data (must match the SLA)")
    parser.add_argument("--partitions", type=int, default=2, help="learner nodes to fill with mock data")
    parser.add_argument("--keep", action="store_true", help="leave the suite, manager and tracking server running")
    args = parser.parse_args()
    state_dir = Path(args.state_dir)
    result: dict[str, Any] = {"status": "FAILED"}
    try:
        result = run_demo(state_dir, Path(args.sla), args.tag, args.partitions)
    except CliError as error:
        print(f"demo: {error}", file=sys.stderr)
    finally:
        if not args.keep:
            suite_down(state_dir, out=sys.stderr)
    print(json.dumps(result), flush=True)
    return 0 if result.get("status") == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
