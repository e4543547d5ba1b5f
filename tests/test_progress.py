"""Progress you can plan with: the ETA from measured rounds and cycles, elapsed and per-phase times."""

from __future__ import annotations

import pytest

from flops_utils.mqtt_catalogue import TrainingProgress
from manager.lifecycle.round_log import round_record
from manager.lifecycle.training_clock import TrainingClock
from manager.lifecycle.waiting import QuietNotes
from manager.records import ProjectPhase, ProjectRecord, ProjectStatus, project_timing


def report(
    round_: int, total: int, *, cluster: str | None = None, cycle: int = 1, cycles: int = 1, seconds: float = 1.0
) -> TrainingProgress:
    return TrainingProgress(
        project_id="p",
        sender="aggregator",
        cluster=cluster,
        cycle=cycle,
        total_cycles=cycles,
        round=round_,
        total_rounds=total,
        round_seconds=seconds,
        accuracy=0.5,
        loss=float("nan"),
    )


def test_classic_eta_follows_the_measured_wall_time_between_rounds() -> None:
    clock = TrainingClock(total_rounds=5, total_cycles=1)
    assert clock.estimate(1000.0) is None  # nothing measured yet
    # Round 1 has no earlier report: the aggregator's own 4 s; 4 rounds left.
    assert clock.observe(report(1, 5, seconds=4.0), at=1000.0) == pytest.approx(1000.0 + 4 * 4.0)
    # Round 2 came 10 s later (checkpoints and logging count too): mean of 4 and 10 = 7 s, 3 rounds left.
    assert clock.observe(report(2, 5, seconds=4.0), at=1010.0) == pytest.approx(1010.0 + 3 * 7.0)
    assert clock.observe(report(5, 5), at=1020.0) == pytest.approx(1020.0)  # the last round: ends now


def test_hierarchical_eta_waits_for_the_slowest_cluster_and_uses_measured_cycles() -> None:
    clock = TrainingClock(total_rounds=2, total_cycles=3)
    clock.observe(report(1, 2, cluster="a", cycles=3, seconds=2.0), at=100.0)
    eta = clock.observe(report(1, 2, cluster="b", cycles=3, seconds=5.0), at=103.0)
    # Cycle 1: b (5 s rounds) has 1 round left; 2 later cycles of 2 rounds at the slowest 5 s.
    assert eta == pytest.approx(103.0 + 5.0 + 2 * 2 * 5.0)
    clock.observe(report(2, 2, cluster="a", cycles=3), at=104.0)
    clock.observe(report(2, 2, cluster="b", cycles=3), at=108.0)
    # The root's first cycle: from a's first round start (98 s) to 110 s = 12 s per cycle; 2 cycles left.
    assert clock.observe(report(2, 2, cycles=3, seconds=11.0), at=110.0) == pytest.approx(110.0 + 2 * 12.0)
    clock.observe(report(1, 2, cluster="a", cycle=2, cycles=3, seconds=2.0), at=113.0)
    # In cycle 2 the clusters are behind by their mean round times; then one 12 s cycle.
    eta = clock.estimate(113.0)
    assert eta is not None and eta > 113.0 + 12.0
    assert clock.observe(report(2, 2, cycle=3, cycles=3), at=140.0) == pytest.approx(140.0)


def test_timing_gives_elapsed_phase_seconds_and_a_ticking_eta() -> None:
    record = ProjectRecord(
        project_id="p",
        customer="alice",
        sla={},
        created_at=100.0,
        status=ProjectStatus.RUNNING,
        phase=ProjectPhase.TRAINING,
        training_eta_at=200.0,
        phase_started={"observatory": 101.0, "build": 103.0, "training": 110.0},
    )
    timing = project_timing(record, now=150.0)
    assert timing.elapsed_s == 50.0
    assert timing.eta_s == 50.0
    assert timing.phase_seconds == {"observatory": 2.0, "build": 7.0, "training": 40.0}
    assert project_timing(record, now=260.0).eta_s == 0.0  # late: never negative
    done = record.model_copy(
        update={
            "status": ProjectStatus.COMPLETED,
            "phase": ProjectPhase.DONE,
            "finished_at": 230.0,
            "phase_started": {**record.phase_started, "cleanup": 220.0, "done": 230.0},
        }
    )
    finished = project_timing(done, now=999.0)
    assert (finished.elapsed_s, finished.eta_s) == (130.0, 0.0)
    assert finished.phase_seconds == {"observatory": 2.0, "build": 7.0, "training": 110.0, "cleanup": 10.0}
    fresh = ProjectRecord(project_id="q", customer="alice", sla={}, created_at=100.0)
    assert project_timing(fresh, now=101.0).eta_s is None  # no round measured yet


def test_a_round_record_keeps_what_the_aggregator_reported() -> None:
    message = report(2, 3, cluster="c1", cycle=2, cycles=4, seconds=1.5)
    record = round_record("p", message.model_copy(update={"participants": 3, "num_examples": 90}), at=5.0)
    assert (record.step, record.cycle, record.round, record.cluster) == (5, 2, 2, "c1")
    assert (record.participants, record.num_examples, record.duration_s, record.at) == (3, 90, 1.5, 5.0)
    assert record.metrics == {"accuracy": 0.5}  # NaN loss is left out, not stored as a number


def test_a_quiet_wait_is_noted_after_5_s_then_every_30_s_and_a_report_starts_it_again() -> None:
    quiet = QuietNotes(now=100.0)
    assert [t for t in (101.0, 104.9, 105.0, 105.5, 120.0, 134.9, 135.0, 150.0, 165.0) if quiet.due(t)] == [
        105.0,
        135.0,
        165.0,
    ]
    quiet.heard(170.0)
    assert not quiet.due(174.0) and quiet.due(175.0) and not quiet.due(176.0)


def test_a_restarted_manager_replays_the_stored_rounds_into_the_same_estimate() -> None:
    live = TrainingClock(total_rounds=2, total_cycles=2)
    stored = []
    for at, message in [
        (10.0, report(1, 2, cluster="a", cycles=2, seconds=3.0)),
        (12.0, report(1, 2, cluster="b", cycles=2, seconds=4.0)),
        (14.0, report(2, 2, cluster="a", cycles=2)),
        (17.0, report(2, 2, cluster="b", cycles=2)),
        (18.0, report(2, 2, cycles=2, seconds=10.0)),
    ]:
        live.observe(message, at)
        stored.append(round_record("p", message, at))
    restarted = TrainingClock(total_rounds=2, total_cycles=2)
    restarted.replay(reversed(stored))  # whatever order the store gives
    assert restarted.estimate(20.0) == live.estimate(20.0) == pytest.approx(20.0 + (18.0 - 7.0))
