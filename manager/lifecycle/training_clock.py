"""When will training end? An estimate from the rounds and cycles measured so far.

Round times are the wall-clock intervals between one aggregator's progress reports, so
they include what happens between rounds (checkpoints, MLflow logging); the first round
of a cycle, which has no earlier report to measure from, uses the aggregator's own round
time. Hierarchical: the current cycle ends when its slowest cluster is done; later cycles
take as long as the cycles measured so far (root report to root report), or, before the
first one ended, rounds per cycle times the slowest cluster's round time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import fmean

from flops_utils.mqtt_catalogue import TrainingProgress
from manager.records import RoundRecord


@dataclass
class _Lane:
    """One aggregator's reports: the classic or root aggregator (key None) or a cluster's."""

    cycle: int = 0
    round: int = 0
    last_at: float | None = None
    round_s: list[float] = field(default_factory=list)


class TrainingClock:
    def __init__(self, total_rounds: int, total_cycles: int) -> None:
        self.total_rounds = max(total_rounds, 1)
        self.total_cycles = max(total_cycles, 1)
        self._lanes: dict[str | None, _Lane] = {}
        self._cycle_began: dict[int, float] = {}
        self._cycle_s: list[float] = []

    @property
    def hierarchical(self) -> bool:
        return self.total_cycles > 1 or any(key is not None for key in self._lanes)

    def observe(self, message: TrainingProgress, at: float) -> float | None:
        """Take one progress report received at ``at`` (epoch s); return the estimated end of training."""
        self._take(message.cluster, message.cycle, message.round, message.round_seconds, at)
        return self.estimate(at)

    def replay(self, rounds: Iterable[RoundRecord]) -> None:
        """Take the rounds stored earlier (a restarted manager continues its estimate), in order of arrival."""
        for record in sorted(rounds, key=lambda r: r.at):
            self._take(record.cluster, record.cycle, record.round, record.duration_s, record.at)

    def _take(self, cluster: str | None, cycle: int, round_: int, round_seconds: float, at: float) -> None:
        lane = self._lanes.setdefault(cluster, _Lane())
        if lane.last_at is not None and lane.cycle == cycle and round_ == lane.round + 1:
            measured = at - lane.last_at
        else:
            measured = round_seconds
        if cluster is not None:
            lane.round_s.append(max(measured, 0.0))
            self._cycle_began.setdefault(cycle, at - max(measured, 0.0))
        elif self.hierarchical:
            began = self._cycle_began.get(cycle)
            self._cycle_s.append(at - began if began is not None else round_seconds)
            self._cycle_began[cycle + 1] = at
        else:
            lane.round_s.append(max(measured, 0.0))
        lane.cycle, lane.round, lane.last_at = cycle, round_, at

    def estimate(self, now: float) -> float | None:
        if not self.hierarchical:
            lane = self._lanes.get(None)
            if lane is None or not lane.round_s:
                return None
            return now + max(self.total_rounds - lane.round, 0) * fmean(lane.round_s)
        return self._hierarchical_estimate(now)

    def _hierarchical_estimate(self, now: float) -> float | None:
        root = self._lanes.get(None)
        cycles_done = root.cycle if root is not None else 0
        clusters = {key: lane for key, lane in self._lanes.items() if key is not None and lane.round_s}
        if not clusters and not self._cycle_s:
            return None
        current = cycles_done + 1
        if current > self.total_cycles:
            return now
        if self._cycle_s:
            per_cycle = fmean(self._cycle_s)
        else:
            per_cycle = self.total_rounds * max(fmean(lane.round_s) for lane in clusters.values())
        if any(lane.cycle == current for lane in clusters.values()):  # the current cycle is under way
            left_in_current = max(
                (self.total_rounds - lane.round if lane.cycle == current else self.total_rounds) * fmean(lane.round_s)
                for lane in clusters.values()
            )
        else:
            left_in_current = per_cycle
        return now + left_in_current + (self.total_cycles - current) * per_cycle
