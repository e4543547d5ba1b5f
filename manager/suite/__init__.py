"""The local management suite (Mosquitto, SecantusDB, optional OCI registry) for dev, demo and CI."""

from manager.suite.processes import SuiteError
from manager.suite.state import RegistryEndpoint, SuiteEndpoints
from manager.suite.suite import (
    collect_registry_garbage,
    default_state_dir,
    load_endpoints,
    restart_broker,
    restart_database,
    start_broker,
    start_suite,
    stop_broker,
    stop_suite,
    suite_status,
)

__all__ = [
    "RegistryEndpoint",
    "SuiteEndpoints",
    "SuiteError",
    "collect_registry_garbage",
    "default_state_dir",
    "load_endpoints",
    "restart_broker",
    "restart_database",
    "start_broker",
    "start_suite",
    "stop_broker",
    "stop_suite",
    "suite_status",
]
