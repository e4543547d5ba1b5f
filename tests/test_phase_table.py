"""The phase table, typed service entries (and old records' names) and adapter capabilities, without services."""

from __future__ import annotations

from pathlib import Path

import pytest

from flops_utils.service_config import MqttSettings
from manager.lifecycle.config_reference import delivers_by_reference
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.phases import PHASES, OnRestart, on_restart, restartable_phases
from manager.lifecycle.service_entries import OBSERVER_KEY, ServiceTable, entry
from manager.records import ProjectPhase, ProjectRecord
from orchestrator_adapters.base import (
    AppKind,
    OrchestratorAdapter,
    ServiceKind,
    ServiceSpec,
    host_command,
    image_command,
)
from orchestrator_adapters.registry import ADAPTERS, adapter_class

# What a manager before typed service entries stored for a hierarchical project in training.
OLD_SERVICES = {
    "observer": "obs-1",
    "builder": "b-1",
    "root-aggregator": "r-1",
    "cluster-aggregator-zone-a": "c-1",
    "learner-node-a": "l-1",
    "learner-node-b": "l-2",
}


def old_record(phase: ProjectPhase, **fields: object) -> ProjectRecord:
    """A record as an earlier manager wrote it: no ``service_entries`` in the stored document."""
    document = {
        "project_id": "p" * 32,
        "customer": "Admin",
        "sla": {},
        "phase": phase.value,
        "services": OLD_SERVICES,
        **fields,
    }
    return ProjectRecord.model_validate(document)


def test_the_phases_run_in_order_and_each_says_what_a_restart_does() -> None:
    assert [step.phase for step in PHASES] == [
        ProjectPhase.OBSERVATORY,
        ProjectPhase.PROJECT_APP,
        ProjectPhase.OBSERVER,
        ProjectPhase.BUILD,
        ProjectPhase.TRAINING,
        ProjectPhase.POST_TRAINING,
    ]
    assert restartable_phases() == {
        ProjectPhase.QUEUED,
        ProjectPhase.OBSERVATORY,
        ProjectPhase.PROJECT_APP,
        ProjectPhase.OBSERVER,
        ProjectPhase.BUILD,
    }
    assert all(step.needs for step in PHASES)
    assert [step.phase for step in PHASES if step.resume is not None] == [ProjectPhase.TRAINING]


@pytest.mark.parametrize(
    ("phase", "fields", "expected"),
    [
        (ProjectPhase.QUEUED, {}, OnRestart.START_OVER),
        (ProjectPhase.BUILD, {}, OnRestart.START_OVER),
        (ProjectPhase.TRAINING, {"build": {"digest": "d"}, "apps": {"project": "a-1"}}, OnRestart.RESUME),
        (ProjectPhase.TRAINING, {"apps": {"project": "a-1"}}, OnRestart.FAIL),  # no build to reconnect with
        (ProjectPhase.POST_TRAINING, {"build": {"digest": "d"}, "apps": {"project": "a-1"}}, OnRestart.FAIL),
        (ProjectPhase.CLEANUP, {}, OnRestart.FAIL),
    ],
)
def test_a_restarted_manager_reads_the_table(
    phase: ProjectPhase, fields: dict[str, object], expected: OnRestart
) -> None:
    assert on_restart(old_record(phase, **fields)) is expected


def test_an_old_record_is_read_as_typed_services() -> None:
    services = ServiceTable.from_record(old_record(ProjectPhase.TRAINING))
    assert services.top_aggregator() == "root-aggregator"
    assert services.aggregators() == {"root-aggregator": "r-1", "cluster-aggregator-zone-a": "c-1"}
    cluster = services.get("cluster-aggregator-zone-a")
    assert cluster is not None and (cluster.role, cluster.cluster) == ("cluster", "zone-a")
    assert [item.service_id for item in services.learners()] == ["l-1", "l-2"]
    observer = services.observer()
    assert observer is not None and observer.app == AppKind.OBSERVATORY.value
    assert "obs-1" not in {item.service_id for item in services.in_project_app()}
    assert services.ids() == OLD_SERVICES  # written back in the format the API serves


def test_typed_entries_win_over_names() -> None:
    odd = entry("edge-trainer", ServiceKind.LEARNER, "x-1", cluster="zone-b")
    record = old_record(ProjectPhase.TRAINING).model_copy(update={"service_entries": [odd]})
    services = ServiceTable.from_record(record)
    assert [item.name for item in services.learners()] == ["edge-trainer"]
    with pytest.raises(KeyError):
        services.top_aggregator()
    observer = entry("observer-12345678", ServiceKind.OBSERVER, "o-9", app=AppKind.OBSERVATORY)
    services.add(observer)
    assert services.ids()[OBSERVER_KEY] == "o-9"


def test_every_adapter_declares_its_capabilities() -> None:
    declared = {name: adapter_class(name) for name in ADAPTERS}
    for name, cls in declared.items():
        assert "capabilities" in vars(cls), f"{name} inherits the default capabilities"
        assert cls.capabilities is not OrchestratorAdapter.capabilities
    assert not declared["local"].capabilities.runs_images and declared["local"].capabilities.bind_host == "127.0.0.1"
    assert [name for name, cls in declared.items() if not cls.capabilities.private_configs] == ["oakestra"]
    assert [name for name, cls in declared.items() if cls.capabilities.runs_data_servers] == [
        "local",
        "container",
        "kubernetes",
    ]


def test_each_adapter_builds_the_command_line_from_the_entry_module() -> None:
    spec = ServiceSpec(name="aggregator", kind=ServiceKind.AGGREGATOR, config={}, module="services.aggregator.main")
    assert host_command(spec, "/usr/bin/python3") == ("/usr/bin/python3", "-m", "services.aggregator.main")
    built = ServiceSpec(
        name="learner",
        kind=ServiceKind.LEARNER,
        config={},
        module="services.learner.main",
        python="/envs/abc/bin/python",
    )
    assert host_command(built, "/usr/bin/python3")[0] == "/envs/abc/bin/python"
    assert image_command(built) == ("python", "-m", "services.learner.main")
    explicit = ServiceSpec(name="x", kind=ServiceKind.BUILDER, config={}, command=("sh", "-c", "true"))
    assert host_command(explicit, "/usr/bin/python3") == image_command(explicit) == ("sh", "-c", "true")


def test_configs_go_by_reference_where_the_adapter_cannot_keep_them_private(tmp_path: Path) -> None:
    settings = LifecycleSettings(
        mqtt=MqttSettings(), state_dir=tmp_path, cache_dir=tmp_path, config_url="https://manager:5072/service-config"
    )
    chosen = LifecycleSettings(
        mqtt=MqttSettings(),
        state_dir=tmp_path,
        cache_dir=tmp_path,
        config_url="https://manager:5072/service-config",
        configs_by_reference=frozenset({"local"}),
    )
    no_url = LifecycleSettings(mqtt=MqttSettings(), state_dir=tmp_path, cache_dir=tmp_path)
    adapters = {name: object.__new__(adapter_class(name)) for name in ADAPTERS}  # no settings: no I/O either
    assert [name for name, adapter in adapters.items() if delivers_by_reference(adapter, settings)] == ["oakestra"]
    assert [name for name, adapter in adapters.items() if delivers_by_reference(adapter, chosen)] == ["local"]
    assert not any(delivers_by_reference(adapter, no_url) for adapter in adapters.values())
