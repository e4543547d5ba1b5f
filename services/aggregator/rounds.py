"""Federated rounds over a Flower Grid: node sampling, deadlines, dropouts, FedAvg.

Replies are pulled every half second until all arrived or the round deadline passes;
late replies are dropped. A node that misses the deadline or whose SuperNode is gone
is "lost": it is named in an event and dropped from that round. It is not asked again
for ``readmit_after_s``, longer than Flower takes to declare a silent SuperNode offline;
after that it rejoins the rounds as soon as Flower lists it as online again (a paused
or partitioned learner resumes its heartbeats under the same node id, a dead one never
does; a redeployed learner joins as a new node). A round succeeds with at least
``min_replies``.

With ``replacement_wait_s`` (the root of a hierarchical project, which needs every
cluster), a round that lost participants waits that long for new nodes (a redeployed
cluster aggregator joins as one) and asks them the same question; the replies that
did arrive are kept, so the other clusters' work is not repeated.

Messages are made by a Flower strategy (``configure_train``) and replies aggregated by it
(``aggregate_train``), so Flower's strategies and their wrappers (differential privacy, robust
aggregation) run here unchanged; the strategy samples from the nodes this loop found usable.
A round ends as soon as enough failed replies make ``min_replies`` unreachable; identical
failures are named once, with the learners they hit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from flops_utils.message_text import one_line
from services.aggregator.fedavg import FedAvgError, StreamingFedAvg
from services.aggregator.node_view import NodesView
from services.fl_runtime import protocol as p
from services.fl_runtime.link.server import PATIENCE_S

log = logging.getLogger("flops.rounds")

PULL_INTERVAL_S = 0.5
WAIT_NOTE_S = 5.0  # a wait for participants longer than this is reported, again every this many seconds
FAILURE_GRACE_S = 2.0  # how long a lost round still collects the other participants' failures
# The link lists a node as offline once PATIENCE_S pass without a heartbeat; a lost node is suspended longer.
READMIT_AFTER_S = PATIENCE_S + 5.0


class RoundFailed(RuntimeError):
    """Too few participants; the message is the one-line reason."""


@dataclass
class Reply:
    node_id: int
    name: str
    cluster: str | None
    metrics: dict[str, float | list[float]]

    def scalar(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class RoundResult:
    server_round: int
    arrays: list[np.ndarray] | None
    replies: list[Reply]
    lost: list[tuple[str, str]]  # (name, why)
    seconds: float
    loss: float | None = None
    accuracy: float | None = None
    num_examples: int = 0
    eval_examples: int = 0
    participants: list[str] = field(default_factory=list)
    train_loss: float | None = None  # after with_global_evaluation: the learners' post-fit local figures
    train_accuracy: float | None = None
    eval_seconds: float | None = None

    def with_global_evaluation(self, evaluation: RoundResult) -> RoundResult:
        """This training round with ``loss``/``accuracy`` of the new global model (``evaluation``) and the
        post-fit local figures moved to ``train_loss``/``train_accuracy``."""
        return replace(
            self,
            loss=evaluation.loss,
            accuracy=evaluation.accuracy,
            eval_examples=evaluation.eval_examples,
            train_loss=self.loss,
            train_accuracy=self.accuracy,
            eval_seconds=evaluation.seconds,
            lost=self.lost + [item for item in evaluation.lost if item not in self.lost],
        )


def weighted(replies: list[Reply], key: str, weight_key: str) -> float | None:
    """Example-weighted mean of ``key`` over replies that carry it."""
    total, weighted_sum = 0.0, 0.0
    for reply in replies:
        value, weight = reply.scalar(key), reply.scalar(weight_key) or 0.0
        if value is not None and not math.isnan(value) and weight > 0:
            total += weight
            weighted_sum += value * weight
    return weighted_sum / total if total else None


class FederatedRounds:
    """Runs train and evaluate rounds for one ServerApp; ``what`` names participants in messages."""

    def __init__(
        self,
        grid: Grid,
        *,
        min_available: int,
        min_fit: int,
        min_evaluate: int,
        timeout_s: float,
        what: str = "learner",
        on_lost: Callable[[str, str], None] | None = None,
        on_back: Callable[[str, str], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        replacement_wait_s: float = 0.0,
        readmit_after_s: float = READMIT_AFTER_S,
        strategy: Strategy | None = None,
    ) -> None:
        self.grid = grid
        self.min_available = min_available
        self.min_fit = min_fit
        self.min_evaluate = min_evaluate
        self.timeout_s = timeout_s
        self.what = what
        self.on_lost = on_lost or (lambda name, why: None)
        self.on_back = on_back or (lambda name, text: None)
        self.on_wait = on_wait or (lambda text: None)
        self.replacement_wait_s = replacement_wait_s
        self.readmit_after_s = readmit_after_s
        self.names: dict[int, str] = {}
        self.suspended: dict[int, float] = {}  # lost node -> monotonic time from which it may be asked again
        self._streaming: StreamingFedAvg | None = None  # the running sum of the train round in progress
        # Our loop decides who is usable (and waits for min_available once, at start); the strategy samples
        # among those, so its own minimum is what one round needs.
        self.strategy: Strategy = strategy or FedAvg(
            min_train_nodes=min_fit, min_evaluate_nodes=min_evaluate, min_available_nodes=min_fit
        )

    # -- nodes -------------------------------------------------------------------
    def usable_nodes(self) -> list[int]:
        """Nodes Flower lists as online, minus lost ones still suspended; readmits the others."""
        listed = self.grid.get_node_ids()
        now = time.monotonic()
        for node in sorted(listed):
            if node in self.suspended and self.suspended[node] <= now:
                del self.suspended[node]
                name = self.name_of(node)
                log.info("%s %s is online again", self.what, name)
                self.on_back(name, f"{self.what} {name} is online again and rejoins the next round")
        return sorted(node for node in listed if node not in self.suspended)

    def wait_for_nodes(self, minimum: int, timeout_s: float) -> list[int]:
        """The usable nodes once there are ``minimum``; while waiting, says every ``WAIT_NOTE_S`` how many there are."""
        started = time.monotonic()
        deadline, next_note = started + timeout_s, started + WAIT_NOTE_S
        while True:
            nodes = self.usable_nodes()
            if len(nodes) >= minimum:
                return nodes
            now = time.monotonic()
            if now >= deadline:
                raise RoundFailed(f"only {len(nodes)} of {minimum} {self.what}s connected after {timeout_s:g} s")
            if now >= next_note:
                waited = f"{now - started:.0f} s so far"
                self.on_wait(f"{len(nodes)} of {minimum} {self.what}s connected, waiting ({waited})")
                next_note = now + WAIT_NOTE_S
            self._idle(PULL_INTERVAL_S)

    def name_of(self, node_id: int) -> str:
        if node_id not in self.names:
            known = getattr(self.grid, "node_name", lambda node: None)(node_id)  # the link knows names at connect
            if known:
                self.names[node_id] = known
        return self.names.get(node_id, f"flower node {node_id}")

    def _idle(self, seconds: float) -> None:
        """Wait for a change on the grid: at once on a push link, by polling on Flower's own grids."""
        wait = getattr(self.grid, "wait_for_nodes", None)
        if wait is not None:
            wait(seconds)
        else:
            time.sleep(seconds)

    # -- rounds ------------------------------------------------------------------
    def train_round(
        self, server_round: int, arrays: list[np.ndarray], config: dict[str, int | float | str]
    ) -> RoundResult:
        started = time.monotonic()
        nodes = self.wait_for_nodes(self.min_fit, self.timeout_s)
        # Plain FedAvg is summed as replies arrive (the new model is ready right after the last one);
        # every other strategy, and wrappers such as differential privacy, aggregate all replies at the end.
        self._streaming = StreamingFedAvg(arrays) if type(self.strategy) is FedAvg else None
        try:
            replies, raw, lost = self._ask(nodes, MessageType.TRAIN, server_round, arrays, config, self.min_fit)
            if len(replies) < self.min_fit:
                raise RoundFailed(self._too_few(server_round, len(replies), len(nodes), self.min_fit, lost))
            if self._streaming is not None:
                new_arrays = p.like(self._streaming.result(), arrays)
            else:
                aggregated, _ = self.strategy.aggregate_train(server_round, raw)
                if aggregated is None:
                    raise RoundFailed(f"round {server_round}: the strategy produced no model")
                new_arrays = p.like(p.from_arrays(aggregated), arrays)
        except FedAvgError as error:
            raise RoundFailed(f"round {server_round}: {error}") from None
        finally:
            self._streaming = None
        return self._result(server_round, new_arrays, replies, lost, started)

    def evaluate_round(
        self, server_round: int, arrays: list[np.ndarray], config: dict[str, int | float | str]
    ) -> RoundResult:
        started = time.monotonic()
        nodes = self.wait_for_nodes(self.min_evaluate, self.timeout_s)
        replies, _, lost = self._ask(nodes, MessageType.EVALUATE, server_round, arrays, config, self.min_evaluate)
        if len(replies) < self.min_evaluate:
            raise RoundFailed(
                self._too_few(server_round, len(replies), len(nodes), self.min_evaluate, lost, "evaluation")
            )
        return self._result(server_round, None, replies, lost, started)

    def _too_few(
        self, rnd: int, got: int, asked: int, needed: int, lost: list[tuple[str, str]], what: str = "round"
    ) -> str:
        failed = [(name, why) for name, why in lost if not why.startswith("no reply within")]
        if failed:
            detail = "; ".join(group_failures(lost, self.what))
            return one_line(f"{what} {rnd}: {detail} (only {got} of {asked} replied, at least {needed} needed)", 600)
        detail = f"; lost: {'; '.join(group_failures(lost, self.what))}" if lost else ""
        return one_line(
            f"{what} {rnd}: only {got} of {asked} {self.what}s replied within {self.timeout_s:g} s "
            f"(at least {needed} needed){detail}",
            600,
        )

    def _result(
        self,
        rnd: int,
        arrays: list[np.ndarray] | None,
        replies: list[Reply],
        lost: list[tuple[str, str]],
        started: float,
    ) -> RoundResult:
        return RoundResult(
            server_round=rnd,
            arrays=arrays,
            replies=replies,
            lost=lost,
            seconds=time.monotonic() - started,
            loss=weighted(replies, p.LOSS, p.EVAL_EXAMPLES),
            accuracy=weighted(replies, p.ACCURACY, p.EVAL_EXAMPLES),
            num_examples=int(sum(r.scalar(p.NUM_EXAMPLES) or 0 for r in replies)),
            eval_examples=int(sum(r.scalar(p.EVAL_EXAMPLES) or 0 for r in replies)),
            participants=[r.name for r in replies],
        )

    def _messages(
        self,
        nodes: list[int],
        kind: str,
        rnd: int,
        arrays: list[np.ndarray],
        config: dict[str, int | float | str],
    ) -> list[Message]:
        content = ConfigRecord({p.SERVER_ROUND: rnd, **config})
        if kind == MessageType.TRAIN:
            view = NodesView(self.grid, nodes)
            messages = list(self.strategy.configure_train(rnd, p.to_arrays(arrays), content, view))
        else:
            record = RecordDict({p.ARRAYS: p.to_arrays(arrays), p.CONFIG: content})
            messages = [Message(record, dst_node_id=node, message_type=kind) for node in nodes]
        for message in messages:
            message.metadata.group_id = str(rnd)
        return messages

    def _ask(
        self,
        nodes: list[int],
        kind: str,
        rnd: int,
        arrays: list[np.ndarray],
        config: dict[str, int | float | str],
        needed: int,
    ) -> tuple[list[Reply], list[Message], list[tuple[str, str]]]:
        """One question to ``nodes``; lost ones are replaced by new nodes while ``replacement_wait_s`` allows."""
        first = self._messages(nodes, kind, rnd, arrays, config)
        if not first:
            raise RoundFailed(f"round {rnd}: the strategy chose no {self.what} to ask")
        replies, raw, lost = self._exchange(first, rnd, needed)
        asked = set(nodes)
        while lost and len(replies) < needed and self.replacement_wait_s > 0:
            fresh = self._new_nodes(asked, needed - len(replies), self.replacement_wait_s)
            if not fresh:
                break
            asked.update(fresh)
            log.info("round %s: asking %d new %s node(s) in place of the lost ones", rnd, len(fresh), self.what)
            # The same question (not a new sample from the strategy, which would wait for its minimum of nodes).
            same = [Message(first[0].content, dst_node_id=node, message_type=kind, group_id=str(rnd)) for node in fresh]
            more, more_raw, more_lost = self._exchange(same, rnd, needed - len(replies))
            replies, raw, lost = replies + more, raw + more_raw, lost + more_lost
        return replies, raw, lost

    def _new_nodes(self, asked: set[int], count: int, timeout_s: float) -> list[int]:
        """Up to ``count`` nodes that joined after ``asked`` was sent (waits at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            fresh = [node for node in self.usable_nodes() if node not in asked]
            if len(fresh) >= count or (fresh and time.monotonic() >= deadline):
                return fresh[:count]
            if time.monotonic() >= deadline:
                return []
            self._idle(PULL_INTERVAL_S)

    def _exchange(
        self, messages: list[Message], rnd: int, needed: int
    ) -> tuple[list[Reply], list[Message], list[tuple[str, str]]]:
        """Send, then collect replies until all arrived, the deadline passed, or failures make ``needed``
        unreachable; mark the rest lost."""
        destination = {}
        ids = list(self.grid.push_messages(messages))
        for message_id, message in zip(ids, messages, strict=True):
            if message_id:
                destination[message_id] = message.metadata.dst_node_id
        waiting = set(destination)
        deadline = time.monotonic() + self.timeout_s
        good: list[Message] = []
        lost: list[tuple[str, str]] = []
        # A lost participant that can be replaced (the root's clusters) does not make the round unwinnable.
        needed = 0 if self.replacement_wait_s > 0 else needed
        while waiting and time.monotonic() < deadline and len(good) + len(waiting) >= needed:
            for reply in self.grid.pull_messages(list(waiting)):
                origin = reply.metadata.reply_to_message_id
                if origin not in waiting:
                    continue
                waiting.discard(origin)
                node = destination[origin]
                if reply.has_error():
                    lost.append(self._lose(node, rnd, str(reply.error.reason)))
                else:
                    self._learn_name(node, reply)
                    self._accumulate(reply)
                    good.append(reply)
            if waiting and len(good) + len(waiting) >= needed:
                if self._streaming is not None:
                    self._streaming.flush()  # fold what arrived while the rest is on its way
                self._wait_replies(waiting, deadline)
        if waiting and len(good) + len(waiting) < needed:
            # The round is lost; failures still on their way (the same user error on every learner, usually)
            # get a short grace so the report names them together.
            grace = min(deadline, time.monotonic() + FAILURE_GRACE_S)
            while waiting and time.monotonic() < grace:
                for reply in self.grid.pull_messages(list(waiting)):
                    origin = reply.metadata.reply_to_message_id
                    if origin in waiting:
                        waiting.discard(origin)
                        if reply.has_error():
                            lost.append(self._lose(destination[origin], rnd, str(reply.error.reason)))
                if waiting:
                    self._wait_replies(waiting, grace)
            cause = "the round cannot succeed without this reply"
            for origin in waiting:  # asked, but the round is over: do not suspend them
                log.info("round %s: stopped waiting for %s (%s)", rnd, self.name_of(destination[origin]), cause)
        else:
            for origin in waiting:
                lost.append(self._lose(destination[origin], rnd, f"no reply within {self.timeout_s:g} s"))
        return [self._summary(reply) for reply in good], good, lost

    def _accumulate(self, reply: Message) -> None:
        if self._streaming is None or reply.metadata.message_type != MessageType.TRAIN:
            return
        metrics = reply.content.metric_records.get(p.METRICS) or MetricRecord()
        weight = metrics.get(p.NUM_EXAMPLES, 0)
        self._streaming.add(reply.content.array_records[p.ARRAYS], float(weight))  # type: ignore[arg-type]

    def _wait_replies(self, waiting: set[str], deadline: float) -> None:
        left = max(0.0, deadline - time.monotonic())
        wait = getattr(self.grid, "wait_for_replies", None)
        if wait is not None:
            wait(waiting, min(left, 5.0))
        else:
            time.sleep(min(left, PULL_INTERVAL_S))

    def _lose(self, node: int, rnd: int, why: str) -> tuple[str, str]:
        self.suspended[node] = time.monotonic() + self.readmit_after_s
        name = self.name_of(node)
        log.warning("round %s: %s %s lost (%s)", rnd, self.what, name, why)
        why = one_line(why, 240)
        self.on_lost(name, f"round {rnd}: {self.what} {name} lost ({why})")
        return name, why

    def _learn_name(self, node: int, reply: Message) -> None:
        info = reply.content.config_records.get(p.INFO)
        if info is not None and info.get(p.NODE):
            self.names[node] = str(info[p.NODE])

    def _summary(self, reply: Message) -> Reply:
        node = reply.metadata.src_node_id
        info = reply.content.config_records.get(p.INFO)
        cluster = str(info[p.CLUSTER]) if info is not None and info.get(p.CLUSTER) else None
        record = reply.content.metric_records.get(p.METRICS) or MetricRecord()
        metrics = {key: value for key, value in record.items()}  # noqa: C416
        return Reply(node_id=node, name=self.name_of(node), cluster=cluster, metrics=metrics)  # type: ignore[arg-type]


def group_failures(lost: list[tuple[str, str]], what: str) -> list[str]:
    """``3 learners: ValueError: ... at model_manager.py:41 (node-a1, node-a2, node-b1)``: one line per reason."""
    by_reason: dict[str, list[str]] = {}
    for name, why in lost:
        by_reason.setdefault(why, []).append(name)
    lines = []
    for why, names in by_reason.items():
        who = f"{len(names)} {what}s" if len(names) > 1 else f"{what} {names[0]}"
        listed = f" ({', '.join(sorted(names))})" if len(names) > 1 else ""
        lines.append(f"{who}: {why}{listed}")
    return lines
