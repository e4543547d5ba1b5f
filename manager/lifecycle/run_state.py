"""What one project's run is given (``RunDeps``) and what it has set up so far (``RunState``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flops_utils.mqtt_catalogue import BuildResult, FlopsMessage, ModelImageBuilt, TrainingResult
from flops_utils.service_config import MqttSettings
from manager.broker_access import BrokerAccess
from manager.lifecycle.clock import SYSTEM_CLOCK, Clock
from manager.lifecycle.context import LifecycleSettings
from manager.lifecycle.observatory import Observatory, ObservatoryKeeper
from manager.lifecycle.service_entries import ServiceTable
from manager.storage.base import ProjectStore
from orchestrator_adapters.base import AppRef, OrchestratorAdapter

Publish = Callable[[FlopsMessage], None]


@dataclass
class RunDeps:
    settings: LifecycleSettings
    store: ProjectStore
    adapter: OrchestratorAdapter
    observatories: ObservatoryKeeper
    publish: Publish
    broker: BrokerAccess
    clear_retained: Callable[[str], None]
    clock: Clock = SYSTEM_CLOCK  # what waits are measured with (tests inject a faster one)


@dataclass
class RunState:
    observatory: Observatory | None = None
    app: AppRef | None = None
    services: ServiceTable = field(default_factory=ServiceTable)  # the observer included (in the observatory)
    build: BuildResult | None = None
    result: TrainingResult | None = None
    model_image: ModelImageBuilt | None = None
    mqtt: MqttSettings | None = None  # this run's broker account (granted on first use)
    training_started: bool = False
