"""Timed build steps: each becomes a ``BuildStep`` message (when reporting to a project) and a record."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from flops_utils.message_text import one_line
from flops_utils.mqtt_catalogue import BuildStep, FlopsMessage
from services.builder.errors import BuildError

Outcome = Literal["done", "cached", "failed"]
Reporter = Callable[[FlopsMessage], None]


@dataclass
class StepRecord:
    step: str
    outcome: Outcome = "done"
    duration_s: float = 0.0
    detail: str = ""
    image: str | None = None  # the image this step produced or found
    size_bytes: int | None = None  # uncompressed, when known
    compressed_bytes: int | None = None  # as stored in the registry


@dataclass
class StepLog:
    """Collects :class:`StepRecord`s; publishes them as ``BuildStep`` when given a project and a reporter."""

    project_id: str | None = None
    sender: str = "builder"
    report: Reporter | None = None
    records: list[StepRecord] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        record = StepRecord(step=name)
        started = time.monotonic()
        try:
            yield record
        except BuildError as error:
            self._finish(record, "failed", started, str(error))
            raise
        except Exception as error:
            failure = BuildError(f"{name} step crashed: {type(error).__name__}: {error}", step=name)
            self._finish(record, "failed", started, str(failure))
            raise failure from error
        self._finish(record, record.outcome, started, record.detail)

    def _finish(self, record: StepRecord, outcome: Outcome, started: float, detail: str) -> None:
        record.outcome = outcome
        record.duration_s = round(max(0.0, time.monotonic() - started), 3)
        record.detail = one_line(detail) if detail.strip() else ""
        self.records.append(record)
        if self.report is not None and self.project_id:
            self.report(
                BuildStep(
                    project_id=self.project_id,
                    sender=self.sender,
                    step=record.step,
                    outcome=outcome,
                    duration_s=record.duration_s,
                    detail=record.detail,
                )
            )
