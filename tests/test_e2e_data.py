"""End to end: users' own data through the CLI and the API into TLS data servers, a namespace per customer.

Real manager, broker, database, data servers (started with the manager), MLflow and Flower processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests
from sklearn.datasets import load_digits

from flops_utils.data_client import DataAccessDenied, DataServerClient
from tests.fixtures_stack import CUSTOMER_TOKENS, REPO_ROOT, FlopsStack, flops_stack, sla  # noqa: F401

pytestmark = pytest.mark.timeout(900)

ALICE = next(token for token, customer in CUSTOMER_TOKENS.items() if customer == "alice")
BOB = next(token for token, customer in CUSTOMER_TOKENS.items() if customer == "bob")
LEARNERS = ["node-a1", "node-a2", "node-b1", "node-b2"]


def flops(stack: FlopsStack, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("flops")), "--url", stack.url, "--token", token, *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=dict(os.environ, FLOPS_SUITE_DIR="/nonexistent"),
    )


def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def columns(x: np.ndarray, y: np.ndarray) -> pa.Table:
    """A plain table as users have it: one column per feature and a label column named 'digit'."""
    named = {f"p{i}": x[:, i] for i in range(x.shape[1])}
    return pa.table({**named, "digit": y})


def project_sla(customer: str, tags: list[str], **training: int) -> dict[str, object]:
    return {**sla("examples/sklearn_digits", tags, **training), "customerID": customer}


def nodes(stack: FlopsStack, token: str) -> dict[str, dict]:  # type: ignore[type-arg]
    answer = stack.api("GET", "/api/flops/nodes", token=token)
    assert answer.status_code == 200, answer.text
    return {node["name"]: node for node in answer.json()["nodes"]}


def rows_of(stack: FlopsStack, token: str, node: str, tag: str) -> int | None:
    return next((entry["rows"] for entry in nodes(stack, token)[node]["tags"] if entry["tag"] == tag), None)


def test_data_servers_run_before_any_data_or_project(flops_stack: FlopsStack) -> None:  # noqa: F811
    listed = flops_stack.api("GET", "/api/flops/nodes", token=ALICE).json()
    assert listed["customer"] == "alice" and listed["data_tls"] is True and "BEGIN CERTIFICATE" in listed["ca_pem"]
    learners = {node["name"]: node for node in listed["nodes"] if node["learner"]}
    assert sorted(learners) == LEARNERS
    assert all(node["reachable"] is True and node["data_server"] for node in learners.values())
    unknown = flops_stack.api("POST", "/api/flops/data-tokens", token=ALICE, json={"node": "nowhere"})
    assert unknown.status_code == 404 and "no learner node with a data server named 'nowhere'" in unknown.text
    other = flops_stack.api(
        "POST", "/api/flops/data-tokens", token=BOB, json={"node": "node-a1", "customerID": "alice"}
    )
    assert other.status_code == 403 and "does not match your identity" in other.text


def test_two_customers_one_tag_name_each_trains_on_its_own_rows(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    x, y = digits()
    csv_file, parquet_file = tmp_path / "a1.csv", tmp_path / "a2.parquet"
    pacsv.write_csv(columns(x[:600], y[:600]), csv_file)
    pq.write_table(columns(x[600:1000], y[600:1000]), parquet_file)
    pushed = flops(
        flops_stack,
        ALICE,
        "data",
        "push",
        "--node",
        "node-a1",
        "--tag",
        "sensors",
        "--label-column",
        "digit",
        str(csv_file),
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 600 rows of 64 features to tag sensors on node node-a1" in pushed.stdout
    pushed = flops(
        flops_stack,
        ALICE,
        "data",
        "push",
        "--node",
        "node-a2",
        "--tag",
        "sensors",
        "--label-column",
        "digit",
        str(parquet_file),
    )
    assert pushed.returncode == 0, pushed.stderr
    no_label = flops(flops_stack, ALICE, "data", "push", "--node", "node-a1", "--tag", "sensors", str(csv_file))
    assert no_label.returncode != 0 and "has no label column 'label'" in no_label.stderr
    assert len(no_label.stderr.strip().splitlines()) == 1

    # Bob fills the same tag name with the built-in digits: his namespace, not Alice's.
    bob_mocks = flops_stack.api(
        "POST",
        "/api/flops/mocks",
        token=BOB,
        json={"mock_data_configuration": {"data_tag": "sensors", "number_of_partitions": 2}},
    )
    assert bob_mocks.status_code == 200, bob_mocks.text
    assert bob_mocks.json()["partitions"] == {"node-a1": 899, "node-a2": 898}
    assert rows_of(flops_stack, ALICE, "node-a1", "sensors") == 600
    assert rows_of(flops_stack, ALICE, "node-a2", "sensors") == 400
    assert rows_of(flops_stack, BOB, "node-a1", "sensors") == 899
    listed = flops(flops_stack, ALICE, "data", "list", "--node", "node-a1")
    assert listed.returncode == 0 and "sensors" in listed.stdout and "600" in listed.stdout
    assert "899" not in listed.stdout

    # Bob can neither delete nor overwrite nor read Alice's rows: the CLI, the API and Flight itself.
    deleted = flops(flops_stack, BOB, "data", "delete", "--node", "node-a2", "--tag", "sensors")
    assert deleted.returncode == 0 and "(1 fragment(s))" in deleted.stdout  # his own mock partition
    assert rows_of(flops_stack, ALICE, "node-a2", "sensors") == 400
    grant = flops_stack.api("POST", "/api/flops/data-tokens", token=BOB, json={"node": "node-a1"}).json()
    assert grant["customer"] == "bob" and grant["token"].startswith("fd1.")
    bob_client = DataServerClient(grant["data_server"], grant["token"], grant["ca_pem"])
    assert bob_client.list_tags() == {"sensors": 899}
    with pytest.raises(DataAccessDenied, match="a write token may not get data"):
        bob_client.get(["sensors"])
    anonymous = DataServerClient(grant["data_server"], ca_pem=grant["ca_pem"])
    with pytest.raises(DataAccessDenied, match="needs a data token"):
        anonymous.delete_tag("sensors")
    assert rows_of(flops_stack, ALICE, "node-a1", "sensors") == 600
    bob_mocks = flops_stack.api(
        "POST",
        "/api/flops/mocks",
        token=BOB,  # his node-a2 partition back
        json={"mock_data_configuration": {"data_tag": "sensors", "number_of_partitions": 2}},
    )
    assert bob_mocks.status_code == 200, bob_mocks.text

    training = {"training_rounds": 2, "min_available_clients": 2, "min_fit_clients": 2, "min_evaluate_clients": 2}
    alice_sla = {**project_sla("alice", ["sensors"], **training), "post_training_steps": ["deploy_trained_model_image"]}
    alice_project = flops_stack.submit(alice_sla, token=ALICE)
    bob_project = flops_stack.submit(project_sla("bob", ["sensors"], **training), token=BOB)
    for project_id, expected in ((alice_project, (600, 400)), (bob_project, (899, 898))):
        project = flops_stack.wait(project_id)
        assert project["status"] == "COMPLETED", project["error"]
        events = flops_stack.events(project_id)
        for node, rows in zip(("node-a1", "node-a2"), expected, strict=True):
            assert any(f"learner on node {node}: {rows} rows" in text for text in events), events

    # Each project's learners read with their own project's token, which is revoked when the project ends.
    log = (flops_stack.state_dir / "local-adapter" / "nodes" / "node-a1" / "data-server.log").read_text()
    assert f"get customer=alice project={alice_project} tag=sensors fragments=1 rows=600" in log
    assert f"get customer=bob project={bob_project} tag=sensors fragments=1 rows=899" in log
    assert f"revoked the read tokens of project {alice_project}" in log

    # Alice's model endpoint wants her token; the API forwards it; a wrong width is named.
    serving_url = flops_stack.project(alice_project, token=ALICE)["serving_url"]
    inputs = x[1000:1010].tolist()
    assert requests.post(f"{serving_url}/invocations", json={"inputs": inputs}, timeout=30).status_code == 401
    predicted = flops_stack.api(
        "POST", f"/api/flops/projects/{alice_project}/predict", token=ALICE, json={"inputs": inputs}
    )
    assert predicted.status_code == 200, predicted.text
    narrow = flops_stack.api(
        "POST",
        f"/api/flops/projects/{alice_project}/predict",
        token=ALICE,
        json={"inputs": [row[:30] for row in inputs]},
    )
    assert narrow.status_code == 400 and "expects inputs of shape (n, 64); got rows of 30 values" in narrow.text
    assert flops_stack.api("DELETE", f"/api/flops/projects/{alice_project}", token=ALICE).status_code == 200


def test_width_mismatch_is_refused_at_upload_and_at_project_start(
    flops_stack: FlopsStack,  # noqa: F811
    tmp_path: Path,
) -> None:
    x, y = digits()
    wide, narrow = tmp_path / "wide.npz", tmp_path / "narrow.npz"
    np.savez(wide, x=x[:300], y=y[:300])
    np.savez(narrow, x=x[300:600, :30], y=y[300:600])
    assert flops(flops_stack, ALICE, "data", "push", "--node", "node-b1", "--tag", "mixed", str(wide)).returncode == 0
    assert flops(flops_stack, ALICE, "data", "push", "--node", "node-b2", "--tag", "mixed", str(narrow)).returncode == 0
    refused = flops(flops_stack, ALICE, "data", "push", "--node", "node-b1", "--tag", "mixed", str(narrow))
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert (
        "tag 'mixed' holds (n, 64) float32 features, int64 labels; this upload has (n, 30) float32 features, "
        "int64 labels"
    ) in refused.stderr
    assert rows_of(flops_stack, ALICE, "node-b1", "mixed") == 300  # the refused upload left nothing

    project_id = flops_stack.submit(project_sla("alice", ["mixed"], min_available_clients=2), token=ALICE)
    project = flops_stack.wait(project_id)
    assert project["status"] == "FAILED"
    assert project["error"] == (
        "data tag 'mixed' has different feature widths across the chosen nodes "
        "(30 on node-b2; 64 on node-b1); every node must hold rows of the same width"
    )
    assert not any("round" in text and "done in" in text for text in flops_stack.events(project_id))
