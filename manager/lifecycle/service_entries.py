"""The services of one project, typed: kind, role, cluster and adapter id instead of name patterns.

A project record keeps both ``services`` (name -> adapter id, served by the API) and
``service_entries`` (the typed list). Records written by managers before the typed list
existed have only the names; :meth:`ServiceTable.from_record` reads those once, in
:func:`legacy_entry`, so nothing else ever parses a service name.
"""

from __future__ import annotations

from manager.records import ProjectRecord, ServiceEntry
from orchestrator_adapters.base import AppKind, ServiceKind

OBSERVER_KEY = "observer"  # the observer's name in ``services`` (it lives in the observatory app)
AGGREGATOR_ROLES = ("classic", "root", "cluster")


def entry(
    name: str,
    kind: ServiceKind,
    service_id: str,
    *,
    role: str | None = None,
    cluster: str | None = None,
    app: AppKind = AppKind.PROJECT,
) -> ServiceEntry:
    return ServiceEntry(name=name, kind=kind.value, role=role, cluster=cluster, app=app.value, service_id=service_id)


def legacy_entry(name: str, service_id: str) -> ServiceEntry:
    """A service of a record written before ``service_entries``: its kind from the names that manager used."""
    if name == OBSERVER_KEY:
        return entry(name, ServiceKind.OBSERVER, service_id, app=AppKind.OBSERVATORY)
    if name.startswith("learner-"):
        return entry(name, ServiceKind.LEARNER, service_id)
    if name == "root-aggregator":
        return entry(name, ServiceKind.AGGREGATOR, service_id, role="root")
    if name.startswith("cluster-aggregator-"):
        return entry(
            name, ServiceKind.AGGREGATOR, service_id, role="cluster", cluster=name.removeprefix("cluster-aggregator-")
        )
    if name == "aggregator":
        return entry(name, ServiceKind.AGGREGATOR, service_id, role="classic")
    if name == "serving":
        return entry(name, ServiceKind.SERVING, service_id)
    return entry(name, ServiceKind.BUILDER, service_id)  # builder, model-builder


class ServiceTable:
    """Name -> entry, in the order the services were deployed."""

    def __init__(self, entries: list[ServiceEntry] | None = None) -> None:
        self._entries: dict[str, ServiceEntry] = {item.name: item for item in entries or []}

    @classmethod
    def from_record(cls, record: ProjectRecord) -> ServiceTable:
        if record.service_entries:
            return cls(list(record.service_entries))
        return cls([legacy_entry(name, service_id) for name, service_id in record.services.items()])

    def add(self, item: ServiceEntry) -> None:
        self._entries[item.name] = item

    def entries(self) -> list[ServiceEntry]:
        return list(self._entries.values())

    def ids(self) -> dict[str, str]:
        """``ProjectRecord.services``: name -> adapter service id (the observer under ``observer``)."""
        return {
            (OBSERVER_KEY if item.kind == ServiceKind.OBSERVER else name): item.service_id
            for name, item in self._entries.items()
        }

    def id_of(self, name: str) -> str:
        return self._entries[name].service_id

    def get(self, name: str) -> ServiceEntry | None:
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def observer(self) -> ServiceEntry | None:
        return next((item for item in self._entries.values() if item.kind == ServiceKind.OBSERVER), None)

    def in_project_app(self) -> list[ServiceEntry]:
        return [item for item in self._entries.values() if item.app == AppKind.PROJECT.value]

    def learners(self) -> list[ServiceEntry]:
        return [item for item in self._entries.values() if item.kind == ServiceKind.LEARNER]

    def aggregators(self) -> dict[str, str]:
        """Every aggregator (classic, root, cluster): name -> service id."""
        return {name: item.service_id for name, item in self._entries.items() if item.kind == ServiceKind.AGGREGATOR}

    def top_aggregator(self) -> str:
        """The aggregator whose result is the project's: the root one, else the classic one."""
        for role in ("root", "classic"):
            for name, item in self._entries.items():
                if item.kind == ServiceKind.AGGREGATOR and item.role == role:
                    return name
        raise KeyError("no classic or root aggregator")

    def serving(self) -> ServiceEntry | None:
        return next((item for item in self._entries.values() if item.kind == ServiceKind.SERVING), None)
