"""An orchestrator adapter that runs every service as a "program" in a thread of the test process.

A test double of the orchestrator boundary for the fast lifecycle tests (``tests/test_lifecycle.py``);
it passes the adapter contract itself (``TestFakeAdapterContract`` there). A program is a function
given the :class:`FakeService`; it reports like a real service would over MQTT (``service.report``),
and ends as the service does: returning is exit 0 (SUCCEEDED), raising :class:`ServiceCrashed` (or
anything else) is a crash (FAILED with a one-line detail), and a program that returns after
``service.stopping`` was set by an undeploy ends STOPPED. Programs are chosen per service kind.

What the adapter was asked is kept for the tests' assertions: every service ever added
(:attr:`FakeAdapter.services`), how often each was deployed, what still runs (:meth:`FakeAdapter.running`).
A :class:`Gate` holds the caller (the project run) inside one call until the test releases it, or
makes that call crash the caller (a manager that dies mid-phase).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flops_utils.message_text import one_line
from flops_utils.mqtt_catalogue import FlopsMessage
from flops_utils.process_groups import free_port
from orchestrator_adapters.base import (
    AdapterCapabilities,
    AdapterError,
    AppKind,
    AppRef,
    ConfigDelivery,
    Endpoint,
    NodeInfo,
    OrchestratorAdapter,
    Placement,
    PortSpec,
    ServiceInfo,
    ServiceSpec,
    ServiceState,
)

Program = Callable[["FakeService"], None]
Reports = Callable[[FlopsMessage], None]
LIVE = (ServiceState.PENDING, ServiceState.RUNNING)


class ServiceCrashed(Exception):
    """Raised by a program: the service crashed with this one-line detail."""


class ManagerCrashed(BaseException):
    """Raised into the caller of a gated call: the manager process "died" there (nothing of it runs on)."""


@dataclass
class Gate:
    """Holds the first matching adapter call until :meth:`release` (``crash``: the call raises ManagerCrashed)."""

    call: str  # "create_app", "add_service", "deploy_service", "inspect_service"
    name: str  # the app kind (create_app), or the service's name or kind
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    crash: bool = False

    def release(self, crash: bool = False) -> None:
        self.crash = crash
        self.released.set()


class FakeService:
    def __init__(self, adapter: FakeAdapter, app: AppRef, service_id: str, spec: ServiceSpec) -> None:
        self.adapter = adapter
        self.app = app
        self.service_id = service_id
        self.spec = spec
        self.state = ServiceState.PENDING
        self.detail = ""
        self.deploys = 0
        self.removed = False
        self.stopping = threading.Event()
        self.ready = threading.Event()  # deploy returns once set (programs marked ``announces_ready`` set it)
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def config(self) -> dict[str, object]:
        return self.spec.config

    @property
    def project_id(self) -> str:
        return str(self.spec.config.get("project_id") or self.app.project_id or "")

    def report(self, message: FlopsMessage) -> None:
        """Publish a report, as the service would over MQTT."""
        self.adapter.reports(message)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self.stopping.wait(timeout)

    # -- driven by the adapter --------------------------------------------------------------
    def start(self, program: Program) -> None:
        self.stop()
        self.deploys += 1
        self.stopping, self.ready = threading.Event(), threading.Event()
        self.state, self.detail = ServiceState.RUNNING, ""
        self._thread = threading.Thread(
            target=self._run, args=(program, self.stopping), daemon=True, name=f"fake-{self.name}"
        )
        self._thread.start()
        self.ready.wait(10)

    def _run(self, program: Program, stopping: threading.Event) -> None:
        if not getattr(program, "announces_ready", False):
            self.ready.set()
        try:
            program(self)
        except Exception as error:  # a crash of the service, whatever its kind
            state, detail = ServiceState.FAILED, one_line(str(error) or type(error).__name__)
        else:
            state, detail = (ServiceState.STOPPED if stopping.is_set() else ServiceState.SUCCEEDED), ""
        if self.stopping is stopping:  # not redeployed meanwhile
            self.state, self.detail = state, detail
        self.ready.set()

    def kill(self, detail: str) -> None:
        """The service's process dies (say SIGKILL): FAILED with ``detail``, whatever its program was doing."""
        dying, self.stopping = self.stopping, threading.Event()  # what the program ends with is not its state
        dying.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)  # gone (its ports free) before anyone can see it failed and redeploy it
        self.state, self.detail = ServiceState.FAILED, detail

    def stop(self) -> None:
        thread = self._thread
        self.stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        if self.state in LIVE:
            self.state = ServiceState.STOPPED
        self._thread = None

    def info(self) -> ServiceInfo:
        return ServiceInfo(self.name, self.state, detail=self.detail)


@dataclass
class FakeApp:
    ref: AppRef
    services: dict[str, FakeService] = field(default_factory=dict)


class FakeAdapter(OrchestratorAdapter):
    name = "memory"
    # Like an image orchestrator (the lifecycle then builds and serves an inference image); its data servers
    # are the tests' own.
    capabilities = AdapterCapabilities(
        runs_images=True,
        host_processes=False,
        bind_host="127.0.0.1",
        config_delivery=ConfigDelivery.ENVIRONMENT,
        private_configs=True,
        runs_data_servers=False,
    )

    def __init__(self, nodes: list[NodeInfo], programs: Mapping[str, Program], reports: Reports) -> None:
        """``programs``: service kind (or a service name, which wins) -> what its services do when deployed."""
        self.nodes = list(nodes)
        self.programs = dict(programs)
        self.reports = reports
        self.apps: dict[str, FakeApp] = {}
        self.services: list[FakeService] = []  # every service ever added, in order
        self.deleted_apps: list[AppRef] = []
        self.gates: list[Gate] = []
        self._endpoints: dict[tuple[str, str, str], Endpoint] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- what tests look at ---------------------------------------------------------------
    def gate(self, call: str, name: str) -> Gate:
        gate = Gate(call, name)
        self.gates.append(gate)
        return gate

    def running(self) -> set[tuple[str, str]]:
        """(app name, service name) of every service deployed and not ended."""
        with self._lock:
            return {
                (app.ref.name, service.name)
                for app in self.apps.values()
                for service in app.services.values()
                if service.state in LIVE and service.deploys
            }

    def service(self, name: str) -> FakeService:
        """The last service added under ``name``."""
        found = [service for service in self.services if service.name == name]
        if not found:
            raise KeyError(f"no service {name!r} was added (added: {[s.name for s in self.services]})")
        return found[-1]

    def _pass_gate(self, call: str, *names: str) -> None:
        for gate in list(self.gates):
            if gate.call == call and gate.name in names and not gate.reached.is_set():
                gate.reached.set()
                gate.released.wait(30)
                if gate.crash:
                    raise ManagerCrashed(f"the manager died in {call}({gate.name})")
                return

    # -- the adapter interface -----------------------------------------------------------------
    def create_app(self, name: str, kind: AppKind, customer: str, project_id: str | None = None) -> AppRef:
        self._pass_gate("create_app", kind.value)
        with self._lock:
            existing = self.find_app(name, customer)
            if existing is not None:
                return existing
            ref = AppRef(f"app-{next(self._ids)}", name, kind, customer, project_id)
            self.apps[ref.app_id] = FakeApp(ref)
            return ref

    def find_app(self, name: str, customer: str) -> AppRef | None:
        with self._lock:
            found = [app.ref for app in self.apps.values() if app.ref.name == name and app.ref.customer == customer]
            return found[0] if found else None

    def delete_app(self, app: AppRef) -> None:
        with self._lock:
            found = self.apps.pop(app.app_id, None)
        if found is None:
            return
        for service in found.services.values():
            service.stop()
        self.deleted_apps.append(found.ref)

    def plan_endpoint(self, app: AppRef, service_name: str, port: PortSpec, placement: Placement) -> Endpoint:
        with self._lock:
            key = (app.app_id, service_name, port.name)
            if key not in self._endpoints:
                self._endpoints[key] = Endpoint("127.0.0.1", free_port())
            return self._endpoints[key]

    def add_service(self, app: AppRef, spec: ServiceSpec) -> str:
        self._pass_gate("add_service", spec.name, spec.kind.value)
        with self._lock:
            service = FakeService(self, app, f"svc-{next(self._ids)}-{spec.name}", spec)
            self._app(app).services[service.service_id] = service
            self.services.append(service)
            return service.service_id

    def deploy_service(self, app: AppRef, service_id: str, instances: int = 1) -> None:
        service = self._service(app, service_id)
        self._pass_gate("deploy_service", service.name, service.spec.kind.value)
        program = self.programs.get(service.name) or self.programs.get(service.spec.kind.value)
        if program is None:
            raise AdapterError(f"the fake orchestrator has no program for {service.spec.kind.value} services")
        service.start(program)

    def undeploy_service(self, app: AppRef, service_id: str) -> None:
        with self._lock:
            service = self.apps.get(app.app_id, FakeApp(app)).services.get(service_id)
        if service is not None:
            service.stop()

    def remove_service(self, app: AppRef, service_id: str) -> None:
        with self._lock:
            service = self.apps.get(app.app_id, FakeApp(app)).services.pop(service_id, None)
        if service is not None:
            service.stop()
            service.removed = True

    def inspect_service(self, app: AppRef, service_id: str) -> ServiceInfo:
        service = self._service(app, service_id)
        self._pass_gate("inspect_service", service.name, service.spec.kind.value)
        return service.info()

    def list_nodes(self) -> list[NodeInfo]:
        return list(self.nodes)

    def close(self) -> None:
        for service in self.services:
            service.stop()

    def _app(self, app: AppRef) -> FakeApp:
        found = self.apps.get(app.app_id)
        if found is None:
            raise AdapterError(f"no app {app.name} ({app.app_id})")
        return found

    def _service(self, app: AppRef, service_id: str) -> FakeService:
        with self._lock:
            service = self._app(app).services.get(service_id)
        if service is None:
            raise AdapterError(f"no service {service_id} in app {app.name}")
        return service
