"""Start, inspect and stop the local management suite kept in one state dir.

The state dir holds each component's config, data and log, and ``endpoints.json``
with ports, pids and generated credentials. Credentials and (when still free) ports
are kept across restarts of the suite, so clients configured earlier keep working.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from flops_utils.process_groups import free_port, port_is_free
from manager.suite import mosquitto, registry, secantus
from manager.suite.processes import PortTaken, ProcessRecord, SuiteError, is_running, stop
from manager.suite.state import (
    HOST,
    MOSQUITTO,
    REGISTRY,
    SECANTUSDB,
    ComponentState,
    Credentials,
    SuiteEndpoints,
    SuiteState,
    locked,
    read_state,
    write_state,
)

STATE_DIR_ENV = "FLOPS_SUITE_DIR"
USERNAME = "flops"
_PORT_ATTEMPTS = 3
_CORE = (MOSQUITTO, SECANTUSDB)
_PROBE_TIMEOUT_S = 10.0


def default_state_dir() -> Path:
    """``$FLOPS_SUITE_DIR`` or ``~/.flops/suite``."""
    return Path(os.environ.get(STATE_DIR_ENV) or "~/.flops/suite").expanduser()


def start_suite(
    state_dir: Path, *, registry: bool = False, mqtt_acl_file: Path | None = None, tls: bool = True
) -> SuiteEndpoints:
    """Start whatever part of the suite is not running yet and return its endpoints.

    Idempotent: a suite that is already up is left alone. A registry started earlier
    stays part of the suite. On failure, components this call started are stopped
    again and :class:`SuiteError` says why. The broker and the registry speak TLS with the
    suite's own CA unless ``tls`` is False (development only).
    """
    state_dir = _resolve(state_dir)
    with locked(state_dir):
        os.chmod(state_dir, 0o700)
        state = read_state(state_dir) or SuiteState(state_dir=str(state_dir))
        state.state_dir = str(state_dir)
        started: list[tuple[str, ComponentState]] = []
        try:
            for name in _wanted(state, registry):
                component = state.components.get(name)
                if component is not None and _healthy(name, component):
                    continue
                if component is not None:
                    # Running but not answering, or gone: make sure it has let go of its data dir.
                    stop(component.process, name=name)
                else:
                    component = ComponentState(port=free_port(HOST), credentials=_new_credentials())
                    state.components[name] = component
                _start_component(state_dir, name, component, mqtt_acl_file, tls)
                started.append((name, component))
                write_state(state_dir, state)
        except BaseException:
            for started_name, started_component in started:
                stop(started_component.process, name=started_name)
            raise
        write_state(state_dir, state)
        return state.endpoints()


def stop_suite(state_dir: Path) -> None:
    """Stop every process of the suite and wait until each has exited. Keeps data and credentials."""
    state_dir = _resolve(state_dir)
    if not state_dir.is_dir():
        return
    with locked(state_dir):
        state = read_state(state_dir)
        if state is None:
            return
        errors: list[str] = []
        for name, component in reversed(list(state.components.items())):
            try:
                stop(component.process, name=name)
            except SuiteError as error:
                errors.append(str(error))
                continue
            component.started_as(ProcessRecord(pid=0, start_ticks=0))
        write_state(state_dir, state)
        if errors:
            raise SuiteError("; ".join(errors))


def suite_status(state_dir: Path) -> dict[str, bool]:
    """Component name -> running and answering. Core components are always listed."""
    state = read_state(_resolve(state_dir))
    components = state.components if state is not None else {}
    names = list(_CORE) + [name for name in components if name not in _CORE]
    return {name: name in components and _healthy(name, components[name]) for name in names}


def load_endpoints(state_dir: Path) -> SuiteEndpoints | None:
    """The endpoints recorded in ``state_dir`` (whether or not the suite is running now)."""
    state = read_state(_resolve(state_dir))
    if state is None or any(name not in state.components for name in _CORE):
        return None
    return state.endpoints()


def stop_component(state_dir: Path, name: str) -> None:
    """Stop one core component (Mosquitto saves its persistence file, SecantusDB its data, on the way out)."""
    state_dir = _resolve(state_dir)
    with locked(state_dir):
        state = _require_state(state_dir)
        component = state.components[name]
        stop(component.process, name=name)
        component.started_as(ProcessRecord(pid=0, start_ticks=0))
        write_state(state_dir, state)


def start_component(state_dir: Path, name: str, *, port_timeout: float = 30.0) -> SuiteEndpoints:
    """Start a core component again on the same port with the same config and data."""
    starters: dict[str, Callable[[Path, ComponentState], ProcessRecord]] = {
        MOSQUITTO: mosquitto.start,
        SECANTUSDB: secantus.start,
    }
    state_dir = _resolve(state_dir)
    with locked(state_dir):
        state = _require_state(state_dir)
        component = state.components[name]
        if not _healthy(name, component):
            stop(component.process, name=name)
            _await_free_port(component.port, port_timeout)
            component.started_as(starters[name](state_dir, component))
            write_state(state_dir, state)
        return state.endpoints()


def collect_registry_garbage(state_dir: Path, *, port_timeout: float = 30.0) -> str:
    """Stop the suite's registry, free unreferenced blobs, start it again on the same port; the tool's summary.

    Distribution collects garbage only offline (a push during a collection could lose blobs),
    so the registry is down meanwhile: pushes and pulls fail for those seconds.
    """
    state_dir = _resolve(state_dir)
    with locked(state_dir):
        state = _require_state(state_dir)
        component = state.components.get(REGISTRY)
        if component is None:
            raise SuiteError("the suite has no registry (flops suite up --registry)")
        stop(component.process, name=REGISTRY)
        component.started_as(ProcessRecord(pid=0, start_ticks=0))
        write_state(state_dir, state)
        try:
            summary = registry.garbage_collect(state_dir)
        finally:
            _await_free_port(component.port, port_timeout)
            component.started_as(registry.start(state_dir, component, tls=component.ca_pem is not None))
            write_state(state_dir, state)
        return summary


def stop_broker(state_dir: Path) -> None:
    stop_component(state_dir, MOSQUITTO)


def start_broker(state_dir: Path, *, port_timeout: float = 30.0) -> SuiteEndpoints:
    return start_component(state_dir, MOSQUITTO, port_timeout=port_timeout)


def restart_broker(state_dir: Path, *, down_for: float = 0.0) -> SuiteEndpoints:
    """Stop Mosquitto, keep it down for ``down_for`` seconds, start it on the same port (outage tests)."""
    stop_broker(state_dir)
    if down_for > 0:
        time.sleep(down_for)
    return start_broker(state_dir)


def restart_database(state_dir: Path, *, down_for: float = 0.0) -> SuiteEndpoints:
    """Stop SecantusDB, keep it down for ``down_for`` seconds, start it on the same port (outage tests)."""
    stop_component(state_dir, SECANTUSDB)
    if down_for > 0:
        time.sleep(down_for)
    return start_component(state_dir, SECANTUSDB)


def _resolve(state_dir: Path) -> Path:
    return Path(state_dir).expanduser().resolve()


def _require_state(state_dir: Path) -> SuiteState:
    state = read_state(state_dir)
    if state is None or MOSQUITTO not in state.components:
        raise SuiteError(f"no suite in {state_dir}: start it first")
    return state


def _wanted(state: SuiteState, with_registry: bool) -> list[str]:
    names = list(_CORE)
    known_registry = state.components.get(REGISTRY)
    if with_registry or (known_registry is not None and is_running(known_registry.process)):
        names.append(REGISTRY)
    elif known_registry is not None:
        del state.components[REGISTRY]  # gone and not asked for: no longer part of the suite
    return names


def _new_credentials() -> Credentials:
    return Credentials(username=USERNAME, password=secrets.token_urlsafe(24))


def _healthy(name: str, component: ComponentState) -> bool:
    """Running and answering. Generous timeouts: a slow answer on a busy machine must not
    make start_suite replace a working process."""
    if not is_running(component.process):
        return False
    if name == MOSQUITTO:
        return mosquitto.broker_accepts(mosquitto.settings_for(component), timeout=_PROBE_TIMEOUT_S)
    if name == SECANTUSDB:
        return secantus.database_answers(secantus.mongo_uri(component), timeout_ms=int(_PROBE_TIMEOUT_S * 1000))
    return registry.registry_answers(component, timeout=_PROBE_TIMEOUT_S)


def _start_component(
    state_dir: Path, name: str, component: ComponentState, acl_file: Path | None, tls: bool = True
) -> None:
    """Start one component, moving to a fresh port if its port is (or gets) taken."""
    starters: dict[str, Callable[[], ProcessRecord]] = {
        MOSQUITTO: lambda: _start_mosquitto(state_dir, component, acl_file, tls),
        SECANTUSDB: lambda: secantus.start(state_dir, component),
        REGISTRY: lambda: registry.start(state_dir, component, tls),
    }
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        if not port_is_free(HOST, component.port):
            component.port = free_port(HOST)
        try:
            component.started_as(starters[name]())
            return
        except PortTaken:
            if attempt == _PORT_ATTEMPTS:
                raise
            component.port = free_port(HOST)


def _start_mosquitto(state_dir: Path, component: ComponentState, acl_file: Path | None, tls: bool) -> ProcessRecord:
    mosquitto.write_config(state_dir, component, acl_file, tls)
    return mosquitto.start(state_dir, component)


def _await_free_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_free(HOST, port):
        if time.monotonic() >= deadline:
            raise SuiteError(f"port {port} still taken {timeout:.0f} s after the broker stopped")
        time.sleep(0.1)
