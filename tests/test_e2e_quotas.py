"""Per-customer quotas on a real manager: 409 past the observatory cap, 429 past the concurrent-project cap,
and an idle observatory stopped, then started again on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from manager.suite import SuiteEndpoints
from tests.fixtures_stack import CUSTOMER_TOKENS, running_stack, sla, stop_local_services
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(900)
ALICE, BOB = (token for token, customer in CUSTOMER_TOKENS.items() if customer in ("alice", "bob"))
IDLE_S = 20


def test_quotas_refuse_clearly_and_idle_observatories_stop_and_start_again(
    suite: SuiteEndpoints, tmp_path: Path
) -> None:
    quotas = {"max_active_projects": 1, "max_observatories": 1, "observatory_idle_s": IDLE_S}
    try:
        with running_stack(suite, tmp_path, quotas=quotas) as stack:
            tracking = stack.api("GET", "/api/flops/tracking", token=ALICE)
            assert tracking.status_code == 200, tracking.text
            url = tracking.json()["tracking_url"]

            def alive() -> bool:
                try:
                    return requests.get(f"{url}/health", timeout=5, verify=str(stack.tracking_ca_file)).ok
                except requests.RequestException:
                    return False

            refused = stack.api("GET", "/api/flops/tracking", token=BOB)
            assert refused.status_code == 409, refused.text
            assert "quotas.max_observatories = 1" in refused.json()["error"]
            request = {**sla("examples/sklearn_digits", ["nobody-has-this-tag"], training_rounds=1)}
            del request["customerID"]  # the caller's own
            bobs = stack.api("POST", "/api/flops/projects", token=BOB, json=request)
            assert bobs.status_code == 409 and "no project was created" in bobs.json()["error"], bobs.text
            assert stack.api("GET", "/api/flops/projects", token=BOB).json()["projects"] == []

            first = stack.api("POST", "/api/flops/projects", token=ALICE, json=request)
            assert first.status_code == 201, first.text
            second = stack.api("POST", "/api/flops/projects", token=ALICE, json=request)
            assert second.status_code == 429, second.text
            assert "quotas.max_active_projects = 1" in second.json()["error"]
            assert len(stack.api("GET", "/api/flops/projects", token=ALICE).json()["projects"]) == 1
            project_id = first.json()["project_id"]
            assert stack.api("DELETE", f"/api/flops/projects/{project_id}", token=ALICE).status_code in (200, 202)
            assert stack.wait(project_id, timeout=180)["status"] in ("STOPPED", "FAILED")

            # No project, nobody asks: the observatory stops (its store stays) ...
            assert wait_until(lambda: not alive(), IDLE_S + 60, interval=1.0), "the idle observatory still runs"
            # ... and starts again when asked for; meanwhile another customer could have had the one slot.
            again = stack.api("GET", "/api/flops/tracking", token=ALICE)
            assert again.status_code == 200 and again.json()["tracking_url"] == url, again.text
            assert alive()
            assert stack.api("GET", "/api/flops/tracking", token=BOB).status_code == 409
    finally:
        stop_local_services(tmp_path / "state")  # data servers and MLflow outlive the manager by design
