"""The behaviour every orchestrator adapter must show, as a reusable pytest class.

Use it from an adapter's test module by subclassing and providing two fixtures::

    from tests.adapter_contract import AdapterContract, Behaviour, python_command

    class TestMyAdapterContract(AdapterContract):
        @pytest.fixture
        def adapter(self) -> OrchestratorAdapter: ...          # started; stopped by the fixture

        @pytest.fixture
        def make_spec(self) -> SpecFactory:
            def make(name: str, behaviour: Behaviour) -> ServiceSpec: ...
            return make

``make_spec(name, behaviour)`` returns a spec for a trivial command:
``"succeed"`` prints a line and exits 0, ``"fail"`` prints :data:`FAILURE_LINE` to
stderr and exits 3, ``"run"`` runs until stopped. Use a one-shot kind (e.g. BUILDER)
for the first two and a long-lived kind (e.g. OBSERVER) for ``"run"``;
:func:`python_command` gives the command for an image or host with Python.
The class name does not start with ``Test``, so it only runs where it is subclassed.
Class attribute ``timeout_s`` bounds every wait (raise it for slow orchestrators).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Literal

import pytest

from orchestrator_adapters.base import (
    AppKind,
    AppRef,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
    ServiceState,
)

Behaviour = Literal["succeed", "fail", "run"]
SpecFactory = Callable[[str, Behaviour], ServiceSpec]

FAILURE_LINE = "contract-failure: simulated crash"
FAILURE_EXIT_CODE = 3
SCRIPTS: dict[str, str] = {
    "succeed": "print('contract: done')",
    "fail": f"import sys; print({FAILURE_LINE!r}, file=sys.stderr); sys.exit({FAILURE_EXIT_CODE})",
    "run": "import time\nwhile True:\n    time.sleep(0.5)",
}
ENDED = (ServiceState.SUCCEEDED, ServiceState.FAILED, ServiceState.STOPPED)


def python_command(behaviour: Behaviour, python: str = "python") -> tuple[str, ...]:
    """The argv that shows ``behaviour`` with the given interpreter."""
    return (python, "-c", SCRIPTS[behaviour])


def wait_for_state(
    adapter: OrchestratorAdapter, app: AppRef, service_id: str, states: tuple[ServiceState, ...], timeout: float
) -> ServiceInfo:
    """Inspect until the service is in one of ``states``; fail naming the last state seen."""
    deadline = time.monotonic() + timeout
    info = adapter.inspect_service(app, service_id)
    while info.state not in states:
        if time.monotonic() > deadline:
            pytest.fail(
                f"service {service_id} stayed {info.state.value} ({info.detail!r}), "
                f"expected one of {[state.value for state in states]} within {timeout:g}s"
            )
        time.sleep(0.1)
        info = adapter.inspect_service(app, service_id)
    return info


class AdapterContract:
    timeout_s: float = 60.0
    customer: str = "contract-customer"

    @pytest.fixture
    def app(self, adapter: OrchestratorAdapter) -> Iterator[AppRef]:
        """A fresh project app, deleted after the test."""
        ref = adapter.create_app(f"contract-{uuid.uuid4().hex[:8]}", AppKind.PROJECT, self.customer, "p-contract")
        try:
            yield ref
        finally:
            adapter.delete_app(ref)

    def test_apps_are_created_found_and_deleted_idempotently(self, adapter: OrchestratorAdapter) -> None:
        name = f"contract-app-{uuid.uuid4().hex[:8]}"
        assert adapter.find_app(name, self.customer) is None
        created = adapter.create_app(name, AppKind.PROJECT, self.customer, "p-1")
        assert (created.name, created.kind, created.customer) == (name, AppKind.PROJECT, self.customer)
        assert adapter.create_app(name, AppKind.PROJECT, self.customer, "p-1").app_id == created.app_id
        found = adapter.find_app(name, self.customer)
        assert found is not None and found.app_id == created.app_id
        assert adapter.find_app(name, f"{self.customer}-other") is None
        adapter.delete_app(created)
        assert adapter.find_app(name, self.customer) is None
        adapter.delete_app(created)  # twice is not an error

    def test_short_lived_service_succeeds(
        self, adapter: OrchestratorAdapter, app: AppRef, make_spec: SpecFactory
    ) -> None:
        service_id = adapter.add_service(app, make_spec("contract-ok", "succeed"))
        assert adapter.inspect_service(app, service_id).state in (ServiceState.PENDING, ServiceState.UNKNOWN)
        adapter.deploy_service(app, service_id)
        info = wait_for_state(adapter, app, service_id, ENDED, self.timeout_s)
        assert info.state is ServiceState.SUCCEEDED, info

    def test_failing_service_is_reported_failed_with_detail(
        self, adapter: OrchestratorAdapter, app: AppRef, make_spec: SpecFactory
    ) -> None:
        service_id = adapter.add_service(app, make_spec("contract-bad", "fail"))
        adapter.deploy_service(app, service_id)
        info = wait_for_state(adapter, app, service_id, ENDED, self.timeout_s)
        assert info.state is ServiceState.FAILED, info
        assert info.detail.strip() and "\n" not in info.detail

    def test_long_running_service_is_undeployed(
        self, adapter: OrchestratorAdapter, app: AppRef, make_spec: SpecFactory
    ) -> None:
        service_id = adapter.add_service(app, make_spec("contract-run", "run"))
        adapter.deploy_service(app, service_id)
        wait_for_state(adapter, app, service_id, (ServiceState.RUNNING,), self.timeout_s)
        time.sleep(1.0)
        assert adapter.inspect_service(app, service_id).state is ServiceState.RUNNING
        adapter.undeploy_service(app, service_id)
        info = wait_for_state(adapter, app, service_id, ENDED, self.timeout_s)
        assert info.state is ServiceState.STOPPED, info
        adapter.undeploy_service(app, service_id)  # idempotent
        adapter.undeploy_service(app, "never-added")

    def test_delete_app_undeploys_its_services(self, adapter: OrchestratorAdapter, make_spec: SpecFactory) -> None:
        app = adapter.create_app(f"contract-del-{uuid.uuid4().hex[:8]}", AppKind.PROJECT, self.customer)
        service_id = adapter.add_service(app, make_spec("contract-run", "run"))
        adapter.deploy_service(app, service_id)
        wait_for_state(adapter, app, service_id, (ServiceState.RUNNING,), self.timeout_s)
        adapter.delete_app(app)
        assert adapter.find_app(app.name, self.customer) is None
        adapter.delete_app(app)

    def test_plan_endpoint_is_stable(self, adapter: OrchestratorAdapter, app: AppRef) -> None:
        fleet, http = PortSpec("fleet", 9092), PortSpec("http", 8080)
        first = adapter.plan_endpoint(app, "aggregator", fleet, Placement())
        assert first.host and 0 < first.port < 65536
        assert adapter.plan_endpoint(app, "aggregator", fleet, Placement()) == first
        other = adapter.plan_endpoint(app, "serving", http, Placement())
        assert 0 < other.port < 65536
        assert adapter.plan_endpoint(app, "serving", http, Placement()) == other

    def test_nodes_are_listed(self, adapter: OrchestratorAdapter) -> None:
        nodes = adapter.list_nodes()
        assert nodes
        assert len({node.name for node in nodes}) == len(nodes)
        assert set(adapter.list_clusters()) == {node.cluster for node in nodes if node.cluster}
